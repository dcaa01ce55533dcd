//! Helpers shared by the GPU tests: deterministic random data, f32/f64 conversion, and the
//! closeness check |gpu - ref| <= atol + rtol * |ref|.
#![allow(dead_code)]

use sasprune::ops::{conv2d, matmul};
use sasprune::reference as cpu;
use sasprune::Tensor;

/// xorshift64* — deterministic test data without extra dependencies.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E3779B97F4A7C15) | 1)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545F4914F6CDD1D)
    }
    /// Uniform in [-1, 1).
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0
    }
    pub fn vec(&mut self, n: usize) -> Vec<f64> {
        (0..n).map(|_| self.uniform()).collect()
    }
    /// Values in [lo, hi).
    pub fn vec_in(&mut self, n: usize, lo: f64, hi: f64) -> Vec<f64> {
        (0..n).map(|_| lo + (self.uniform() + 1.0) / 2.0 * (hi - lo)).collect()
    }
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
}

/// Rounds to f32 and back, so the reference sees exactly the values the GPU sees.
pub fn f32_exact(v: &[f64]) -> Vec<f64> {
    v.iter().map(|&x| x as f32 as f64).collect()
}

pub fn tensor(v: &[f64], shape: &[usize]) -> Tensor {
    let data: Vec<f32> = v.iter().map(|&x| x as f32).collect();
    Tensor::from_slice(&data, shape).expect("upload")
}

pub fn param(v: &[f64], shape: &[usize]) -> Tensor {
    tensor(v, shape).with_grad()
}

pub fn values(t: &Tensor) -> Vec<f64> {
    t.to_vec().expect("read back").iter().map(|&x| x as f64).collect()
}

pub fn grad(t: &Tensor) -> Vec<f64> {
    values(&t.grad().expect("gradient was computed"))
}

/// Tolerances for element-wise results and for long sums (GEMM, conv, reductions).
pub const ELEMENTWISE: (f64, f64) = (1e-5, 1e-4);
pub const LONG_SUM: (f64, f64) = (1e-4, 1e-3);

#[track_caller]
#[allow(clippy::neg_cmp_op_on_partial_ord)] // `!(d <= tol)` also catches NaN
pub fn assert_close(what: &str, gpu: &[f64], reference: &[f64], (atol, rtol): (f64, f64)) {
    assert_eq!(gpu.len(), reference.len(), "{what}: lengths differ");
    assert!(reference.iter().any(|&r| r != 0.0), "{what}: the reference is all zeros; the test would prove nothing");
    let bad = gpu.iter().zip(reference).position(|(&g, &r)| !((g - r).abs() <= atol + rtol * r.abs()));
    if let Some(i) = bad {
        panic!("{what}: element {i} is {} but the reference says {} (atol {atol}, rtol {rtol})", gpu[i], reference[i]);
    }
}

/// Whether a test's inputs (CIFAR-10 in data/, the shared pretrained weights) are here. When they
/// are not, the test is skipped with a line that `cargo test` shows (written past the harness's
/// output capture), or fails when `SASPRUNE_REQUIRE_DATA=1` says they must be there (.ci/run sets
/// it after building CIFAR-10, so CI cannot pass by skipping).
pub fn inputs_present(test: &str, present: bool, missing: &str) -> bool {
    if present {
        return true;
    }
    if std::env::var("SASPRUNE_REQUIRE_DATA").is_ok_and(|v| v == "1") {
        panic!("{test}: {missing}, and SASPRUNE_REQUIRE_DATA=1 says it must be here");
    }
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "SKIPPED {test}: {missing}");
    false
}

/// A fresh directory under the system temp dir, removed when dropped.
pub struct TempDir(std::path::PathBuf);

impl TempDir {
    pub fn new(name: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("sasprune-test-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create temp dir");
        TempDir(dir)
    }

