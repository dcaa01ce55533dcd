//! Device buffers and the pool that recycles them. A training step asks for the same sizes every
//! time, so after the first step every request is served from the pool and nothing is allocated.

use super::Gpu;
use crate::{Error, Result};
use std::collections::HashMap;

/// Pool granularity: sizes are rounded up to this many bytes so near-equal requests share buffers.
const SIZE_CLASS: u64 = 256;

/// A device buffer (storage, copy source and destination). Dropping it returns it to the pool.
pub struct Buffer {
    raw: Option<wgpu::Buffer>,
    size: u64,
}

/// The element type of a tensor's storage. Kernels compute in f32 either way; an f16 tensor
/// (mixed precision's activations) only halves the bytes it takes and moves.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Dtype {
    #[default]
    F32,
    F16,
}

impl Dtype {
    pub fn bytes(self) -> u64 {
        match self {
            Dtype::F32 => 4,
            Dtype::F16 => 2,
        }
    }

    /// The WGSL scalar type.
    pub fn wgsl(self) -> &'static str {
        match self {
            Dtype::F32 => "f32",
            Dtype::F16 => "f16",
        }
    }
}

/// A byte range of a buffer, as bound to a kernel, and the type of its elements (which picks
/// the kernel's variant: see `Kernel::wgsl`).
#[derive(Clone, Copy)]
pub struct BufferView<'a> {
    pub buffer: &'a Buffer,
    pub offset: u64,
    pub size: u64,
    pub dtype: Dtype,
}

impl BufferView<'_> {
    pub fn with_dtype(self, dtype: Dtype) -> Self {
        BufferView { dtype, ..self }
    }
}

impl Buffer {
    /// A buffer of at least `bytes` bytes with unspecified contents (kernels write all of it).
    /// `what` names the data for the error a too-large request gets.
    pub fn new(gpu: &Gpu, bytes: u64, what: &str) -> Result<Buffer> {
        let size = bytes.max(4).div_ceil(SIZE_CLASS) * SIZE_CLASS;
        let limit = gpu.limits.max_buffer_size;
        if size > limit {
            return Err(Error::TooLarge { what: what.to_string(), bytes, limit });
        }
        let pooled = gpu.pool.lock().unwrap_or_else(|p| p.into_inner()).take(size);
        let raw = match pooled {
            Some(raw) => raw,
            None => {
                let create = || {
                    if let Some(limit) = fault_memory_limit() {
                        let stats = gpu.memory_stats();
                        if stats.in_use + stats.pooled + size > limit {
                            return Err(format!("SASPRUNE_FAULT_DEVICE_MEMORY allows {limit} bytes"));
                        }
                    }
                    let scope = gpu.device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
                    let raw = gpu.device.create_buffer(&wgpu::BufferDescriptor {
                        label: None,
                        size,
                        usage: wgpu::BufferUsages::STORAGE
                            | wgpu::BufferUsages::COPY_SRC
                            | wgpu::BufferUsages::COPY_DST,
                        mapped_at_creation: false,
                    });
                    pollster::block_on(scope.pop()).map_or(Ok(raw), |e| Err(e.to_string()))
                };
                // Out of memory: give the pooled (unused) buffers back to the driver, retry once.
                let raw = create().or_else(|_| {
                    gpu.trim_pool();
                    create()
                });
                let raw = raw.map_err(|detail| Error::OutOfMemory {
                    what: what.to_string(),
                    bytes: size,
                    in_use: gpu.memory_stats().in_use,
                    detail,
                })?;
                gpu.pool.lock().unwrap_or_else(|p| p.into_inner()).allocated(size);
                raw
            }
        };
        Ok(Buffer { raw: Some(raw), size })
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    pub fn view(&self, offset: u64, size: u64) -> BufferView<'_> {
        debug_assert!(offset + size <= self.size);
        BufferView { buffer: self, offset, size, dtype: Dtype::F32 }
    }

    pub(super) fn raw(&self) -> &wgpu::Buffer {
        self.raw.as_ref().expect("buffer is live until dropped")
    }
}

/// The simulated memory size (0: none); see [`simulate_memory_limit`].
fn fault_limit() -> &'static std::sync::atomic::AtomicU64 {
    static LIMIT: std::sync::OnceLock<std::sync::atomic::AtomicU64> = std::sync::OnceLock::new();
    LIMIT.get_or_init(|| {
        let env = std::env::var("SASPRUNE_FAULT_DEVICE_MEMORY").ok().and_then(|v| v.parse().ok());
        std::sync::atomic::AtomicU64::new(env.unwrap_or(0))
    })
}

pub(super) fn fault_memory_limit() -> Option<u64> {
    Some(fault_limit().load(std::sync::atomic::Ordering::Relaxed)).filter(|&l| l > 0)
}

/// Fault injection for tests: the device behaves as if it had only `bytes` of memory (buffers
/// held plus pooled), so out-of-memory paths can be tested on any machine. The environment
/// variable `SASPRUNE_FAULT_DEVICE_MEMORY=BYTES` sets it for a whole process.
pub fn simulate_memory_limit(bytes: Option<u64>) {
    fault_limit().store(bytes.unwrap_or(0), std::sync::atomic::Ordering::Relaxed);
}

impl Drop for Buffer {
    fn drop(&mut self) {
        if let (Some(raw), Some(gpu)) = (self.raw.take(), super::GPU.get()) {
            gpu.pool.lock().unwrap_or_else(|p| p.into_inner()).release(raw, self.size);
        }
    }
}

#[derive(Clone, Copy, Debug, Default)]
pub struct MemoryStats {
    /// Bytes in buffers that someone holds.
    pub in_use: u64,
    /// Bytes in buffers waiting in the pool.
    pub pooled: u64,
    /// Largest `in_use` since the last reset.
    pub peak_in_use: u64,
}

#[derive(Default)]
pub(super) struct Pool {
    free: HashMap<u64, Vec<wgpu::Buffer>>,
    stats: MemoryStats,
}

impl Pool {
    fn take(&mut self, size: u64) -> Option<wgpu::Buffer> {
        let raw = self.free.get_mut(&size)?.pop()?;
        self.stats.pooled -= size;
        self.add_in_use(size);
        Some(raw)
    }

    fn allocated(&mut self, size: u64) {
        self.add_in_use(size);
    }

    fn add_in_use(&mut self, size: u64) {
        self.stats.in_use += size;
        self.stats.peak_in_use = self.stats.peak_in_use.max(self.stats.in_use);
    }

    fn release(&mut self, raw: wgpu::Buffer, size: u64) {
        self.stats.in_use -= size;
        self.stats.pooled += size;
        self.free.entry(size).or_default().push(raw);
    }

    pub(super) fn stats(&self) -> MemoryStats {
        self.stats
    }

    pub(super) fn reset_peak(&mut self) {
        self.stats.peak_in_use = self.stats.in_use;
    }

    pub(super) fn trim(&mut self) {
        self.free.clear();
        self.stats.pooled = 0;
    }
}
