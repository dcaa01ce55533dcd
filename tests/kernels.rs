//! Every GPU kernel, forward and backward, against the naive f64 CPU reference on random inputs
//! with odd shapes (not multiples of the workgroup or tile sizes). Backward kernels are reached
//! through autograd: `y.backward_with(R)` for a random R gives dL/dinput of L = sum(y * R).

mod common;
use common::*;
use sasprune::gpu::Dtype;
use sasprune::ops::{batchnorm, conv2d, elementwise, loss, matmul, pool, reduce, sgd, shortcut};
use sasprune::reference as cpu;
use sasprune::Tensor;

/// Runs `case` with each variant of the kernels that add within workgroups: shared-memory
/// halving, and subgroup operations where the device passes their check (a visible SKIPPED line
/// where it does not). `case` gets the variant's name for its messages.
fn each_summing_variant(case: impl Fn(&str)) {
    sasprune::ops::with_subgroups(false, || case("shared-memory sums"));
    if sasprune::ops::subgroups_usable().unwrap() {
        sasprune::ops::with_subgroups(true, || {
            assert!(sasprune::ops::subgroups_in_use().unwrap());
            case("subgroup sums")
        });
    } else {
        eprintln!("SKIPPED: the subgroup variant of the summing kernels (this adapter has no usable subgroups)");
    }
}

/// llvmpipe has subgroups (8 lanes, in order): there the check must pass, or the subgroup
/// variant would go untested in CI.
#[test]
fn subgroup_check_passes_where_subgroups_are_known_to_work() {
    let adapter = &sasprune::gpu::get().unwrap().adapter;
    if adapter.name.contains("llvmpipe") {
        assert!(adapter.subgroups && sasprune::ops::subgroups_usable().unwrap(), "{adapter}");
    }
    eprintln!("{adapter}: subgroups usable {}", sasprune::ops::subgroups_usable().unwrap());
}

#[test]
fn conv2d_resnet_3x3_stride1_matches_reference() {
    conv_case(&mut Rng::new(1), geom(3, 5, 9, 7, 6, 3, 3, 1, 1), false);
}

#[test]
fn conv2d_resnet_3x3_stride2_with_bias_matches_reference() {
    conv_case(&mut Rng::new(2), geom(2, 7, 11, 10, 67, 3, 3, 2, 1), true);
}

#[test]
fn conv2d_alexnet_11x11_stride4_matches_reference() {
    conv_case(&mut Rng::new(3), geom(2, 3, 31, 29, 5, 11, 11, 4, 2), true);
}

#[test]
fn conv2d_5x5_pad2_and_rectangular_kernel_match_reference() {
    conv_case(&mut Rng::new(4), geom(2, 4, 13, 12, 9, 5, 5, 1, 2), true);
    conv_case(&mut Rng::new(5), geom(3, 2, 8, 9, 3, 2, 3, 1, 0), false);
    // padding wider than the kernel reaches (its grad-input is no stride-1 convolution of dy)
    conv_case(&mut Rng::new(12), geom(2, 3, 5, 4, 4, 1, 1, 1, 1), false);
}

#[test]
fn conv2d_every_tile_shape_matches_reference() {
    // The GEMM tile follows the product's rows: up to 16 (wide), 17..32, more. Forward and
    // grad-weight have c_out rows, grad-input c_in; strided grad-input is its own kernel.
    conv_case(&mut Rng::new(7), geom(2, 20, 7, 9, 40, 3, 3, 1, 1), false); // 32-row grad-input, 64-row fwd/gw
    conv_case(&mut Rng::new(8), geom(2, 33, 9, 8, 20, 3, 3, 2, 1), false); // 64-row strided grad-input, 32-row fwd/gw
    conv_case(&mut Rng::new(9), geom(3, 24, 10, 11, 12, 3, 3, 2, 1), true); // 32-row strided grad-input, wide fwd/gw
    conv_case(&mut Rng::new(10), geom(2, 40, 6, 7, 3, 3, 3, 1, 1), false); // 64-row grad-input
}

#[test]
fn every_gemm_plan_matches_reference() {
    // Every tile shape the planner or the tuner can choose (CPU and GPU engines), unsplit and
    // split three ways, on odd shapes: conv forward, grad-input (stride 1 and the strided
    // parity classes), grad-weight, and a plain GEMM with a bias-free split-K.
    // Past the GEMM tiles come the direct 3x3 kernel (conv2d.direct3x3): 3x3 stride-1 products
    // with 16 or 32 output channels and a width that is a multiple of 4 take it (the last three
    // cases: forward with a bias, grad-input into 32 and 16 channels, a 3-channel input, a width
    // of 128, tiles that span images); and Winograd F(2x2, 3x3), which every 3x3 stride-1
    // product takes. The others fall back to the default plan.
    for tile in 0..=matmul::WINOGRAD {
        for splits in [1, 3] {
            matmul::with_plan(tile, splits, || {
                let mut rng = Rng::new(11 + tile as u64);
                conv_case(&mut rng, geom(2, 20, 7, 9, 37, 3, 3, 1, 1), true);
                conv_case(&mut rng, geom(3, 9, 9, 8, 70, 3, 3, 2, 1), false);
                gemm_case(&mut rng, 67, 300, 133, true, false);
                conv_case(&mut rng, geom(3, 32, 5, 12, 16, 3, 3, 1, 1), true);
                conv_case(&mut rng, geom(2, 16, 7, 8, 32, 3, 3, 1, 1), false);
                conv_case(&mut rng, geom(2, 3, 3, 128, 16, 3, 3, 1, 1), false);
            });
            eprintln!("plan {} split {splits}: ok", matmul::tile_name(tile));
        }
    }
}

#[test]
fn winograd_matches_reference_on_odd_shapes() {
    // Winograd F(2x2, 3x3) (the tuner's "winograd2x2" plan), forward and stride-1 grad-input
    // (a convolution of dy with padding 2 - pad): odd heights and widths (partial 2x2 tiles),
    // paddings 0, 1 and 2, channel counts that fill neither a workgroup's 16 output channels nor
    // a step's 4 inputs, more than 32 tiles per image, one-pixel images, a bias.
    // Each case must have run Winograd for both (not the default a product without it gets).
    let mut rng = Rng::new(77);
    for (g, bias) in [
        (geom(3, 5, 9, 7, 21, 3, 3, 1, 1), true),
        (geom(2, 17, 6, 11, 3, 3, 3, 1, 0), false),
        (geom(2, 6, 5, 5, 33, 3, 3, 1, 2), true),
        (geom(1, 9, 13, 14, 16, 3, 3, 1, 1), false),
        (geom(4, 3, 1, 1, 4, 3, 3, 1, 1), true),
    ] {
        let ((), plans) =
            matmul::plans_used(|| matmul::with_plan(matmul::WINOGRAD, 1, || conv_case(&mut rng, g, bias)));
        for family in ["conv2d.forward", "conv2d.grad_input"] {
            let tiles: Vec<_> =
                plans.iter().filter(|(f, _)| *f == family).map(|(_, p)| matmul::tile_name(p.tile)).collect();
            assert_eq!(tiles, [matmul::WINOGRAD_NAME], "{g:?}: {family}");
        }
    }
}

/// Largest |gpu - reference| over the largest |reference|.
fn max_error(gpu: &[f64], reference: &[f64]) -> f64 {
    let scale = reference.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    gpu.iter().zip(reference).fold(0.0f64, |m, (a, b)| m.max((a - b).abs())) / scale
}

#[test]
fn winograd_error_is_of_the_order_of_the_direct_sums() {
    // Winograd's transforms add and subtract inputs before multiplying, so it rounds
    // differently from the direct sum: its error against the f64 reference, measured here on
    // ResNet-32's 64-channel geometry, must stay within 4x of the implicit GEMM's (the plan it
    // would replace).
    let g = geom(2, 64, 8, 8, 64, 3, 3, 1, 1);
    let mut rng = Rng::new(78);
    let x = f32_exact(&rng.vec(g.n * g.c_in * g.h * g.w));
    let w = f32_exact(&rng.vec(g.c_out * g.c_in * 9));
    let dy = f32_exact(&rng.vec(g.n * g.c_out * g.h * g.w));
    let cg = conv_geom(&g);
    let (xt, wt, dyt) = (tensor(&x, &[2, 64, 8, 8]), tensor(&w, &[64, 64, 3, 3]), tensor(&dy, &[2, 64, 8, 8]));
    let run = |tile: usize| {
        let (out, plans) = matmul::plans_used(|| {
            matmul::with_plan(tile, 1, || {
                let y = values(&conv2d::conv2d_forward(&xt, &wt, None, &cg).unwrap());
                (y, values(&conv2d::conv2d_grad_input(&dyt, &wt, &cg).unwrap()))
            })
        });
        assert!(plans.len() == 2 && plans.iter().all(|(_, p)| p.tile == tile), "{plans:?}");
        out
    };
    let gemm_tile = matmul::tile_index("rm8").unwrap();
    let references = [cpu::conv2d(&x, &w, None, &g), cpu::conv2d_grad_input(&dy, &w, &g)];
    let ((wy, wdx), (gy, gdx)) = (run(matmul::WINOGRAD), run(gemm_tile));
    for (what, wino, gemm, reference) in
        [("forward", &wy, &gy, &references[0]), ("grad-input", &wdx, &gdx, &references[1])]
    {
        let (e_wino, e_gemm) = (max_error(wino, reference), max_error(gemm, reference));
        eprintln!("{what}: max error / max |y|: winograd {e_wino:.2e}, implicit GEMM {e_gemm:.2e}");
        assert!(e_wino <= 4.0 * e_gemm.max(1e-7), "{what}: winograd {e_wino:.2e} vs GEMM {e_gemm:.2e}");
    }
}