    pub fn path(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub const CIFAR_FILES: [&str; 6] = [
    "data_batch_1.bin",
    "data_batch_2.bin",
    "data_batch_3.bin",
    "data_batch_4.bin",
    "data_batch_5.bin",
    "test_batch.bin",
];

/// Pixel byte `p` (0..3072) of record `r` of file `f` in a fake CIFAR set: distinct patterns
/// per file and record, so a read from the wrong offset shows.
pub fn fake_pixel(f: usize, r: usize, p: usize) -> u8 {
    ((p * 7 + r * 31 + f * 101) % 256) as u8
}

/// Label of record `r` of file `f` when every file holds `per_file` records.
pub fn fake_label(f: usize, r: usize, per_file: usize) -> u8 {
    ((f * per_file + r) % 10) as u8
}

/// Writes `dir/cifar-10-batches-bin/` with `per_file` records in each of the six files (pixel
/// bytes offset by `salt`, so two sets can differ); returns that path.
pub fn write_fake_cifar(dir: &std::path::Path, per_file: usize, salt: u8) -> std::path::PathBuf {
    let batches = dir.join("cifar-10-batches-bin");
    std::fs::create_dir_all(&batches).expect("create batches dir");
    for (f, name) in CIFAR_FILES.iter().enumerate() {
        let mut bytes = Vec::new();
        for r in 0..per_file {
            bytes.push(fake_label(f, r, per_file));
            bytes.extend((0..3072).map(|p| fake_pixel(f, r, p).wrapping_add(salt)));
        }
        std::fs::write(batches.join(name), bytes).expect("write batch file");
    }
    batches
}

/// A small pruning pipeline through the binary: ResNet-20 at 3x on a fake CIFAR set (`data`, from
/// [`write_fake_cifar`] with 8 images per file), quick schedule cut down to 3 outer iterations of
/// 8 images and 2 retraining epochs, fixed kernel plans; every phase runs in seconds on a
/// software driver. Used by the tests that stop and resume runs.
pub fn small_pipeline_args(out: &std::path::Path, data: &std::path::Path, weights: &std::path::Path) -> Vec<String> {
    let flags = "--model resnet20 --rate 3x --schedule quick --inner 2 --outer 3 --k0 1 --k-avg 1 --batch 8 \
                 --retrain-epochs 2 --retrain-batch 8 --lr 0.01 --subset 32 --eval-limit 8 --tune off";
    let mut args: Vec<String> = flags.split_whitespace().map(String::from).collect();
    for (flag, path) in [("--data", data), ("--weights", weights), ("--out", out)] {
        args.extend([flag.to_string(), path.display().to_string()]);
    }
    args
}

/// An unstructured 6.6x plan of `model` (what SAS-ADMM's phase takes when the structure does
/// not matter to a test).
#[allow(dead_code)]
pub fn weight_plan(model: &sasprune::models::Model) -> sasprune::prune::rate::Plan {
    use sasprune::prune::rate;
    rate::plan_uniform(rate::prunable_layers(&model.store), rate::Rate::Times(6.6), true).unwrap()
}

/// What [`fused_conv_case`] measured.
pub struct FusedConv {
    /// The convolution with batch norm, residual and ReLU fused into its output.
    pub fused: Vec<f64>,
    /// The same by the separate kernels (`conv2d::with_separate_ops`).
    pub separate: Vec<f64>,
    /// The plans the fused convolution ran on (tile names).
    pub plans: Vec<&'static str>,
    /// The f64 reference.
    pub reference: Vec<f64>,
}

/// Geometries and (bias, residual) of fused cases every GEMM tile runs: a stride-2 product, and
/// a stride-1 one whose sizes fill no tile.
pub const FUSED_CONV_CASES: [(sasprune::reference::Conv2dGeom, (bool, bool)); 2] = [
    (
        sasprune::reference::Conv2dGeom { n: 3, c_in: 9, h: 9, w: 8, c_out: 70, kh: 3, kw: 3, stride: 2, pad: 1 },
        (false, true),
    ),
    (
        sasprune::reference::Conv2dGeom { n: 2, c_in: 20, h: 7, w: 9, c_out: 37, kh: 3, kw: 3, stride: 1, pad: 1 },
        (true, true),
    ),
];

/// One convolution with the batch norm (running statistics), residual and ReLU after it, as a
/// ResNet block's end computes it in evaluation: fused into the convolution's output
/// (`conv2d::conv2d_fused`, so the fused kernel surely runs), and by the separate ops.
/// Activations are `dtype`; `scale` (a power of two) scales the sums and everything added to
/// them (2^-17 puts them among f16's subnormals).
pub fn fused_conv_case(
    rng: &mut Rng,
    g: sasprune::reference::Conv2dGeom,
    dtype: sasprune::gpu::Dtype,
    (bias, residual): (bool, bool),
    scale: f64,
) -> FusedConv {
    use sasprune::ops::{batchnorm, conv2d, matmul};
    use sasprune::reference as cpu;
    let (oh, ow) = (g.out_h(), g.out_w());
    let c = g.c_out;
    let scaled = |rng: &mut Rng, n: usize| f32_exact(&rng.vec(n)).iter().map(|v| v * scale).collect::<Vec<f64>>();
    let activation = |v: &[f64], shape: &[usize]| activation(v, shape, dtype);
    let x = scaled(rng, g.n * g.c_in * g.h * g.w);
    let w = f32_exact(&rng.vec(c * g.c_in * g.kh * g.kw));
    let b = scaled(rng, c);
    let res = scaled(rng, g.n * c * oh * ow);
    let (beta, rm) = (scaled(rng, c), scaled(rng, c));
    let (gamma, rv) = (f32_exact(&rng.vec_in(c, 0.5, 1.5)), f32_exact(&rng.vec_in(c, 0.5, 2.0)));
    let (xt, rt) = (activation(&x, &[g.n, g.c_in, g.h, g.w]), activation(&res, &[g.n, c, oh, ow]));
    let (wt, bt) = (tensor(&w, &[c, g.c_in, g.kh, g.kw]), tensor(&b, &[c]));
    let bn = [&gamma, &beta, &rm, &rv].map(|v| tensor(v, &[c]));
    let [gt, bet, rmt, rvt] = [&bn[0], &bn[1], &bn[2], &bn[3]];
    let (bias_t, res_t) = (bias.then_some(&bt), residual.then_some(&rt));
    let cfg = batchnorm::BatchNormConfig { training: false, ..Default::default() };
    sasprune::autograd::no_grad(|| {
        let affine = batchnorm::eval_affine(gt, bet, rmt, rvt, cfg.eps).unwrap();
        let epilogue = conv2d::Epilogue { batch_norm: Some(&affine), residual: res_t, relu: true };
        let (fused, plans) =
            matmul::plans_used(|| conv2d::conv2d_fused(&xt, &wt, bias_t, g.stride, g.pad, epilogue).unwrap());
        let separate = conv2d::with_separate_ops(|| {
            conv2d::conv2d_batch_norm_relu(&xt, (&wt, bias_t), (g.stride, g.pad), [gt, bet, rmt, rvt], res_t, cfg)
                .unwrap()
        });
        assert_eq!((fused.dtype(), fused.shape()), (dtype, separate.shape()));
        let pre = cpu::conv2d(&x, &w, bias.then_some(&b[..]), &g);
        let pre = cpu::batchnorm_eval(&pre, &gamma, &beta, &rm, &rv, g.n, c, oh * ow, 1e-5);
        let reference = if residual { cpu::add(&pre, &res) } else { pre };
        FusedConv {
            fused: values(&fused),
            separate: values(&separate),
            plans: plans
                .iter()
                .filter(|(f, _)| *f == "conv2d.forward")
                .map(|(_, p)| matmul::tile_name(p.tile))
                .collect(),
            reference: cpu::relu(&reference),
        }
    })
}

/// `v` uploaded as a tensor of `dtype` (an activation: f32, or f16 under mixed precision).
pub fn activation(v: &[f64], shape: &[usize], dtype: sasprune::gpu::Dtype) -> Tensor {
    let data: Vec<f32> = v.iter().map(|&x| x as f32).collect();
    Tensor::from_slice_as(dtype, &data, shape).unwrap()
}

/// The engine's geometry for a reference geometry.
pub fn conv_geom(g: &sasprune::reference::Conv2dGeom) -> sasprune::ops::conv2d::ConvGeom {
    let sasprune::reference::Conv2dGeom { n, c_in, h, w, c_out, kh, kw, stride, pad } = *g;
    sasprune::ops::conv2d::ConvGeom { n, c_in, h, w, c_out, kh, kw, stride, pad }
}

/// Grad-input geometries for [`grad_input_adding_case`] that every GEMM tile runs: 3x3 stride 1
/// with odd sizes, 3x3 stride 2 (the parity classes), 1x1.
pub const PENDING_ADD_CASES: [sasprune::reference::Conv2dGeom; 3] = [
    sasprune::reference::Conv2dGeom { n: 2, c_in: 5, h: 7, w: 9, c_out: 7, kh: 3, kw: 3, stride: 1, pad: 1 },
    sasprune::reference::Conv2dGeom { n: 2, c_in: 6, h: 9, w: 11, c_out: 10, kh: 3, kw: 3, stride: 2, pad: 1 },
    sasprune::reference::Conv2dGeom { n: 2, c_in: 5, h: 6, w: 7, c_out: 9, kh: 1, kw: 1, stride: 1, pad: 0 },
];

/// A convolution's grad-input with a pending gradient (what its input already received) added
/// by the kernel that computes it, and by the separate ops (grad-input, then
/// `elementwise::add`); activations are `dtype`.
pub struct PendingAdd {
    pub fused: Vec<f64>,
    pub separate: Vec<f64>,
    /// The plans the fused grad-input ran on.
    pub plans: Vec<&'static str>,
    /// pending + the f64 grad-input.
    pub reference: Vec<f64>,
}

/// One random [`PendingAdd`] case of geometry `g` on the current plans.
pub fn grad_input_adding_case(
    rng: &mut Rng,
    g: sasprune::reference::Conv2dGeom,
    dtype: sasprune::gpu::Dtype,
) -> PendingAdd {
    use sasprune::ops::{conv2d, elementwise, matmul};
    use sasprune::reference as cpu;
    let (oh, ow) = (g.out_h(), g.out_w());
    let activation = |v: &[f64], shape: &[usize]| activation(v, shape, dtype);
    let dy = f32_exact(&rng.vec(g.n * g.c_out * oh * ow));
    let w = f32_exact(&rng.vec(g.c_out * g.c_in * g.kh * g.kw));
    let pending = f32_exact(&rng.vec(g.n * g.c_in * g.h * g.w));
    let (dyt, wt) = (activation(&dy, &[g.n, g.c_out, oh, ow]), tensor(&w, &[g.c_out, g.c_in, g.kh, g.kw]));
    let pt = activation(&pending, &[g.n, g.c_in, g.h, g.w]);
    let cg = conv_geom(&g);
    let (fused, plans) = matmul::plans_used(|| conv2d::conv2d_grad_input_adding(&dyt, &wt, &cg, Some(&pt)).unwrap());
    let separate = elementwise::add(&pt, &conv2d::conv2d_grad_input(&dyt, &wt, &cg).unwrap()).unwrap();
    assert_eq!((fused.dtype(), separate.dtype()), (dtype, dtype));
    PendingAdd {
        fused: values(&fused),
        separate: values(&separate),
        plans: plans.iter().map(|(_, p)| matmul::tile_name(p.tile)).collect(),
        reference: cpu::add(&pending, &cpu::conv2d_grad_input(&dy, &w, &g)),
    }
}

/// How many of `a` and `b` differ in their bits (so -0 and +0 differ).
pub fn differing_bits(a: &[f64], b: &[f64]) -> usize {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).filter(|(x, y)| x.to_bits() != y.to_bits()).count()
}

/// A convolution's forward, grad-input, grad-weight (and grad-bias) against the f64 reference.
pub fn conv_case(rng: &mut Rng, g: cpu::Conv2dGeom, bias: bool) {
    let x = f32_exact(&rng.vec(g.n * g.c_in * g.h * g.w));
    let w = f32_exact(&rng.vec(g.c_out * g.c_in * g.kh * g.kw));
    let b = f32_exact(&rng.vec(g.c_out));
    let (oh, ow) = (g.out_h(), g.out_w());
    let r = f32_exact(&rng.vec(g.n * g.c_out * oh * ow));
    let xt = param(&x, &[g.n, g.c_in, g.h, g.w]);
    let wt = param(&w, &[g.c_out, g.c_in, g.kh, g.kw]);
    let bt = param(&b, &[g.c_out]);
    let y = conv2d::conv2d(&xt, &wt, bias.then_some(&bt), g.stride, g.pad).unwrap();
    assert_eq!(y.shape(), [g.n, g.c_out, oh, ow]);
    let what = format!("{g:?} bias={bias}");
    assert_close(
        &format!("conv2d forward {what}"),
        &values(&y),
        &cpu::conv2d(&x, &w, bias.then_some(&b[..]), &g),
        LONG_SUM,
    );
    y.backward_with(tensor(&r, y.shape())).unwrap();
    assert_close(&format!("conv2d grad_input {what}"), &grad(&xt), &cpu::conv2d_grad_input(&r, &w, &g), LONG_SUM);
    assert_close(&format!("conv2d grad_weight {what}"), &grad(&wt), &cpu::conv2d_grad_weight(&r, &x, &g), LONG_SUM);
    if bias {
        assert_close(&format!("conv2d grad_bias {what}"), &grad(&bt), &cpu::conv2d_grad_bias(&r, &g), LONG_SUM);
    }
}

#[allow(clippy::too_many_arguments)]
pub fn geom(
    n: usize,
    c_in: usize,
    h: usize,
    w: usize,
    c_out: usize,
    kh: usize,
    kw: usize,
    stride: usize,
    pad: usize,
) -> cpu::Conv2dGeom {
    cpu::Conv2dGeom { n, c_in, h, w, c_out, kh, kw, stride, pad }
}

/// A GEMM (A and B optionally transposed) against the f64 reference.
pub fn gemm_case(rng: &mut Rng, m: usize, k: usize, n: usize, ta: bool, tb: bool) {
    let a = f32_exact(&rng.vec(m * k));
    let b = f32_exact(&rng.vec(k * n));
    let out = matmul::gemm(&tensor(&a, &[a.len()]), &tensor(&b, &[b.len()]), None, m, k, n, ta, tb).unwrap();
    assert_close(
        &format!("gemm {m}x{k}x{n} ta={ta} tb={tb}"),
        &values(&out),
        &cpu::matmul(&a, &b, m, k, n, ta, tb),
        LONG_SUM,
    );
}
