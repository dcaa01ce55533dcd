//! Command recording. Ops append dispatches, uploads and copies here; `flush` turns the whole
//! list into one command buffer and one submit.
//!
//! Uniform parameters and uploaded data are staged in host arenas and written to the device with
//! one `write_buffer` each per submit; every dispatch or upload owns its own region of the arena.
//! (A single uniform buffer rewritten between dispatches would give them all the last value,
//! because `write_buffer` lands before every command of the submit.)

use super::{Buffer, BufferView, Dtype, Gpu, Kernel};
use crate::{Error, Result};

#[derive(Clone, PartialEq, Eq, Hash)]
struct Binding {
    buffer: wgpu::Buffer,
    offset: u64,
    size: u64,
}

/// A bind group is fully determined by the kernel, its uniform slot and its buffer ranges.
/// Training repeats the same dispatches with the same pooled buffers every step, so after the
/// first step every bind group comes from this cache instead of being created again.
#[derive(Clone, PartialEq, Eq, Hash)]
struct GroupKey {
    kernel: usize,
    params_offset: u64,
    params_size: u64,
    bindings: Vec<Binding>,
}

/// Entries kept before the cache starts over (it also holds its buffers alive).
const MAX_CACHED_GROUPS: usize = 16384;

enum Command {
    Dispatch {
        kernel: usize,
        params_offset: u64,
        params_size: u64,
        bindings: Vec<Binding>,
        groups: [u32; 3],
    },
    Copy {
        src: Binding,
        dst: Binding,
    },
    /// Copy from the upload arena at `src_offset` into `dst`.
    Upload {
        src_offset: u64,
        dst: Binding,
    },
}

/// Compute passes one submit can time (two timestamps each, 4096 queries: wgpu's largest query
/// set). While timing, the recorder submits before it reaches this many commands, so every pass
/// is timed.
const MAX_TIMED_PASSES: u32 = 2048;

/// Device-side timing with timestamp queries: while on, every compute pass writes a timestamp
/// at its start and end, and each submit's pass durations are added up. Per kernel, every
/// dispatch gets a pass of its own and the durations are also added up by kernel.
struct PassTimer {
    queries: wgpu::QuerySet,
    resolve: wgpu::Buffer,
    readback: wgpu::Buffer,
    on: bool,
    per_kernel: bool,
    elapsed_ns: f64,
    /// By kernel cache slot: (nanoseconds, launches).
    by_kernel: Vec<(f64, u32)>,
}

/// What a device timer measured.
#[derive(Clone, Debug, Default)]
pub struct DeviceTime {
    /// Seconds in compute passes.
    pub seconds: f64,
    /// Per kernel (label, seconds, launches), longest first; only when timed per kernel.
    pub by_kernel: Vec<(&'static str, f64, u32)>,
}

/// A staging buffer for read-backs that overlap later work (see `Gpu::start_read`).
pub struct ReadBack {
    buffer: wgpu::Buffer,
    /// The submission holding the copies into it and the bytes copied, while one is in flight.
    pending: Option<(Option<u64>, u64)>,
}

/// Flush on our own once this many commands or arena bytes are pending.
const MAX_COMMANDS: usize = 8192;
const MAX_UPLOAD_BYTES: usize = 64 << 20;

pub(super) struct Recorder {
    commands: Vec<Command>,
    params: Vec<u8>,
    uploads: Vec<u8>,
    params_device: Option<wgpu::Buffer>,
    uploads_device: Option<wgpu::Buffer>,
    readback: Option<wgpu::Buffer>,
    uniform_align: u64,
    groups: std::collections::HashMap<GroupKey, wgpu::BindGroup>,
    timer: Option<PassTimer>,
}

fn binding(view: &BufferView) -> Binding {
    Binding { buffer: view.buffer.raw().clone(), offset: view.offset, size: view.size }
}

fn pad_to(v: &mut Vec<u8>, align: u64) -> u64 {
    let at = (v.len() as u64).div_ceil(align) * align;
    v.resize(at as usize, 0);
    at
}

/// A device buffer of at least `len` bytes, reusing `slot` when it is large enough.
fn ensure(gpu: &Gpu, slot: &mut Option<wgpu::Buffer>, len: u64, usage: wgpu::BufferUsages) -> wgpu::Buffer {
    if slot.as_ref().is_none_or(|b| b.size() < len) {
        let size = len.max(1 << 16).next_power_of_two();
        *slot = Some(gpu.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("sasprune arena"),
            size,
            usage,
            mapped_at_creation: false,
        }));
    }
    slot.clone().expect("set above")
}