#[test]
fn conv2d_grad_weight_split_k_matches_reference() {
    // batch*out pixels = 9 * 24 * 23 = 4968: long enough that the reduction is split
    conv_case(&mut Rng::new(6), geom(9, 3, 24, 23, 4, 3, 3, 1, 1), false);
}

#[test]
fn split_k_sums_match_reference_with_every_lane_count() {
    // The second pass of a split-K product with 1 ... 256 threads per output (GPUs take
    // reduce::split_lanes(splits), software drivers 1), on odd output counts and part counts
    // that are not multiples of the lanes; run twice, the sums must be bit-identical.
    let mut rng = Rng::new(31);
    for (n, splits) in [(1, 1), (37, 3), (300, 17), (777, 256), (2305, 65)] {
        let parts = f32_exact(&rng.vec(n * splits));
        let expected: Vec<f64> = (0..n).map(|i| (0..splits).map(|z| parts[z * n + i]).sum()).collect();
        let pt = tensor(&parts, &[parts.len()]);
        for lanes in (0..=8).map(|b| 1usize << b) {
            let out = tensor(&vec![f64::NAN; n], &[n]);
            reduce::sum_splits_with_lanes(&pt, splits, lanes, &out).unwrap();
            let first = values(&out);
            assert_close(&format!("{n} outputs of {splits} parts, {lanes} lanes"), &first, &expected, LONG_SUM);
            reduce::sum_splits_with_lanes(&pt, splits, lanes, &out).unwrap();
            assert_eq!(values(&out), first, "{n} outputs of {splits} parts, {lanes} lanes: not deterministic");
        }
        let gpu_lanes = reduce::split_lanes(splits, false);
        assert!(gpu_lanes.is_power_of_two() && gpu_lanes <= 64, "{splits} parts: {gpu_lanes} lanes");
        assert!(gpu_lanes == 1 || splits / gpu_lanes >= 8, "{splits} parts: {gpu_lanes} lanes leave too few each");
    }
    assert_eq!(reduce::split_lanes(256, false), 32); // 16-channel weight gradients on the H200
    assert_eq!(reduce::split_lanes(256, true), 1);
    let t = tensor(&[1.0; 8], &[8]);
    assert!(reduce::sum_splits_with_lanes(&t, 2, 3, &tensor(&[0.0; 4], &[4])).is_err(), "3 lanes accepted");
    assert!(reduce::sum_splits_with_lanes(&t, 3, 1, &tensor(&[0.0; 4], &[4])).is_err(), "too few parts accepted");
}

#[test]
fn gemm_all_transposes_match_reference() {
    let mut rng = Rng::new(7);
    for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
        gemm_case(&mut rng, 70, 37, 131, ta, tb);
    }
    gemm_case(&mut rng, 1, 1, 1, false, false);
}

#[test]
fn gemm_split_k_matches_reference() {
    gemm_case(&mut Rng::new(8), 10, 5003, 21, false, false);
    gemm_case(&mut Rng::new(9), 65, 2049, 3, true, false);
}

#[test]
fn matmul_forward_and_backward_match_reference() {
    let mut rng = Rng::new(10);
    let (m, k, n) = (17, 33, 65);
    let (a, b, r) = (f32_exact(&rng.vec(m * k)), f32_exact(&rng.vec(k * n)), f32_exact(&rng.vec(m * n)));
    let (at, bt) = (param(&a, &[m, k]), param(&b, &[k, n]));
    let y = matmul::matmul(&at, &bt).unwrap();
    assert_close("matmul forward", &values(&y), &cpu::matmul(&a, &b, m, k, n, false, false), LONG_SUM);
    y.backward_with(tensor(&r, &[m, n])).unwrap();
    assert_close("matmul grad A", &grad(&at), &cpu::matmul(&r, &b, m, n, k, false, true), LONG_SUM);
    assert_close("matmul grad B", &grad(&bt), &cpu::matmul(&a, &r, k, m, n, true, false), LONG_SUM);
}

#[test]
fn linear_forward_and_backward_match_reference() {
    let mut rng = Rng::new(11);
    let (n, i, o) = (5, 67, 13);
    let (x, w, b, r) =
        (f32_exact(&rng.vec(n * i)), f32_exact(&rng.vec(o * i)), f32_exact(&rng.vec(o)), f32_exact(&rng.vec(n * o)));
    let (xt, wt, bt) = (param(&x, &[n, i]), param(&w, &[o, i]), param(&b, &[o]));
    let y = matmul::linear(&xt, &wt, Some(&bt)).unwrap();
    assert_close("linear forward", &values(&y), &cpu::linear(&x, &w, Some(&b), n, i, o), LONG_SUM);
    y.backward_with(tensor(&r, &[n, o])).unwrap();
    assert_close("linear grad input", &grad(&xt), &cpu::matmul(&r, &w, n, o, i, false, false), LONG_SUM);
    assert_close("linear grad weight", &grad(&wt), &cpu::matmul(&r, &x, o, n, i, true, false), LONG_SUM);
    let db: Vec<f64> = (0..o).map(|j| (0..n).map(|s| r[s * o + j]).sum()).collect();
    assert_close("linear grad bias", &grad(&bt), &db, LONG_SUM);
}

#[test]
fn batchnorm_train_forward_backward_and_running_stats_match_reference() {
    each_summing_variant(|variant| {
        // (3, 5, 7, 9): one chunk per channel; (37, 3, 11, 13): 5,291 values per channel in 3
        // chunks; (261, 2, 43, 49): one image per chunk, 261 chunks, more than the finalize
        // kernels' 256 threads, so some threads combine two
        let shapes = [(false, (3, 5, 7, 9)), (true, (3, 5, 7, 9)), (false, (37, 3, 11, 13)), (true, (261, 2, 43, 49))];
        for (relu, (n, c, h, w)) in shapes {
            let mut rng = Rng::new(12);
            let hw = h * w;
            let x: Vec<f64> = f32_exact(&rng.vec(n * c * hw).iter().map(|v| 2.0 * v + 0.5).collect::<Vec<_>>());
            let (gamma, beta) = (f32_exact(&rng.vec_in(c, 0.5, 1.5)), f32_exact(&rng.vec(c)));
            let (mut rm, mut rv) = (f32_exact(&rng.vec(c)), f32_exact(&rng.vec_in(c, 0.5, 2.0)));
            let r = f32_exact(&rng.vec(n * c * hw));
            let (xt, gt, bt) = (param(&x, &[n, c, h, w]), param(&gamma, &[c]), param(&beta, &[c]));
            let (rmt, rvt) = (tensor(&rm, &[c]), tensor(&rv, &[c]));
            let cfg = batchnorm::BatchNormConfig { relu, ..Default::default() };
            let y = batchnorm::batch_norm(&xt, &gt, &bt, &rmt, &rvt, cfg).unwrap();
            let out = cpu::batchnorm_train(&x, &gamma, &beta, n, c, hw, 1e-5);
            // Fused: y = relu(bn(x)), and the gradient reaching bn is masked by the output.
            let (want, dy) =
                if relu { (cpu::relu(&out.y), cpu::relu_backward(&r, &out.y)) } else { (out.y.clone(), r.clone()) };
            assert!(!relu || want.iter().filter(|&&v| v == 0.0).count() > want.len() / 4, "the ReLU must cut");
            assert_close(&format!("batchnorm train forward (relu {relu}, {variant})"), &values(&y), &want, ELEMENTWISE);
            cpu::batchnorm_running_update(&mut rm, &mut rv, &out.mean, &out.var, n * hw, 0.1);
            assert_close(&format!("batchnorm running mean ({variant})"), &values(&rmt), &rm, ELEMENTWISE);
            assert_close(&format!("batchnorm running var (unbiased, {variant})"), &values(&rvt), &rv, ELEMENTWISE);
            y.backward_with(tensor(&r, y.shape())).unwrap();
            let (dx, dg, db) = cpu::batchnorm_train_backward(&dy, &x, &gamma, &out.mean, &out.invstd, n, c, hw);
            assert_close(&format!("batchnorm train grad input (relu {relu}, {variant})"), &grad(&xt), &dx, LONG_SUM);
            assert_close(&format!("batchnorm grad gamma (relu {relu}, {variant})"), &grad(&gt), &dg, LONG_SUM);
            assert_close(&format!("batchnorm grad beta (relu {relu}, {variant})"), &grad(&bt), &db, LONG_SUM);
        }
    });
}

