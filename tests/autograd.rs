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

/// The reference forward pass; returns the loss.
fn reference_loss(p: &Net) -> f64 {
    let c1 = cpu::conv2d(&p.x, &p.w1, None, &g1());
    let z = cpu::batchnorm_train(&c1, &p.gamma, &p.beta, N, C1, H * H, 1e-5).y;
    let a = cpu::relu(&z);
    let c2 = cpu::conv2d(&a, &p.w2, None, &g2());
    let s = cpu::add(&c2, &cpu::shortcut_a(&a, N, C1, H, H, (C2 - C1) / 2));
    let pooled = cpu::global_avgpool(&s, N, C2, 9);
    let logits = cpu::linear(&pooled, &p.fc_w, Some(&p.fc_b), N, C2, CLASSES);
    cpu::softmax_cross_entropy(&logits, &p.labels, N, CLASSES).0
}

/// The reference backward pass, op by op: gradients of (x, w1, gamma, beta, w2, fc_w, fc_b).
fn reference_grads(p: &Net) -> [Vec<f64>; 7] {
    let c1 = cpu::conv2d(&p.x, &p.w1, None, &g1());
    let bn = cpu::batchnorm_train(&c1, &p.gamma, &p.beta, N, C1, H * H, 1e-5);
    let a = cpu::relu(&bn.y);
    let c2 = cpu::conv2d(&a, &p.w2, None, &g2());
    let s = cpu::add(&c2, &cpu::shortcut_a(&a, N, C1, H, H, (C2 - C1) / 2));
    let pooled = cpu::global_avgpool(&s, N, C2, 9);
    let logits = cpu::linear(&pooled, &p.fc_w, Some(&p.fc_b), N, C2, CLASSES);
    let (_, dlogits) = cpu::softmax_cross_entropy(&logits, &p.labels, N, CLASSES);
    let dpooled = cpu::matmul(&dlogits, &p.fc_w, N, CLASSES, C2, false, false);
    let dfc_w = cpu::matmul(&dlogits, &pooled, CLASSES, N, C2, true, false);
    let dfc_b: Vec<f64> = (0..CLASSES).map(|j| (0..N).map(|i| dlogits[i * CLASSES + j]).sum()).collect();
    let ds = cpu::global_avgpool_backward(&dpooled, N, C2, 9);
    let dw2 = cpu::conv2d_grad_weight(&ds, &a, &g2());
    let da = cpu::add(
        &cpu::conv2d_grad_input(&ds, &p.w2, &g2()),
        &cpu::shortcut_a_backward(&ds, N, C1, H, H, (C2 - C1) / 2),
    );
    let dz = cpu::relu_backward(&da, &bn.y);
    let (dc1, dgamma, dbeta) = cpu::batchnorm_train_backward(&dz, &c1, &p.gamma, &bn.mean, &bn.invstd, N, C1, H * H);
    let dx = cpu::conv2d_grad_input(&dc1, &p.w1, &g1());
    let dw1 = cpu::conv2d_grad_weight(&dc1, &p.x, &g1());
    [dx, dw1, dgamma, dbeta, dw2, dfc_w, dfc_b]
}

fn field(p: &mut Net, i: usize) -> &mut Vec<f64> {
    match i {
        0 => &mut p.x,
        1 => &mut p.w1,
        2 => &mut p.gamma,
        3 => &mut p.beta,
        4 => &mut p.w2,
        5 => &mut p.fc_w,
        _ => &mut p.fc_b,
    }
}

const NAMES: [&str; 7] = ["input", "conv1 weight", "bn gamma", "bn beta", "conv2 weight", "fc weight", "fc bias"];

#[test]
fn gradcheck_composed_network_reference_and_gpu() {
    let mut rng = Rng::new(33);
    let mut net = Net {
        x: f32_exact(&rng.vec(N * C0 * H * H)),
        w1: f32_exact(&rng.vec(C1 * C0 * 9).iter().map(|v| v * 0.5).collect::<Vec<_>>()),
        gamma: f32_exact(&rng.vec_in(C1, 0.5, 1.5)),
        beta: f32_exact(&rng.vec(C1)),
        w2: f32_exact(&rng.vec(C2 * C1 * 9).iter().map(|v| v * 0.5).collect::<Vec<_>>()),
        fc_w: f32_exact(&rng.vec(CLASSES * C2)),
        fc_b: f32_exact(&rng.vec(CLASSES)),
        labels: vec![1, 4],
    };
    let analytic = reference_grads(&net);
    // 1. the reference backward against central finite differences of the reference forward
    for i in 0..7 {
        let base = field(&mut net, i).clone();
        let numeric = cpu::numeric_grad(
            &mut |v: &[f64]| {
                let mut probe = Net {
                    x: net.x.clone(),
                    w1: net.w1.clone(),
                    gamma: net.gamma.clone(),
                    beta: net.beta.clone(),
                    w2: net.w2.clone(),
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
    // 2. the GPU forward + autograd backward against the reference
    let x = param(&net.x, &[N, C0, H, H]);
    let w1 = param(&net.w1, &[C1, C0, 3, 3]);
    let gamma = param(&net.gamma, &[C1]);
    let beta = param(&net.beta, &[C1]);
    let w2 = param(&net.w2, &[C2, C1, 3, 3]);
    let fc_w = param(&net.fc_w, &[CLASSES, C2]);
    let fc_b = param(&net.fc_b, &[CLASSES]);
    let (rm, rv) = (Tensor::zeros(&[C1]).unwrap(), Tensor::full(&[C1], 1.0).unwrap());
    let labels = tensor(&net.labels.iter().map(|&l| l as f64).collect::<Vec<_>>(), &[N]);
    let c1 = conv2d::conv2d(&x, &w1, None, 1, 1).unwrap();
    let z = batchnorm::batch_norm(&c1, &gamma, &beta, &rm, &rv, Default::default()).unwrap();
    let a = elementwise::relu(&z).unwrap();
    let s = elementwise::add(
        &conv2d::conv2d(&a, &w2, None, 2, 1).unwrap(),
        &shortcut::shortcut_a(&a, (C2 - C1) / 2).unwrap(),
    )
    .unwrap();
    let logits = matmul::linear(&pool::global_avg_pool(&s).unwrap(), &fc_w, Some(&fc_b)).unwrap();
    let loss = loss::cross_entropy(&logits, &labels).unwrap();
    assert_close("composed network loss", &values(&loss), &[reference_loss(&net)], ELEMENTWISE);
    loss.backward().unwrap();
    for (i, t) in [&x, &w1, &gamma, &beta, &w2, &fc_w, &fc_b].into_iter().enumerate() {
        assert_close(&format!("GPU backward vs reference backward: {}", NAMES[i]), &grad(t), &analytic[i], LONG_SUM);
    }
}
