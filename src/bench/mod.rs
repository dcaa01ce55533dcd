//! The cross-vendor benchmark behind `sasprune bench` and `cargo bench`: every kernel family
//! and whole training / evaluation steps, timed after a warm-up as the median of several runs
//! (kernels on the device with timestamp queries where the adapter has them, otherwise host
//! time around submit + wait; whole steps on the host), printed as a table and appended as JSON
//! lines that carry the adapter, how it was timed, crate version and git commit, so results
//! from different machines merge. `table` puts such lines (and a peer's, benches/peers/) side by
//! side.

pub mod table;

use crate::gpu::{self, Dtype};
use crate::models::{Model, Pass};
use crate::ops::{admm, batchnorm, conv2d, elementwise, loss, matmul, sgd};
use crate::{Error, Result, Tensor};
use std::io::Write;
use std::path::Path;
use std::time::Instant;

/// One benchmark result: `work` units per run, so the rate is `work / seconds` in `unit`.
#[derive(Clone, Debug)]
pub struct Measurement {
    pub name: String,
    pub seconds: f64,
    pub work: f64,
    /// "GFLOP/s" (work in GFLOP), "GB/s" (work in GB) or "images/s" (work in images).
    pub unit: &'static str,
    /// How it was timed ([`DEVICE_TIMING`] or [`HOST_TIMING`]).
    pub timing: &'static str,
    /// Extra fields for the JSON line.
    pub extra: Vec<(&'static str, serde_json::Value)>,
}

impl Measurement {
    pub fn rate(&self) -> f64 {
        self.work / self.seconds
    }
}

/// How a measurement was timed (recorded in its JSON line).
pub const DEVICE_TIMING: &str = "device, timestamp queries around each compute pass, median";
pub const HOST_TIMING: &str = "host, submit + wait, median";
/// Whole steps are timed on the host: what a user waits for, host work included.
pub const STEP_TIMING: &str = "host, consecutive steps (one submit each) then one wait";

/// Median time of `runs` runs of `f` (after one warm-up run) and how it was timed: on the
/// device with timestamp queries when the adapter has them (the kernels' own time, without
/// submit and wake-up latency), otherwise on the host around the run and a full device wait.
pub fn time_median(runs: usize, mut f: impl FnMut() -> Result<()>) -> Result<(f64, &'static str)> {
    let gpu = gpu::get()?;
    let start = Instant::now();
    f()?;
    gpu.synchronize()?;
    if start.elapsed() < CLOCK_WARM_UP {
        keep_busy(&mut f)?;
    }
    let mut times = Vec::with_capacity(runs);
    for _ in 0..runs.max(1) {
        let start = Instant::now();
        let timed = gpu.start_device_timer(false)?;
        f()?;
        let device = if timed { gpu.stop_device_timer()?.map(|d| d.seconds) } else { None };
        gpu.synchronize()?;
        times.push(device.unwrap_or_else(|| start.elapsed().as_secs_f64()));
    }
    times.sort_by(f64::total_cmp);
    let timing = if gpu.adapter.timestamp_queries { DEVICE_TIMING } else { HOST_TIMING };
    Ok((times[times.len() / 2], timing))
}

/// How long to keep a fast device busy before timing it. GPUs lower their clocks within a second
/// of light load: an H200 went from 1,980 to ~600 MHz (reason "idle") while the bench generated
/// test data on the host, and short kernels timed right after ran 2-3x slow. A sustained
/// workload such as training never sees that clock, so neither should the bench.
const CLOCK_WARM_UP: std::time::Duration = std::time::Duration::from_millis(250);

/// Runs `f` back to back for [`CLOCK_WARM_UP`] (waiting every 8 runs, so the queue stays short).
fn keep_busy(f: &mut impl FnMut() -> Result<()>) -> Result<()> {
    crate::tune::keep_busy_for(CLOCK_WARM_UP, f)
}

fn random(shape: &[usize], seed: u64) -> Result<Tensor> {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let data: Vec<f32> = (0..crate::tensor::numel(shape)).map(|_| rng.random_range(-1.0..1.0)).collect();
    Tensor::from_slice(&data, shape)
}

/// The convolution shapes of ResNet-32 at `batch` (one per distinct layer geometry).
pub fn resnet32_conv_shapes(batch: usize) -> Vec<(&'static str, conv2d::ConvGeom)> {
    let g = |c_in, h, c_out, stride| conv2d::ConvGeom { n: batch, c_in, h, w: h, c_out, kh: 3, kw: 3, stride, pad: 1 };
    vec![
        ("conv 3->16 32px", g(3, 32, 16, 1)),
        ("conv 16->16 32px", g(16, 32, 16, 1)),
        ("conv 16->32 32px/2", g(16, 32, 32, 2)),
        ("conv 32->32 16px", g(32, 16, 32, 1)),
        ("conv 32->64 16px/2", g(32, 16, 64, 2)),
        ("conv 64->64 8px", g(64, 8, 64, 1)),
    ]
}

/// What to run.
#[derive(Clone, Debug, Default)]
pub struct BenchConfig {
    pub quick: bool,
    /// Only measurements whose name contains this text.
    pub filter: Option<String>,
    /// A compact (filter-pruned) model's weights (`compact.safetensors`): its training steps
    /// and evaluation are measured beside those of the dense model it came from.
    pub compact: Option<std::path::PathBuf>,
}

impl BenchConfig {
    fn wants(&self, name: &str) -> bool {
        self.filter.as_ref().is_none_or(|f| name.contains(f.as_str()))
    }
}

/// Runs the benchmark; `report` gets each measurement as soon as it exists. One function per
/// family, in the order the table prints them.
pub fn run(cfg: &BenchConfig, mut report: impl FnMut(&Measurement) -> Result<()>) -> Result<()> {
    let b = Bench::new(cfg)?;
    let emit: &mut Emit = &mut |m| report(&m);
    b.gemm(emit)?;
    b.convolutions(emit)?;
    b.batch_norm(emit)?;
    b.memory_bound(emit)?;
    b.whole_steps(emit)?;
    b.evaluation_at_eval_batch(emit)?;
    print_tuner_choices();
    Ok(())
}

/// Where each measurement goes.
type Emit<'a> = dyn FnMut(Measurement) -> Result<()> + 'a;

/// The sizes one bench run uses: a step takes seconds on a software driver and milliseconds on
/// a GPU, so a GPU gets more runs and steps (and GEMM 4096³, 137 GFLOP: milliseconds there,
/// minutes on a CPU).
struct Bench<'a> {
    cfg: &'a BenchConfig,
    gemm_sizes: Vec<usize>,
    /// The batch of the kernel measurements.
    batch: usize,
    /// Timed runs per kernel (the median is reported).
    runs: usize,
    step_batch: usize,
    steps: usize,
}

