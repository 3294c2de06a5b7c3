//! [`WgpuBackend`]: the [`Backend`] trait on a wgpu device.

use std::num::NonZeroU64;
use std::sync::{Arc, OnceLock};

use kasmina_core::checksum::{RawHeader, RawSeed, crc32_of_seeds};
use kasmina_core::plan::{KernelSeed, kernel_crc};
use kasmina_core::{
    Accumulators, Backend, BlueprintType, DType, DeviceInfo, Error, ForwardMode, HostData, HostDataMut, LayerState,
    Moments, ParamGrads, SeedPlan, StabilityMode, StateChange,
};

use crate::device::{self, AdapterDesc, Gpu};
use crate::error::{Result, WgpuError};
use crate::shaders::{ENTRY_POINTS, Variant};

/// Invocations per workgroup in every kernel (`WG` in kasmina.wgsl).
const WG: u64 = 256;
/// Workgroups per row of a 2-D dispatch (`tile_id` in kasmina.wgsl uses `P.wg_x`).
const WGX: u64 = 4096;
/// Words per seed in the accumulator block (`ACC_WORDS` in kasmina.wgsl).
const ACC_WORDS: usize = 16;
/// Words per seed in the kernels' seed table.
const SEED_WORDS: usize = 8;
/// Words per seed in the raw state copy (the checksum's fields).
const STATE_WORDS: usize = 9;
const HEADER_WORDS: usize = 4;
/// Size of the `Params` uniform struct.
const PARAMS_BYTES: u64 = std::mem::size_of::<Params>() as u64;
/// About this many (seed, row-block) tiles per call keep a large GPU busy.
const TARGET_TILES_GPU: usize = 2048;
/// On CPU adapters each workgroup is a CPU task with barriers: few, large tiles.
const TARGET_TILES_CPU: usize = 32;
/// Scratch (tile partials) stays below this many bytes.
const SCRATCH_CAP: u64 = 64 << 20;
/// Initial min/max of an empty accumulator (`BIG` in kasmina.wgsl).
const BIG: f32 = 3.0e38;

/// Construction options.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WgpuOptions {
    /// Reduce through workgroup memory even when the adapter has subgroups
    /// (so both reduction paths can be tested on one machine).
    pub force_shared_memory: bool,
    /// Pretend storage bindings hold at most this many bytes (tests the row
    /// slicing that tensors above `max_storage_buffer_binding_size` need).
    pub max_binding_bytes: Option<u64>,
    /// (seed, row-block) tiles per call to aim for; `None` picks by device
    /// type (2048 on GPUs, 32 on CPU adapters such as lavapipe, where every
    /// workgroup costs a CPU thread switch).
    pub target_tiles: Option<usize>,
    /// `time_ms` writes each timestamp in a submission of its own (host-side
    /// gaps between submissions are then timed too). By default the timestamps
    /// go into the command buffers of the timed work itself.
    pub separate_submit_timing: bool,
    /// Decode f16 with integer arithmetic only (no `unpack2x16float`). Same
    /// bits, for speed comparisons.
    pub f16_integer_decode: bool,
    /// Run the tiles through two kernels (identity seeds, and the rest), each
    /// compiled without the other's code, instead of one for all seeds. Same
    /// results; on the H100 the single kernel was as fast or faster
    /// (`benches/RESULTS.md`).
    pub split_tile_kernels: bool,
    /// Rows each invocation loads together in the word-wise tile loops
    /// (`UNROLL` in kasmina.wgsl; default 8, 1 to 16). Same results, for speed
    /// comparisons.
    pub unroll: Option<u32>,
    /// Forward tiles read one word per row and invocation instead of one
    /// 16-byte group (4 words) where C allows it. Same outputs, for speed
    /// comparisons.
    pub scalar_tile_loads: bool,
}

struct Pipelines {
    list: Vec<wgpu::ComputePipeline>,
}

impl Pipelines {
    fn get(&self, name: &str) -> Result<&wgpu::ComputePipeline> {
        ENTRY_POINTS
            .iter()
            .position(|e| *e == name)
            .and_then(|i| self.list.get(i))
            .ok_or_else(|| WgpuError::Compile(format!("no pipeline for entry point {name}")).into())
    }
}

struct Timer {
    queries: wgpu::QuerySet,
    resolve: wgpu::Buffer,
    period_ns: f64,
    /// `KASMINA_WGPU_TIMING=submit`: timestamps in submissions of their own.
    separate_submits: bool,
}

/// The Kasmina layer on one wgpu adapter (Vulkan preferred).
///
/// Statistics are reduced in two deterministic stages on the device: each
/// workgroup leaves a partial (Welford in coordinates shifted by a per-seed
/// constant `K`, fixed at the first forward after a reset), and a merge
/// kernel folds the partials into the accumulators in tile order with Chan's
/// formula. No float atomics: the same input gives the same bits every run.
pub struct WgpuBackend {
    gpu: Arc<Gpu>,
    index: usize,
    adapter: AdapterDesc,
    subgroups: bool,
    /// Largest activation slice binding (the adapter's limit or the test override).
    max_binding: u64,
    /// The adapter's own storage binding limit (scratch buffers).
    adapter_binding: u64,
    storage_align: u64,
    uniform_stride: u64,
    target_tiles: usize,
    f16_integer_decode: bool,
    /// Rows loaded together per invocation (`UNROLL` in kasmina.wgsl).
    unroll: u32,
    /// Forward tiles move 16-byte groups where C allows (`vec4` in the uniforms).
    vec4_tiles: bool,
    /// The tile kernels to dispatch: (forward, backward) entry points.
    tile_kernels: (&'static [&'static str], &'static [&'static str]),
    bgl: wgpu::BindGroupLayout,
    layout: wgpu::PipelineLayout,
    pipes: [OnceLock<std::result::Result<Arc<Pipelines>, WgpuError>>; 3],
    /// The reference copy kernel of [`WgpuBackend::shader_copy`], built on first use.
    copy_pipe: OnceLock<std::result::Result<wgpu::ComputePipeline, WgpuError>>,
    timer: Option<Timer>,
}

/// A plain 16-byte-per-invocation copy: the bandwidth a compute shader reaches
/// through this adapter, for comparison with the kernels and the yardstick.
const COPY4_WGSL: &str = include_str!("shaders/copy4.wgsl");

impl std::fmt::Debug for WgpuBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WgpuBackend")
            .field("index", &self.index)
            .field("adapter", &self.adapter.name)
            .field("subgroups", &self.subgroups)
            .finish_non_exhaustive()
    }
}

/// A device tensor: `rows * cols` elements packed in one storage buffer
/// (f32: one per word; f16/bf16: two per word, element `e` in the low half
/// when `e` is even).
#[derive(Debug)]
pub struct WgpuTensor {
    buf: wgpu::Buffer,
    rows: usize,
    cols: usize,
    dtype: DType,
}

impl WgpuTensor {
    /// Bytes of data (without the padding to 4 bytes).
    pub fn bytes(&self) -> u64 {
        (self.rows * self.cols * self.dtype.size_bytes()) as u64
    }

    /// The underlying buffer.
    pub fn buffer(&self) -> &wgpu::Buffer {
        &self.buf
    }
}

kasmina_core::impl_device_tensor!(WgpuTensor);