#[test]
fn batchnorm_eval_forward_and_backward_match_reference() {
    for relu in [false, true] {
        let mut rng = Rng::new(13);
        let (n, c, hw) = (2, 7, 15);
        let x = f32_exact(&rng.vec(n * c * hw));
        let (gamma, beta) = (f32_exact(&rng.vec_in(c, 0.5, 1.5)), f32_exact(&rng.vec(c)));
        let (rm, rv) = (f32_exact(&rng.vec(c)), f32_exact(&rng.vec_in(c, 0.5, 2.0)));
        let r = f32_exact(&rng.vec(n * c * hw));
        let (xt, gt, bt) = (param(&x, &[n, c, 3, 5]), param(&gamma, &[c]), param(&beta, &[c]));
        let (rmt, rvt) = (tensor(&rm, &[c]), tensor(&rv, &[c]));
        let cfg = batchnorm::BatchNormConfig { training: false, relu, ..Default::default() };
        let y = batchnorm::batch_norm(&xt, &gt, &bt, &rmt, &rvt, cfg).unwrap();
        let pre = cpu::batchnorm_eval(&x, &gamma, &beta, &rm, &rv, n, c, hw, 1e-5);
        let (want, dy) = if relu { (cpu::relu(&pre), cpu::relu_backward(&r, &pre)) } else { (pre.clone(), r.clone()) };
        assert_close(&format!("batchnorm eval forward (relu {relu})"), &values(&y), &want, ELEMENTWISE);
        assert_close("batchnorm eval leaves running mean", &values(&rmt), &rm, (0.0, 0.0));
        y.backward_with(tensor(&r, y.shape())).unwrap();
        let (dx, dg, db) = cpu::batchnorm_eval_backward(&dy, &x, &gamma, &rm, &rv, n, c, hw, 1e-5);
        assert_close(&format!("batchnorm eval grad input (relu {relu})"), &grad(&xt), &dx, ELEMENTWISE);
        assert_close(&format!("batchnorm eval grad gamma (relu {relu})"), &grad(&gt), &dg, LONG_SUM);
        assert_close(&format!("batchnorm eval grad beta (relu {relu})"), &grad(&bt), &db, LONG_SUM);
    }
}

#[test]
fn batchnorm_eval_without_graph_and_with_residual_match_reference() {
    // Evaluation without a graph runs one kernel from the running statistics, with the
    // residual and ReLU of a ResNet block's end fused in (batch_norm_add_relu).
    let mut rng = Rng::new(14);
    let (n, c, hw) = (3, 5, 22);
    let x = f32_exact(&rng.vec(n * c * hw));
    let res = f32_exact(&rng.vec(n * c * hw));
    let (gamma, beta) = (f32_exact(&rng.vec_in(c, 0.5, 1.5)), f32_exact(&rng.vec(c)));
    let (rm, rv) = (f32_exact(&rng.vec(c)), f32_exact(&rng.vec_in(c, 0.5, 2.0)));
    let (xt, rt) = (tensor(&x, &[n, c, 2, 11]), tensor(&res, &[n, c, 2, 11]));
    let (gt, bt, rmt, rvt) = (tensor(&gamma, &[c]), tensor(&beta, &[c]), tensor(&rm, &[c]), tensor(&rv, &[c]));
    let pre = cpu::batchnorm_eval(&x, &gamma, &beta, &rm, &rv, n, c, hw, 1e-5);
    sasprune::autograd::no_grad(|| {
        for relu in [false, true] {
            let cfg = batchnorm::BatchNormConfig { training: false, relu, ..Default::default() };
            let y = batchnorm::batch_norm(&xt, &gt, &bt, &rmt, &rvt, cfg).unwrap();
            let want = if relu { cpu::relu(&pre) } else { pre.clone() };
            assert_close(&format!("batchnorm eval, no graph (relu {relu})"), &values(&y), &want, ELEMENTWISE);
        }
        let cfg = batchnorm::BatchNormConfig { training: false, ..Default::default() };
        let y = batchnorm::batch_norm_add_relu(&xt, &rt, &gt, &bt, &rmt, &rvt, cfg).unwrap();
        let sum: Vec<f64> = pre.iter().zip(&res).map(|(a, b)| a + b).collect();
        assert_close("batchnorm eval + residual + relu, no graph", &values(&y), &cpu::relu(&sum), ELEMENTWISE);
    });
    // With a graph (training mode) it is batch norm then add + ReLU, differentiable.
    let xp = param(&x, &[n, c, 2, 11]);
    let cfg = batchnorm::BatchNormConfig::default();
    let y = batchnorm::batch_norm_add_relu(&xp, &rt, &gt, &bt, &tensor(&rm, &[c]), &tensor(&rv, &[c]), cfg).unwrap();
    let bn = cpu::batchnorm_train(&x, &gamma, &beta, n, c, hw, 1e-5);
    let sum: Vec<f64> = bn.y.iter().zip(&res).map(|(a, b)| a + b).collect();
    assert_close("batchnorm train + residual + relu", &values(&y), &cpu::relu(&sum), LONG_SUM);
    assert!(y.requires_grad(), "differentiable with a graph");
}

/// Batch norm as a test runs it: (x, residual, gamma, beta, running mean, running var) → y.
type BatchNormRun<'a> = &'a dyn Fn(&Tensor, &Tensor, &Tensor, &Tensor, &Tensor, &Tensor) -> Tensor;

/// One batch-norm case of [`training_batch_norm_fusions_give_the_separate_ops_bits`]: from
/// `inputs` x, gamma, beta, residual and dy, the output, the gradients of x, gamma, beta and the
/// residual (empty where unused), and the running statistics that `run` gives.
fn batch_norm_bits(inputs: [&[f64]; 5], shape: [usize; 4], dtype: Dtype, run: BatchNormRun) -> Vec<Vec<f64>> {
    let [x, gamma, beta, res, dy] = inputs;
    let c = shape[1];
    let activation = |v: &[f64]| activation(v, &shape, dtype);
    let (xt, rt) = (activation(x).with_grad(), activation(res).with_grad());
    let (gt, bt) = (param(gamma, &[c]), param(beta, &[c]));
    let (rm, rv) = (Tensor::zeros(&[c]).unwrap(), Tensor::full(&[c], 1.0).unwrap());
    let y = run(&xt, &rt, &gt, &bt, &rm, &rv);
    y.backward_with(activation(dy)).unwrap();
    let rgrad = if rt.grad().is_some() { grad(&rt) } else { Vec::new() };
    vec![values(&y), grad(&xt), grad(&gt), grad(&bt), rgrad, values(&rm), values(&rv)]
}