impl Recorder {
    pub fn new(limits: &wgpu::Limits) -> Self {
        Recorder {
            commands: Vec::new(),
            params: Vec::new(),
            uploads: Vec::new(),
            params_device: None,
            uploads_device: None,
            readback: None,
            uniform_align: limits.min_uniform_buffer_offset_alignment.max(16) as u64,
            groups: std::collections::HashMap::new(),
            timer: None,
        }
    }

    /// Starts device timing (pending work is submitted first, untimed), per kernel when
    /// `per_kernel`. False when the adapter has no timestamp queries.
    pub fn start_timer(&mut self, gpu: &Gpu, per_kernel: bool) -> Result<bool> {
        self.flush(gpu)?;
        if !gpu.device.features().contains(wgpu::Features::TIMESTAMP_QUERY) {
            return Ok(false);
        }
        let timer = self.timer.get_or_insert_with(|| {
            let buffer = |usage| {
                gpu.device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some("sasprune timestamps"),
                    size: 2 * MAX_TIMED_PASSES as u64 * 8,
                    usage,
                    mapped_at_creation: false,
                })
            };
            PassTimer {
                queries: gpu.device.create_query_set(&wgpu::QuerySetDescriptor {
                    label: Some("sasprune pass timer"),
                    ty: wgpu::QueryType::Timestamp,
                    count: 2 * MAX_TIMED_PASSES,
                }),
                resolve: buffer(wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC),
                readback: buffer(wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST),
                on: false,
                per_kernel: false,
                elapsed_ns: 0.0,
                by_kernel: Vec::new(),
            }
        });
        timer.on = true;
        timer.per_kernel = per_kernel;
        timer.elapsed_ns = 0.0;
        timer.by_kernel.clear();
        Ok(true)
    }

    /// Stops device timing: what the device spent in the compute passes submitted since
    /// `start_timer`, or None when timing was not started.
    pub fn stop_timer(&mut self, gpu: &Gpu) -> Result<Option<DeviceTime>> {
        self.flush(gpu)?;
        let kernels = gpu.kernels.lock().unwrap_or_else(|p| p.into_inner());
        Ok(self.timer.as_mut().filter(|t| t.on).map(|t| {
            t.on = false;
            let mut by_kernel: Vec<_> = (t.by_kernel.iter().enumerate())
                .filter(|(_, &(_, n))| n > 0)
                .map(|(slot, &(ns, n))| (kernels.compiled[slot].label, ns * 1e-9, n))
                .collect();
            by_kernel.sort_by(|a, b| b.1.total_cmp(&a.1));
            DeviceTime { seconds: t.elapsed_ns * 1e-9, by_kernel }
        }))
    }

    /// Drops the cached bind groups (and with them their hold on buffers).
    pub fn forget_bind_groups(&mut self) {
        self.groups.clear();
    }

    fn maybe_flush(&mut self, gpu: &Gpu) -> Result<()> {
        let limit = if self.timer.as_ref().is_some_and(|t| t.on) { MAX_TIMED_PASSES as usize } else { MAX_COMMANDS };
        if self.commands.len() >= limit || self.uploads.len() >= MAX_UPLOAD_BYTES {
            self.flush(gpu)?;
        }
        Ok(())
    }

    /// Submits what is recorded; returns the submission's sequence number (None when nothing
    /// was recorded).
    pub fn flush(&mut self, gpu: &Gpu) -> Result<Option<u64>> {
        if self.commands.is_empty() {
            return Ok(None);
        }
        gpu.submissions.refuse_if_hung()?;
        let (params_buf, uploads_buf) = self.stage(gpu);
        let kernels = gpu.kernels.lock().unwrap_or_else(|p| p.into_inner());
        let mut encoder = gpu.device.create_command_encoder(&Default::default());
        let mut commands = std::mem::take(&mut self.commands).into_iter().peekable();
        let timer = self.timer.as_mut().filter(|t| t.on);
        let per_kernel = timer.as_ref().is_some_and(|t| t.per_kernel);
        let mut timed_passes = 0u32;
        let mut pass_kernels = Vec::new();
        while let Some(command) = commands.next() {
            match command {
                Command::Dispatch { .. } => {
                    // (maybe_flush keeps a timed submit within MAX_TIMED_PASSES passes)
                    let timestamp_writes = timer.as_ref().filter(|_| timed_passes < MAX_TIMED_PASSES).map(|t| {
                        timed_passes += 1;
                        wgpu::ComputePassTimestampWrites {
                            query_set: &t.queries,
                            beginning_of_pass_write_index: Some(2 * timed_passes - 2),
                            end_of_pass_write_index: Some(2 * timed_passes - 1),
                        }
                    });
                    let mut pass =
                        encoder.begin_compute_pass(&wgpu::ComputePassDescriptor { label: None, timestamp_writes });
                    // consecutive dispatches share the pass (one each when timed per kernel)
                    let mut next = Some(command);
                    while let Some(Command::Dispatch { kernel, params_offset, params_size, bindings, groups }) = next {
                        let compiled = &kernels.compiled[kernel];
                        let key = GroupKey { kernel, params_offset, params_size, bindings };
                        let group = self
                            .groups
                            .entry(key)
                            .or_insert_with_key(|key| bind_group(gpu, &compiled.layout, &params_buf, key));
                        pass.set_pipeline(&compiled.pipeline);
                        pass.set_bind_group(0, &*group, &[]);
                        pass.dispatch_workgroups(groups[0], groups[1], groups[2]);
                        if per_kernel {
                            pass_kernels.push(kernel);
                            break;
                        }
                        next = if matches!(commands.peek(), Some(Command::Dispatch { .. })) {
                            commands.next()
                        } else {
                            None
                        };
                    }
                }
                Command::Copy { src, dst } => {
                    encoder.copy_buffer_to_buffer(&src.buffer, src.offset, &dst.buffer, dst.offset, Some(src.size));
                }
                Command::Upload { src_offset, dst } => {
                    let src = uploads_buf.as_ref().expect("an upload stages its bytes");
                    encoder.copy_buffer_to_buffer(src, src_offset, &dst.buffer, dst.offset, Some(dst.size));
                }
            }
        }
        drop(kernels);
        let timed_bytes = 2 * timed_passes as u64 * 8;
        if let (Some(t), true) = (&timer, timed_passes > 0) {
            encoder.resolve_query_set(&t.queries, 0..2 * timed_passes, &t.resolve, 0);
            encoder.copy_buffer_to_buffer(&t.resolve, 0, &t.readback, 0, Some(timed_bytes));
        }
        let submission = gpu.submissions.submit(&gpu.queue, encoder.finish());
        self.params.clear();
        self.uploads.clear();
        if let (Some(t), true) = (timer, timed_passes > 0) {
            t.add_times(gpu, timed_bytes, &pass_kernels)?;
        }
        Ok(Some(submission))
    }

    /// Writes the recorded uniforms and uploads into their device arenas (grown when needed;
    /// a new uniform arena drops the cached bind groups, which bind the old one); returns them.
    fn stage(&mut self, gpu: &Gpu) -> (wgpu::Buffer, Option<wgpu::Buffer>) {
        let old_params = self.params_device.clone();
        let params_buf = ensure(
            gpu,
            &mut self.params_device,
            self.params.len() as u64,
            wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
        );
        if old_params.as_ref() != Some(&params_buf) || self.groups.len() > MAX_CACHED_GROUPS {
            self.groups.clear();
        }
        if !self.params.is_empty() {
            gpu.queue.write_buffer(&params_buf, 0, &self.params);
        }
        let uploads_buf = (!self.uploads.is_empty()).then(|| {
            let buf = ensure(
                gpu,
                &mut self.uploads_device,
                self.uploads.len() as u64,
                wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST,
            );
            gpu.queue.write_buffer(&buf, 0, &self.uploads);
            buf
        });
        (params_buf, uploads_buf)
    }
}

