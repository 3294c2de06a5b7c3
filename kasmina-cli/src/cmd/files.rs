//! `kasmina forward` and `kasmina backward`: the layer on files.
//!
//! Everything is read and checked, and every output encoded, before the first
//! byte is written; each output is then written atomically. So a state that
//! fails its checksum, an input of the wrong width or a malformed NPY leaves
//! every existing file as it was.

use std::path::{Path, PathBuf};

use kasmina::core::backend::HostTensorData;
use kasmina::{Backend, DType, DeviceName, Error, KasminaLayer, LayerState};
use kasmina_cli::files::{self, Matrix};

use crate::CmdResult;

/// Options of `kasmina forward`.
#[derive(Debug, clap::Args)]
pub struct ForwardArgs {
    /// The layer state (a snapshot, verified on load).
    #[arg(long)]
    state: PathBuf,
    /// Input activations X: NPY [B, H] of f16, f32 or f64.
    #[arg(long)]
    input: PathBuf,
    /// Output activations Y: NPY [B, H] (f32; f16 for --dtype f16).
    #[arg(long)]
    output: PathBuf,
    /// Also write this call's telemetry report as JSON (SPEC 5.2).
    #[arg(long)]
    telemetry: Option<PathBuf>,
    /// Device: cpu, wgpu:N, cuda:N (cuda and wgpu mean device 0).
    #[arg(long, alias = "backend", value_name = "DEVICE", default_value = "cpu", value_parser = crate::parse_device)]
    device: DeviceName,
    /// Compute dtype: the input is rounded to it (default: f16 for f16 input, else f32).
    /// bf16 output is written widened to f32 (NumPy has no bfloat16).
    #[arg(long, value_parser = crate::one_of::<DType>(crate::DTYPES), ignore_case = true)]
    dtype: Option<DType>,
}

/// Options of `kasmina backward`.
#[derive(Debug, clap::Args)]
pub struct BackwardArgs {
    /// The layer state (a snapshot, verified on load).
    #[arg(long)]
    state: PathBuf,
    /// Input activations X of the forward pass: NPY [B, H].
    #[arg(long)]
    input: PathBuf,
    /// Gradient of the loss with respect to the output, dL/dY: NPY [B, H].
    #[arg(long)]
    grad: PathBuf,
    /// Where to write dL/dX: NPY [B, H].
    #[arg(long)]
    dx: PathBuf,
    /// Where to write the parameter gradients: safetensors with f32 dweights [S, C], dscales [S], grad_norm [S].
    #[arg(long)]
    param_grads: PathBuf,
    /// Device: cpu, wgpu:N, cuda:N (cuda and wgpu mean device 0).
    #[arg(long, alias = "backend", value_name = "DEVICE", default_value = "cpu", value_parser = crate::parse_device)]
    device: DeviceName,
    /// Compute dtype (default: f16 for f16 input, else f32).
    #[arg(long, value_parser = crate::one_of::<DType>(crate::DTYPES), ignore_case = true)]
    dtype: Option<DType>,
}

fn load_state(path: &Path) -> kasmina::Result<LayerState> {
    kasmina::core::snapshot::load(path).map_err(|e| Error::bad_input(path, e.to_string()))
}

fn default_dtype(m: &Matrix) -> DType {
    match m.data.view().dtype() {
        DType::F16 => DType::F16,
        _ => DType::F32,
    }
}

fn open_layer<B: Backend>(
    open: impl Fn() -> kasmina::Result<B>,
    state: LayerState,
    dtype: DType,
) -> kasmina::Result<KasminaLayer<B>> {
    let backend = open()?;
    if !backend.supports(dtype) {
        let info = backend.info();
        let ok: Vec<&str> = info.dtypes.iter().map(|d| d.name()).collect();
        return Err(Error::Invalid(format!(
            "{} ({}) does not run {dtype}; it runs {}",
            info.id(),
            info.name,
            ok.join(", ")
        )));
    }
    Ok(KasminaLayer::from_state(backend, state)?)
}

/// `data` (`[rows, h]`) copied to a tensor of `backend`, then dropped: the host copy does not
/// outlive the device one.
fn upload<B: Backend>(backend: &B, data: HostTensorData, rows: usize, h: usize) -> kasmina::Result<B::Tensor> {
    let mut t = backend.alloc(rows, h, data.view().dtype())?;
    backend.write(&mut t, data.view())?;
    Ok(t)
}

/// `t` (`[rows, h]` of `dtype`) read back to the host, then dropped.
fn download<B: Backend>(
    backend: &B,
    t: B::Tensor,
    dtype: DType,
    rows: usize,
    h: usize,
) -> kasmina::Result<HostTensorData> {
    let mut out = HostTensorData::zeros(dtype, rows * h);
    backend.read(&t, out.view_mut())?;
    Ok(out)
}

/// The forward pass's outputs, computed on `open`'s device. Each array is dropped as soon as it
/// has been used, so a large input costs about its own size and the output's in memory.
fn forward_on<B: Backend>(
    open: impl Fn() -> kasmina::Result<B>,
    state: LayerState,
    x: HostTensorData,
    rows: usize,
    want_telemetry: bool,
) -> kasmina::Result<(HostTensorData, Option<String>)> {
    let dtype = x.view().dtype();
    let h = state.config.hidden_dim;
    let mut layer = open_layer(open, state, dtype)?;
    let xt = upload(layer.backend(), x, rows, h)?;
    let mut yt = layer.backend().alloc(rows, h, dtype)?;
    layer.forward(&xt, &mut yt)?;
    drop(xt);
    let y = download(layer.backend(), yt, dtype, rows, h)?;
    let telemetry = if want_telemetry { Some(layer.telemetry()?.to_json()) } else { None };
    Ok((y, telemetry))
}