/// Something the bench times: records one run of the work.
type Run<'a> = &'a dyn Fn() -> Result<()>;

fn gflop(macs: usize) -> f64 {
    2.0 * macs as f64 / 1e9
}

impl Bench<'_> {
    fn new(cfg: &BenchConfig) -> Result<Bench<'_>> {
        let gpu_adapter = !gpu::get()?.adapter.is_cpu();
        let (gemm, batch, runs, step_batch, steps) = match (cfg.quick, gpu_adapter) {
            (true, _) => (256, 16, 3, 16, 2),
            (false, false) => (1024, 128, 5, 128, 5),
            (false, true) => (1024, 128, 9, 128, 30),
        };
        let gemm_sizes = if !cfg.quick && gpu_adapter { vec![gemm, 4096] } else { vec![gemm] };
        Ok(Bench { cfg, gemm_sizes, batch, runs, step_batch, steps })
    }

    /// Square GEMMs in f32 and, where the adapter has cooperative matrices that fit a tile
    /// (tensor cores), in f16 (mixed precision's products) on each such tile and on the plan
    /// chosen for f16 operands.
    fn gemm(&self, emit: &mut Emit) -> Result<()> {
        let coop = matmul::cooperative_tiles()?;
        for &s in &self.gemm_sizes {
            let name = format!("gemm {s}x{s}x{s}");
            let f16_name = |tile: Option<usize>| {
                format!("{name} f16{}", tile.map_or(String::new(), |t| format!(" {}", matmul::tile_name(t))))
            };
            let mut rows: Vec<(String, Option<usize>, Dtype)> = vec![(name.clone(), None, Dtype::F32)];
            if !coop.is_empty() {
                rows.push((f16_name(None), None, Dtype::F16));
                rows.extend(coop.iter().map(|&t| (f16_name(Some(t)), Some(t), Dtype::F16)));
            }
            for (name, tile, dtype) in rows.into_iter().filter(|(n, ..)| self.cfg.wants(n)) {
                let (a, b) = (random(&[s, s], 1)?, random(&[s, s], 2)?);
                let (a, b) = (elementwise::cast(&a, dtype)?, elementwise::cast(&b, dtype)?);
                let product = || matmul::gemm(&a, &b, None, s, s, s, false, false).map(drop);
                let run = || match tile {
                    Some(t) => matmul::with_plan(t, 1, product),
                    None => product(),
                };
                let (seconds, timing) = time_median(self.runs, run)?;
                emit(Measurement { name, seconds, work: gflop(s * s * s), unit: "GFLOP/s", timing, extra: vec![] })?;
            }
        }
        Ok(())
    }

    /// Forward, grad-input and grad-weight of each of ResNet-32's convolution geometries.
    fn convolutions(&self, emit: &mut Emit) -> Result<()> {
        let batch = self.batch;
        for (label, g) in resnet32_conv_shapes(batch) {
            let names = ["forward", "grad-input", "grad-weight"].map(|k| format!("{label} b{batch} {k}"));
            // Winograd F(2x2, 3x3) forced on the forward and grad-input where it fits (stride 1),
            // beside the plans chosen for the three (GFLOP/s count the direct form's
            // multiply-adds, so the rows compare as times)
            let winograd = conv2d::winograd_fits(&g).then(|| [0, 1].map(|i| format!("{} winograd", names[i])));
            if !names.iter().chain(winograd.iter().flatten()).any(|n| self.cfg.wants(n)) {
                continue;
            }
            let x = random(&[g.n, g.c_in, g.h, g.w], 3)?;
            let w = random(&[g.c_out, g.c_in, g.kh, g.kw], 4)?;
            let dy = random(&[g.n, g.c_out, g.out_h(), g.out_w()], 5)?;
            // The same GEMM as (M, N, K), so conv results compare with GEMM results.
            let gemm_shape = format!("{}x{}x{}", g.c_out, g.n * g.out_h() * g.out_w(), g.c_in * g.kh * g.kw);
            let kernels: [Run; 3] = [
                &|| conv2d::conv2d_forward(&x, &w, None, &g).map(drop),
                &|| conv2d::conv2d_grad_input(&dy, &w, &g).map(drop),
                &|| conv2d::conv2d_grad_weight(&dy, &x, &g).map(drop),
            ];
            let mut rows: Vec<(String, Run, bool)> =
                names.into_iter().zip(kernels).map(|(name, f)| (name, f, false)).collect();
            rows.extend(winograd.into_iter().flatten().zip(kernels).map(|(name, f)| (name, f, true)));
            for (name, f, winograd) in rows {
                if self.cfg.wants(&name) {
                    let run = || if winograd { matmul::with_plan(matmul::WINOGRAD, 1, f) } else { f() };
                    let (seconds, timing) = time_median(self.runs, run)?;
                    emit(Measurement {
                        name,
                        seconds,
                        work: gflop(g.macs()),
                        unit: "GFLOP/s",
                        timing,
                        extra: vec![("gemm_mnk", serde_json::json!(gemm_shape))],
                    })?;
                }
            }
        }
        Ok(())
    }

    /// ResNet-32's stage-2 shape at the bench batch, and (full runs) its largest activation at
    /// eval's batch 500, where bandwidth rather than launch latency decides. Each also with the
    /// per-channel sums combined the other way than this run's setting (the device's default, or
    /// `SASPRUNE_BN_FINALIZE`'s; `finalize separate`: by their own kernels, a launch more each
    /// way; `finalize folded`: in normalize and backward_input), to show what the choice gains.
    fn batch_norm(&self, emit: &mut Emit) -> Result<()> {
        let batch = self.batch;
        let shapes = if self.cfg.quick { vec![(batch, 32, 16)] } else { vec![(batch, 32, 16), (500, 16, 32)] };
        let default = batchnorm::folded_finalize()?;
        for ((n, c, side), folded) in shapes.into_iter().flat_map(|s| [(s, default), (s, !default)]) {
            let other = match (folded == default, folded) {
                (true, _) => "",
                (false, true) => " finalize folded",
                (false, false) => " finalize separate",
            };
            let shape = format!("b{n} {c}x{side}x{side}{other}");
            let names = [format!("batchnorm forward {shape}"), format!("batchnorm backward {shape}")];
            if !names.iter().any(|n| self.cfg.wants(n)) {
                continue;
            }
            let x = random(&[n, c, side, side], 6)?.with_grad();
            let (gamma, beta) = (Tensor::full(&[c], 1.0)?.with_grad(), Tensor::zeros(&[c])?.with_grad());
            let (rm, rv) = (Tensor::zeros(&[c])?, Tensor::full(&[c], 1.0)?);
            let bytes = (n * c * side * side * 4) as f64 / 1e9;
            let cfg_bn = batchnorm::BatchNormConfig::default();
            let time =
                |f: &dyn Fn() -> Result<()>| time_median(self.runs, || batchnorm::with_folded_finalize(folded, f));
            if self.cfg.wants(&names[0]) {
                // reads x twice (statistics, normalize) and writes y
                let (seconds, timing) = time(&|| {
                    crate::autograd::no_grad(|| batchnorm::batch_norm(&x, &gamma, &beta, &rm, &rv, cfg_bn).map(drop))
                })?;
                emit(Measurement {
                    name: names[0].clone(),
                    seconds,
                    work: 3.0 * bytes,
                    unit: "GB/s",
                    timing,
                    extra: vec![],
                })?;
            }
            if self.cfg.wants(&names[1]) {
                let dy = random(&[n, c, side, side], 7)?;
                // reads dy and x twice (reductions, input gradient) and writes dx
                let (seconds, timing) = time(&|| {
                    let y = batchnorm::batch_norm(&x, &gamma, &beta, &rm, &rv, cfg_bn)?;
                    y.backward_with(dy.clone())
                })?;
                emit(Measurement {
                    name: names[1].clone(),
                    seconds,
                    work: 8.0 * bytes,
                    unit: "GB/s",
                    timing,
                    extra: vec![("includes", "forward".into())],
                })?;
            }
        }
        Ok(())
    }

    /// The kernels that read and write arrays once: an element-wise copy-like kernel (the
    /// reference for the others), softmax cross-entropy, the fused SGD and SAS-ADMM updates.
    fn memory_bound(&self, emit: &mut Emit) -> Result<()> {
        let (cfg, runs, batch) = (self.cfg, self.runs, self.batch);
        let gb = |arrays: f64, len: usize| arrays * 4.0 * len as f64 / 1e9;
        let len = copy_like_len(cfg.quick, gpu::get()?.adapter.max_storage_binding);
        let name = format!("elementwise scale {}M", len >> 20);
        if cfg.wants(&name) {
            let x = Tensor::full(&[len], 1.0)?;
            let (seconds, timing) = time_median(runs, || crate::ops::elementwise::scale(&x, 0.5).map(drop))?;
            emit(Measurement { name, seconds, work: gb(2.0, len), unit: "GB/s", timing, extra: vec![] })?;
        }
        let name = format!("softmax cross-entropy b{batch} x1000");
        if cfg.wants(&name) {
            let logits = random(&[batch, 1000], 8)?.with_grad();
            let labels = Tensor::from_slice(&(0..batch).map(|i| (i * 7 % 1000) as f32).collect::<Vec<_>>(), &[batch])?;
            let (seconds, timing) = time_median(runs, || loss::cross_entropy(&logits, &labels)?.backward())?;
            emit(Measurement {
                name,
                seconds,
                work: gb(4.0, batch * 1000),
                unit: "GB/s",
                timing,
                extra: vec![("includes", "forward and backward".into())],
            })?;
        }
        let len = if cfg.quick { 1 << 20 } else { 464_154 * 8 };
        let name = format!("fused sgd update {len}");
        if cfg.wants(&name) {
            let (w, g, b, m) =
                (random(&[len], 9)?, random(&[len], 10)?, Tensor::zeros(&[len])?, Tensor::full(&[len], 1.0)?);
            let s = sgd::SgdConfig { lr: 0.01, momentum: 0.9, weight_decay: 1e-4, nesterov: true };
            let (seconds, timing) = time_median(runs, || sgd::sgd_step(&w, &g, &b, Some(&m), &s, None))?;
            // reads w, grad, buf, mask; writes w, buf
            emit(Measurement { name, seconds, work: gb(6.0, len), unit: "GB/s", timing, extra: vec![] })?;
        }
        let name = format!("fused sas-admm inner update {len}");
        if cfg.wants(&name) {
            let t: Vec<Tensor> = (0..5).map(|i| random(&[len], 11 + i)).collect::<Result<_>>()?;
            let (seconds, timing) =
                time_median(runs, || admm::sas_inner(&t[0], &t[1], &t[2], &t[3], &t[4], 12.5, 0.04, 0.5, 0.4, None))?;
            // reads d, h, W̆, W; writes W̆, W, Ŵ
            emit(Measurement { name, seconds, work: gb(7.0, len), unit: "GB/s", timing, extra: vec![] })?;
        }
        Ok(())
    }

    /// Whole training steps and evaluation passes of ResNet-32 and AlexNet (and of the compact
    /// model `--compact` names, beside its dense one), with the step's memory, host time and
    /// (where the adapter has timestamps) per-kernel profile.
    fn whole_steps(&self, emit: &mut Emit) -> Result<()> {
        let (cfg, steps) = (self.cfg, self.steps);
        let compact = cfg.compact.as_deref().map(compact_model).transpose()?;
        let mut runs: Vec<(String, usize, Option<Model>)> =
            vec![("resnet32".into(), self.step_batch, None), ("alexnet".into(), if cfg.quick { 2 } else { 16 }, None)];
        if let Some(m) = compact {
            let b = if m.name == "alexnet" { runs[1].1 } else { self.step_batch };
            runs.retain(|(n, _, _)| *n != m.name);
            runs.push((m.name.clone(), b, None));
            runs.push((format!("{}-compact", m.name), b, Some(m)));
        }
        for (model, b, built) in runs {
            let model = model.as_str();
            let names = [format!("{model} train step b{b}"), format!("{model} eval b{b}")];
            if !names.iter().any(|n| cfg.wants(n)) {
                continue;
            }
            // --quick skips AlexNet, and with it its compact twin (measured only beside it)
            if cfg.quick && model.starts_with("alexnet") {
                if built.is_some() {
                    errln!("{model}: skipped under --quick, as alexnet is (run without --quick to measure both)");
                }
                continue;
            }
            let r = match built.map_or_else(|| step_rate(model, b, steps), |m| step_rate_of(m, b, steps)) {
                Ok(r) => r,
                // A model that does not fit this adapter (AlexNet's 151 MB fc weight exceeds some
                // drivers' binding limit) is reported, not fatal; a device that stopped answering is.
                Err(e) if !gpu::device_hung() => {
                    errln!("{model}: skipped ({e})");
                    continue;
                }
                Err(e) => return Err(e),
            };
            let images = steps * b;
            emit(images_measurement(
                &names[0],
                images,
                r.train_images_per_second,
                vec![
                    ("peak_step_bytes", r.peak_step_bytes.into()),
                    ("after_forward_bytes", r.after_forward_bytes.into()),
                    ("device_bytes", r.device_bytes.into()),
                    ("first_step_seconds", r.first_step_seconds.into()),
                    ("data_ms_per_step", (r.data_seconds_per_step * 1e3).into()),
                    ("submit_ms_per_step", (r.submit_seconds_per_step * 1e3).into()),
                    ("host_ms_per_step", (r.host_seconds_per_step * 1e3).into()),
                    ("kernel_profile", profile_json(r.profile.as_ref())),
                    ("gemm_plans", plans_json()),
                ],
            ))?;
            emit(images_measurement(&names[1], images, r.eval_images_per_second, vec![]))?;
            print_step_details(model, b, &r);
        }
        self.mixed_precision_steps(emit)
    }

    /// ResNet-32's training step and evaluation in mixed precision (f16 activations), beside
    /// the f32 rows, where the adapter has f16 shaders.
    fn mixed_precision_steps(&self, emit: &mut Emit) -> Result<()> {
        let (b, steps) = (self.step_batch, self.steps);
        let names = [format!("resnet32 train step b{b} mixed"), format!("resnet32 eval b{b} mixed")];
        if !names.iter().any(|n| self.cfg.wants(n)) {
            return Ok(());
        }
        if !gpu::get()?.adapter.shader_f16 {
            errln!("resnet32 mixed precision: skipped (this adapter has no f16 shaders)");
            return Ok(());
        }
        let mut model = Model::build("resnet32", crate::models::spec("resnet32")?.classes, 0)?;
        model.set_precision(crate::models::Precision::Mixed)?;
        let r = step_rate_of(model, b, steps)?;
        let extra =
            vec![("peak_step_bytes", r.peak_step_bytes.into()), ("kernel_profile", profile_json(r.profile.as_ref()))];
        emit(images_measurement(&names[0], steps * b, r.train_images_per_second, extra))?;
        emit(images_measurement(&names[1], steps * b, r.eval_images_per_second, vec![]))?;
        print_step_details(&names[0], b, &r);
        Ok(())
    }

    /// ResNet-32 evaluation at eval's default batch (500), in f32 and (where the adapter has f16
    /// shaders) mixed precision; and in f32 with batch norm as separate passes, not fused into
    /// the convolutions (what the fusion gains on this adapter).
    fn evaluation_at_eval_batch(&self, emit: &mut Emit) -> Result<()> {
        use crate::models::Precision;
        let (b, steps) = (if self.cfg.quick { 32 } else { 500 }, self.steps);
        for (precision, separate) in [(Precision::F32, false), (Precision::F32, true), (Precision::Mixed, false)] {
            let name = match (precision, separate) {
                (Precision::F32, false) => format!("resnet32 eval b{b}"),
                (Precision::F32, true) => format!("resnet32 eval b{b} bn separate"),
                (Precision::Mixed, _) => format!("resnet32 eval b{b} mixed"),
            };
            if !self.cfg.wants(&name) || (precision == Precision::Mixed && !gpu::get()?.adapter.shader_f16) {
                continue;
            }
            let rate = || eval_rate(&name, "resnet32", b, steps, precision);
            let rate = if separate { crate::ops::conv2d::with_separate_ops(rate) } else { rate() }?;
            emit(images_measurement(&name, steps * b, rate, vec![]))?;
        }
        Ok(())
    }
}