#[test]
fn training_batch_norm_fusions_give_the_separate_ops_bits() {
    // In training a ResNet block's first batch norm runs with its ReLU in one kernel, whose
    // backward recomputes the ReLU's mask from x (it reads x and dy, not the output), and its
    // second with the residual add and the ReLU in one kernel. Outputs, running statistics and
    // every gradient must be the bits of the separate ops (batch norm, then elementwise relu or
    // add_relu), in f32 and with f16 activations, in training and in evaluation with a graph.
    // Channel 0 has gamma 0, so its outputs are beta exactly: 2^-25 (half of f16's smallest
    // subnormal) rounds to 0 in f16 and must be masked there and not in f32; its residual is
    // a few multiples of 2^-24, where adding before or after rounding differs.
    let adapter = &sasprune::gpu::get().unwrap().adapter;
    let dtypes: &[Dtype] = if adapter.shader_f16 { &[Dtype::F32, Dtype::F16] } else { &[Dtype::F32] };
    let shape = [5, 4, 7, 9];
    let (n, c, hw) = (shape[0], shape[1], shape[2] * shape[3]);
    for &dtype in dtypes {
        let exact = |v: Vec<f64>| -> Vec<f64> {
            match dtype {
                Dtype::F16 => v.iter().map(|&x| half::f16::from_f64(x).to_f64()).collect(),
                _ => f32_exact(&v),
            }
        };
        let mut rng = Rng::new(15);
        let x = exact(rng.vec(n * c * hw).iter().map(|v| 2.0 * v + 0.3).collect());
        let dy = exact(rng.vec(n * c * hw));
        let mut res = exact(rng.vec(n * c * hw));
        for b in 0..n {
            for j in 0..hw {
                res[b * c * hw + j] = (rng.below(7) as f64 - 3.0) * 2f64.powi(-24);
            }
        }
        let mut gamma = f32_exact(&rng.vec_in(c, 0.5, 1.5));
        let mut beta = f32_exact(&rng.vec(c));
        (gamma[0], beta[0]) = (0.0, 2f64.powi(-25));
        for training in [true, false] {
            let cfg = batchnorm::BatchNormConfig { training, ..Default::default() };
            let relu = batchnorm::BatchNormConfig { relu: true, ..cfg };
            let inputs = [&x[..], &gamma[..], &beta[..], &res[..], &dy[..]];
            let bits = |run: BatchNormRun| batch_norm_bits(inputs, shape, dtype, run);
            let cases = [
                (
                    "batch norm + ReLU",
                    bits(&|x, _, g, b, m, v| batchnorm::batch_norm(x, g, b, m, v, relu).unwrap()),
                    bits(&|x, _, g, b, m, v| {
                        elementwise::relu(&batchnorm::batch_norm(x, g, b, m, v, cfg).unwrap()).unwrap()
                    }),
                ),
                (
                    "batch norm + residual + ReLU",
                    bits(&|x, r, g, b, m, v| batchnorm::batch_norm_add_relu(x, r, g, b, m, v, cfg).unwrap()),
                    bits(&|x, r, g, b, m, v| {
                        elementwise::add_relu(&batchnorm::batch_norm(x, g, b, m, v, cfg).unwrap(), r).unwrap()
                    }),
                ),
            ];
            for (what, fused, separate) in cases {
                let names =
                    ["output", "grad x", "grad gamma", "grad beta", "grad residual", "running mean", "running var"];
                for ((name, f), s) in names.iter().zip(&fused).zip(&separate) {
                    let what = format!("{what} ({dtype:?}, training {training}): {name}");
                    assert_eq!(f.len(), s.len(), "{what}");
                    assert_eq!(differing_bits(f, s), 0, "{what}: fused and separate differ");
                }
                // the masks matter: channel 0 is cut in f16 only, other channels in part
                let out = &fused[0];
                let channel = |ch: usize| (0..n).flat_map(move |b| (0..hw).map(move |j| (b * c + ch) * hw + j));
                let cut = |ch: usize| channel(ch).filter(|&i| out[i] == 0.0).count();
                if what == "batch norm + ReLU" {
                    assert_eq!(cut(0), if dtype == Dtype::F16 { n * hw } else { 0 }, "{what} {dtype:?}: channel 0");
                    assert!((1..n * hw).contains(&cut(1)), "{what}: channel 1 cut {} of {}", cut(1), n * hw);
                }
            }
        }
    }
}

#[test]
fn batch_norm_sums_combined_where_they_are_used_give_the_finalize_kernels_bits() {
    // Batch norm's per-channel sums run in two levels: per (chunk, channel) partial sums, then a
    // combination over the chunks. Normalize and backward_input combine them in every workgroup
    // (those of chunk 0 store the result), where separate finalize kernels did it once per
    // channel: outputs, running statistics and gradients must keep the finalize kernels' bits,
    // with both summing variants, in f32 and f16, in training and in evaluation with a graph,
    // plain, with the ReLU and with the residual. Shapes: one chunk per channel; 3 chunks; 256
    // chunks, one per thread of a workgroup; 261, where folding gives way to the finalize
    // kernels (each thread would combine two).
    let adapter = &sasprune::gpu::get().unwrap().adapter;
    let dtypes: &[Dtype] = if adapter.shader_f16 { &[Dtype::F32, Dtype::F16] } else { &[Dtype::F32] };
    each_summing_variant(|variant| {
        for shape in [[3, 5, 7, 9], [37, 3, 11, 13], [256, 2, 43, 49], [261, 2, 43, 49]] {
            let numel: usize = shape.iter().product();
            for &dtype in dtypes {
                let mut rng = Rng::new(16);
                let exact = |v: Vec<f64>| -> Vec<f64> {
                    match dtype {
                        Dtype::F16 => v.iter().map(|&x| half::f16::from_f64(x).to_f64()).collect(),
                        _ => f32_exact(&v),
                    }
                };
                let x = exact(rng.vec(numel).iter().map(|v| 2.0 * v + 0.3).collect());
                let (res, dy) = (exact(rng.vec(numel)), exact(rng.vec(numel)));
                let (gamma, beta) = (f32_exact(&rng.vec_in(shape[1], 0.5, 1.5)), f32_exact(&rng.vec(shape[1])));
                for training in [true, false] {
                    let cfg = batchnorm::BatchNormConfig { training, ..Default::default() };
                    let relu = batchnorm::BatchNormConfig { relu: true, ..cfg };
                    let inputs = [&x[..], &gamma[..], &beta[..], &res[..], &dy[..]];
                    let runs: [(&str, BatchNormRun); 3] = [
                        ("batch norm", &|x, _, g, b, m, v| batchnorm::batch_norm(x, g, b, m, v, cfg).unwrap()),
                        ("batch norm + ReLU", &|x, _, g, b, m, v| batchnorm::batch_norm(x, g, b, m, v, relu).unwrap()),
                        ("batch norm + residual + ReLU", &|x, r, g, b, m, v| {
                            batchnorm::batch_norm_add_relu(x, r, g, b, m, v, cfg).unwrap()
                        }),
                    ];
                    for (what, run) in runs {
                        let bits = |folded| {
                            batchnorm::with_folded_finalize(folded, || batch_norm_bits(inputs, shape, dtype, run))
                        };
                        let (combined, separate) = (bits(true), bits(false));
                        let names = ["output", "grad x", "grad gamma", "grad beta", "grad residual", "mean", "var"];
                        for ((name, a), b) in names.iter().zip(&combined).zip(&separate) {
                            let what = format!("{what} {shape:?} ({dtype:?}, {variant}, training {training}): {name}");
                            assert_eq!(a.len(), b.len(), "{what}");
                            assert_eq!(differing_bits(a, b), 0, "{what}: combined in place and finalized differ");
                        }
                        // not vacuous: every channel's gradients and (in training) statistics moved
                        let [_, _, dgamma, dbeta, _, mean, var] = &combined[..] else { unreachable!() };
                        assert!(dgamma.iter().chain(dbeta).all(|&g| g != 0.0 && g.is_finite()), "{what}");
                        let moved = mean.iter().all(|&m| m != 0.0) && var.iter().all(|&v| v != 1.0);
                        assert_eq!(moved, training, "{what}: running statistics updated only in training");
                    }
                }
            }
        }
    });
}