/// A layer's device state: raw state (for the checksum), the kernels' seed
/// table and parameters, the accumulators and gradients, and grow-only scratch.
#[derive(Debug)]
pub struct WgpuLayer {
    h: usize,
    s: usize,
    c: usize,
    dead_eps: f32,
    stability: StabilityMode,
    state_buf: wgpu::Buffer,
    params_buf: wgpu::Buffer,
    pers_buf: wgpu::Buffer,
    scratch: Option<wgpu::Buffer>,
    uniform: Option<wgpu::Buffer>,
    uniform_slots: usize,
    /// The uniform bytes last written (a call with the same plan writes nothing).
    uniform_bytes: Vec<u8>,
    /// Bind groups of the last forward (0) and backward (1) call, reused while
    /// the call binds the same buffers with the same plan. (A cached group keeps
    /// its buffers alive until a call with other tensors replaces it.)
    groups: [Option<BindCache>; 2],
}

/// Bind groups for one combination of buffers and row slices.
#[derive(Debug)]
struct BindCache {
    key: BindKey,
    groups: Vec<wgpu::BindGroup>,
}

#[derive(Debug, PartialEq)]
struct BindKey {
    buffers: [wgpu::Buffer; 5],
    /// (row0, rows) of every slice, and the bytes per row.
    slices: Vec<(usize, usize)>,
    row_bytes: u64,
}

impl WgpuLayer {
    fn off_w(&self) -> usize {
        self.s * SEED_WORDS
    }
    fn off_p(&self) -> usize {
        self.off_w() + self.s * self.c
    }
    fn dw_off(&self) -> usize {
        self.s * ACC_WORDS
    }
    fn ds_off(&self) -> usize {
        self.dw_off() + self.s * self.c
    }
    fn gc_off(&self) -> usize {
        self.ds_off() + self.s
    }
    fn colsum_off(&self) -> usize {
        self.gc_off() + self.s
    }
    fn pers_words(&self) -> usize {
        // Column sums as compensated pairs: 3 H high parts, then 3 H low parts.
        self.colsum_off() + 6 * self.h
    }
}

/// One slice of whole rows, bound at an offset.
#[derive(Debug, Clone, Copy)]
struct Slice {
    row0: usize,
    rows: usize,
    rb_base: usize,
    nrb: usize,
}

#[derive(Debug)]
struct Plan {
    slices: Vec<Slice>,
    tile_rows: usize,
    total_rb: usize,
    aligned: bool,
    /// Forward tiles move 16-byte groups: aligned, and C / (elements per word) a multiple of 4.
    vec4: bool,
    row_bytes: u64,
}

impl Plan {
    fn scratch_words(&self, s: usize, h: usize) -> u64 {
        (self.total_rb * (9 * s + 3 * h)) as u64
    }
}

/// The per-slice uniforms, field for field `struct Params` of kasmina.wgsl (a test checks the
/// names and offsets against the shader with naga).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    h: u32,
    s: u32,
    c: u32,
    /// Words per chunk (C, or C / 2 for 16-bit dtypes, rounded up).
    cu: u32,
    row0: u32,
    rows: u32,
    tile_rows: u32,
    rb_base: u32,
    nrb_slice: u32,
    total_rb: u32,
    dead_eps_bits: u32,
    aligned: u32,
    nwords: u32,
    wg_x: u32,
    off_w: u32,
    off_p: u32,
    acc_off: u32,
    dw_off: u32,
    ds_off: u32,
    gc_off: u32,
    colsum_off: u32,
    part_off: u32,
    gpart_off: u32,
    colpart_off: u32,
    nelems: u32,
    tiles: u32,
    vec4: u32,
    pad1: u32,
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 { a } else { gcd(b, a % b) }
}

fn unsupported(msg: String) -> Error {
    WgpuError::Unsupported(msg).into()
}

/// (x, y) workgroup counts for `n` workgroups laid out `WGX` per row.
fn grid(n: u64) -> Result<(u32, u32)> {
    let n = n.max(1);
    let x = n.min(WGX);
    let y = n.div_ceil(WGX);
    if y > 65535 {
        return Err(unsupported(format!("{n} workgroups exceed one dispatch")));
    }
    Ok((x as u32, y as u32))
}

fn words_to_f32(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
}

fn words_to_u32(b: &[u8]) -> Vec<u32> {
    b.chunks_exact(4).map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
}

impl WgpuBackend {
    /// Every adapter wgpu finds, Vulkan first (`WGPU_BACKEND` restricts the APIs).
    pub fn list_adapters() -> Vec<AdapterDesc> {
        let instance = device::instance();
        device::sorted_adapters(&instance).iter().enumerate().map(|(i, a)| device::describe(i, a)).collect()
    }

    /// Opens adapter `adapter_index` of [`WgpuBackend::list_adapters`] with default options.
    pub fn new(adapter_index: usize) -> Result<WgpuBackend> {
        Self::with_options(adapter_index, WgpuOptions::default())
    }