/// The bind group of one dispatch: its uniform slice of `params` at binding 0, then its buffers.
fn bind_group(gpu: &Gpu, layout: &wgpu::BindGroupLayout, params: &wgpu::Buffer, key: &GroupKey) -> wgpu::BindGroup {
    let slice = |buffer, offset, size| {
        wgpu::BindingResource::Buffer(wgpu::BufferBinding { buffer, offset, size: std::num::NonZeroU64::new(size) })
    };
    let mut entries =
        vec![wgpu::BindGroupEntry { binding: 0, resource: slice(params, key.params_offset, key.params_size) }];
    for (i, b) in key.bindings.iter().enumerate() {
        entries.push(wgpu::BindGroupEntry { binding: i as u32 + 1, resource: slice(&b.buffer, b.offset, b.size) });
    }
    gpu.device.create_bind_group(&wgpu::BindGroupDescriptor { label: None, layout, entries: &entries })
}

impl PassTimer {
    /// Reads back a submit's pass timestamps (`bytes` of them) and adds the passes' times, per
    /// kernel when each pass held one (`pass_kernels`).
    fn add_times(&mut self, gpu: &Gpu, bytes: u64, pass_kernels: &[usize]) -> Result<()> {
        let ticks: Vec<u64> = bytemuck::pod_collect_to_vec(&gpu.map_and_read(&self.readback, bytes)?);
        let period = gpu.queue.get_timestamp_period() as f64;
        // A pass whose end is not after its start (a driver quirk) counts as zero.
        let passes: Vec<f64> = ticks.chunks(2).map(|p| p[1].saturating_sub(p[0]) as f64 * period).collect();
        self.elapsed_ns += passes.iter().sum::<f64>();
        for (&kernel, ns) in pass_kernels.iter().zip(&passes) {
            if self.by_kernel.len() <= kernel {
                self.by_kernel.resize(kernel + 1, (0.0, 0));
            }
            self.by_kernel[kernel].0 += ns;
            self.by_kernel[kernel].1 += 1;
        }
        Ok(())
    }
}