#[test]
fn convolution_epilogue_gives_the_separate_ops_bits_with_every_plan() {
    // In evaluation the ResNets run each convolution with the batch norm, residual and ReLU
    // after it fused into its output. That output must be the very bits the separate kernels
    // give, on every kernel that writes a forward convolution: each FMA GEMM tile (the
    // cooperative-matrix ones: tests/mixed_precision.rs), the direct 3x3 kernel (16 or 32
    // output channels, widths that are multiples of 4) and Winograd; in f32 and with mixed
    // precision's f16 activations (the fused sum is rounded to f16 before batch norm, as the
    // separate ops store it). In f32 it also matches the f64 reference.
    let adapter = &sasprune::gpu::get().unwrap().adapter;
    let dtypes: &[Dtype] = if adapter.shader_f16 { &[Dtype::F32, Dtype::F16] } else { &[Dtype::F32] };
    let fma = |t: &usize| *t >= matmul::TILES.len() || matmul::TILES[*t].coop == 0;
    // (each plan gets cases it can run: the GEMM tiles any, the direct kernel and Winograd
    // their 3x3 stride-1 ones; the 1x1 case runs the default plan)
    let (strided, odd) = (FUSED_CONV_CASES[0], FUSED_CONV_CASES[1]);
    let sixteen = (geom(3, 32, 5, 12, 16, 3, 3, 1, 1), (false, false));
    let thirty_two = (geom(2, 16, 7, 8, 32, 3, 3, 1, 1), (true, true));
    let one_by_one = (geom(2, 5, 6, 7, 9, 1, 1, 1, 0), (false, true));
    for &dtype in dtypes {
        for tile in (0..=matmul::WINOGRAD).filter(fma) {
            let mut rng = Rng::new(500 + tile as u64);
            let cases = match tile {
                matmul::DIRECT => vec![sixteen, thirty_two, one_by_one],
                matmul::WINOGRAD => vec![odd, thirty_two],
                _ => vec![odd, strided],
            };
            for (g, fuse) in cases {
                let what = format!("{g:?} {dtype:?} plan {} bias, residual {fuse:?}", matmul::tile_name(tile));
                let r = matmul::with_plan(tile, 1, || fused_conv_case(&mut rng, g, dtype, fuse, 1.0));
                let runs_plan = tile < matmul::DIRECT
                    || (tile == matmul::DIRECT
                        && g.kh == 3
                        && g.stride == 1
                        && g.w % 4 == 0
                        && [16, 32].contains(&g.c_out))
                    || (tile == matmul::WINOGRAD && g.kh == 3 && g.stride == 1);
                let forced = if runs_plan { vec![matmul::tile_name(tile)] } else { r.plans.clone() };
                assert_eq!(r.plans, forced, "{what}: one forward product, on the forced plan where it runs");
                let differ = differing_bits(&r.fused, &r.separate);
                assert_eq!(differ, 0, "{what}: {differ} of {} outputs differ from the separate ops", r.fused.len());
                if dtype == Dtype::F32 {
                    assert_close(&format!("fused conv + bn + relu {what}"), &r.fused, &r.reference, LONG_SUM);
                }
            }
        }
        // sums among f16's subnormals, which an f16 store keeps (default plan)
        let (g, fuse) = thirty_two;
        let r = fused_conv_case(&mut Rng::new(599), g, dtype, fuse, 2f64.powi(-17));
        let tiny = r.separate.iter().filter(|v| v.abs() < 6.1e-5 && **v != 0.0).count();
        assert!(tiny > r.fused.len() / 4, "{dtype:?}: {tiny} of {} outputs among f16's subnormals", r.fused.len());
        assert_eq!(differing_bits(&r.fused, &r.separate), 0, "{dtype:?}: fused and separate, tiny sums");
    }
}

#[test]
fn grad_input_adds_a_pending_gradient_with_the_bits_of_a_separate_add_on_every_plan() {
    // A ResNet block's input gets two gradients: its shortcut's, then its first convolution's.
    // The grad-input kernel adds the first as it writes the second
    // (conv2d_grad_input_adding): on each FMA GEMM tile (stride 1, and stride 2's parity
    // classes), the direct 3x3 kernel and Winograd, in f32 and with f16 activations (the
    // kernel's sum rounded to f16 before the add, as its store would round it), the result must
    // be the bits of adding afterwards (elementwise::add), and in f32 match the f64 reference.
    let adapter = &sasprune::gpu::get().unwrap().adapter;
    let dtypes: &[Dtype] = if adapter.shader_f16 { &[Dtype::F32, Dtype::F16] } else { &[Dtype::F32] };
    let fma = |t: &usize| *t >= matmul::TILES.len() || matmul::TILES[*t].coop == 0;
    let sixteen = geom(3, 16, 5, 12, 16, 3, 3, 1, 1);
    let thirty_two = geom(2, 32, 7, 8, 16, 3, 3, 1, 1);
    let [odd, strided, one_by_one] = PENDING_ADD_CASES;
    for &dtype in dtypes {
        for tile in (0..=matmul::WINOGRAD).filter(fma) {
            let mut rng = Rng::new(700 + tile as u64);
            let cases = match tile {
                matmul::DIRECT => vec![sixteen, thirty_two],
                matmul::WINOGRAD => vec![odd, thirty_two],
                _ => vec![odd, strided, one_by_one],
            };
            for g in cases {
                let what = format!("{g:?} {dtype:?} plan {}", matmul::tile_name(tile));
                let r = matmul::with_plan(tile, 1, || grad_input_adding_case(&mut rng, g, dtype));
                let runs_plan = tile < matmul::DIRECT
                    || (tile == matmul::DIRECT && g.stride == 1 && g.w % 4 == 0 && [16, 32].contains(&g.c_in))
                    || (tile == matmul::WINOGRAD && g.kh == 3 && g.stride == 1);
                if runs_plan {
                    assert_eq!(r.plans, [matmul::tile_name(tile)], "{what}: one product, on the forced plan");
                }
                let differ = differing_bits(&r.fused, &r.separate);
                assert_eq!(differ, 0, "{what}: {differ} of {} differ from grad-input + add", r.fused.len());
                if dtype == Dtype::F32 {
                    assert_close(&format!("grad-input + pending {what}"), &r.fused, &r.reference, LONG_SUM);
                }
            }
        }
    }
    // a pending gradient of another shape or type is refused, not read wrongly
    let g = conv2d::ConvGeom { n: 1, c_in: 2, h: 4, w: 4, c_out: 3, kh: 3, kw: 3, stride: 1, pad: 1 };
    let (dy, w) = (Tensor::zeros(&[1, 3, 4, 4]).unwrap(), Tensor::zeros(&[3, 2, 3, 3]).unwrap());
    assert!(conv2d::conv2d_grad_input_adding(&dy, &w, &g, Some(&Tensor::zeros(&[1, 3, 4, 4]).unwrap())).is_err());
    if adapter.shader_f16 {
        let half = Tensor::from_slice_as(Dtype::F16, &[0.0; 32], &[1, 2, 4, 4]).unwrap();
        assert!(conv2d::conv2d_grad_input_adding(&dy, &w, &g, Some(&half)).is_err());
    }
}

#[test]
fn convolution_with_relu_fused_matches_reference_and_keeps_its_graph_when_training() {
    // AlexNet's convolutions: conv + bias + ReLU, one kernel without a graph.
    let mut rng = Rng::new(601);
    let g = geom(2, 3, 31, 29, 5, 11, 11, 4, 2);
    let x = f32_exact(&rng.vec(g.n * g.c_in * g.h * g.w));
    let w = f32_exact(&rng.vec(g.c_out * g.c_in * g.kh * g.kw));
    let b = f32_exact(&rng.vec(g.c_out));
    let want = cpu::relu(&cpu::conv2d(&x, &w, Some(&b), &g));
    let (xt, wt, bt) =
        (tensor(&x, &[g.n, g.c_in, g.h, g.w]), param(&w, &[g.c_out, g.c_in, g.kh, g.kw]), tensor(&b, &[g.c_out]));
    let fused = sasprune::autograd::no_grad(|| conv2d::conv2d_relu(&xt, &wt, Some(&bt), g.stride, g.pad).unwrap());
    let separate = sasprune::autograd::no_grad(|| {
        elementwise::relu(&conv2d::conv2d(&xt, &wt, Some(&bt), g.stride, g.pad).unwrap()).unwrap()
    });
    assert_close("conv + bias + relu fused", &values(&fused), &want, LONG_SUM);
    assert_eq!(differing_bits(&values(&fused), &values(&separate)), 0, "fused and separate give the same bits");
    // with a graph: the separate, differentiable ops
    let y = conv2d::conv2d_relu(&xt, &wt, Some(&bt), g.stride, g.pad).unwrap();
    assert!(y.requires_grad());
    assert_close("conv + bias + relu with a graph", &values(&y), &want, LONG_SUM);
    // the fused op itself refuses a graph, and epilogue tensors of the wrong size
    let err = conv2d::conv2d_fused(&xt, &wt, None, g.stride, g.pad, conv2d::Epilogue::default()).unwrap_err();
    assert!(err.to_string().contains("no backward"), "{err}");
    let short = tensor(&[1.0; 3], &[3]);
    let bad = conv2d::Epilogue { batch_norm: Some(&short), ..Default::default() };
    let err = sasprune::autograd::no_grad(|| conv2d::conv2d_fused(&xt, &wt, None, g.stride, g.pad, bad)).unwrap_err();
    assert!(err.to_string().contains("batch-norm vectors of 20 values"), "{err}");
}

#[test]
fn relu_forward_and_backward_match_reference() {
    let mut rng = Rng::new(14);
    let (x, r) = (f32_exact(&rng.vec(1000)), f32_exact(&rng.vec(1000)));
    let xt = param(&x, &[8, 125]);
    let y = elementwise::relu(&xt).unwrap();
    assert_close("relu forward", &values(&y), &cpu::relu(&x), (0.0, 0.0));
    y.backward_with(tensor(&r, &[8, 125])).unwrap();
    assert_close("relu backward", &grad(&xt), &cpu::relu_backward(&r, &x), (0.0, 0.0));
}