    /// Opens adapter `adapter_index` with `options`.
    pub fn with_options(adapter_index: usize, options: WgpuOptions) -> Result<WgpuBackend> {
        let instance = device::instance();
        let adapters = device::sorted_adapters(&instance);
        if adapters.is_empty() {
            return Err(WgpuError::Unavailable("wgpu found no adapter".into()).into());
        }
        let Some(adapter) = adapters.get(adapter_index) else {
            return Err(WgpuError::Unavailable(format!(
                "adapter index {adapter_index} out of range ({} adapters)",
                adapters.len()
            ))
            .into());
        };
        let desc = device::describe(adapter_index, adapter);
        let gpu = Arc::new(Gpu::open(adapter)?);
        let limits = gpu.limits.clone();
        let mut max_binding = limits.max_storage_buffer_binding_size.min(limits.max_buffer_size);
        // Kernels index words of a binding with u32: stay below 4 GiB.
        max_binding = max_binding.min(u64::from(u32::MAX) & !255);
        // Multiples of 16: activation bindings are arrays of 16-byte groups.
        max_binding -= max_binding % 16;
        let adapter_binding = max_binding;
        if let Some(m) = options.max_binding_bytes {
            max_binding = max_binding.min(m.max(256));
        }
        max_binding -= max_binding % 16;
        let storage_align = u64::from(limits.min_storage_buffer_offset_alignment).max(16);
        let uniform_stride =
            PARAMS_BYTES.next_multiple_of(u64::from(limits.min_uniform_buffer_offset_alignment).max(16));
        let target_tiles =
            options.target_tiles.unwrap_or(if desc.device_type == "cpu" { TARGET_TILES_CPU } else { TARGET_TILES_GPU });
        let subgroups = gpu.features.contains(wgpu::Features::SUBGROUP) && !options.force_shared_memory;
        let (bgl, layout) = gpu.scoped("creating the pipeline layout", || {
            let storage = |binding: u32, read_only: bool| wgpu::BindGroupLayoutEntry {
                binding,
                visibility: wgpu::ShaderStages::COMPUTE,
                ty: wgpu::BindingType::Buffer {
                    ty: wgpu::BufferBindingType::Storage { read_only },
                    has_dynamic_offset: false,
                    min_binding_size: None,
                },
                count: None,
            };
            let entries = [
                wgpu::BindGroupLayoutEntry {
                    binding: 0,
                    visibility: wgpu::ShaderStages::COMPUTE,
                    ty: wgpu::BindingType::Buffer {
                        ty: wgpu::BufferBindingType::Uniform,
                        has_dynamic_offset: true,
                        min_binding_size: NonZeroU64::new(PARAMS_BYTES),
                    },
                    count: None,
                },
                storage(1, true),
                storage(2, true),
                storage(3, true),
                storage(4, false),
                storage(5, false),
                storage(6, false),
            ];
            let bgl = gpu.device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
                label: Some("kasmina"),
                entries: &entries,
            });
            let layout = gpu.device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
                label: Some("kasmina"),
                bind_group_layouts: &[Some(&bgl)],
                immediate_size: 0,
            });
            (bgl, layout)
        })?;
        let timer =
            if gpu.features.contains(wgpu::Features::TIMESTAMP_QUERY | wgpu::Features::TIMESTAMP_QUERY_INSIDE_ENCODERS)
            {
                let period_ns = f64::from(gpu.queue.get_timestamp_period());
                Some(gpu.scoped("creating timestamp queries", || Timer {
                    queries: gpu.device.create_query_set(&wgpu::QuerySetDescriptor {
                        label: Some("kasmina timer"),
                        ty: wgpu::QueryType::Timestamp,
                        count: 2,
                    }),
                    resolve: gpu.device.create_buffer(&wgpu::BufferDescriptor {
                        label: Some("kasmina timer resolve"),
                        size: 16,
                        usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
                        mapped_at_creation: false,
                    }),
                    period_ns,
                    separate_submits: options.separate_submit_timing,
                })?)
            } else {
                None
            };
        Ok(WgpuBackend {
            gpu,
            index: adapter_index,
            adapter: desc,
            subgroups,
            max_binding,
            adapter_binding,
            storage_align,
            uniform_stride,
            target_tiles,
            f16_integer_decode: options.f16_integer_decode,
            unroll: options.unroll.unwrap_or(8).clamp(1, 16),
            vec4_tiles: !options.scalar_tile_loads,
            tile_kernels: if options.split_tile_kernels {
                (&["fwd_tile_id", "fwd_tile_bp"], &["bwd_tile_id", "bwd_tile_bp"])
            } else {
                (&["fwd_tile"], &["bwd_tile"])
            },
            bgl,
            layout,
            pipes: [OnceLock::new(), OnceLock::new(), OnceLock::new()],
            copy_pipe: OnceLock::new(),
            timer,
        })
    }

    /// The adapter this backend runs on.
    pub fn adapter(&self) -> &AdapterDesc {
        &self.adapter
    }

    /// Whether reductions use subgroup operations (else workgroup memory).
    pub fn uses_subgroups(&self) -> bool {
        self.subgroups
    }

    /// Whether f16 pipelines decode with integer arithmetic only.
    pub fn f16_integer_decode(&self) -> bool {
        self.f16_integer_decode || !self.gpu.f16_in_f32
    }

    /// Whether `time_ms` uses timestamp queries (else the wall clock).
    pub fn has_timestamps(&self) -> bool {
        self.timer.is_some()
    }

    /// Destroys the device, as a driver reset would; every later call fails
    /// with a `DeviceLost` error. For tests of the error path.
    #[doc(hidden)]
    pub fn simulate_device_loss(&self) {
        self.gpu.device.destroy();
    }

    /// The largest storage binding used (the adapter's limit or the test override).
    pub fn max_binding_bytes(&self) -> u64 {
        self.max_binding
    }

    fn pipelines(&self, dtype: DType) -> Result<Arc<Pipelines>> {
        let slot = match dtype {
            DType::F32 => 0,
            DType::F16 => 1,
            DType::BF16 => 2,
        };
        let r = self.pipes[slot].get_or_init(|| self.build_pipelines(dtype));
        r.clone().map_err(Error::from)
    }

    fn build_pipelines(&self, dtype: DType) -> std::result::Result<Arc<Pipelines>, WgpuError> {
        let half_unpack = self.gpu.f16_in_f32 && !self.f16_integer_decode;
        let variant = Variant { dtype, subgroups: self.subgroups, half_unpack };
        let mut src = variant.source();
        if self.unroll != 8 {
            src = src.replace("const UNROLL: u32 = 8u;", &format!("const UNROLL: u32 = {}u;", self.unroll));
        }
        let compile = |e: Error| match e {
            Error::Backend(b) => WgpuError::Compile(b.message),
            other => WgpuError::Compile(other.to_string()),
        };
        let module = self
            .gpu
            .scoped("compiling kasmina.wgsl", || {
                self.gpu.device.create_shader_module(wgpu::ShaderModuleDescriptor {
                    label: Some("kasmina"),
                    source: wgpu::ShaderSource::Wgsl(src.into()),
                })
            })
            .map_err(compile)?;
        let mut list = Vec::new();
        for ep in ENTRY_POINTS {
            let p = self
                .gpu
                .scoped(&format!("building pipeline {ep} ({dtype})"), || {
                    self.gpu.device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                        label: Some(ep),
                        layout: Some(&self.layout),
                        module: &module,
                        entry_point: Some(ep),
                        compilation_options: Default::default(),
                        cache: None,
                    })
                })
                .map_err(compile)?;
            list.push(p);
        }
        Ok(Arc::new(Pipelines { list }))
    }

    /// Copies `src` to `dst` (same shape and dtype) with a plain compute shader
    /// moving 16 bytes per invocation: not part of the layer, a reference for
    /// what a kernel can move through this adapter (timed by `time_ms` like the
    /// `copy_buffer_to_buffer` of [`Backend::copy`]). Tensors larger than one storage
    /// binding are copied in slices, one dispatch each, in one pass.
    pub fn shader_copy(&self, src: &WgpuTensor, dst: &mut WgpuTensor) -> Result<()> {
        if src.rows != dst.rows || src.cols != dst.cols || src.dtype != dst.dtype {
            return Err(Error::shape(
                "shader copy destination",
                format!("[{}, {}] {}", src.rows, src.cols, src.dtype),
                format!("[{}, {}] {}", dst.rows, dst.cols, dst.dtype),
            ));
        }
        let size = src.buf.size().min(dst.buf.size());
        let pipe = self
            .copy_pipe
            .get_or_init(|| {
                let module = self
                    .gpu
                    .scoped("compiling the copy shader", || {
                        self.gpu.device.create_shader_module(wgpu::ShaderModuleDescriptor {
                            label: Some("copy4"),
                            source: wgpu::ShaderSource::Wgsl(COPY4_WGSL.into()),
                        })
                    })
                    .map_err(|e| WgpuError::Compile(e.to_string()))?;
                self.gpu
                    .scoped("building the copy pipeline", || {
                        self.gpu.device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                            label: Some("copy4"),
                            layout: None,
                            module: &module,
                            entry_point: Some("copy4"),
                            compilation_options: Default::default(),
                            cache: None,
                        })
                    })
                    .map_err(|e| WgpuError::Compile(e.to_string()))
            })
            .clone()
            .map_err(Error::from)?;
        fn bind(b: &wgpu::Buffer, offset: u64, size: u64) -> wgpu::BindingResource<'_> {
            wgpu::BindingResource::Buffer(wgpu::BufferBinding { buffer: b, offset, size: NonZeroU64::new(size) })
        }
        // Slices of at most one binding, their offsets aligned for a storage binding (and to
        // the shader's 16-byte elements); buffer sizes are multiples of 16 bytes.
        let align = self.storage_align.max(16);
        let slice = (self.max_binding / align * align).max(align);
        let mut slices = Vec::new();
        let mut offset = 0;
        while offset < size {
            let len = slice.min(size - offset);
            let group = self.gpu.scoped("creating the copy bind group", || {
                self.gpu.device.create_bind_group(&wgpu::BindGroupDescriptor {
                    label: Some("copy4"),
                    layout: &pipe.get_bind_group_layout(0),
                    entries: &[
                        wgpu::BindGroupEntry { binding: 0, resource: bind(&src.buf, offset, len) },
                        wgpu::BindGroupEntry { binding: 1, resource: bind(&dst.buf, offset, len) },
                    ],
                })
            })?;
            slices.push((group, grid((len / 16).div_ceil(WG))?));
            offset += len;
        }
        self.run_passes("shader copy", |pass| {
            pass.set_pipeline(&pipe);
            for (group, (gx, gy)) in &slices {
                pass.set_bind_group(0, group, &[]);
                pass.dispatch_workgroups(*gx, *gy, 1);
            }
            Ok(())
        })
    }

    fn check_dtype(&self, dtype: DType) -> Result<()> {
        if self.supports(dtype) {
            Ok(())
        } else {
            Err(unsupported(format!("{dtype} is not supported on {}", self.adapter.name)))
        }
    }

    /// Splits `rows` into slices that fit one binding and into tiles.
    fn plan(&self, rows: usize, h: usize, s: usize, dtype: DType) -> Result<Plan> {
        let row_bytes = (h * dtype.size_bytes()) as u64;
        let total = rows as u64 * row_bytes;
        let rows_per = if total <= self.max_binding {
            rows.max(1)
        } else {
            let g = self.storage_align / gcd(row_bytes, self.storage_align);
            let r = (self.max_binding / row_bytes) / g * g;
            if r == 0 {
                return Err(unsupported(format!(
                    "a row of {h} {dtype} elements ({row_bytes} bytes, in slices aligned to {g} rows) does not fit one storage binding of {} bytes",
                    self.max_binding
                )));
            }
            r as usize
        };
        let nslices = rows.div_ceil(rows_per);
        let per_rb = (9 * s + 3 * h) as u64 * 4;
        let cap = self.adapter_binding.min(SCRATCH_CAP);
        let max_rb = (cap / per_rb) as usize;
        if max_rb <= nslices {
            return Err(unsupported(format!(
                "H = {h}, S = {s}: per-tile scratch of {per_rb} bytes does not fit {cap} bytes"
            )));
        }
        let nrb = self.target_tiles.max(1).div_ceil(s).min(max_rb - nslices).clamp(1, rows.max(1));
        let tile_rows = rows.div_ceil(nrb).max(1);
        let mut slices = Vec::with_capacity(nslices);
        let mut rb_base = 0;
        let mut row0 = 0;
        while row0 < rows {
            let n = rows_per.min(rows - row0);
            let k = n.div_ceil(tile_rows);
            slices.push(Slice { row0, rows: n, rb_base, nrb: k });
            rb_base += k;
            row0 += n;
        }
        let c = h / s;
        Ok(Plan {
            slices,
            tile_rows,
            total_rb: rb_base,
            aligned: dtype == DType::F32 || c.is_multiple_of(2),
            vec4: self.vec4_tiles && (c * dtype.size_bytes()).is_multiple_of(16),
            row_bytes,
        })
    }

    fn ensure_scratch(&self, layer: &mut WgpuLayer, plan: &Plan, slots: usize) -> Result<()> {
        let bytes = plan.scratch_words(layer.s, layer.h) * 4;
        if layer.scratch.as_ref().is_none_or(|b| b.size() < bytes) {
            // Grow by half again so a slowly growing batch does not reallocate every call.
            let want = (bytes + bytes / 2).min(self.adapter_binding).max(bytes);
            layer.scratch = Some(self.gpu.storage("kasmina scratch", want)?);
        }
        if layer.uniform.is_none() || layer.uniform_slots < slots {
            let n = slots.max(4);
            let buf = self.gpu.scoped("allocating uniforms", || {
                self.gpu.device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some("kasmina params"),
                    size: n as u64 * self.uniform_stride,
                    usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
                    mapped_at_creation: false,
                })
            })?;
            layer.uniform = Some(buf);
            layer.uniform_slots = n;
            layer.uniform_bytes.clear();
        }
        Ok(())
    }

    /// The uniforms of one slice; a value past 32 bits (a shape the plan should have sliced)
    /// is an error, never a silently truncated offset.
    fn params(&self, layer: &WgpuLayer, plan: &Plan, sl: &Slice, dtype: DType) -> Result<Params> {
        let u = |what: &str, v: usize| {
            u32::try_from(v).map_err(|_| unsupported(format!("uniform {what} = {v} does not fit 32 bits")))
        };
        let epu = if dtype == DType::F32 { 1 } else { 2 };
        let nelems = sl.rows * layer.h;
        let gpart = plan.total_rb * layer.s * 8;
        let colpart = gpart + plan.total_rb * layer.s;
        Ok(Params {
            h: u("h", layer.h)?,
            s: u("s", layer.s)?,
            c: u("c", layer.c)?,
            cu: u("cu", layer.c.div_ceil(epu))?,
            row0: u("row0", sl.row0)?,
            rows: u("rows", sl.rows)?,
            tile_rows: u("tile_rows", plan.tile_rows)?,
            rb_base: u("rb_base", sl.rb_base)?,
            nrb_slice: u("nrb_slice", sl.nrb)?,
            total_rb: u("total_rb", plan.total_rb)?,
            dead_eps_bits: layer.dead_eps.to_bits(),
            aligned: u32::from(plan.aligned),
            nwords: u("nwords", nelems.div_ceil(epu))?,
            wg_x: u("wg_x", WGX as usize)?,
            off_w: u("off_w", layer.off_w())?,
            off_p: u("off_p", layer.off_p())?,
            acc_off: 0,
            dw_off: u("dw_off", layer.dw_off())?,
            ds_off: u("ds_off", layer.ds_off())?,
            gc_off: u("gc_off", layer.gc_off())?,
            colsum_off: u("colsum_off", layer.colsum_off())?,
            part_off: 0,
            gpart_off: u("gpart_off", gpart)?,
            colpart_off: u("colpart_off", colpart)?,
            nelems: u("nelems", nelems)?,
            tiles: u("tiles", layer.s * sl.nrb)?,
            vec4: u32::from(plan.vec4),
            pad1: 0,
        })
    }

    /// Writes the per-slice uniforms (unless they are already there) and returns
    /// one bind group per slice, from the layer's cache `which` (0 forward,
    /// 1 backward) when the call binds the same buffers with the same slices.
    #[allow(clippy::too_many_arguments)]
    fn bind_slices<'l>(
        &self,
        layer: &'l mut WgpuLayer,
        which: usize,
        plan: &Plan,
        dtype: DType,
        a: &WgpuTensor,
        b: &WgpuTensor,
        out: &WgpuTensor,
    ) -> Result<&'l [wgpu::BindGroup]> {
        let (Some(uniform), Some(scratch)) = (layer.uniform.clone(), layer.scratch.clone()) else {
            return Err(WgpuError::Device("scratch buffers missing".into()).into());
        };
        let mut bytes = vec![0u8; plan.slices.len() * self.uniform_stride as usize];
        for (i, sl) in plan.slices.iter().enumerate() {
            let p = self.params(layer, plan, sl, dtype)?;
            let o = i * self.uniform_stride as usize;
            bytes[o..o + PARAMS_BYTES as usize].copy_from_slice(bytemuck::bytes_of(&p));
        }
        if layer.uniform_bytes != bytes {
            self.gpu.write_bytes(&uniform, 0, &bytes)?;
            layer.uniform_bytes = bytes;
        }
        let key = BindKey {
            buffers: [a.buf.clone(), b.buf.clone(), out.buf.clone(), scratch.clone(), uniform.clone()],
            slices: plan.slices.iter().map(|sl| (sl.row0, sl.rows)).collect(),
            row_bytes: plan.row_bytes,
        };
        let slot = &mut layer.groups[which];
        if slot.as_ref().is_none_or(|c| c.key != key) {
            *slot = None;
            let groups = self.gpu.scoped("creating bind groups", || {
                plan.slices
                    .iter()
                    .map(|sl| {
                        let off = sl.row0 as u64 * plan.row_bytes;
                        // Whole 16-byte groups (the shader's element type); tensors are padded to 16.
                        let size = NonZeroU64::new((sl.rows as u64 * plan.row_bytes).next_multiple_of(16).max(16));
                        fn slice(t: &WgpuTensor, off: u64, size: Option<NonZeroU64>) -> wgpu::BindingResource<'_> {
                            wgpu::BindingResource::Buffer(wgpu::BufferBinding { buffer: &t.buf, offset: off, size })
                        }
                        fn whole(b: &wgpu::Buffer) -> wgpu::BindingResource<'_> {
                            b.as_entire_binding()
                        }
                        self.gpu.device.create_bind_group(&wgpu::BindGroupDescriptor {
                            label: Some("kasmina slice"),
                            layout: &self.bgl,
                            entries: &[
                                wgpu::BindGroupEntry {
                                    binding: 0,
                                    resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                                        buffer: &uniform,
                                        offset: 0,
                                        size: NonZeroU64::new(PARAMS_BYTES),
                                    }),
                                },
                                wgpu::BindGroupEntry { binding: 1, resource: whole(&layer.params_buf) },
                                wgpu::BindGroupEntry { binding: 2, resource: slice(a, off, size) },
                                wgpu::BindGroupEntry { binding: 3, resource: slice(b, off, size) },
                                wgpu::BindGroupEntry { binding: 4, resource: slice(out, off, size) },
                                wgpu::BindGroupEntry { binding: 5, resource: whole(&layer.pers_buf) },
                                wgpu::BindGroupEntry { binding: 6, resource: whole(&scratch) },
                            ],
                        })
                    })
                    .collect::<Vec<_>>()
            })?;
            *slot = Some(BindCache { key, groups });
        }
        match slot {
            Some(c) => Ok(&c.groups),
            None => Err(WgpuError::Device("bind groups missing".into()).into()),
        }
    }

    fn check_act(&self, layer: &WgpuLayer, what: &str, t: &WgpuTensor, rows: usize, dtype: DType) -> Result<()> {
        if t.cols != layer.h || t.rows != rows {
            return Err(Error::shape(what, format!("[{rows}, {}]", layer.h), format!("[{}, {}]", t.rows, t.cols)));
        }
        if t.dtype != dtype {
            return Err(Error::DType { what: what.into(), expected: dtype, got: t.dtype });
        }
        Ok(())
    }

    fn run_passes(&self, label: &str, f: impl FnOnce(&mut wgpu::ComputePass<'_>) -> Result<()>) -> Result<()> {
        self.gpu.submit_work(label, |enc| {
            let mut pass =
                enc.begin_compute_pass(&wgpu::ComputePassDescriptor { label: Some(label), timestamp_writes: None });
            f(&mut pass)
        })
    }

    fn slot_offset(&self, i: usize) -> u32 {
        (i as u64 * self.uniform_stride) as u32
    }

    fn write_reset(&self, layer: &WgpuLayer) -> Result<()> {
        let mut words = vec![0u32; layer.s * ACC_WORDS];
        for s in 0..layer.s {
            words[s * ACC_WORDS + 6] = BIG.to_bits();
            words[s * ACC_WORDS + 7] = (-BIG).to_bits();
        }
        self.gpu.write_bytes(&layer.pers_buf, 0, bytemuck::cast_slice(&words))
    }
}

