//! Autograd semantics (fan-out accumulation, no-grad mode, repeated backward) and a gradient
//! check of a small composed network: conv → batch norm → ReLU → option-A shortcut add →
//! pool → linear → cross-entropy. Finite differences run on the f64 reference network; the GPU
//! backward is checked against the reference backward.

mod common;
use common::*;
use sasprune::autograd::no_grad;
use sasprune::ops::{batchnorm, conv2d, elementwise, loss, matmul, pool, reduce, shortcut};
use sasprune::reference as cpu;
use sasprune::Tensor;

#[test]
fn fan_out_gradients_accumulate() {
    let mut rng = Rng::new(30);
    let x = f32_exact(&rng.vec(301));
    let r = f32_exact(&rng.vec(301));
    let xt = param(&x, &[301]);
    // z = 2x + relu(x) + x: x feeds three ops
    let z = elementwise::add(
        &elementwise::add(&elementwise::scale(&xt, 2.0).unwrap(), &elementwise::relu(&xt).unwrap()).unwrap(),
        &xt,
    )
    .unwrap();
    z.backward_with(tensor(&r, &[301])).unwrap();
    let expected: Vec<f64> = x.iter().zip(&r).map(|(&xi, &ri)| ri * (3.0 + if xi > 0.0 { 1.0 } else { 0.0 })).collect();
    assert_close("fan-out gradient", &grad(&xt), &expected, ELEMENTWISE);
}

#[test]
fn parameter_shared_by_two_layers_gets_both_gradients() {
    let mut rng = Rng::new(31);
    let (x, w) = (f32_exact(&rng.vec(2 * 3 * 5 * 5)), f32_exact(&rng.vec(3 * 3 * 3 * 3)));
    let g = cpu::Conv2dGeom { n: 2, c_in: 3, h: 5, w: 5, c_out: 3, kh: 3, kw: 3, stride: 1, pad: 1 };
    let (xt, wt) = (tensor(&x, &[2, 3, 5, 5]), param(&w, &[3, 3, 3, 3]));
    let y1 = conv2d::conv2d(&xt, &wt, None, 1, 1).unwrap();
    let y2 = conv2d::conv2d(&y1, &wt, None, 1, 1).unwrap();
    let r = f32_exact(&rng.vec(2 * 3 * 5 * 5));
    y2.backward_with(tensor(&r, y2.shape())).unwrap();
    let y1_ref = cpu::conv2d(&x, &w, None, &g);
    let dy1 = cpu::conv2d_grad_input(&r, &w, &g);
    let expected: Vec<f64> =
        cpu::add(&cpu::conv2d_grad_weight(&r, &y1_ref, &g), &cpu::conv2d_grad_weight(&dy1, &x, &g));
    assert_close("shared weight gradient", &grad(&wt), &expected, LONG_SUM);
    assert!(xt.grad().is_none(), "an input that does not require a gradient gets none");
}

#[test]
fn no_grad_records_nothing() {
    let xt = param(&[1.0, -2.0, 3.0], &[3]);
    let y = no_grad(|| elementwise::relu(&xt).unwrap());
    assert!(!y.requires_grad());
    let err = reduce::sum(&y).unwrap().backward().unwrap_err();
    assert!(err.to_string().contains("does not depend on anything that requires a gradient"), "{err}");
    // and recording resumes afterwards
    let y = elementwise::relu(&xt).unwrap();
    reduce::sum(&y).unwrap().backward().unwrap();
    assert_eq!(grad(&xt), vec![1.0, 0.0, 1.0]);
}

#[test]
fn second_backward_accumulates_until_grads_are_zeroed() {
    let xt = param(&[0.5, -1.5, 2.0, 4.0], &[4]);
    let run = || reduce::sum(&elementwise::scale(&xt, 3.0).unwrap()).unwrap().backward().unwrap();
    run();
    assert_eq!(grad(&xt), vec![3.0; 4]);
    run();
    assert_eq!(grad(&xt), vec![6.0; 4], "a second backward adds to the gradient");
    xt.zero_grad().unwrap();
    run();
    assert_eq!(grad(&xt), vec![3.0; 4], "after zero_grad the gradient starts over");
}