/// A whole-step measurement: `images` at `rate` images/s, timed on the host.
fn images_measurement(
    name: &str,
    images: usize,
    rate: f64,
    extra: Vec<(&'static str, serde_json::Value)>,
) -> Measurement {
    let work = images as f64;
    Measurement { name: name.to_string(), seconds: work / rate, work, unit: "images/s", timing: STEP_TIMING, extra }
}

/// A whole step's memory, host time and kernel profile, below the table's row.
fn print_step_details(model: &str, batch: usize, r: &StepRate) {
    let mib = |b: u64| b as f64 / 1048576.0;
    outln!(
        "  {model} step memory: peak {:.0} MiB held, {:.0} MiB after the forward pass (ratio {:.2}), {:.0} MiB \
         owned incl. pooled",
        mib(r.peak_step_bytes),
        mib(r.after_forward_bytes),
        r.peak_step_bytes as f64 / r.after_forward_bytes as f64,
        mib(r.device_bytes)
    );
    outln!(
        "  {model} host time per step: {:.1} ms (batch assembly + upload {:.1} ms, inside submit {:.1} ms) of {:.1} ms",
        r.host_seconds_per_step * 1e3,
        r.data_seconds_per_step * 1e3,
        r.submit_seconds_per_step * 1e3,
        batch as f64 / r.train_images_per_second * 1e3
    );
    if let Some(p) = &r.profile {
        print_profile(&format!("{model} one training step"), p);
    }
}

/// The GEMM plan the tuner chose (or the fixed default) for each product shape this run used.
fn print_tuner_choices() {
    let plans = crate::tune::choices();
    if !plans.is_empty() {
        let how =
            if crate::tune::enabled() { "tuned on this adapter (or read from its cache)" } else { "fixed defaults" };
        outln!("  GEMM plans ({how}):");
        // (keys grow with the kernels a product may run on: "... +direct +winograd2x2 +c16h f16")
        let width = plans.iter().map(|p| p.0.len()).max().unwrap_or(0).max(46);
        for (key, tile, splits, seconds) in &plans {
            let t = if *seconds > 0.0 { format!("{:.3} ms", seconds * 1e3) } else { String::new() };
            outln!("    {key:<width$} {tile:<11} split {splits:<4} {t}");
        }
    }
    for (tile, why) in crate::tune::left_out() {
        outln!("  left out on this adapter: {tile} ({why})");
    }
    let measured = crate::tune::measured();
    if measured > 0 {
        // Tuning is bursts of small submits with waits in between: a GPU may lower its clock
        // during them (see CLOCK_WARM_UP); a second run reads the plans from the cache.
        outln!(
            "  note: {measured} kernel plans were tuned during this run (now cached); the next run skips that \
             and is the steady state"
        );
    }
}

/// The tuner's plans of this process as a JSON array.
fn plans_json() -> serde_json::Value {
    (crate::tune::choices().iter())
        .map(
            |(key, tile, splits, s)| serde_json::json!({"product": key, "tile": tile, "splits": splits, "ms": s * 1e3}),
        )
        .collect()
}

/// Evaluation throughput (forward passes in eval mode, one submit each, no read-back) of a model
/// at `batch` on random input, after one warm-up pass; the per-kernel profile it prints is
/// headed `row` (the bench row's name).
pub fn eval_rate(
    row: &str,
    model_name: &str,
    batch: usize,
    passes: usize,
    precision: crate::models::Precision,
) -> Result<f64> {
    let gpu = gpu::get()?;
    let mut model = Model::build(model_name, crate::models::spec(model_name)?.classes, 0)?;
    model.set_precision(precision)?;
    let (c, h, w) = model.input;
    let x = random(&[batch, c, h, w], 12)?;
    let mut eval = || -> Result<()> {
        crate::autograd::no_grad(|| model.forward(&x, Pass::Eval).map(drop))?;
        gpu.flush()
    };
    let warm = Instant::now();
    eval()?;
    gpu.synchronize()?;
    if warm.elapsed() < CLOCK_WARM_UP {
        keep_busy(&mut eval)?;
    }
    let start = Instant::now();
    for _ in 0..passes {
        eval()?;
    }
    gpu.synchronize()?;
    let rate = (passes * batch) as f64 / start.elapsed().as_secs_f64();
    if gpu.start_device_timer(true)? {
        eval()?;
        if let Some(p) = gpu.stop_device_timer()? {
            print_profile(row, &p);
        }
    }
    Ok(rate)
}

/// The longest kernels of a per-kernel device profile.
fn print_profile(what: &str, p: &gpu::DeviceTime) {
    outln!(
        "  {what} kernel by kernel on the device: {:.2} ms in {} launches; longest:",
        p.seconds * 1e3,
        p.by_kernel.iter().map(|k| k.2).sum::<u32>()
    );
    for (label, seconds, launches) in p.by_kernel.iter().take(12) {
        let share = 100.0 * seconds / p.seconds;
        outln!("    {label:<40} {:>10.3} ms {share:>5.1}% {launches:>5} launches", seconds * 1e3);
    }
}

/// Training and evaluation throughput of a model at `batch` on random images.
#[derive(Clone, Debug)]
pub struct StepRate {
    pub model: String,
    pub batch: usize,
    pub train_images_per_second: f64,
    pub eval_images_per_second: f64,
    /// Seconds of the first (warm-up) training step, pipeline compilation included.
    pub first_step_seconds: f64,
    /// Peak bytes of device buffers held during the timed training steps (parameters,
    /// gradients, momentum, batch-norm statistics, activations and temporaries).
    pub peak_step_bytes: u64,
    /// Bytes held right after the forward pass: parameters, gradients, momentum, statistics and
    /// the activations the backward pass will read (what a step cannot do without).
    pub after_forward_bytes: u64,
    /// Bytes of all device buffers the engine owns after the steps, pooled (free) ones included.
    pub device_bytes: u64,
    /// Host seconds per training step spent assembling and uploading the batch.
    pub data_seconds_per_step: f64,
    /// Host seconds per training step inside the submit call (a driver that runs the work
    /// during submit shows the whole step here, and then host and device cannot overlap).
    pub submit_seconds_per_step: f64,
    /// Host seconds per training step in all (batch, recording, submit); the rest of the step
    /// time the host waits for the device.
    pub host_seconds_per_step: f64,
    /// One training step timed on the device kernel by kernel (where timestamps exist).
    pub profile: Option<gpu::DeviceTime>,
}

/// Random stored images of one size, standing in for a dataset in memory.
struct RandomImages {
    pixels: Vec<u8>,
    size: (usize, usize, usize),
    classes: usize,
}

impl RandomImages {
    fn new(count: usize, size: (usize, usize, usize), classes: usize) -> RandomImages {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(17);
        let pixels = (0..count * size.0 * size.1 * size.2).map(|_| rng.random()).collect();
        RandomImages { pixels, size, classes }
    }
}

impl crate::data::Dataset for RandomImages {
    fn len(&self) -> usize {
        self.pixels.len() / (self.size.0 * self.size.1 * self.size.2)
    }
    fn classes(&self) -> usize {
        self.classes
    }
    fn image_size(&self) -> (usize, usize, usize) {
        self.size
    }
    fn sample(&self, i: usize) -> (&[u8], u32) {
        let per = self.size.0 * self.size.1 * self.size.2;
        (&self.pixels[i * per..(i + 1) * per], (i % self.classes) as u32)
    }
}

/// Times `steps` training steps and as many evaluation forward passes, after one warm-up step
/// of each. A training step is what the training loop does: assemble the batch on the host
/// (random crop with padding 4 + flip + normalization from stored bytes), upload it, zero grad,
/// forward, backward, SGD over the arena, one submit, no wait — so the host's work on the next
/// batch overlaps the device's work on this one.
pub fn step_rate(model_name: &str, batch: usize, steps: usize) -> Result<StepRate> {
    step_rate_of(Model::build(model_name, crate::models::spec(model_name)?.classes, 0)?, batch, steps)
}

/// The compact (filter-pruned) model `--compact` names, its weights loaded.
fn compact_model(path: &Path) -> Result<Model> {
    let meta = crate::checkpoint::read_metadata(path)?;
    let Some(name) = meta.get("model").cloned() else {
        return Err(crate::Error::invalid(format!(
            "{}: no 'model' in its metadata: give a compact.safetensors a filter-pruned run wrote",
            path.display()
        )));
    };
    let model = Model::for_weights(&name, crate::models::spec(&name)?.classes, path, 0)?;
    if model.widths.is_none() {
        return Err(crate::Error::invalid(format!(
            "{} holds a standard {name}, not a compact one (no widths in its metadata)",
            path.display()
        )));
    }
    Ok(model)
}

/// [`step_rate`] of a model already built (a compact one, say).
pub fn step_rate_of(mut model: Model, batch: usize, steps: usize) -> Result<StepRate> {
    use crate::data::{fill_batch, BatchSpec, Dataset, CIFAR_MEAN, CIFAR_STD};
    use crate::ops::sgd::SgdConfig;
    let gpu = gpu::get()?;
    let classes = model.classes;
    let model_name = &(if model.widths.is_some() { format!("{}-compact", model.name) } else { model.name.clone() });
    let (c, h, w) = model.input;
    let data = RandomImages::new(2 * batch, (c, h, w), classes);
    let spec = BatchSpec { out_h: h, out_w: w, ..BatchSpec::cifar_train(CIFAR_MEAN, CIFAR_STD) };
    let (x, y) = (Tensor::zeros(&[batch, c, h, w])?, Tensor::zeros(&[batch])?);
    let (mut images, mut labels) = (Vec::new(), Vec::new());
    let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(5);
    let sgd = SgdConfig { lr: 0.01, momentum: 0.9, weight_decay: 1e-4, nesterov: false };
    // Returns host seconds spent on the batch (assembly, upload), in the submit, and on the
    // whole step (batch + recording + submit): time the device may overlap with its work.
    let mut train_step = |model: &mut Model, step: usize| -> Result<[f64; 3]> {
        let data_start = Instant::now();
        let indices: Vec<usize> = (0..batch).map(|i| (step * batch + i) % data.len()).collect();
        fill_batch(&data, &indices, &spec, &mut rng, &mut images, &mut labels);
        x.write(&images)?;
        y.write(&labels)?;
        let data_seconds = data_start.elapsed().as_secs_f64();
        model.gradient(&x, &y, 0)?;
        model.store.sgd_step(&sgd, None)?;
        let submit_start = Instant::now();
        gpu.flush()?;
        Ok([data_seconds, submit_start.elapsed().as_secs_f64(), data_start.elapsed().as_secs_f64()])
    };
    // Shown on a terminal only: warm-up, timed steps, memory probe, profile, eval warm-up, evals.
    let bar = crate::train::progress_bar((2 * steps + 4) as u64, format!("{model_name} b{batch}"));
    let phase = |msg: &str| {
        bar.set_message(msg.to_string());
        bar.inc(1);
    };
    let start = Instant::now();
    train_step(&mut model, 0)?;
    gpu.synchronize()?;
    let first_step_seconds = start.elapsed().as_secs_f64();
    phase("first training step done (shaders compiled)");
    let warm = Instant::now();
    train_step(&mut model, 0)?;
    gpu.synchronize()?;
    if warm.elapsed() < CLOCK_WARM_UP {
        keep_busy(&mut || train_step(&mut model, 0).map(drop))?;
    }
    gpu.reset_peak_memory();
    let start = Instant::now();
    let mut host = [0.0; 3];
    for step in 1..=steps {
        let t = train_step(&mut model, step)?;
        (0..3).for_each(|i| host[i] += t[i] / steps as f64);
        phase(&format!("training step {step}/{steps}"));
    }
    gpu.synchronize()?;
    let train_seconds = start.elapsed().as_secs_f64();
    let peak_step_bytes = gpu.memory_stats().peak_in_use;
    let (after_forward_bytes, device_bytes) = memory_probe(&mut model, &x, &y, &sgd)?;
    phase("memory probe done");
    // One more step with every dispatch timed on the device: where the step's time goes.
    let profile = if gpu.start_device_timer(true)? {
        train_step(&mut model, steps + 1)?;
        gpu.stop_device_timer()?
    } else {
        None
    };
    phase("kernel profile done");
    let eval_seconds = eval_seconds(&mut model, &x, steps, &phase)?;
    bar.finish_and_clear();
    Ok(StepRate {
        model: model_name.to_string(),
        batch,
        train_images_per_second: (steps * batch) as f64 / train_seconds,
        eval_images_per_second: (steps * batch) as f64 / eval_seconds,
        first_step_seconds,
        peak_step_bytes,
        after_forward_bytes,
        device_bytes,
        data_seconds_per_step: host[0],
        submit_seconds_per_step: host[1],
        host_seconds_per_step: host[2],
        profile,
    })
}

/// One more training step, paused after the forward pass: (bytes in use then, what backward
/// needs held; bytes the device holds after the step, pool included).
fn memory_probe(model: &mut Model, x: &Tensor, y: &Tensor, sgd: &crate::ops::sgd::SgdConfig) -> Result<(u64, u64)> {
    let gpu = gpu::get()?;
    model.store.zero_grad()?;
    let l = loss::cross_entropy(&model.forward(x, Pass::Train { noise: 0 })?, y)?;
    gpu.flush()?;
    let after_forward = gpu.memory_stats().in_use;
    model.backward(&l)?;
    model.store.sgd_step(sgd, None)?;
    gpu.synchronize()?;
    let stats = gpu.memory_stats();
    Ok((after_forward, stats.in_use + stats.pooled))
}

/// Seconds `passes` evaluation passes over `x` take, after a warm-up at a sustained clock;
/// `phase` is told of each.
fn eval_seconds(model: &mut Model, x: &Tensor, passes: usize, phase: &impl Fn(&str)) -> Result<f64> {
    let gpu = gpu::get()?;
    let eval = |model: &mut Model| -> Result<()> {
        crate::autograd::no_grad(|| model.forward(x, Pass::Eval).map(drop))?;
        gpu.flush()
    };
    let warm = Instant::now();
    eval(model)?;
    gpu.synchronize()?;
    if warm.elapsed() < CLOCK_WARM_UP {
        keep_busy(&mut || eval(model))?;
    }
    phase("evaluation warm-up done");
    let start = Instant::now();
    for i in 1..=passes {
        eval(model)?;
        phase(&format!("evaluation pass {i}/{passes}"));
    }
    gpu.synchronize()?;
    Ok(start.elapsed().as_secs_f64())
}

/// A step's per-kernel device times as a JSON array (null when not timed).
fn profile_json(profile: Option<&gpu::DeviceTime>) -> serde_json::Value {
    let Some(p) = profile else { return serde_json::Value::Null };
    (p.by_kernel.iter())
        .map(|(label, s, n)| serde_json::json!({"kernel": label, "ms": s * 1e3, "launches": n}))
        .collect()
}

/// The git commit of the working directory, when git can tell.
fn git_commit() -> String {
    std::process::Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown".into())
}

/// One JSON object (a line) describing a measurement and where it was made.
pub fn json_line(m: &Measurement) -> Result<String> {
    let a = &gpu::get()?.adapter;
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let mut fields = serde_json::json!({
        "name": m.name,
        "value": m.rate(),
        "unit": m.unit,
        "ms": m.seconds * 1e3,
        "adapter": a.name,
        "vendor_id": a.vendor_id,
        "device_type": a.device_type,
        "backend": a.backend,
        "driver": a.driver,
        "driver_info": a.driver_info,
        "timestamp_queries": a.timestamp_queries,
        "subgroups": a.subgroups,
        "shader_f16": a.shader_f16,
        "cooperative_matrices": a.cooperative_matrices,
        "timing": m.timing,
        "version": env!("CARGO_PKG_VERSION"),
        "commit": git_commit(),
        "unix_time": secs,
    });
    if let Some(map) = fields.as_object_mut() {
        map.extend(m.extra.iter().map(|(k, v)| (k.to_string(), v.clone())));
    }
    Ok(fields.to_string())
}

/// The copy-like kernel's length: 64M f32 (256 MB, past every cache), or under `--quick` 1M;
/// where a storage binding holds less (llvmpipe's 128 MiB, and some GPUs'), the largest power of
/// two that fits, so the row still runs (its name gives the length).
fn copy_like_len(quick: bool, max_storage_binding: u64) -> usize {
    let fits = (max_storage_binding / 4).max(1 << 20);
    if quick {
        1 << 20
    } else {
        (1usize << 26).min(1usize << fits.ilog2())
    }
}

/// Runs the benchmark, printing a table and appending JSON lines to `out`.
pub fn run_and_record(cfg: &BenchConfig, out: &Path) -> Result<usize> {
    // a bad --compact file is named before any measurement, not after the kernels' (hours on a
    // software driver)
    if let Some(path) = &cfg.compact {
        compact_model(path)?;
    }
    let a = gpu::get()?.adapter.clone();
    outln!("adapter: {a}");
    outln!(
        "features: timestamp queries {}, subgroups {}, f16 {}, cooperative matrices {}; max buffer {} MiB, max \
         storage binding {} MiB",
        a.timestamp_queries,
        a.subgroups,
        a.shader_f16,
        if a.cooperative_matrices.is_empty() { "none".to_string() } else { a.cooperative_matrices.join(", ") },
        a.max_buffer_size >> 20,
        a.max_storage_binding >> 20
    );
    // which tensor-core tiles mixed precision's tuner may choose here (they need the matrices,
    // enough subgroups for their blocks and their shared tiles' bytes)
    let coop: Vec<&str> = matmul::cooperative_tiles()?.into_iter().map(|t| matmul::TILES[t].name).collect();
    if !coop.is_empty() {
        outln!(
            "cooperative-matrix tiles that fit (subgroups of up to {} threads, {} bytes of workgroup memory): {}",
            a.subgroup_max_size,
            a.max_workgroup_storage,
            coop.join(", ")
        );
    }
    outln!("{:<46} {:>10} {:>12}        timed on", "measurement", "ms", "rate");
    let mut file = std::fs::OpenOptions::new().create(true).append(true).open(out).map_err(|e| Error::io(out, e))?;
    let mut count = 0;
    run(cfg, |m| {
        let on = if m.timing == DEVICE_TIMING { "device" } else { "host" };
        outln!("{:<46} {:>10.3} {:>12.2} {:<8} {on}", m.name, m.seconds * 1e3, m.rate(), m.unit);
        writeln!(file, "{}", json_line(m)?).map_err(|e| Error::io(out, e))?;
        count += 1;
        Ok(())
    })?;
    outln!("{count} results appended to {}", out.display());
    if let (0, Some(filter)) = (count, &cfg.filter) {
        outln!(
            "no measurement's name contains '{filter}' (case-sensitive; e.g. gemm, conv, batchnorm, step, eval): run \
             `sasprune bench --quick` to see the names"
        );
    }
    Ok(count)
}

#[cfg(test)]
mod tests {
    use super::copy_like_len;

    #[test]
    fn the_copy_like_row_fits_the_storage_binding() {
        const MIB: u64 = 1 << 20;
        assert_eq!(copy_like_len(false, 4096 * MIB), 1 << 26, "a GPU with large bindings: 256 MB");
        assert_eq!(copy_like_len(false, 256 * MIB), 1 << 26, "exactly 256 MB fits");
        assert_eq!(copy_like_len(false, 128 * MIB), 1 << 25, "llvmpipe's 128 MiB: 32M elements");
        assert_eq!(copy_like_len(false, 100 * MIB), 1 << 24, "a limit that is no power of two");
        assert_eq!(copy_like_len(false, MIB), 1 << 20, "never below the quick size");
        assert_eq!(copy_like_len(true, 4096 * MIB), 1 << 20);
    }
}