/// The kernels' seed table entry of seed `i` (8 words): core's plan laid out as
/// `{mode, blueprint type, a, scale, clamp flag, lo, hi, 0}`.
fn seed_words(state: &LayerState, i: usize) -> [u32; SEED_WORDS] {
    let plan = SeedPlan::derive(state, i);
    let (flag, lo, hi) = match plan.clamp {
        Some((lo, hi)) => (1, lo, hi),
        None => (0, 0.0, 0.0),
    };
    [
        plan.mode as u32,
        u32::from(plan.blueprint_type.raw()),
        plan.a.to_bits(),
        plan.scale.to_bits(),
        flag,
        lo.to_bits(),
        hi.to_bits(),
        0,
    ]
}

/// Core's plan from a seed table entry read back from the device and the seed's weights (the
/// shaders read the CONV taps from the weights); `None` for words no entry holds.
fn plan_of_words(sw: &[u32], w: &[f32]) -> Option<SeedPlan> {
    let mode = match sw[0] {
        0 => ForwardMode::Identity,
        1 => ForwardMode::Blend,
        2 => ForwardMode::Blueprint,
        _ => return None,
    };
    let blueprint_type = BlueprintType::from_raw(u8::try_from(sw[1]).ok()?).ok()?;
    let clamp = match sw[4] {
        0 => None,
        1 => Some((f32::from_bits(sw[5]), f32::from_bits(sw[6]))),
        _ => return None,
    };
    let tap = |k: usize| w.get(k).copied().unwrap_or(0.0);
    Some(SeedPlan {
        mode,
        blueprint_type,
        a: f32::from_bits(sw[2]),
        scale: f32::from_bits(sw[3]),
        clamp,
        taps: [tap(0), tap(1), tap(2)],
    })
}

