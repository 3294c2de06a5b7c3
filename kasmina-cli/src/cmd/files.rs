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

/// The forward pass's outputs, computed on `open`'s device.
fn forward_on<B: Backend>(
    open: impl Fn() -> kasmina::Result<B>,
    state: LayerState,
    x: &HostTensorData,
    rows: usize,
    want_telemetry: bool,
) -> kasmina::Result<(HostTensorData, Option<String>)> {
    let dtype = x.view().dtype();
    let h = state.config.hidden_dim;
    let mut layer = open_layer(open, state, dtype)?;
    let mut y = HostTensorData::zeros(dtype, rows * h);
    layer.forward_host(x.view(), y.view_mut())?;
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
    let x = m.to_dtype(dtype);
    let (y, telemetry): (HostTensorData, Option<String>) =
        kasmina::with_backend!(a.device, |open| forward_on(open, state, &x, m.rows, a.telemetry.is_some()))?;
    let y_bytes = files::npy_bytes(&y, m.rows, h)?;
    let mut out: Vec<(&Path, &[u8])> = vec![(&a.output, &y_bytes)];
    if let (Some(path), Some(json)) = (&a.telemetry, &telemetry) {
        out.push((path, json.as_bytes()));
    }
    files::write_all_atomic(&out)?;
    eprintln!("forward: {} rows x {h} ({dtype}) on {} -> {}", m.rows, a.device, a.output.display());
    Ok(())
}

fn backward_on<B: Backend>(
    open: impl Fn() -> kasmina::Result<B>,
    state: LayerState,
    x: &HostTensorData,
    g: &HostTensorData,
    rows: usize,
) -> kasmina::Result<(HostTensorData, kasmina::ParamGrads)> {
    let dtype = x.view().dtype();
    let h = state.config.hidden_dim;
    let mut layer = open_layer(open, state, dtype)?;
    let mut dx = HostTensorData::zeros(dtype, rows * h);
    let grads = layer.backward_host(x.view(), g.view(), dx.view_mut())?;
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
    let (x, g) = (mx.to_dtype(dtype), mg.to_dtype(dtype));
    let (dx, grads): (HostTensorData, kasmina::ParamGrads) =
        kasmina::with_backend!(a.device, |open| backward_on(open, state, &x, &g, mx.rows))?;
    let dx_bytes = files::npy_bytes(&dx, mx.rows, h)?;
    let pg_bytes = files::param_grads_bytes(&grads, s, c)?;
    files::write_all_atomic(&[(&a.dx, &dx_bytes), (&a.param_grads, &pg_bytes)])?;
    eprintln!(
        "backward: {} rows x {h} ({dtype}) on {} -> {}, {}",
        mx.rows,
        a.device,
        a.dx.display(),
        a.param_grads.display()
    );
    Ok(())
}