#[test]
fn backward_twice_through_one_graph_is_an_error() {
    let xt = param(&[0.5, -1.5], &[2]);
    let loss = reduce::sum(&elementwise::relu(&xt).unwrap()).unwrap();
    loss.backward().unwrap();
    let err = loss.backward().unwrap_err();
    assert!(err.to_string().contains("backward ran through this graph already"), "{err}");
}

// ---- composed network ----

const N: usize = 2;
const C0: usize = 3;
const C1: usize = 4;
const C2: usize = 8;
const H: usize = 6;
const CLASSES: usize = 5;

struct Net {
    x: Vec<f64>,
    w1: Vec<f64>,
    gamma: Vec<f64>,
    beta: Vec<f64>,
    w2: Vec<f64>,
    gamma2: Vec<f64>,
    beta2: Vec<f64>,
    fc_w: Vec<f64>,
    fc_b: Vec<f64>,
    labels: Vec<u32>,
}

fn g1() -> cpu::Conv2dGeom {
    cpu::Conv2dGeom { n: N, c_in: C0, h: H, w: H, c_out: C1, kh: 3, kw: 3, stride: 1, pad: 1 }
}
fn g2() -> cpu::Conv2dGeom {
    cpu::Conv2dGeom { n: N, c_in: C1, h: H, w: H, c_out: C2, kh: 3, kw: 3, stride: 2, pad: 1 }
}

/// The forward values the reference backward needs: a ResNet stem + downsampling basic block,
/// a = relu(bn1(conv1(x))), s = relu(bn2(conv2(a)) + shortcut_a(a)), logits = fc(avgpool(s)).
struct Forward {
    c1: Vec<f64>,
    bn1: cpu::BatchNormOut,
    a: Vec<f64>,
    c2: Vec<f64>,
    bn2: cpu::BatchNormOut,
    pre: Vec<f64>,
    pooled: Vec<f64>,
    logits: Vec<f64>,
}

fn reference_forward(p: &Net) -> Forward {
    let c1 = cpu::conv2d(&p.x, &p.w1, None, &g1());
    let bn1 = cpu::batchnorm_train(&c1, &p.gamma, &p.beta, N, C1, H * H, 1e-5);
    let a = cpu::relu(&bn1.y);
    let c2 = cpu::conv2d(&a, &p.w2, None, &g2());
    let bn2 = cpu::batchnorm_train(&c2, &p.gamma2, &p.beta2, N, C2, 9, 1e-5);
    let pre = cpu::add(&bn2.y, &cpu::shortcut_a(&a, N, C1, H, H, (C2 - C1) / 2));
    let pooled = cpu::global_avgpool(&cpu::relu(&pre), N, C2, 9);
    let logits = cpu::linear(&pooled, &p.fc_w, Some(&p.fc_b), N, C2, CLASSES);
    Forward { c1, bn1, a, c2, bn2, pre, pooled, logits }
}

/// The reference forward pass; returns the loss.
fn reference_loss(p: &Net) -> f64 {
    cpu::softmax_cross_entropy(&reference_forward(p).logits, &p.labels, N, CLASSES).0
}