/// Fault injection for tests, by kernel label: `SASPRUNE_FAULT_SKIP=TEXT` drops every dispatch
/// of a kernel whose label contains TEXT, as a driver that compiles a kernel wrongly and runs
/// nothing would; `SASPRUNE_FAULT_CRASH=TEXT` aborts the process at its first dispatch, as a
/// driver that crashes on it would; `SASPRUNE_FAULT_HANG=TEXT[@N]` makes the device finish no
/// work from the N-th such dispatch on (the first by default: `wait::inject_hang`), as a kernel
/// that never ends would. Returns whether the dispatch is to be dropped.
fn fault_at_dispatch(label: &str) -> bool {
    // read once: this runs at every dispatch
    struct Faults {
        skip: Option<String>,
        crash: Option<String>,
        hang: Option<(String, u64)>,
    }
    static FAULTS: std::sync::OnceLock<Faults> = std::sync::OnceLock::new();
    static HANG_HITS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let faults = FAULTS.get_or_init(|| {
        let var = |name| std::env::var(name).ok().filter(|s: &String| !s.is_empty());
        let hang = var("SASPRUNE_FAULT_HANG").map(|text| match text.rsplit_once('@') {
            Some((kernel, n)) if n.parse::<u64>().is_ok() => (kernel.to_string(), n.parse().unwrap_or(1)),
            _ => (text, 1),
        });
        Faults { skip: var("SASPRUNE_FAULT_SKIP"), crash: var("SASPRUNE_FAULT_CRASH"), hang }
    });
    let hit = |fault: Option<&str>| fault.is_some_and(|text| label.contains(text));
    if hit(faults.crash.as_deref()) {
        std::process::abort();
    }
    if let Some((kernel, nth)) = &faults.hang {
        if hit(Some(kernel)) && HANG_HITS.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1 >= *nth {
            super::wait::inject_hang();
        }
    }
    hit(faults.skip.as_deref())
}

