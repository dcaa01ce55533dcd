//! The GPU runtime: the only module of the crate that names wgpu.
//!
//! One process-wide [`Gpu`] (device, queue, pipeline cache, buffer pool, command recorder) is
//! created on first use — from [`GpuOptions`] given to [`init`], or from the environment
//! (`SASPRUNE_BACKEND`, `SASPRUNE_ADAPTER`). Ops record dispatches; nothing reaches the device
//! until a read-back or [`Gpu::flush`] submits everything recorded so far in one submit.

mod buffer;
mod kernel;
mod recorder;
mod wait;

pub use buffer::{simulate_memory_limit, Buffer, BufferView, Dtype};
pub use kernel::{Kernel, ShaderChecks, WG};
pub use recorder::{DeviceTime, ReadBack};
pub use wait::{device_hung, end_process_now};

use crate::{Error, Result};
use std::sync::{Arc, Mutex, OnceLock};

/// Which adapter to use. `None` means "any": the best device type wins
/// (discrete > integrated > virtual > CPU/software).
#[derive(Clone, Debug, Default)]
pub struct GpuOptions {
    /// `vulkan`, `metal`, `dx12`, `gl` (or a comma-separated list of them); env `SASPRUNE_BACKEND`.
    pub backend: Option<String>,
    /// Case-insensitive substring of the adapter name; env `SASPRUNE_ADAPTER`.
    pub adapter: Option<String>,
    /// The limits the device is opened with: `adapter` (the default: all the adapter offers) or
    /// `webgpu` (what every WebGPU adapter guarantees: 16 KiB of workgroup memory, 128 MiB
    /// storage bindings, 256 MiB buffers, 256-byte offset alignment; how the tests check that
    /// sasprune runs on the smallest GPU it may meet); env `SASPRUNE_LIMITS`.
    pub limits: Option<String>,
}

impl GpuOptions {
    pub fn from_env() -> Self {
        let var = |k| std::env::var(k).ok().filter(|v: &String| !v.trim().is_empty());
        GpuOptions {
            backend: var("SASPRUNE_BACKEND"),
            adapter: var("SASPRUNE_ADAPTER"),
            limits: var("SASPRUNE_LIMITS"),
        }
    }
}

/// The limits to open `adapter`'s device with (see [`GpuOptions::limits`]); never better than
/// the adapter's own.
fn device_limits(adapter: &wgpu::Adapter, limits: Option<&str>) -> Result<wgpu::Limits> {
    match limits.map(str::trim) {
        None | Some("adapter") => Ok(adapter.limits()),
        Some("webgpu") => Ok(wgpu::Limits::defaults().or_worse_values_from(&adapter.limits())),
        Some(other) => Err(Error::invalid(format!(
            "SASPRUNE_LIMITS={other}: expected `adapter` (the adapter's own limits, the default) or `webgpu` \
             (the limits every WebGPU adapter guarantees)"
        ))),
    }
}

/// What the program tells the user (and the benchmark records) about the adapter in use.
#[derive(Clone, Debug)]
pub struct AdapterSummary {
    pub name: String,
    pub vendor_id: u32,
    pub device_type: String,
    pub backend: String,
    pub driver: String,
    pub driver_info: String,
    pub timestamp_queries: bool,
    pub subgroups: bool,
    pub shader_f16: bool,
    /// The cooperative-matrix shapes the adapter offers (wgpu's experimental feature: tensor
    /// cores and the like), e.g. "16x16x16 F16->F32", as reported.
    pub cooperative_matrices: Vec<String>,
    /// The sizes S of the square S x S x S cooperative matrices with f16 inputs and f32 sums
    /// it offers: what the cooperative-matrix GEMM tiles need (ops::gemm_plan).
    pub cooperative_f16_sizes: Vec<u32>,
    /// The largest subgroup the adapter may run (the cooperative-matrix tiles hand their blocks
    /// out by subgroup, so their workgroups must hold enough subgroups).
    pub subgroup_max_size: u32,
    /// Bytes of workgroup memory a kernel may use.
    pub max_workgroup_storage: u32,
    pub max_buffer_size: u64,
    pub max_storage_binding: u64,
}