#[test]
fn add_relu_forward_and_backward_match_reference() {
    let mut rng = Rng::new(16);
    let n = 3 * 999;
    let (a, b, r) = (f32_exact(&rng.vec(n)), f32_exact(&rng.vec(n)), f32_exact(&rng.vec(n)));
    let (at, bt) = (param(&a, &[3, 999]), param(&b, &[3, 999]));
    let y = elementwise::add_relu(&at, &bt).unwrap();
    let sum = cpu::add(&a, &b);
    assert_close("add_relu forward", &values(&y), &cpu::relu(&sum), ELEMENTWISE);
    y.backward_with(tensor(&r, &[3, 999])).unwrap();
    let want = cpu::relu_backward(&r, &sum);
    assert_close("add_relu grad a", &grad(&at), &want, (0.0, 0.0));
    assert_close("add_relu grad b", &grad(&bt), &want, (0.0, 0.0));
}

#[test]
fn add_scale_axpy_fill_match_reference() {
    let mut rng = Rng::new(15);
    let n = 70_001; // more than 256 workgroups' worth of odd-sized work
    let (a, b) = (f32_exact(&rng.vec(n)), f32_exact(&rng.vec(n)));
    let (at, bt) = (param(&a, &[n]), param(&b, &[n]));
    let s = elementwise::add(&at, &bt).unwrap();
    assert_close("add", &values(&s), &cpu::add(&a, &b), ELEMENTWISE);
    let sc = elementwise::scale(&at, -0.75).unwrap();
    assert_close("scale", &values(&sc), &cpu::scale(&a, -0.75), ELEMENTWISE);
    let y = tensor(&b, &[n]);
    elementwise::axpy(0.3, &tensor(&a, &[n]), &y).unwrap();
    assert_close("axpy", &values(&y), &cpu::axpy(0.3, &a, &b), ELEMENTWISE);
    elementwise::fill(&y, 2.5).unwrap();
    assert_close("fill", &values(&y), &vec![2.5; n], (0.0, 0.0));
    // add's backward passes the gradient to both operands; scale's multiplies it
    let r = f32_exact(&rng.vec(n));
    s.backward_with(tensor(&r, &[n])).unwrap();
    assert_close("add grad a", &grad(&at), &r, (0.0, 0.0));
    assert_close("add grad b", &grad(&bt), &r, (0.0, 0.0));
}

#[test]
fn dropout_forward_and_backward_match_reference_with_its_mask() {
    let mut rng = Rng::new(16);
    let n = 10_007;
    let (x, r) = (f32_exact(&rng.vec(n)), f32_exact(&rng.vec(n)));
    let p = 0.3;
    let keep = values(&elementwise::dropout_mask(&[n], p as f32, 1234).unwrap());
    // the GPU draws exactly the mask of the hash written out on the CPU
    assert_eq!(keep, cpu::dropout_keep_mask(n, p as f32, 1234), "GPU and CPU dropout masks differ");
    // keep rate 0.7: the standard deviation of the kept share over 10,007 draws is 0.0046
    let kept = keep.iter().filter(|&&k| k == 1.0).count() as f64 / n as f64;
    assert!((kept - 0.7).abs() < 0.02, "dropout keeps {kept} of the elements, expected 0.7");
    // consecutive seeds give independent masks: their correlation is about 0 (std 1/sqrt(n) = 0.01)
    let other = values(&elementwise::dropout_mask(&[n], p as f32, 1235).unwrap());
    assert_eq!(other, cpu::dropout_keep_mask(n, p as f32, 1235));
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    let (ma, mb) = (mean(&keep), mean(&other));
    let cov = keep.iter().zip(&other).map(|(a, b)| (a - ma) * (b - mb)).sum::<f64>() / n as f64;
    let corr = cov / (ma * (1.0 - ma) * mb * (1.0 - mb)).sqrt();
    assert!(corr.abs() < 0.04, "masks of seeds 1234 and 1235 correlate: {corr}");
    // every CPU mask over many seeds keeps about 70%, independently of the seed
    for seed in [0u32, 1, 2, 0xFFFF_FFFF] {
        let share = mean(&cpu::dropout_keep_mask(n, p as f32, seed));
        assert!((share - 0.7).abs() < 0.02, "seed {seed} keeps {share}");
    }
    let xt = param(&x, &[n]);
    let y = elementwise::dropout(&xt, p as f32, 1234).unwrap();
    assert_close("dropout forward", &values(&y), &cpu::dropout(&x, &keep, p), ELEMENTWISE);
    y.backward_with(tensor(&r, &[n])).unwrap();
    assert_close("dropout backward", &grad(&xt), &cpu::dropout_backward(&r, &keep, p), ELEMENTWISE);
}

#[test]
fn shortcut_a_forward_and_backward_match_reference() {
    let mut rng = Rng::new(17);
    for (n, c, h, w, pad) in [(3, 5, 9, 7, 2), (2, 16, 32, 32, 8)] {
        let x = f32_exact(&rng.vec(n * c * h * w));
        let xt = param(&x, &[n, c, h, w]);
        let y = shortcut::shortcut_a(&xt, pad).unwrap();
        assert_eq!(y.shape(), [n, c + 2 * pad, h.div_ceil(2), w.div_ceil(2)]);
        assert_close("shortcut_a forward", &values(&y), &cpu::shortcut_a(&x, n, c, h, w, pad), (0.0, 0.0));
        let r = f32_exact(&rng.vec(y.numel()));
        y.backward_with(tensor(&r, y.shape())).unwrap();
        assert_close("shortcut_a backward", &grad(&xt), &cpu::shortcut_a_backward(&r, n, c, h, w, pad), (0.0, 0.0));
    }
}

#[test]
fn shortcut_backward_adds_a_pending_gradient_with_the_bits_of_a_separate_add() {
    // In a downsampling block the shortcut's backward may run second and add the gradient its
    // input already has (from the first convolution): the bits of adding afterwards, in f32
    // and f16, the -0 among the pending values included (-0 + 0 is +0 where no gradient lands).
    let adapter = &sasprune::gpu::get().unwrap().adapter;
    let dtypes: &[Dtype] = if adapter.shader_f16 { &[Dtype::F32, Dtype::F16] } else { &[Dtype::F32] };
    let (n, c, h, w, pad) = (2usize, 5, 9, 7, 2);
    let x_shape = [n, c, h, w];
    let y_shape = [n, c + 2 * pad, h.div_ceil(2), w.div_ceil(2)];
    let mut rng = Rng::new(18);
    let mut pending = f32_exact(&rng.vec(n * c * h * w));
    pending.iter_mut().step_by(3).for_each(|v| *v = -0.0);
    let dy = f32_exact(&rng.vec(y_shape.iter().product()));
    for &dtype in dtypes {
        let (dyt, pt) = (activation(&dy, &y_shape, dtype), activation(&pending, &x_shape, dtype));
        let fused = shortcut::shortcut_a_backward(&dyt, &x_shape, pad, Some(&pt)).unwrap();
        let alone = shortcut::shortcut_a_backward(&dyt, &x_shape, pad, None).unwrap();
        let separate = elementwise::add(&pt, &alone).unwrap();
        assert_eq!(fused.dtype(), dtype);
        let (fused, separate) = (values(&fused), values(&separate));
        assert_eq!(differing_bits(&fused, &separate), 0, "{dtype:?}: fused and separate adds differ");
        assert!(fused.iter().zip(&pending).any(|(f, p)| p.to_bits() == (-0.0f64).to_bits() && f.to_bits() == 0));
        if dtype == Dtype::F32 {
            let want = cpu::add(&pending, &cpu::shortcut_a_backward(&dy, n, c, h, w, pad));
            assert_close("shortcut backward + pending", &fused, &want, ELEMENTWISE);
        }
    }
    // a pending gradient of another shape, or a gradient of the wrong shape, is refused
    let dyt = tensor(&dy, &y_shape);
    let wrong = tensor(&pending[..n * c * h * (w - 1)], &[n, c, h, w - 1]);
    assert!(shortcut::shortcut_a_backward(&dyt, &x_shape, pad, Some(&wrong)).is_err());
    assert!(shortcut::shortcut_a_backward(&dyt, &[n, c, h, w + 2], pad, None).is_err());
}