impl Gpu {
    /// Records one dispatch of `kernel` with `params` (a `#[repr(C)]` struct's bytes, bound as the
    /// uniform at binding 0) and `buffers` bound in order at bindings 1, 2, ...
    pub fn dispatch(&self, kernel: &Kernel, params: &[u8], buffers: &[BufferView], groups: [u32; 3]) -> Result<()> {
        let max = self.max_workgroups_per_dim();
        if groups.iter().any(|&g| g > max) {
            return Err(Error::Gpu(format!(
                "{}: dispatch of {groups:?} workgroups exceeds the device limit of {max} per dimension",
                kernel.label
            )));
        }
        let max_binding = self.limits.max_storage_buffer_binding_size;
        if let Some(v) = buffers.iter().find(|v| v.size > max_binding) {
            return Err(Error::Gpu(format!(
                "{}: an operand of {:.1} MiB exceeds this device's limit of {:.1} MiB per storage binding; a smaller \
                 batch helps when it is an activation, a GPU with larger bindings when it is a weight",
                kernel.label,
                v.size as f64 / 1048576.0,
                max_binding as f64 / 1048576.0
            )));
        }
        let types: Vec<Dtype> = buffers.iter().map(|v| v.dtype).collect();
        let slot = self.kernels.lock().unwrap_or_else(|p| p.into_inner()).slot(self, kernel, &types)?;
        if fault_at_dispatch(kernel.label) {
            return Ok(());
        }
        let mut rec = self.lock_recorder();
        let align = rec.uniform_align;
        let params_offset = pad_to(&mut rec.params, align);
        rec.params.extend_from_slice(params);
        let params_size = pad_to(&mut rec.params, 16) - params_offset;
        let bindings = buffers.iter().map(binding).collect();
        rec.commands.push(Command::Dispatch { kernel: slot, params_offset, params_size, bindings, groups });
        rec.maybe_flush(self)
    }

    /// Records a write of `bytes` (length a multiple of 4) into `dst` at `offset`; it takes
    /// effect in order with the recorded dispatches.
    pub fn upload(&self, dst: &Buffer, offset: u64, bytes: &[u8]) -> Result<()> {
        if bytes.is_empty() {
            return Ok(());
        }
        debug_assert!(bytes.len().is_multiple_of(4) && offset.is_multiple_of(4));
        let mut rec = self.lock_recorder();
        if rec.uploads.len() + bytes.len() > MAX_UPLOAD_BYTES {
            // Submit what is recorded first, so the data lands after it; a very large upload
            // then goes straight to the queue (it takes effect before any later command).
            rec.flush(self)?;
            if bytes.len() > MAX_UPLOAD_BYTES {
                self.queue.write_buffer(dst.raw(), offset, bytes);
                return Ok(());
            }
        }
        let src_offset = pad_to(&mut rec.uploads, 4);
        rec.uploads.extend_from_slice(bytes);
        let dst = Binding { buffer: dst.raw().clone(), offset, size: bytes.len() as u64 };
        rec.commands.push(Command::Upload { src_offset, dst });
        rec.maybe_flush(self)
    }

    /// Records a device-side copy of `src` into `dst` (same size).
    pub fn copy(&self, src: BufferView, dst: BufferView) -> Result<()> {
        debug_assert_eq!(src.size, dst.size);
        let mut rec = self.lock_recorder();
        rec.commands.push(Command::Copy { src: binding(&src), dst: binding(&dst) });
        rec.maybe_flush(self)
    }