impl AdapterSummary {
    /// A software driver running on the CPU (llvmpipe, WARP, SwiftShader): kernel plans,
    /// summing variants and the bench's sizes are chosen for it, and memory is host memory.
    pub fn is_cpu(&self) -> bool {
        self.device_type == "Cpu"
    }
}

impl std::fmt::Display for AdapterSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({}, {}", self.name, self.backend, self.device_type)?;
        if !self.driver.is_empty() {
            write!(f, ", driver {} {}", self.driver, self.driver_info)?;
        }
        write!(f, ")")
    }
}

pub struct Gpu {
    device: wgpu::Device,
    queue: wgpu::Queue,
    pub adapter: AdapterSummary,
    limits: wgpu::Limits,
    kernels: Mutex<kernel::KernelCache>,
    /// wgpu runtime checks compiled into the kernels.
    pub shader_checks: ShaderChecks,
    pool: Mutex<buffer::Pool>,
    recorder: Mutex<recorder::Recorder>,
    /// First uncaptured device error since it was last checked.
    device_error: Arc<Mutex<Option<String>>>,
    /// What has been submitted and not yet waited for; waits are limited (`wait`).
    submissions: wait::Submissions,
}

static GPU: OnceLock<Gpu> = OnceLock::new();
static INIT: Mutex<()> = Mutex::new(());

/// Creates the process-wide GPU context with these options (the first call wins; later calls
/// return the existing context).
pub fn init(options: &GpuOptions) -> Result<&'static Gpu> {
    let _guard = INIT.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(gpu) = GPU.get() {
        return Ok(gpu);
    }
    let gpu = Gpu::open(options)?;
    Ok(GPU.get_or_init(|| gpu))
}

/// The process-wide GPU context, created from the environment on first use.
pub fn get() -> Result<&'static Gpu> {
    match GPU.get() {
        Some(gpu) => Ok(gpu),
        None => init(&GpuOptions::from_env()),
    }
}

/// The adapter's cooperative-matrix configurations (empty without the feature).
fn cooperative_properties(adapter: &wgpu::Adapter, features: wgpu::Features) -> Vec<wgpu::CooperativeMatrixProperties> {
    if !features.contains(wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX) {
        return Vec::new();
    }
    adapter.cooperative_matrix_properties()
}

/// The adapter's cooperative-matrix configurations, as text.
fn cooperative_matrices(adapter: &wgpu::Adapter, features: wgpu::Features) -> Vec<String> {
    (cooperative_properties(adapter, features).iter())
        .map(|p| format!("{}x{}x{} {:?}->{:?}", p.m_size, p.n_size, p.k_size, p.ab_type, p.cr_type))
        .collect()
}

/// The sizes S of the adapter's S x S x S cooperative matrices with f16 inputs and f32 sums.
fn cooperative_f16_sizes(adapter: &wgpu::Adapter, features: wgpu::Features) -> Vec<u32> {
    use wgpu::CooperativeScalarType as T;
    let mut sizes: Vec<u32> = (cooperative_properties(adapter, features).iter())
        .filter(|p| p.m_size == p.n_size && p.n_size == p.k_size && p.ab_type == T::F16 && p.cr_type == T::F32)
        .map(|p| p.m_size)
        .collect();
    sizes.sort_unstable();
    sizes.dedup();
    sizes
}

fn parse_backends(text: Option<&str>) -> Result<wgpu::Backends> {
    let Some(text) = text else { return Ok(wgpu::Backends::all()) };
    let mut set = wgpu::Backends::empty();
    for part in text.split(',').map(|p| p.trim().to_ascii_lowercase()) {
        set |= match part.as_str() {
            "vulkan" | "vk" => wgpu::Backends::VULKAN,
            "metal" => wgpu::Backends::METAL,
            "dx12" | "d3d12" => wgpu::Backends::DX12,
            "gl" | "gles" | "opengl" => wgpu::Backends::GL,
            "all" | "any" => wgpu::Backends::all(),
            other => {
                return Err(Error::invalid(format!("unknown backend '{other}': choose vulkan, metal, dx12, gl or all")))
            }
        };
    }
    Ok(set)
}

fn rank(device_type: wgpu::DeviceType) -> u8 {
    match device_type {
        wgpu::DeviceType::DiscreteGpu => 0,
        wgpu::DeviceType::IntegratedGpu => 1,
        wgpu::DeviceType::VirtualGpu => 2,
        wgpu::DeviceType::Cpu => 3,
        wgpu::DeviceType::Other => 4,
    }
}

