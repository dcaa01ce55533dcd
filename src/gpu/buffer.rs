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

/// A byte range of a buffer, as bound to a kernel.
#[derive(Clone, Copy)]
pub struct BufferView<'a> {
    pub buffer: &'a Buffer,
    pub offset: u64,
    pub size: u64,
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
                    let scope = gpu.device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
                    let raw = gpu.device.create_buffer(&wgpu::BufferDescriptor {
                        label: None,
                        size,
                        usage: wgpu::BufferUsages::STORAGE
                            | wgpu::BufferUsages::COPY_SRC
                            | wgpu::BufferUsages::COPY_DST,
                        mapped_at_creation: false,
                    });
                    pollster::block_on(scope.pop()).map_or(Ok(raw), Err)
                };
                // Out of memory: give the pooled (unused) buffers back to the driver, retry once.
                let raw = create().or_else(|_| {
                    gpu.trim_pool();
                    create()
                });
                let raw = raw.map_err(|e| {
                    let stats = gpu.memory_stats();
                    Error::Gpu(format!(
                        "the device is out of memory allocating {:.1} MiB for {what} \
                         ({:.1} MiB already in use): {e}; use a smaller batch size",
                        size as f64 / 1048576.0,
                        stats.in_use as f64 / 1048576.0
                    ))
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
        BufferView { buffer: self, offset, size }
    }

    pub(super) fn raw(&self) -> &wgpu::Buffer {
        self.raw.as_ref().expect("buffer is live until dropped")
    }
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