/// Seed `i`'s raw fields from the state buffer's words (`raw`, header first) and its scale
/// (kept in the seed table).
fn raw_seed(raw: &[u32], i: usize, scale: f32) -> RawSeed {
    let f = |k: usize| raw[HEADER_WORDS + i * STATE_WORDS + k];
    RawSeed {
        lifecycle: f(0) as u8,
        blueprint_id: f(1) as u16,
        blueprint_type: f(2) as u8,
        grafting_strategy: f(3) as u8,
        alpha: f32::from_bits(f(4)),
        epochs_in_state: f(5) as u16,
        last_update_epoch: f(6),
        clamp_mean: f32::from_bits(f(7)),
        clamp_std: f32::from_bits(f(8)),
        scale,
    }
}

/// The raw state fields of seed `i`, one word each (what the checksum reads back).
fn state_words(state: &LayerState, i: usize) -> [u32; STATE_WORDS] {
    let st = &state.seeds;
    [
        u32::from(st.lifecycle[i].raw()),
        u32::from(st.blueprint_id[i]),
        u32::from(st.blueprint_type[i].raw()),
        u32::from(st.grafting_strategy[i].raw()),
        st.alpha[i].to_bits(),
        u32::from(st.epochs_in_state[i]),
        st.last_update_epoch[i],
        st.clamp_mean[i].to_bits(),
        st.clamp_std[i].to_bits(),
    ]
}