fn new_instance(backends: wgpu::Backends) -> wgpu::Instance {
    let mut desc = wgpu::InstanceDescriptor::new_without_display_handle();
    desc.backends = backends;
    wgpu::Instance::new(desc)
}

/// One line per adapter wgpu finds on the given backends (all when `None`).
pub fn list_adapters(backend: Option<&str>) -> Result<Vec<String>> {
    let instance = new_instance(parse_backends(backend)?);
    let adapters = pollster::block_on(instance.enumerate_adapters(parse_backends(backend)?));
    Ok(adapters
        .iter()
        .map(|a| {
            let i = a.get_info();
            // what decides the precisions it can run: f16 shaders for --precision mixed, and the
            // cooperative-matrix (tensor-core) shapes wgpu offers
            let features = a.features();
            let f16 = if features.contains(wgpu::Features::SHADER_F16) { "f16 yes" } else { "f16 no" };
            let coop = cooperative_matrices(a, features);
            let coop = if coop.is_empty() { "none".to_string() } else { coop.join(", ") };
            // and the limits that decide which GEMM tiles and batch sizes fit it
            let l = a.limits();
            format!(
                "{} ({:?}, {:?}, driver {} {}; {f16}, cooperative matrices {coop}; workgroup memory {} KiB, \
                 storage binding {} MiB)",
                i.name,
                i.backend,
                i.device_type,
                i.driver,
                i.driver_info,
                l.max_compute_workgroup_storage_size >> 10,
                l.max_storage_buffer_binding_size >> 20
            )
        })
        .collect())
}

/// The adapter `options` asks for (`--backend`, `--adapter`), discrete GPUs first; the error
/// names what was looked for and what is present.
fn choose_adapter(options: &GpuOptions) -> Result<wgpu::Adapter> {
    let backends = parse_backends(options.backend.as_deref())?;
    let instance = new_instance(backends);
    let mut adapters = pollster::block_on(instance.enumerate_adapters(backends));
    let found: Vec<String> = adapters.iter().map(|a| a.get_info().name).collect();
    if let Some(want) = &options.adapter {
        let want = want.to_lowercase();
        adapters.retain(|a| a.get_info().name.to_lowercase().contains(&want));
    }
    adapters.sort_by_key(|a| rank(a.get_info().device_type));
    let looked_for = format!(
        "looked for {} on backend(s) {}",
        options.adapter.as_deref().map_or("any adapter".into(), |a| format!("an adapter named like '{a}'")),
        options.backend.as_deref().unwrap_or("all")
    );
    adapters.into_iter().next().ok_or_else(|| {
        Error::NoAdapter(if found.is_empty() {
            format!("{looked_for} and found none; {NO_DRIVER_HINT}")
        } else {
            format!("{looked_for}; the adapters present are: {}", found.join("; "))
        })
    })
}

/// Opens a device with `limits` and whichever of the features the kernels use the adapter
/// offers; returns the features with the device.
fn request_device(
    adapter: &wgpu::Adapter,
    limits: &wgpu::Limits,
) -> Result<(wgpu::Device, wgpu::Queue, wgpu::Features)> {
    // subgroups: the summing kernels' faster variant (ops::subgroups_usable decides its use);
    // f16: mixed precision's f16 storage
    // cooperative matrices: mixed precision's tensor-core GEMM tiles (ops::gemm_plan)
    let wanted = wgpu::Features::TIMESTAMP_QUERY
        | wgpu::Features::TIMESTAMP_QUERY_INSIDE_ENCODERS
        | wgpu::Features::SUBGROUP
        | wgpu::Features::SHADER_F16
        | wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX;
    let request = |features: wgpu::Features| {
        pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
            label: Some("sasprune"),
            required_features: features,
            required_limits: limits.clone(),
            // SAFETY: wgpu asks users of its experimental features (here only cooperative
            // matrices) to accept that they may still have bugs. Only the cooperative-matrix
            // GEMM tiles use them; they are checked against the f64 reference where the
            // driver offers them (tests/mixed_precision.rs), and the tuner leaves a tile
            // out when the driver rejects it.
            experimental_features: unsafe { wgpu::ExperimentalFeatures::enabled() },
            ..Default::default()
        }))
    };
    // a driver that offers cooperative matrices but fails to open a device with them still
    // opens one without
    let mut features = adapter.features() & wanted;
    let opened = match request(features) {
        Err(_) if features.contains(wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX) => {
            features.remove(wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX);
            request(features)
        }
        other => other,
    };
    let info = adapter.get_info();
    let (device, queue) =
        opened.map_err(|e| Error::Gpu(format!("could not open {} ({:?}): {e}", info.name, info.backend)))?;
    Ok((device, queue, features))
}

