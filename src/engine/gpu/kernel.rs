//! Compute kernels: a WGSL source (optionally one `//#section NAME` of an op family's file, with
//! a shared prelude such as the tiled GEMM engine; a part headed `//#section A B ...` belongs to
//! each section it names) and an entry point. Each is compiled once, on
//! first use, and cached for the life of the process. Shapes never enter the shader text: they
//! travel in each dispatch's uniform parameters.
//!
//! Element types do, in one way: a binding that may hold either f32 or f16 data (activations,
//! under mixed precision) is declared `array<tN>` for binding N, and the kernel is compiled once
//! per combination of types it is launched with, `tN` set to the bound tensor's type. Its code
//! reads through `f32(...)` and stores through `tN(...)`, so it computes in f32 either way, and
//! the all-f32 variant is the same computation as a kernel written with `f32` throughout.

use super::{Dtype, Gpu};
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
    /// When set, only the text before the first `//#section` line plus this section is used
    /// (every part whose `//#section` line names it, in the file's order).
    pub section: Option<&'static str>,
    pub entry: &'static str,
}

/// Threads per workgroup of the 1-D kernels (element-wise, reductions, batch norm, the ADMM
/// updates, ...): defined here once, and given to every shader as `WG` (see [`Kernel::wgsl`]);
/// the ops size their launches with the same value.
pub const WG: usize = 256;

/// `round_to_f16`, which every shader gets beside `WG`: fused kernels round an intermediate as
/// the separate ops' f16 store would.
const F16_ROUND: &str = include_str!("../../../shaders/f16_round.wgsl");

impl Kernel {
    /// The WGSL text this kernel compiles for bindings whose types are `types` (binding N at
    /// index N - 1): the global directives (the f16 extension where a binding is f16, and those
    /// the preludes need, e.g. the cooperative-matrix engine's), the binding types `t1`, `t2`,
    /// ..., the settings and helpers every shader shares (`WG`, `round_to_f16`), the rest of the preludes, then its source
    /// (or its section).
    pub fn wgsl(&self, types: &[Dtype]) -> String {
        // WGSL wants its directives before any declaration, each once
        let is_directive = |l: &&str| l.starts_with("enable ") || l.starts_with("diagnostic(");
        let mut directives: Vec<&str> = Vec::new();
        if types.contains(&Dtype::F16) {
            directives.push("enable f16;");
        }
        for line in self.prelude.iter().flat_map(|p| p.lines()).filter(is_directive) {
            if !directives.contains(&line) {
                directives.push(line);
            }
        }
        let mut text = String::new();
        for d in directives {
            text.push_str(d);
            text.push('\n');
        }
        for n in 1..=MAX_BINDINGS {
            let dtype = types.get(n - 1).copied().unwrap_or_default();
            text.push_str(&format!("alias t{n} = {};\n", dtype.wgsl()));
        }
        text.push_str(&format!("const WG: u32 = {WG}u;\n"));
        text.push_str(F16_ROUND);
        for part in self.prelude {
            for line in part.lines().filter(|l| !is_directive(l)) {
                text.push_str(line);
                text.push('\n');
            }
        }
        match self.section {
            None => text.push_str(self.source),
            Some(name) => {
                let mut parts = self.source.split("//#section ");
                text.push_str(parts.next().unwrap_or(""));
                // A part runs from its `//#section NAME ...` line to the next one; it belongs to
                // every section its line names (e.g. an epilogue that several kernels share):
                // every word on that line is a section name.
                let bodies: Vec<&str> = parts
                    .filter_map(|p| p.split_once('\n'))
                    .filter(|(head, _)| head.split_whitespace().any(|h| h == name))
                    .map(|(_, body)| body)
                    .collect();
                if bodies.is_empty() {
                    panic!("{}: shader has no section {name}", self.label);
                }
                bodies.iter().for_each(|body| text.push_str(body));
            }
        }
        text
    }