use kasmina_core::plan::softmax;

impl Backend for WgpuBackend {
    type Tensor = WgpuTensor;
    type Layer = WgpuLayer;

    fn info(&self) -> DeviceInfo {
        let mut features = vec![self.adapter.backend.clone(), self.adapter.device_type.clone()];
        features.extend(self.adapter.features.iter().cloned());
        features.push(if self.subgroups { "subgroup-reductions" } else { "shared-memory-reductions" }.to_string());
        DeviceInfo {
            backend: "wgpu",
            index: self.index,
            name: self.adapter.name.clone(),
            // f16 and bf16 are converted in integer arithmetic in the shaders, so
            // every adapter runs all three (see shaders.rs).
            dtypes: DType::ALL.to_vec(),
            features,
        }
    }

    fn alloc(&self, rows: usize, cols: usize, dtype: DType) -> Result<WgpuTensor> {
        self.check_dtype(dtype)?;
        let bytes = (rows as u64).saturating_mul(cols as u64).saturating_mul(dtype.size_bytes() as u64);
        // Padded to whole 16-byte groups (the shaders bind activations as vec4<u32> arrays).
        let buf = self.gpu.storage("kasmina tensor", bytes.max(16).next_multiple_of(16))?;
        Ok(WgpuTensor { buf, rows, cols, dtype })
    }

    fn write(&self, tensor: &mut WgpuTensor, data: HostData<'_>) -> Result<()> {
        if data.dtype() != tensor.dtype {
            return Err(Error::DType { what: "tensor data".into(), expected: tensor.dtype, got: data.dtype() });
        }
        if data.len() != tensor.rows * tensor.cols {
            return Err(Error::shape("tensor data", tensor.rows * tensor.cols, data.len()));
        }
        self.gpu.write_bytes(&tensor.buf, 0, data.as_bytes())
    }

    fn read(&self, tensor: &WgpuTensor, mut out: HostDataMut<'_>) -> Result<()> {
        if out.dtype() != tensor.dtype {
            return Err(Error::DType { what: "tensor output".into(), expected: tensor.dtype, got: out.dtype() });
        }
        if out.len() != tensor.rows * tensor.cols {
            return Err(Error::shape("tensor output", tensor.rows * tensor.cols, out.len()));
        }
        let bytes = self.gpu.read_bytes(&tensor.buf, 0, tensor.bytes())?;
        out.as_bytes_mut().copy_from_slice(&bytes);
        Ok(())
    }

    fn create_layer(&self, state: &LayerState) -> Result<WgpuLayer> {
        state.validate()?;
        let (h, s) = (state.config.hidden_dim, state.config.num_seeds);
        let c = h / s;
        let mut layer = WgpuLayer {
            h,
            s,
            c,
            dead_eps: state.config.dead_eps,
            stability: state.config.stability,
            state_buf: self.gpu.storage("kasmina state", ((HEADER_WORDS + s * STATE_WORDS) * 4) as u64)?,
            params_buf: self.gpu.storage("kasmina params", ((s * SEED_WORDS + 2 * s * c) * 4) as u64)?,
            pers_buf: self.gpu.storage("kasmina accumulators", 0)?,
            scratch: None,
            uniform: None,
            uniform_slots: 0,
            uniform_bytes: Vec::new(),
            groups: [None, None],
        };
        layer.pers_buf = self.gpu.storage("kasmina accumulators", (layer.pers_words() * 4) as u64)?;
        self.upload(&mut layer, state, StateChange::All)?;
        self.write_reset(&layer)?;
        Ok(layer)
    }

    fn upload(&self, layer: &mut WgpuLayer, state: &LayerState, changed: StateChange<'_>) -> Result<()> {
        if state.config.hidden_dim != layer.h || state.config.num_seeds != layer.s {
            return Err(Error::shape(
                "layer state",
                format!("H = {}, S = {}", layer.h, layer.s),
                format!("H = {}, S = {}", state.config.hidden_dim, state.config.num_seeds),
            ));
        }
        let (s, c) = (layer.s, layer.c);
        let header = [u32::from(state.schema_version()), s as u32 * c as u32, s as u32, state.epoch];
        self.gpu.write_bytes(&layer.state_buf, 0, bytemuck::cast_slice(&header))?;
        let write_seed = |i: usize| -> Result<()> {
            let sw = seed_words(state, i);
            self.gpu.write_bytes(&layer.params_buf, (i * SEED_WORDS * 4) as u64, bytemuck::cast_slice(&sw))?;
            let w = state.params.seed_weights(i);
            self.gpu.write_bytes(&layer.params_buf, ((layer.off_w() + i * c) * 4) as u64, bytemuck::cast_slice(w))?;
            let p = softmax(w);
            self.gpu.write_bytes(&layer.params_buf, ((layer.off_p() + i * c) * 4) as u64, bytemuck::cast_slice(&p))?;
            let rw = state_words(state, i);
            self.gpu.write_bytes(
                &layer.state_buf,
                ((HEADER_WORDS + i * STATE_WORDS) * 4) as u64,
                bytemuck::cast_slice(&rw),
            )
        };
        match changed {
            StateChange::All => {
                layer.dead_eps = state.config.dead_eps;
                layer.stability = state.config.stability;
                let mut table = Vec::with_capacity(s * SEED_WORDS + 2 * s * c);
                let mut raw = Vec::with_capacity(s * STATE_WORDS);
                for i in 0..s {
                    table.extend_from_slice(&seed_words(state, i));
                    raw.extend_from_slice(&state_words(state, i));
                }
                table.extend(state.params.weights.iter().map(|v| v.to_bits()));
                for i in 0..s {
                    table.extend(softmax(state.params.seed_weights(i)).iter().map(|v| v.to_bits()));
                }
                self.gpu.write_bytes(&layer.params_buf, 0, bytemuck::cast_slice(&table))?;
                self.gpu.write_bytes(&layer.state_buf, (HEADER_WORDS * 4) as u64, bytemuck::cast_slice(&raw))?;
            }
            StateChange::Seeds(list) => {
                for &i in list {
                    if i >= s {
                        return Err(Error::SeedOutOfRange { seed_id: i, num_seeds: s });
                    }
                    write_seed(i)?;
                }
            }
        }
        Ok(())
    }