#[test]
fn maxpool2d_forward_indices_and_backward_match_reference() {
    let mut rng = Rng::new(18);
    for (n, c, h, w, k, s, p) in
        [(2, 3, 13, 11, 3, 2, 0), (3, 2, 9, 8, 2, 2, 0), (2, 3, 10, 9, 3, 2, 1), (1, 2, 7, 7, 3, 1, 1)]
    {
        let x = f32_exact(&rng.vec(n * c * h * w));
        let xt = param(&x, &[n, c, h, w]);
        let y = pool::max_pool2d(&xt, k, s, p).unwrap();
        let (ry, ridx) = cpu::maxpool2d(&x, n, c, h, w, k, s, p);
        let what = format!("maxpool {n}x{c}x{h}x{w} k{k} s{s} p{p}");
        assert_close(&format!("{what} forward"), &values(&y), &ry, (0.0, 0.0));
        let (_, idx) = pool::max_pool2d_with_indices(&tensor(&x, &[n, c, h, w]), k, s, p).unwrap();
        let ref_idx: Vec<f64> = ridx.iter().map(|&i| i as f64).collect();
        assert_eq!(values(&idx), ref_idx, "{what} indices");
        let r = f32_exact(&rng.vec(y.numel()));
        y.backward_with(tensor(&r, y.shape())).unwrap();
        let (oh, ow) = (y.shape()[2], y.shape()[3]);
        assert_close(
            &format!("{what} backward"),
            &grad(&xt),
            &cpu::maxpool2d_backward(&r, &ridx, n, c, h, w, oh, ow),
            ELEMENTWISE,
        );
    }
}

#[test]
fn adaptive_and_global_avgpool_match_reference() {
    let mut rng = Rng::new(19);
    for (n, c, h, w, oh, ow) in [(2, 3, 13, 11, 6, 6), (2, 2, 5, 7, 6, 6), (3, 4, 8, 8, 3, 5)] {
        let x = f32_exact(&rng.vec(n * c * h * w));
        let xt = param(&x, &[n, c, h, w]);
        let y = pool::adaptive_avg_pool2d(&xt, oh, ow).unwrap();
        let what = format!("adaptive avgpool {h}x{w} -> {oh}x{ow}");
        assert_close(
            &format!("{what} forward"),
            &values(&y),
            &cpu::adaptive_avgpool2d(&x, n, c, h, w, oh, ow),
            ELEMENTWISE,
        );
        let r = f32_exact(&rng.vec(y.numel()));
        y.backward_with(tensor(&r, y.shape())).unwrap();
        assert_close(
            &format!("{what} backward"),
            &grad(&xt),
            &cpu::adaptive_avgpool2d_backward(&r, n, c, h, w, oh, ow),
            ELEMENTWISE,
        );
    }
    let (n, c, hw) = (3, 7, 8 * 8);
    let x = f32_exact(&rng.vec(n * c * hw));
    let xt = param(&x, &[n, c, 8, 8]);
    let y = pool::global_avg_pool(&xt).unwrap();
    assert_eq!(y.shape(), [n, c]);
    assert_close("global avgpool forward", &values(&y), &cpu::global_avgpool(&x, n, c, hw), ELEMENTWISE);
    let r = f32_exact(&rng.vec(n * c));
    y.backward_with(tensor(&r, &[n, c])).unwrap();
    assert_close("global avgpool backward", &grad(&xt), &cpu::global_avgpool_backward(&r, n, c, hw), ELEMENTWISE);
}

#[test]
fn softmax_cross_entropy_forward_backward_and_rank_match_reference() {
    let mut rng = Rng::new(20);
    // Rows get segments of threads (the class count rounded up to a power of two, at most 256):
    // 1000 and 300 classes loop over a whole workgroup, 7 and 2 put many rows in one workgroup
    // and leave the last one partly empty.
    for (n, classes, spread) in [(37, 10, 3.0), (5, 1000, 1.0), (300, 7, 50.0), (3, 300, 2.0), (600, 2, 1.0)] {
        let logits = f32_exact(&rng.vec(n * classes).iter().map(|v| v * spread).collect::<Vec<_>>());
        let labels: Vec<u32> = (0..n).map(|_| rng.below(classes) as u32).collect();
        let label_t = tensor(&labels.iter().map(|&l| l as f64).collect::<Vec<_>>(), &[n]);
        let lt = param(&logits, &[n, classes]);
        let loss_t = loss::cross_entropy(&lt, &label_t).unwrap();
        let (ref_loss, ref_grad) = cpu::softmax_cross_entropy(&logits, &labels, n, classes);
        let what = format!("cross entropy n={n} classes={classes}");
        assert_close(&format!("{what} loss"), &values(&loss_t), &[ref_loss], ELEMENTWISE);
        loss_t.backward().unwrap();
        assert_close(&format!("{what} grad"), &grad(&lt), &ref_grad, ELEMENTWISE);
        let rank = values(&loss::label_rank(&lt, &label_t).unwrap());
        for i in 0..n {
            let row = &logits[i * classes..(i + 1) * classes];
            let expected = row.iter().filter(|&&v| v > row[labels[i] as usize]).count() as f64;
            assert_eq!(rank[i], expected, "{what}: rank of row {i}");
        }
    }
}

#[test]
fn sum_mean_sum_squares_and_channel_sum_match_reference() {
    each_summing_variant(|variant| {
        let mut rng = Rng::new(21);
        // 461,872: ResNet-32's prunable weights, the vector whose L1 norm the ADMM phase reports
        for n in [1, 255, 257, 100_003, 461_872, 5_000_011] {
            let x = f32_exact(&rng.vec(n));
            let xt = param(&x, &[n]);
            let s = reduce::sum(&xt).unwrap();
            assert_close(&format!("sum of {n} ({variant})"), &values(&s), &[cpu::sum(&x)], LONG_SUM);
            let m = reduce::mean(&xt.detach()).unwrap();
            assert_close(&format!("mean of {n} ({variant})"), &values(&m), &[cpu::mean(&x)], LONG_SUM);
            let sq: f64 = x.iter().map(|v| v * v).sum();
            assert_close(
                &format!("sum of squares of {n} ({variant})"),
                &values(&reduce::sum_squares(&xt).unwrap()),
                &[sq],
                LONG_SUM,
            );
            // the L1 norm feeds the reported SAS-ADMM objective: mixed signs, so |x| matters
            let l1: f64 = x.iter().map(|v| v.abs()).sum();
            assert_close(
                &format!("sum of |x| of {n} ({variant})"),
                &values(&reduce::sum_abs(&xt).unwrap()),
                &[l1],
                LONG_SUM,
            );
            if n < 1000 {
                s.backward().unwrap();
                assert_close("sum backward", &grad(&xt), &vec![1.0; n], (0.0, 0.0));
            }
        }
        let (outer, c, inner) = (3, 67, 37);
        let x = f32_exact(&rng.vec(outer * c * inner));
        let cs = reduce::channel_sum(&tensor(&x, &[outer, c, inner]), outer, c, inner).unwrap();
        let expected: Vec<f64> = (0..c)
            .map(|ch| {
                (0..outer).flat_map(|o| (0..inner).map(move |i| (o, i))).map(|(o, i)| x[(o * c + ch) * inner + i]).sum()
            })
            .collect();
        assert_close(&format!("channel_sum ({variant})"), &values(&cs), &expected, LONG_SUM);
    });
}

#[test]
fn sgd_step_matches_reference_with_momentum_nesterov_weight_decay_and_mask() {
    let mut rng = Rng::new(22);
    let n = 4099;
    for (nesterov, masked) in [(false, false), (true, false), (false, true), (true, true)] {
        let cfg = cpu::SgdConfig { lr: 0.1, momentum: 0.9, weight_decay: 1e-4, nesterov };
        let gcfg = sgd::SgdConfig { lr: 0.1, momentum: 0.9, weight_decay: 1e-4, nesterov };
        let mask: Vec<f64> = (0..n).map(|i| if masked && i % 3 == 0 { 0.0 } else { 1.0 }).collect();
        let mut w = f32_exact(&rng.vec(n));
        for i in 0..n {
            w[i] *= mask[i]; // pruned weights start at exactly 0
        }
        let mut buf = vec![0.0; n];
        let (wt, bt, mt) = (tensor(&w, &[n]), tensor(&buf, &[n]), tensor(&mask, &[n]));
        for step in 0..3 {
            let g = f32_exact(&rng.vec(n));
            sgd::sgd_step(&wt, &tensor(&g, &[n]), &bt, masked.then_some(&mt), &gcfg, None).unwrap();
            cpu::sgd_step(&mut w, &g, &mut buf, masked.then_some(&mask[..]), &cfg);
            let what = format!("sgd nesterov={nesterov} mask={masked} step {step}");
            assert_close(&format!("{what} weights"), &values(&wt), &w, ELEMENTWISE);
            assert_close(&format!("{what} momentum"), &values(&bt), &buf, ELEMENTWISE);
        }
        if masked {
            let wv = values(&wt);
            assert!((0..n).step_by(3).all(|i| wv[i] == 0.0), "masked weights must stay exactly 0");
        }
    }
}