/// The file a path names, as far as it can be told before anything is written: the canonical
/// path when it exists, else its canonical folder joined with its name.
fn file_identity(p: &Path) -> PathBuf {
    if let Ok(c) = std::fs::canonicalize(p) {
        return c;
    }
    match (p.parent().map(|d| if d.as_os_str().is_empty() { Path::new(".") } else { d }), p.file_name()) {
        (Some(dir), Some(name)) => std::fs::canonicalize(dir).map_or_else(|_| p.to_path_buf(), |d| d.join(name)),
        _ => p.to_path_buf(),
    }
}

/// Refuses, before any work, an output that names the same file as another output or as an
/// input (the command would overwrite what it reads, or one result with another).
fn distinct_outputs(inputs: &[(&str, &Path)], outputs: &[(&str, &Path)]) -> kasmina::Result<()> {
    for (i, (oname, opath)) in outputs.iter().enumerate() {
        let id = file_identity(opath);
        let clash = inputs.iter().chain(&outputs[..i]).find(|(_, p)| file_identity(p) == id);
        if let Some((other, _)) = clash {
            return Err(Error::Invalid(format!(
                "--{oname} and --{other} name the same file ({}): give each output its own file",
                opath.display()
            )));
        }
    }
    Ok(())
}

/// Runs the forward pass on files.
pub fn forward(a: ForwardArgs) -> CmdResult {
    let mut outputs = vec![("output", a.output.as_path())];
    if let Some(t) = &a.telemetry {
        outputs.push(("telemetry", t.as_path()));
    }
    distinct_outputs(&[("state", a.state.as_path()), ("input", a.input.as_path())], &outputs)?;
    let state = load_state(&a.state)?;
    let h = state.config.hidden_dim;
    let m = files::read_npy_matrix(&a.input, h)?;
    let dtype = a.dtype.unwrap_or_else(|| default_dtype(&m));
    let rows = m.rows;
    let x = m.into_dtype(dtype);
    let (y, telemetry): (HostTensorData, Option<String>) =
        kasmina::with_backend!(a.device, |open| forward_on(open, state, x, rows, a.telemetry.is_some()))?;
    let y_bytes = files::npy_bytes(&y, rows, h)?;
    drop(y);
    let mut out: Vec<(&Path, &[u8])> = vec![(&a.output, &y_bytes)];
    if let (Some(path), Some(json)) = (&a.telemetry, &telemetry) {
        out.push((path, json.as_bytes()));
    }
    files::write_all_atomic(&out)?;
    eprintln!("forward: {rows} rows x {h} ({dtype}) on {} -> {}", a.device, a.output.display());
    Ok(())
}

/// The backward pass's outputs, computed on `open`'s device (arrays dropped as soon as used,
/// as in `forward_on`).
fn backward_on<B: Backend>(
    open: impl Fn() -> kasmina::Result<B>,
    state: LayerState,
    x: HostTensorData,
    g: HostTensorData,
    rows: usize,
) -> kasmina::Result<(HostTensorData, kasmina::ParamGrads)> {
    let dtype = x.view().dtype();
    let h = state.config.hidden_dim;
    let mut layer = open_layer(open, state, dtype)?;
    let xt = upload(layer.backend(), x, rows, h)?;
    let gt = upload(layer.backend(), g, rows, h)?;
    let mut dxt = layer.backend().alloc(rows, h, dtype)?;
    let grads = layer.backward(&xt, &gt, &mut dxt)?;
    drop((xt, gt));
    let dx = download(layer.backend(), dxt, dtype, rows, h)?;
    Ok((dx, grads))
}

/// Runs the backward pass on files.
pub fn backward(a: BackwardArgs) -> CmdResult {
    distinct_outputs(
        &[("state", a.state.as_path()), ("input", a.input.as_path()), ("grad", a.grad.as_path())],
        &[("dx", a.dx.as_path()), ("param-grads", a.param_grads.as_path())],
    )?;
    let state = load_state(&a.state)?;
    let (h, s, c) = (state.config.hidden_dim, state.num_seeds(), state.config.chunk_size());
    let mx = files::read_npy_matrix(&a.input, h)?;
    let mg = files::read_npy_matrix(&a.grad, h)?;
    if mg.rows != mx.rows {
        return Err(Error::bad_input(
            &a.grad,
            format!(
                "has {} rows but the input {} has {}: dL/dY must match X's shape",
                mg.rows,
                a.input.display(),
                mx.rows
            ),
        )
        .into());
    }
    let dtype = a.dtype.unwrap_or_else(|| default_dtype(&mx));
    let rows = mx.rows;
    let (x, g) = (mx.into_dtype(dtype), mg.into_dtype(dtype));
    let (dx, grads): (HostTensorData, kasmina::ParamGrads) =
        kasmina::with_backend!(a.device, |open| backward_on(open, state, x, g, rows))?;
    let dx_bytes = files::npy_bytes(&dx, rows, h)?;
    drop(dx);
    let pg_bytes = files::param_grads_bytes(&grads, s, c)?;
    files::write_all_atomic(&[(&a.dx, &dx_bytes), (&a.param_grads, &pg_bytes)])?;
    eprintln!(
        "backward: {rows} rows x {h} ({dtype}) on {} -> {}, {}",
        a.device,
        a.dx.display(),
        a.param_grads.display()
    );
    Ok(())
}