    fn forward(&self, layer: &mut WgpuLayer, x: &WgpuTensor, y: &mut WgpuTensor) -> Result<()> {
        let dtype = x.dtype;
        self.check_dtype(dtype)?;
        self.check_act(layer, "x", x, x.rows, dtype)?;
        self.check_act(layer, "y", y, x.rows, dtype)?;
        if x.rows == 0 {
            return Ok(());
        }
        let pipes = self.pipelines(dtype)?;
        let plan = self.plan(x.rows, layer.h, layer.s, dtype)?;
        self.ensure_scratch(layer, &plan, plan.slices.len())?;
        let (h, s) = (layer.h, layer.s);
        let groups = self.bind_slices(layer, 0, &plan, dtype, x, x, y)?;
        let seeds_grid = grid((s as u64).div_ceil(WG))?;
        let last = plan.slices.len() - 1;
        self.run_passes("kasmina forward", |pass| {
            pass.set_pipeline(pipes.get("fwd_prep")?);
            pass.set_bind_group(0, &groups[0], &[self.slot_offset(0)]);
            pass.dispatch_workgroups(seeds_grid.0, seeds_grid.1, 1);
            for (i, sl) in plan.slices.iter().enumerate() {
                pass.set_bind_group(0, &groups[i], &[self.slot_offset(i)]);
                let (gx, gy) = grid((s * sl.nrb) as u64)?;
                for k in self.tile_kernels.0 {
                    pass.set_pipeline(pipes.get(k)?);
                    pass.dispatch_workgroups(gx, gy, 1);
                }
                if !plan.aligned {
                    let words = ((sl.rows * h).div_ceil(2)) as u64;
                    let (fx, fy) = grid(words.div_ceil(WG))?;
                    pass.set_pipeline(pipes.get("fwd_flat")?);
                    pass.dispatch_workgroups(fx, fy, 1);
                }
            }
            pass.set_bind_group(0, &groups[last], &[self.slot_offset(last)]);
            pass.set_pipeline(pipes.get("fwd_merge")?);
            pass.dispatch_workgroups(seeds_grid.0, seeds_grid.1, 1);
            Ok(())
        })
    }

    fn backward(&self, layer: &mut WgpuLayer, x: &WgpuTensor, g: &WgpuTensor, dx: &mut WgpuTensor) -> Result<()> {
        let dtype = x.dtype;
        self.check_dtype(dtype)?;
        self.check_act(layer, "x", x, x.rows, dtype)?;
        self.check_act(layer, "g", g, x.rows, dtype)?;
        self.check_act(layer, "dx", dx, x.rows, dtype)?;
        if x.rows == 0 {
            // No rows: zero gradients for this call.
            let zeros = vec![0u32; layer.colsum_off() - layer.dw_off()];
            return self.gpu.write_bytes(&layer.pers_buf, (layer.dw_off() * 4) as u64, bytemuck::cast_slice(&zeros));
        }
        let pipes = self.pipelines(dtype)?;
        let plan = self.plan(x.rows, layer.h, layer.s, dtype)?;
        self.ensure_scratch(layer, &plan, plan.slices.len())?;
        let (h, s) = (layer.h, layer.s);
        let groups = self.bind_slices(layer, 1, &plan, dtype, x, g, dx)?;
        let last = plan.slices.len() - 1;
        self.run_passes("kasmina backward", |pass| {
            for (i, sl) in plan.slices.iter().enumerate() {
                pass.set_bind_group(0, &groups[i], &[self.slot_offset(i)]);
                let (gx, gy) = grid((s * sl.nrb) as u64)?;
                for k in self.tile_kernels.1 {
                    pass.set_pipeline(pipes.get(k)?);
                    pass.dispatch_workgroups(gx, gy, 1);
                }
                if !plan.aligned {
                    let words = ((sl.rows * h).div_ceil(2)) as u64;
                    let (fx, fy) = grid(words.div_ceil(WG))?;
                    pass.set_pipeline(pipes.get("bwd_flat")?);
                    pass.dispatch_workgroups(fx, fy, 1);
                }
            }
            pass.set_bind_group(0, &groups[last], &[self.slot_offset(last)]);
            let (cx, cy) = grid((3 * h as u64).div_ceil(WG))?;
            pass.set_pipeline(pipes.get("bwd_colmerge")?);
            pass.dispatch_workgroups(cx, cy, 1);
            let (sx, sy) = grid(s as u64)?;
            pass.set_pipeline(pipes.get("bwd_final")?);
            pass.dispatch_workgroups(sx, sy, 1);
            Ok(())
        })
    }

    fn param_grads(&self, layer: &WgpuLayer) -> Result<ParamGrads> {
        let start = layer.dw_off();
        let words = layer.colsum_off() - start;
        let b = self.gpu.read_bytes(&layer.pers_buf, (start * 4) as u64, (words * 4) as u64)?;
        let v = words_to_f32(&b);
        let (s, c) = (layer.s, layer.c);
        Ok(ParamGrads {
            dweights: v[..s * c].to_vec(),
            dscales: v[s * c..s * c + s].to_vec(),
            grad_norm: v[s * c + s..].iter().map(|g| g.max(0.0).sqrt()).collect(),
        })
    }

    fn accumulators(&self, layer: &WgpuLayer) -> Result<Accumulators> {
        let b = self.gpu.read_bytes(&layer.pers_buf, 0, (layer.s * ACC_WORDS * 4) as u64)?;
        let w = words_to_u32(&b);
        let mut acc = Accumulators::empty(layer.s);
        for s in 0..layer.s {
            let a = &w[s * ACC_WORDS..(s + 1) * ACC_WORDS];
            let f = |i: usize| f64::from(f32::from_bits(a[i]));
            let count = u64::from(a[2]) | (u64::from(a[3]) << 32);
            let seen = count > 0;
            acc.moments[s] = Moments {
                count,
                mean: if seen { f(1) + f(4) } else { 0.0 },
                m2: if seen { f(5).max(0.0) } else { 0.0 },
                min: if seen { f(6) } else { f64::INFINITY },
                max: if seen { f(7) } else { f64::NEG_INFINITY },
                dead: u64::from(a[8]) | (u64::from(a[9]) << 32),
                nonfinite: u64::from(a[10]) | (u64::from(a[11]) << 32),
            };
            acc.grad_sq[s] = f(12);
        }
        Ok(acc)
    }

    fn reset_accumulators(&self, layer: &mut WgpuLayer) -> Result<()> {
        self.write_reset(layer)
    }

    fn checksum(&self, layer: &WgpuLayer) -> Result<u32> {
        let (s, c) = (layer.s, layer.c);
        let raw =
            words_to_u32(&self.gpu.read_bytes(&layer.state_buf, 0, ((HEADER_WORDS + s * STATE_WORDS) * 4) as u64)?);
        let prm = words_to_u32(&self.gpu.read_bytes(&layer.params_buf, 0, ((s * SEED_WORDS + s * c) * 4) as u64)?);
        let seeds: Vec<RawSeed> = (0..s).map(|i| raw_seed(&raw, i, f32::from_bits(prm[i * SEED_WORDS + 3]))).collect();
        let weights: Vec<f32> = prm[s * SEED_WORDS..].iter().map(|v| f32::from_bits(*v)).collect();
        let header = RawHeader { schema_version: raw[0] as u8, hidden_dim: raw[1], num_seeds: raw[2], epoch: raw[3] };
        Ok(crc32_of_seeds(header, &seeds, &weights))
    }