#[test]
fn device_timer_times_compute_passes_and_work_in_order() {
    let gpu = sasprune::gpu::get().unwrap();
    let (m, k, n) = (96, 80, 112);
    let mut rng = Rng::new(77);
    let (a, b) = (f32_exact(&rng.vec(m * k)), f32_exact(&rng.vec(k * n)));
    let (at, bt) = (tensor(&a, &[m, k]), tensor(&b, &[k, n]));
    for per_kernel in [false, true] {
        let start = std::time::Instant::now();
        let timed = gpu.start_device_timer(per_kernel).unwrap();
        // two kernels: a GEMM, then a reduction of its result
        let c = matmul::gemm(&at, &bt, None, m, k, n, false, false).unwrap();
        let s = sasprune::ops::reduce::sum(&c).unwrap();
        let device = gpu.stop_device_timer().unwrap();
        gpu.synchronize().unwrap();
        let host = start.elapsed().as_secs_f64();
        match (timed, device) {
            (true, Some(t)) => {
                assert!(t.seconds > 0.0 && t.seconds <= host, "device {} s, host {host} s", t.seconds);
                if per_kernel {
                    let labels: Vec<&str> = t.by_kernel.iter().map(|k| k.0).collect();
                    assert!(labels.iter().any(|l| l.contains("gemm")), "{labels:?}");
                    assert!(labels.iter().any(|l| l.contains("reduce")), "{labels:?}");
                    let total: f64 = t.by_kernel.iter().map(|k| k.1).sum();
                    assert!((total - t.seconds).abs() <= 1e-9 + 1e-6 * t.seconds, "{total} vs {}", t.seconds);
                } else {
                    assert!(t.by_kernel.is_empty());
                }
            }
            (true, None) => panic!("two kernels fit the timer's pass budget"),
            (false, d) => assert!(d.is_none() && !gpu.adapter.timestamp_queries),
        }
        // Timing must not disturb the results.
        let want = cpu::matmul(&a, &b, m, k, n, false, false);
        assert_close("timed gemm", &values(&c), &want, LONG_SUM);
        assert_close("timed sum", &values(&s), &[want.iter().sum()], LONG_SUM);
    }
    assert!(gpu.stop_device_timer().unwrap().is_none(), "stopping twice reports nothing");
}

#[test]
fn linear_in_row_blocks_matches_reference() {
    // What linear does with a weight beyond the binding limit (AlexNet's fc6 on 128 MiB
    // drivers), at a size where the blocks are small: four blocks, the last one short, bias;
    // with plain parameters, and with a store's (whose gradients are written into their places).
    let unit = matmul::row_block_granularity().unwrap();
    let mut rng = Rng::new(17);
    let (n, i, o) = (6, 1100, 3 * unit + 5);
    let (x, w, b, r) =
        (f32_exact(&rng.vec(n * i)), f32_exact(&rng.vec(o * i)), f32_exact(&rng.vec(o)), f32_exact(&rng.vec(n * o)));
    let mut store = sasprune::nn::ParamStore::new();
    let f32s = |v: &[f64]| v.iter().map(|&v| v as f32).collect::<Vec<f32>>();
    let w_id = store.add("w", &[o, i], sasprune::nn::Role::PrunableWeight, f32s(&w));
    let b_id = store.add("b", &[o], sasprune::nn::Role::Param, f32s(&b));
    store.materialize().unwrap();
    let stored = (store.get(w_id).clone(), store.get(b_id).clone());
    for (what, wt, bt) in [("plain", param(&w, &[o, i]), param(&b, &[o])), ("store", stored.0, stored.1)] {
        let xt = param(&x, &[n, i]);
        let y = matmul::linear_in_row_blocks(&xt, &wt, Some(&bt), unit).unwrap();
        assert_close(
            &format!("blocked linear forward ({what})"),
            &values(&y),
            &cpu::linear(&x, &w, Some(&b), n, i, o),
            LONG_SUM,
        );
        y.backward_with(tensor(&r, &[n, o])).unwrap();
        let dx = cpu::matmul(&r, &w, n, o, i, false, false);
        assert_close(&format!("blocked linear grad input ({what})"), &grad(&xt), &dx, LONG_SUM);
        let dw = cpu::matmul(&r, &x, o, n, i, true, false);
        assert_close(&format!("blocked linear grad weight ({what})"), &grad(&wt), &dw, LONG_SUM);
        let db: Vec<f64> = (0..o).map(|j| (0..n).map(|s| r[s * o + j]).sum()).collect();
        assert_close(&format!("blocked linear grad bias ({what})"), &grad(&bt), &db, LONG_SUM);
        let bad = matmul::linear_in_row_blocks(&xt, &wt, None, unit + 1).unwrap_err().to_string();
        assert!(bad.contains(&format!("multiple of {unit}")), "{bad}");
    }
}

/// Production shapes: ResNet stage 2 and 3 grad-weight at batch 128 (K = 32,768 and 8,192),
/// whose reductions the CPU and GPU default plans split 14 to 42 ways, through the 32- and
/// 64-row tiles of both engines.
#[test]
fn conv_grad_weight_at_resnet_stage_sizes_splits_k_correctly() {
    let mut rng = Rng::new(41);
    // (channels, image side): stage 2 (M = 32 rows, K = 128·16·16), stage 3 (M = 64, K = 128·8·8)
    for (c, side, tiles) in [(32, 16, ["rm4", "g32s"]), (64, 8, ["rm8", "g64"])] {
        let g = geom(128, c, side, side, c, 3, 3, 1, 1);
        let x = f32_exact(&rng.vec(g.n * c * side * side));
        let w = f32_exact(&rng.vec(c * c * 9));
        let r = f32_exact(&rng.vec(g.n * c * side * side));
        let expected = cpu::conv2d_grad_weight(&r, &x, &g);
        let mut plans = vec![None];
        for name in tiles {
            let tile = (0..matmul::DIRECT).find(|&t| matmul::tile_name(t) == name).unwrap();
            plans.extend([14, 42].map(|splits| Some((tile, splits))));
        }
        for plan in plans {
            let run = || {
                let (xt, wt) = (param(&x, &[g.n, c, side, side]), param(&w, &[c, c, 3, 3]));
                conv2d::conv2d(&xt, &wt, None, 1, 1).unwrap().backward_with(tensor(&r, &[g.n, c, side, side])).unwrap();
                grad(&wt)
            };
            let got = match plan {
                None => run(),
                Some((tile, splits)) => matmul::with_plan(tile, splits, run),
            };
            let what = format!("grad-weight {c}x{c}x3x3 at {side}x{side}, batch 128, plan {plan:?}");
            assert_close(&what, &got, &expected, LONG_SUM);
        }
    }
}

/// Kernels launched with one thread per element fold their workgroups into a 2-D grid beyond
/// 65,535 workgroups (16,776,960 elements): the SGD step and an ADMM kernel over 16.8 M + 4099
/// elements (AlexNet's 61 M prunable weights and its pooling layers at batch 256 are larger),
/// checked at every element, the last row of the grid included.
#[test]
fn one_thread_per_element_kernels_fold_beyond_65535_workgroups() {
    let n = 65_535 * 256 + 4099;
    let mut rng = Rng::new(42);
    let (w, g) = (f32_exact(&rng.vec(n)), f32_exact(&rng.vec(n)));
    let mut buf = vec![0.0; n];
    let (wt, bt) = (tensor(&w, &[n]), tensor(&buf, &[n]));
    let cfg = cpu::SgdConfig { lr: 0.1, momentum: 0.9, weight_decay: 1e-4, nesterov: false };
    sgd::sgd_step(
        &wt,
        &tensor(&g, &[n]),
        &bt,
        None,
        &sgd::SgdConfig { lr: 0.1, momentum: 0.9, weight_decay: 1e-4, nesterov: false },
        None,
    )
    .unwrap();
    let mut w_ref = w.clone();
    cpu::sgd_step(&mut w_ref, &g, &mut buf, None, &cfg);
    assert_close("sgd over 16.8 M elements", &values(&wt), &w_ref, ELEMENTWISE);
    assert_close("sgd momentum over 16.8 M elements", &values(&bt), &buf, ELEMENTWISE);
    // mix: out = a·x + (1 − a)·y, element-wise like every ADMM kernel
    let out = tensor(&vec![0.0; n], &[n]);
    sasprune::ops::admm::mix(&tensor(&w, &[n]), &tensor(&g, &[n]), &out, 0.25).unwrap();
    let expected: Vec<f64> = w.iter().zip(&g).map(|(x, y)| 0.25 * x + 0.75 * y).collect();
    assert_close("admm mix over 16.8 M elements", &values(&out), &expected, ELEMENTWISE);
}