/// The slot where the device's first uncaptured error, or its loss, is kept for the next submit
/// or read-back to report.
fn watch_device(device: &wgpu::Device) -> Arc<Mutex<Option<String>>> {
    let device_error = Arc::new(Mutex::new(None::<String>));
    let slot = device_error.clone();
    device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
        let mut slot = slot.lock().unwrap_or_else(|p| p.into_inner());
        if slot.is_none() {
            *slot = Some(e.to_string());
        }
    }));
    // A lost device (driver reset, GPU removed or hung) is reported at the next submit or
    // read-back, ahead of whatever error it caused there.
    let slot = device_error.clone();
    device.set_device_lost_callback(move |reason, message| {
        let mut slot = slot.lock().unwrap_or_else(|p| p.into_inner());
        *slot = Some(format!(
            "the GPU device was lost ({reason:?}{}{message}); the driver may have reset or the GPU \
             stopped responding",
            if message.is_empty() { "" } else { ": " }
        ));
    });
    device_error
}

impl AdapterSummary {
    /// What `adapter` is and offers, with the `features` and `limits` its device was opened with.
    fn of(adapter: &wgpu::Adapter, features: wgpu::Features, limits: &wgpu::Limits) -> AdapterSummary {
        let info = adapter.get_info();
        AdapterSummary {
            name: info.name.clone(),
            vendor_id: info.vendor,
            device_type: format!("{:?}", info.device_type),
            backend: format!("{:?}", info.backend),
            driver: info.driver.clone(),
            driver_info: info.driver_info.clone(),
            timestamp_queries: features.contains(wgpu::Features::TIMESTAMP_QUERY),
            subgroups: features.contains(wgpu::Features::SUBGROUP),
            shader_f16: features.contains(wgpu::Features::SHADER_F16),
            cooperative_matrices: cooperative_matrices(adapter, features),
            cooperative_f16_sizes: cooperative_f16_sizes(adapter, features),
            subgroup_max_size: info.subgroup_max_size,
            max_workgroup_storage: limits.max_compute_workgroup_storage_size,
            max_buffer_size: limits.max_buffer_size,
            max_storage_binding: limits.max_storage_buffer_binding_size,
        }
    }
}

const NO_DRIVER_HINT: &str = "install a Vulkan, Metal, DX12 or OpenGL driver for your GPU; \
     on a machine without a GPU, the software Vulkan driver works \
     (Debian/Ubuntu: `apt-get install mesa-vulkan-drivers`)";

impl Gpu {
    /// Opens a device without installing it as the process-wide context (see [`init`]): chooses
    /// the adapter, opens a device with the features the kernels can use, watches it for errors
    /// and loss, and summarises what it offers.
    pub fn open(options: &GpuOptions) -> Result<Gpu> {
        let adapter = choose_adapter(options)?;
        let limits = device_limits(&adapter, options.limits.as_deref())?;
        let (device, queue, features) = request_device(&adapter, &limits)?;
        let device_error = watch_device(&device);
        let summary = AdapterSummary::of(&adapter, features, &limits);
        let recorder = recorder::Recorder::new(&limits);
        let shader_checks = ShaderChecks::from_env(&summary.backend)?;
        let submissions = wait::Submissions::new(wait::limit_from_env()?);
        Ok(Gpu {
            shader_checks,
            device,
            queue,
            adapter: summary,
            limits,
            kernels: Mutex::new(kernel::KernelCache::default()),
            pool: Mutex::new(buffer::Pool::default()),
            recorder: Mutex::new(recorder),
            device_error,
            submissions,
        })
    }

    /// Byte alignment that a tensor view's offset inside a shared buffer must respect.
    pub fn storage_alignment(&self) -> u64 {
        self.limits.min_storage_buffer_offset_alignment as u64
    }