/// The reference backward pass, op by op: gradients of every field (in `field`'s order).
fn reference_grads(p: &Net) -> [Vec<f64>; 9] {
    let f = reference_forward(p);
    let (_, dlogits) = cpu::softmax_cross_entropy(&f.logits, &p.labels, N, CLASSES);
    let dpooled = cpu::matmul(&dlogits, &p.fc_w, N, CLASSES, C2, false, false);
    let dfc_w = cpu::matmul(&dlogits, &f.pooled, CLASSES, N, C2, true, false);
    let dfc_b: Vec<f64> = (0..CLASSES).map(|j| (0..N).map(|i| dlogits[i * CLASSES + j]).sum()).collect();
    let dpre = cpu::relu_backward(&cpu::global_avgpool_backward(&dpooled, N, C2, 9), &f.pre);
    let (dc2, dgamma2, dbeta2) =
        cpu::batchnorm_train_backward(&dpre, &f.c2, &p.gamma2, &f.bn2.mean, &f.bn2.invstd, N, C2, 9);
    let dw2 = cpu::conv2d_grad_weight(&dc2, &f.a, &g2());
    let da = cpu::add(
        &cpu::conv2d_grad_input(&dc2, &p.w2, &g2()),
        &cpu::shortcut_a_backward(&dpre, N, C1, H, H, (C2 - C1) / 2),
    );
    let dz = cpu::relu_backward(&da, &f.bn1.y);
    let (dc1, dgamma, dbeta) =
        cpu::batchnorm_train_backward(&dz, &f.c1, &p.gamma, &f.bn1.mean, &f.bn1.invstd, N, C1, H * H);
    let dx = cpu::conv2d_grad_input(&dc1, &p.w1, &g1());
    let dw1 = cpu::conv2d_grad_weight(&dc1, &p.x, &g1());
    [dx, dw1, dgamma, dbeta, dw2, dgamma2, dbeta2, dfc_w, dfc_b]
}

fn field(p: &mut Net, i: usize) -> &mut Vec<f64> {
    match i {
        0 => &mut p.x,
        1 => &mut p.w1,
        2 => &mut p.gamma,
        3 => &mut p.beta,
        4 => &mut p.w2,
        5 => &mut p.gamma2,
        6 => &mut p.beta2,
        7 => &mut p.fc_w,
        _ => &mut p.fc_b,
    }
}

const NAMES: [&str; 9] =
    ["input", "conv1 weight", "bn1 gamma", "bn1 beta", "conv2 weight", "bn2 gamma", "bn2 beta", "fc weight", "fc bias"];

/// The GPU network two ways: `fused` runs the kernels ResNet runs (batch norm + ReLU in one
/// kernel, batch norm + residual add + ReLU in one), otherwise every op separately.
fn gpu_loss_and_grads(net: &Net, fused: bool) -> (f64, Vec<Vec<f64>>) {
    let x = param(&net.x, &[N, C0, H, H]);
    let w1 = param(&net.w1, &[C1, C0, 3, 3]);
    let gamma = param(&net.gamma, &[C1]);
    let beta = param(&net.beta, &[C1]);
    let w2 = param(&net.w2, &[C2, C1, 3, 3]);
    let gamma2 = param(&net.gamma2, &[C2]);
    let beta2 = param(&net.beta2, &[C2]);
    let fc_w = param(&net.fc_w, &[CLASSES, C2]);
    let fc_b = param(&net.fc_b, &[CLASSES]);
    let running = |c| (Tensor::zeros(&[c]).unwrap(), Tensor::full(&[c], 1.0).unwrap());
    let ((rm1, rv1), (rm2, rv2)) = (running(C1), running(C2));
    let labels = tensor(&net.labels.iter().map(|&l| l as f64).collect::<Vec<_>>(), &[N]);
    let c1 = conv2d::conv2d(&x, &w1, None, 1, 1).unwrap();
    let bn = batchnorm::BatchNormConfig::default();
    let a = if fused {
        batchnorm::batch_norm(&c1, &gamma, &beta, &rm1, &rv1, batchnorm::BatchNormConfig { relu: true, ..bn })
    } else {
        elementwise::relu(&batchnorm::batch_norm(&c1, &gamma, &beta, &rm1, &rv1, bn).unwrap())
    }
    .unwrap();
    let c2 = conv2d::conv2d(&a, &w2, None, 2, 1).unwrap();
    let shortcut = shortcut::shortcut_a(&a, (C2 - C1) / 2).unwrap();
    let s = if fused {
        batchnorm::batch_norm_add_relu(&c2, &shortcut, &gamma2, &beta2, &rm2, &rv2, bn)
    } else {
        let z2 = batchnorm::batch_norm(&c2, &gamma2, &beta2, &rm2, &rv2, bn).unwrap();
        elementwise::relu(&elementwise::add(&z2, &shortcut).unwrap())
    }
    .unwrap();
    let logits = matmul::linear(&pool::global_avg_pool(&s).unwrap(), &fc_w, Some(&fc_b)).unwrap();
    let loss = loss::cross_entropy(&logits, &labels).unwrap();
    let value = values(&loss)[0];
    loss.backward().unwrap();
    (value, [&x, &w1, &gamma, &beta, &w2, &gamma2, &beta2, &fc_w, &fc_b].into_iter().map(grad).collect())
}