    fn kernel_checksum(&self, layer: &WgpuLayer, seeds: &[usize]) -> Result<u32> {
        let (s, c) = (layer.s, layer.c);
        if let Some(&bad) = seeds.iter().find(|&&i| i >= s) {
            return Err(Error::SeedOutOfRange { seed_id: bad, num_seeds: s });
        }
        let raw =
            words_to_u32(&self.gpu.read_bytes(&layer.state_buf, 0, ((HEADER_WORDS + s * STATE_WORDS) * 4) as u64)?);
        let prm =
            words_to_u32(&self.gpu.read_bytes(&layer.params_buf, 0, ((s * SEED_WORDS + 2 * s * c) * 4) as u64)?);
        let floats = |from: usize| -> Vec<f32> { prm[from..from + s * c].iter().map(|v| f32::from_bits(*v)).collect() };
        let (weights, p) = (floats(layer.off_w()), floats(layer.off_p()));
        let mut kernel_seeds = Vec::with_capacity(seeds.len());
        for &i in seeds {
            let sw = &prm[i * SEED_WORDS..(i + 1) * SEED_WORDS];
            let w = &weights[i * c..(i + 1) * c];
            let plan = plan_of_words(sw, w).filter(|_| sw[7] == 0).ok_or_else(|| Error::DeviceIntegrity {
                backend: "wgpu",
                what: format!("the seed table entry of seed {i} holds words no state derives to"),
                device: crc32fast::hash(bytemuck::cast_slice(sw)),
                host: 0,
            })?;
            let record = raw_seed(&raw, i, plan.scale);
            kernel_seeds.push(KernelSeed { seed_id: i, record, weights: w, plan, softmax: &p[i * c..(i + 1) * c] });
        }
        let header = RawHeader { schema_version: raw[0] as u8, hidden_dim: raw[1], num_seeds: raw[2], epoch: raw[3] };
        Ok(kernel_crc(header, kernel_seeds))
    }

    fn copy(&self, src: &WgpuTensor, dst: &mut WgpuTensor) -> Result<()> {
        if src.rows != dst.rows || src.cols != dst.cols {
            return Err(Error::shape(
                "copy destination",
                format!("[{}, {}]", src.rows, src.cols),
                format!("[{}, {}]", dst.rows, dst.cols),
            ));
        }
        if src.dtype != dst.dtype {
            return Err(Error::DType { what: "copy destination".into(), expected: src.dtype, got: dst.dtype });
        }
        let size = src.bytes().next_multiple_of(4);
        if size == 0 {
            return Ok(());
        }
        self.gpu.submit_work("copy_buffer_to_buffer", |enc| {
            enc.copy_buffer_to_buffer(&src.buf, 0, &dst.buf, 0, size);
            Ok(())
        })
    }

    fn kernel_copy_name(&self) -> Option<&'static str> {
        Some("shader")
    }

    fn kernel_copy(&self, src: &WgpuTensor, dst: &mut WgpuTensor) -> Result<()> {
        self.shader_copy(src, dst)
    }

    fn synchronize(&self) -> Result<()> {
        self.gpu.wait()
    }

    fn time_ms(&self, f: &mut dyn FnMut() -> Result<()>) -> Result<f64> {
        let Some(t) = &self.timer else {
            self.synchronize()?;
            let start = std::time::Instant::now();
            f()?;
            self.synchronize()?;
            return Ok(start.elapsed().as_secs_f64() * 1e3);
        };
        self.synchronize()?;
        if t.separate_submits {
            // The other method, kept for comparison (`KASMINA_WGPU_TIMING=submit`): each
            // timestamp in a submission of its own, so host-side gaps are timed too.
            let stamp = |i: u32, resolve: bool| {
                self.gpu.scoped("timestamp", || {
                    let mut enc = self
                        .gpu
                        .device
                        .create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("timestamp") });
                    enc.write_timestamp(&t.queries, i);
                    if resolve {
                        enc.resolve_query_set(&t.queries, 0..2, &t.resolve, 0);
                    }
                    self.gpu.queue.submit([enc.finish()]);
                })
            };
            stamp(0, false)?;
            f()?;
            stamp(1, true)?;
        } else {
            self.gpu.begin_capture(&t.queries);
            if let Err(e) = f() {
                self.gpu.cancel_capture();
                return Err(e);
            }
            self.gpu.end_capture(&t.resolve)?;
        }
        let b = self.gpu.read_bytes(&t.resolve, 0, 16)?;
        let t0 = u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]);
        let t1 = u64::from_le_bytes([b[8], b[9], b[10], b[11], b[12], b[13], b[14], b[15]]);
        Ok(t1.saturating_sub(t0) as f64 * t.period_ns / 1e6)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::offset_of;

    /// `Params` is the shader's `struct Params`: the same member names at the same offsets, and
    /// the same size.
    #[test]
    fn the_uniform_struct_matches_the_shader() {
        let src = crate::shaders::Variant { dtype: DType::F32, subgroups: false, half_unpack: true }.source();
        let module = naga::front::wgsl::parse_str(&src).unwrap();
        let (members, span) = module
            .types
            .iter()
            .find_map(|(_, t)| match (&t.name, &t.inner) {
                (Some(n), naga::TypeInner::Struct { members, span }) if n == "Params" => Some((members, *span)),
                _ => None,
            })
            .expect("kasmina.wgsl declares struct Params");
        let rust = [
            ("h", offset_of!(Params, h)),
            ("s", offset_of!(Params, s)),
            ("c", offset_of!(Params, c)),
            ("cu", offset_of!(Params, cu)),
            ("row0", offset_of!(Params, row0)),
            ("rows", offset_of!(Params, rows)),
            ("tile_rows", offset_of!(Params, tile_rows)),
            ("rb_base", offset_of!(Params, rb_base)),
            ("nrb_slice", offset_of!(Params, nrb_slice)),
            ("total_rb", offset_of!(Params, total_rb)),
            ("dead_eps_bits", offset_of!(Params, dead_eps_bits)),
            ("aligned", offset_of!(Params, aligned)),
            ("nwords", offset_of!(Params, nwords)),
            ("wg_x", offset_of!(Params, wg_x)),
            ("off_w", offset_of!(Params, off_w)),
            ("off_p", offset_of!(Params, off_p)),
            ("acc_off", offset_of!(Params, acc_off)),
            ("dw_off", offset_of!(Params, dw_off)),
            ("ds_off", offset_of!(Params, ds_off)),
            ("gc_off", offset_of!(Params, gc_off)),
            ("colsum_off", offset_of!(Params, colsum_off)),
            ("part_off", offset_of!(Params, part_off)),
            ("gpart_off", offset_of!(Params, gpart_off)),
            ("colpart_off", offset_of!(Params, colpart_off)),
            ("nelems", offset_of!(Params, nelems)),
            ("tiles", offset_of!(Params, tiles)),
            ("vec4", offset_of!(Params, vec4)),
            ("pad1", offset_of!(Params, pad1)),
        ];
        let shader: Vec<(String, usize)> =
            members.iter().map(|m| (m.name.clone().unwrap_or_default(), m.offset as usize)).collect();
        let rust: Vec<(String, usize)> = rust.iter().map(|(n, o)| (n.to_string(), *o)).collect();
        assert_eq!(shader, rust);
        assert_eq!(span as u64, PARAMS_BYTES);
    }
}