    /// Checks that every f16 binding of `types` is declared with its binding type (`array<tN>`)
    /// in this kernel's text: an f16 tensor bound where the kernel reads f32 is a bug, named here
    /// instead of read wrongly.
    fn check_types(&self, text: &str, types: &[Dtype]) -> Result<()> {
        for (i, _) in types.iter().enumerate().filter(|(_, &t)| t == Dtype::F16) {
            let declared = format!("@binding({}) var<storage, read> ", i + 1);
            let declared_rw = format!("@binding({}) var<storage, read_write> ", i + 1);
            let typed = format!(": array<t{}>;", i + 1);
            let ok = text.lines().any(|l| (l.contains(&declared) || l.contains(&declared_rw)) && l.contains(&typed));
            if !ok {
                return Err(Error::Gpu(format!(
                    "kernel {} was given f16 data at binding {}, which it reads as f32 only (mixed precision \
                     does not cover this op)",
                    self.label,
                    i + 1
                )));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
impl Kernel {
    /// Compiles this kernel's text for `types` as wgpu's Vulkan backend would, without a device:
    /// naga parses and validates it (every capability allowed) and writes SPIR-V 1.4. The check
    /// of variants the local driver cannot run, such as the 16x16 cooperative-matrix tiles.
    pub(crate) fn compile_offline(&self, types: &[Dtype]) -> std::result::Result<(), String> {
        use naga::back::spv;
        use naga::valid::{Capabilities, ValidationFlags, Validator};
        let text = self.wgsl(types);
        let module = naga::front::wgsl::parse_str(&text).map_err(|e| e.emit_to_string(&text))?;
        let info = Validator::new(ValidationFlags::all(), Capabilities::all())
            .validate(&module)
            .map_err(|e| e.emit_to_string(&text))?;
        let options = spv::Options { lang_version: (1, 4), ..Default::default() };
        let pipeline =
            spv::PipelineOptions { shader_stage: naga::ShaderStage::Compute, entry_point: self.entry.into() };
        spv::write_vec(&module, &info, &options, Some(&pipeline)).map_err(|e| format!("SPIR-V: {e}"))?;
        Ok(())
    }

    /// Bytes of workgroup memory this kernel's text declares for `types`: the sizes of its
    /// `var<workgroup>` globals in naga's layout, each rounded up to 16 bytes as WebGPU counts
    /// them (and Metal allocates them). wgpu does not compare them with the device's limit, so
    /// the plans that choose tiles do (`Tile::workgroup_bytes`); this is their check.
    pub(crate) fn workgroup_bytes_offline(&self, types: &[Dtype]) -> std::result::Result<u32, String> {
        let text = self.wgsl(types);
        let module = naga::front::wgsl::parse_str(&text).map_err(|e| e.emit_to_string(&text))?;
        let mut layouter = naga::proc::Layouter::default();
        layouter.update(module.to_ctx()).map_err(|e| format!("{e:?}"))?;
        Ok((module.global_variables.iter())
            .filter(|(_, v)| v.space == naga::AddressSpace::WorkGroup)
            .map(|(_, v)| layouter[v.ty].size.next_multiple_of(16))
            .sum())
    }
}

/// Bindings a kernel may have besides its uniform (binding 0).
const MAX_BINDINGS: usize = 12;

/// The variant of a kernel for the types of its bindings: bit N - 1 set where binding N is f16.
fn f16_mask(types: &[Dtype]) -> u32 {
    types.iter().enumerate().filter(|(_, &t)| t == Dtype::F16).fold(0, |m, (i, _)| m | 1 << i)
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
    /// The kernel's label, with `.f16` appended for variants that bind f16 data.
    pub label: &'static str,
    pub pipeline: wgpu::ComputePipeline,
    pub layout: wgpu::BindGroupLayout,
}

#[derive(Default)]
pub(super) struct KernelCache {
    index: HashMap<(&'static str, u32), usize>,
    pub compiled: Vec<Compiled>,
}

impl KernelCache {
    /// The cache slot of `kernel`'s variant for bindings of `types`, compiling it the first time.
    pub fn slot(&mut self, gpu: &Gpu, kernel: &Kernel, types: &[Dtype]) -> Result<usize> {
        let mask = f16_mask(types);
        if let Some(&i) = self.index.get(&(kernel.label, mask)) {
            return Ok(i);
        }
        if mask != 0 && !gpu.adapter.shader_f16 {
            return Err(Error::Gpu(format!(
                "{} has no f16 shader support (wgpu's SHADER_F16), which mixed precision needs; use --precision f32",
                gpu.adapter.name
            )));
        }
        if types.len() > MAX_BINDINGS {
            return Err(Error::Gpu(format!("kernel {}: more than {MAX_BINDINGS} bindings", kernel.label)));
        }
        let source = kernel.wgsl(types);
        kernel.check_types(&source, types)?;
        if let Some(fault) = std::env::var("SASPRUNE_FAULT_KERNEL").ok().filter(|f| !f.is_empty()) {
            // fault injection for tests: a driver that rejects this kernel
            if kernel.label.contains(&fault) {
                return Err(Error::Gpu(format!(
                    "kernel {} failed to compile: SASPRUNE_FAULT_KERNEL={fault} rejects it",
                    kernel.label
                )));
            }
        }
        // a variant's label names it in profiles; one leaked string per compiled variant
        let label: &'static str =
            if mask == 0 { kernel.label } else { Box::leak(format!("{}.f16", kernel.label).into_boxed_str()) };
        let scope = gpu.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let desc = wgpu::ShaderModuleDescriptor { label: Some(label), source: wgpu::ShaderSource::Wgsl(source.into()) };
        // SAFETY: every kernel is this crate's own, tested against the f64 reference on odd
        // shapes, and guards its loads and stores by the sizes it is given. What is dropped
        // (see `ShaderChecks`) are wgpu's injected loop counters and division guards, which cost
        // the big GPUs a large share of their speed (gfx-rs/wgpu#7698); buffer bounds checks
        // stay on unless the user turns them off.
        let module = unsafe { gpu.device.create_shader_module_trusted(desc, gpu.shader_checks.runtime_checks()) };
        let pipeline = gpu.device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some(label),
            layout: None,
            module: &module,
            entry_point: Some(kernel.entry),
            compilation_options: Default::default(),
            cache: None,
        });
        if let Some(e) = pollster::block_on(scope.pop()) {
            return Err(Error::Gpu(format!("kernel {label} failed to compile: {e}")));
        }
        let layout = pipeline.get_bind_group_layout(0);
        self.compiled.push(Compiled { label, pipeline, layout });
        self.index.insert((kernel.label, mask), self.compiled.len() - 1);
        Ok(self.compiled.len() - 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_section_takes_every_part_that_names_it_in_file_order() {
        let source = "common\n//#section a\nonly a\n//#section a b\nshared\n//#section b\nonly b\n";
        let kernel = |section| Kernel { label: "t", prelude: &[], source, section: Some(section), entry: "e" };
        let body = |section| kernel(section).wgsl(&[]).split_once(F16_ROUND).unwrap().1.to_string();
        assert_eq!(body("a"), "common\nonly a\nshared\n");
        assert_eq!(body("b"), "common\nshared\nonly b\n");
    }
}