#[test]
fn gradcheck_composed_network_reference_and_gpu() {
    let mut rng = Rng::new(33);
    let mut net = Net {
        x: f32_exact(&rng.vec(N * C0 * H * H)),
        w1: f32_exact(&rng.vec(C1 * C0 * 9).iter().map(|v| v * 0.5).collect::<Vec<_>>()),
        gamma: f32_exact(&rng.vec_in(C1, 0.5, 1.5)),
        beta: f32_exact(&rng.vec(C1)),
        w2: f32_exact(&rng.vec(C2 * C1 * 9).iter().map(|v| v * 0.5).collect::<Vec<_>>()),
        gamma2: f32_exact(&rng.vec_in(C2, 0.5, 1.5)),
        beta2: f32_exact(&rng.vec(C2)),
        fc_w: f32_exact(&rng.vec(CLASSES * C2)),
        fc_b: f32_exact(&rng.vec(CLASSES)),
        labels: vec![1, 4],
    };
    let analytic = reference_grads(&net);
    // the ReLUs must see both signs, or their backward would go untested
    let f = reference_forward(&net);
    for (what, v) in [("bn1 output", &f.bn1.y), ("block sum", &f.pre)] {
        let negative = v.iter().filter(|&&x| x < 0.0).count();
        assert!(negative > 0 && negative < v.len(), "{what}: {negative} of {} negative", v.len());
    }
    // 1. the reference backward against central finite differences of the reference forward
    for i in 0..NAMES.len() {
        let base = field(&mut net, i).clone();
        let numeric = cpu::numeric_grad(
            &mut |v: &[f64]| {
                let mut probe = Net {
                    x: net.x.clone(),
                    w1: net.w1.clone(),
                    gamma: net.gamma.clone(),
                    beta: net.beta.clone(),
                    w2: net.w2.clone(),
                    gamma2: net.gamma2.clone(),
                    beta2: net.beta2.clone(),
                    fc_w: net.fc_w.clone(),
                    fc_b: net.fc_b.clone(),
                    labels: net.labels.clone(),
                };
                *field(&mut probe, i) = v.to_vec();
                reference_loss(&probe)
            },
            &base,
            1e-6,
        );
        assert_close(
            &format!("reference backward vs finite differences: {}", NAMES[i]),
            &analytic[i],
            &numeric,
            (1e-7, 1e-5),
        );
    }
    // 2. the GPU forward + autograd backward against the reference, op by op and through the
    // fused kernels ResNet runs
    for fused in [false, true] {
        let (loss, grads) = gpu_loss_and_grads(&net, fused);
        assert_close(&format!("loss (fused {fused})"), &[loss], &[reference_loss(&net)], ELEMENTWISE);
        for (i, g) in grads.iter().enumerate() {
            assert_close(
                &format!("GPU backward (fused {fused}) vs reference: {}", NAMES[i]),
                g,
                &analytic[i],
                LONG_SUM,
            );
        }
    }
}