    /// The largest number of workgroups in one dispatch dimension.
    pub fn max_workgroups_per_dim(&self) -> u32 {
        self.limits.max_compute_workgroups_per_dimension
    }

    /// Submits everything recorded so far (one submit) without waiting for it.
    pub fn flush(&self) -> Result<()> {
        self.lose_device_if_injected();
        self.lock_recorder().flush(self)?;
        self.check_device_error()
    }

    /// Fault injection for tests: `SASPRUNE_FAULT_LOSE_DEVICE=N` destroys the device at the N-th
    /// flush, as a driver reset would lose it.
    fn lose_device_if_injected(&self) {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static FLUSHES: AtomicUsize = AtomicUsize::new(0);
        // read once: this runs at every submit
        static AT: std::sync::OnceLock<Option<usize>> = std::sync::OnceLock::new();
        let at = AT.get_or_init(|| std::env::var("SASPRUNE_FAULT_LOSE_DEVICE").ok().and_then(|v| v.parse().ok()));
        let Some(n) = *at else { return };
        if FLUSHES.fetch_add(1, Ordering::SeqCst) + 1 == n {
            self.device.destroy();
        }
    }

    /// Starts timing on the device (timestamp queries around every compute pass; with
    /// `per_kernel`, every dispatch in a pass of its own, so time adds up by kernel); false when
    /// the adapter cannot. Pending work is submitted first and not counted.
    pub fn start_device_timer(&self, per_kernel: bool) -> Result<bool> {
        self.lock_recorder().start_timer(self, per_kernel)
    }

    /// Submits what is recorded and returns what the device spent in compute passes since
    /// `start_device_timer`, or None when the timer was not started.
    pub fn stop_device_timer(&self) -> Result<Option<DeviceTime>> {
        let seconds = self.lock_recorder().stop_timer(self)?;
        self.check_device_error()?;
        Ok(seconds)
    }

    /// Submits everything recorded so far and waits until the device has finished it.
    pub fn synchronize(&self) -> Result<()> {
        self.flush()?;
        self.submissions.wait(&self.device, None)?;
        self.check_device_error()
    }

    fn check_device_error(&self) -> Result<()> {
        if self.device_error.lock().unwrap_or_else(|p| p.into_inner()).is_none() {
            return Ok(());
        }
        // A lost device makes later calls fail with validation errors; its own callback runs at
        // the next poll. Poll once so that the cause, not a symptom, is reported.
        self.submissions.poll(&self.device);
        match self.device_error.lock().unwrap_or_else(|p| p.into_inner()).take() {
            Some(msg) => Err(Error::Gpu(msg)),
            None => Ok(()),
        }
    }

    fn lock_recorder(&self) -> std::sync::MutexGuard<'_, recorder::Recorder> {
        self.recorder.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Bytes currently held by buffers (in use or pooled), and the most ever held.
    pub fn memory_stats(&self) -> buffer::MemoryStats {
        self.pool.lock().unwrap_or_else(|p| p.into_inner()).stats()
    }

    /// Whether trying allocations tells how much memory a run can have: on GPUs (their own
    /// memory), and under a simulated memory size (`simulate_memory_limit`). A software driver
    /// allocates host memory, which the OS overcommits, and runs a large model's step for minutes.
    pub fn memory_can_be_checked(&self) -> bool {
        !self.adapter.is_cpu() || buffer::fault_memory_limit().is_some()
    }

    /// Forgets the peak of `memory_stats` so a bench can measure one step's peak.
    pub fn reset_peak_memory(&self) {
        self.pool.lock().unwrap_or_else(|p| p.into_inner()).reset_peak();
    }

    /// Releases pooled (unused) buffers back to the driver.
    pub fn trim_pool(&self) {
        self.lock_recorder().forget_bind_groups();
        self.pool.lock().unwrap_or_else(|p| p.into_inner()).trim();
    }
}

/// Splits `n` workgroups over x (and y when n exceeds the per-dimension limit). Kernels that use
/// it compute their linear workgroup index as `wid.x + wid.y * num_workgroups.x`.
pub fn grid(n: u32) -> [u32; 3] {
    const MAX: u32 = 65535;
    if n <= MAX {
        [n.max(1), 1, 1]
    } else {
        [MAX, n.div_ceil(MAX), 1]
    }
}
