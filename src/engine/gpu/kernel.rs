//! Compute kernels: a WGSL source (optionally one `//#section NAME` of an op family's file, with
//! a shared prelude such as the tiled GEMM engine) and an entry point. Each is compiled once, on
//! first use, and cached for the life of the process. Shapes never enter the shader text: they
//! travel in each dispatch's uniform parameters.

use super::Gpu;
use crate::{Error, Result};
use std::collections::HashMap;

/// A kernel as ops declare it, usually as a `static`.
pub struct Kernel {
    /// Unique name, also the cache key, e.g. `"conv2d.forward"`.
    pub label: &'static str,
    /// Texts placed before the op family's source (e.g. a tile setting and the tiled GEMM engine).
    pub prelude: &'static [&'static str],
    /// The op family's WGSL file.
    pub source: &'static str,
    /// When set, only the text before the first `//#section` line plus this section is used.
    pub section: Option<&'static str>,
    pub entry: &'static str,
}

/// Threads per workgroup of the 1-D kernels (element-wise, reductions, batch norm, the ADMM
/// updates, ...): defined here once, and given to every shader as `WG` (see [`Kernel::wgsl`]);
/// the ops size their launches with the same value.
pub const WG: usize = 256;

impl Kernel {
    /// The WGSL text this kernel compiles: the settings every shader shares (`WG`), the preludes,
    /// then its source (or its section of the source).
    pub fn wgsl(&self) -> String {
        let mut text = format!("const WG: u32 = {WG}u;\n");
        for part in self.prelude {
            text.push_str(part);
            text.push('\n');
        }
        match self.section {
            None => text.push_str(self.source),
            Some(name) => {
                let mut parts = self.source.split("//#section ");
                text.push_str(parts.next().unwrap_or(""));
                // A section runs from its `//#section NAME` line to the next one.
                let body = parts
                    .find_map(|p| p.split_once('\n').filter(|(head, _)| head.trim() == name))
                    .map(|(_, body)| body);
                text.push_str(body.unwrap_or_else(|| panic!("{}: shader has no section {name}", self.label)));
            }
        }
        text
    }
}

/// Which of wgpu's runtime checks the compiled kernels keep (env `SASPRUNE_SHADER_CHECKS`):
/// `bounds` (buffer bounds checks only), `all` (wgpu's defaults: also loop bounding and guarded
/// integer division) or `none`. The default is `bounds`, except on the GL backend, where Mesa's
/// GLSL path ran the GEMM kernels ~1000x slower without wgpu's loop bounding (measured on
/// llvmpipe), so GL keeps `all`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ShaderChecks {
    Bounds,
    All,
    None,
}

impl ShaderChecks {
    pub fn from_env(backend: &str) -> Result<Self> {
        match std::env::var("SASPRUNE_SHADER_CHECKS").unwrap_or_default().trim().to_ascii_lowercase().as_str() {
            "" if backend == "Gl" => Ok(ShaderChecks::All),
            "" | "bounds" => Ok(ShaderChecks::Bounds),
            "all" => Ok(ShaderChecks::All),
            "none" => Ok(ShaderChecks::None),
            other => Err(Error::invalid(format!(
                "SASPRUNE_SHADER_CHECKS={other} is not understood: use bounds (default), all or none"
            ))),
        }
    }

    fn runtime_checks(self) -> wgpu::ShaderRuntimeChecks {
        match self {
            ShaderChecks::All => wgpu::ShaderRuntimeChecks::checked(),
            ShaderChecks::Bounds => {
                let mut checks = wgpu::ShaderRuntimeChecks::unchecked();
                checks.bounds_checks = true;
                checks
            }
            ShaderChecks::None => wgpu::ShaderRuntimeChecks::unchecked(),
        }
    }
}

pub(super) struct Compiled {
    pub label: &'static str,
    pub pipeline: wgpu::ComputePipeline,
    pub layout: wgpu::BindGroupLayout,
}

#[derive(Default)]
pub(super) struct KernelCache {
    index: HashMap<&'static str, usize>,
    pub compiled: Vec<Compiled>,
}

impl KernelCache {
    /// The cache slot of `kernel`, compiling it the first time.
    pub fn slot(&mut self, gpu: &Gpu, kernel: &Kernel) -> Result<usize> {
        if let Some(&i) = self.index.get(kernel.label) {
            return Ok(i);
        }
        let scope = gpu.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let desc = wgpu::ShaderModuleDescriptor {
            label: Some(kernel.label),
            source: wgpu::ShaderSource::Wgsl(kernel.wgsl().into()),
        };
        // SAFETY: every kernel is this crate's own, tested against the f64 reference on odd
        // shapes, and guards its loads and stores by the sizes it is given. What is dropped
        // (see `ShaderChecks`) are wgpu's injected loop counters and division guards, which cost
        // the big GPUs a large share of their speed (gfx-rs/wgpu#7698); buffer bounds checks
        // stay on unless the user turns them off.
        let module = unsafe { gpu.device.create_shader_module_trusted(desc, gpu.shader_checks.runtime_checks()) };
        let pipeline = gpu.device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some(kernel.label),
            layout: None,
            module: &module,
            entry_point: Some(kernel.entry),
            compilation_options: Default::default(),
            cache: None,
        });
        if let Some(e) = pollster::block_on(scope.pop()) {
            return Err(Error::Gpu(format!("kernel {} failed to compile: {e}", kernel.label)));
        }
        let layout = pipeline.get_bind_group_layout(0);
        self.compiled.push(Compiled { label: kernel.label, pipeline, layout });
        self.index.insert(kernel.label, self.compiled.len() - 1);
        Ok(self.compiled.len() - 1)
    }
}