    /// Submits everything recorded and returns the bytes of `view` once the device has them.
    pub fn read(&self, view: BufferView) -> Result<Vec<u8>> {
        let mut rec = self.lock_recorder();
        let staging =
            ensure(self, &mut rec.readback, view.size, wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST);
        let dst = Binding { buffer: staging.clone(), offset: 0, size: view.size };
        rec.commands.push(Command::Copy { src: binding(&view), dst });
        // The lock stays held until the staging buffer is unmapped: it is shared by all readers.
        rec.flush(self)?;
        self.check_device_error()?;
        // A failed read-back is often the symptom of a lost device: report the cause when known.
        let bytes = self.map_and_read(&staging, view.size).inspect_err(|_| {
            self.submissions.poll(&self.device);
        });
        let bytes = match bytes {
            Ok(b) => b,
            Err(e) => {
                self.check_device_error()?;
                return Err(e);
            }
        };
        drop(rec);
        self.check_device_error()?;
        Ok(bytes)
    }

    /// A staging buffer of `bytes` for [`Self::start_read`] / [`Self::finish_read`]; callers keep
    /// it (two, alternating) for a whole loop, so no step allocates.
    pub fn read_back(&self, bytes: u64) -> ReadBack {
        let buffer = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("read-back"),
            size: bytes.max(4).div_ceil(4) * 4,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        ReadBack { buffer, pending: None }
    }

    /// Submits everything recorded plus copies of `views`, packed in order, into `into`, and
    /// returns at once: the device goes on with later work while the host waits for this one
    /// (how evaluation reads a batch's results while the next batch runs).
    pub fn start_read(&self, views: &[BufferView], into: &mut ReadBack) -> Result<()> {
        let total: u64 = views.iter().map(|v| v.size).sum();
        if into.pending.is_some() || total > into.buffer.size() {
            return Err(Error::Gpu(format!(
                "read-back of {total} bytes into a staging buffer of {} bytes that is {}",
                into.buffer.size(),
                if into.pending.is_some() { "still in use" } else { "too small" }
            )));
        }
        let mut rec = self.lock_recorder();
        let mut offset = 0;
        for v in views {
            let dst = Binding { buffer: into.buffer.clone(), offset, size: v.size };
            rec.commands.push(Command::Copy { src: binding(v), dst });
            offset += v.size;
        }
        let submission = rec.flush(self)?;
        into.pending = Some((submission, total));
        drop(rec);
        self.check_device_error()
    }

    /// The bytes [`Self::start_read`] asked for, once the device has them (work submitted after
    /// them may still run).
    pub fn finish_read(&self, from: &mut ReadBack) -> Result<Vec<u8>> {
        let Some((submission, size)) = from.pending.take() else {
            return Err(Error::Gpu("finish_read without start_read".into()));
        };
        let bytes = self.map_and_read_after(&from.buffer, size, submission);
        self.check_device_error()?;
        bytes
    }

    /// Waits for the device, then copies the first `size` bytes of a MAP_READ buffer.
    fn map_and_read(&self, staging: &wgpu::Buffer, size: u64) -> Result<Vec<u8>> {
        self.map_and_read_after(staging, size, None)
    }

    /// [`Self::map_and_read`] that waits only for `submission` (all work when None).
    fn map_and_read_after(&self, staging: &wgpu::Buffer, size: u64, submission: Option<u64>) -> Result<Vec<u8>> {
        let slice = staging.slice(0..size);
        let (tx, rx) = std::sync::mpsc::channel();
        slice.map_async(wgpu::MapMode::Read, move |r| {
            let _ = tx.send(r);
        });
        self.submissions.wait(&self.device, submission)?;
        match rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(Error::Gpu(format!("reading back from the device failed: {e}"))),
            Err(_) => return Err(Error::Gpu("reading back from the device never completed".into())),
        }
        let bytes = slice
            .get_mapped_range()
            .map_err(|e| Error::Gpu(format!("reading back from the device failed: {e}")))?
            .to_vec();
        staging.unmap();
        Ok(bytes)
    }
}
