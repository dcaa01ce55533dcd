//! CPU-only checks of the f64 reference implementations in
//! `sasprune::reference`:
//! * every backward rule against central finite differences of its forward,
//!   on small odd shapes with a random projection `loss = sum(out * R)`, so
//!   every output element contributes to the checked gradient;
//! * a few exact forward results worked out by hand.

use sasprune::reference::*;

const EPS: f64 = 1e-6;

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/// Tiny deterministic xorshift64* generator; no `rand` crate needed.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        // Mix the seed so that small seeds still give well-spread streams;
        // `| 1` keeps the state non-zero (xorshift's fixed point).
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `[0, 1)`.
    fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in `[lo, hi)`.
    fn uniform(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.unit()
    }

    /// `len` values uniform in `[-1, 1)`.
    fn vec(&mut self, len: usize) -> Vec<f64> {
        (0..len).map(|_| self.uniform(-1.0, 1.0)).collect()
    }

    /// `len` values with magnitude in `[0.1, 1.1)` and random sign: never
    /// within a finite-difference step of zero (for kinks such as ReLU).
    fn vec_away_from_zero(&mut self, len: usize) -> Vec<f64> {
        (0..len)
            .map(|_| {
                let m = self.uniform(0.1, 1.1);
                if self.unit() < 0.5 {
                    -m
                } else {
                    m
                }
            })
            .collect()
    }

    /// `len` values uniform in `[lo, hi)`.
    fn vec_in(&mut self, len: usize, lo: f64, hi: f64) -> Vec<f64> {
        (0..len).map(|_| self.uniform(lo, hi)).collect()
    }

    fn below(&mut self, n: u32) -> u32 {
        (self.next_u64() % n as u64) as u32
    }
}

/// `sum(out * r)`: the random projection that turns an output tensor into a
/// scalar loss whose gradient with respect to `out` is exactly `r`.
fn project(out: &[f64], r: &[f64]) -> f64 {
    assert_eq!(out.len(), r.len(), "projection length mismatch");
    out.iter().zip(r).map(|(o, w)| o * w).sum()
}

/// Asserts `|a - b| <= 1e-7 + 1e-5 * |b|` elementwise, where `a` is the
/// analytic gradient and `b` the finite-difference one.
fn assert_grad_close(name: &str, analytic: &[f64], numeric: &[f64]) {
    assert_eq!(analytic.len(), numeric.len(), "{name}: gradient lengths differ");
    let mut nonzero = 0;
    for (i, (&a, &b)) in analytic.iter().zip(numeric).enumerate() {
        let tol = 1e-7 + 1e-5 * b.abs();
        assert!(
            (a - b).abs() <= tol,
            "{name}[{i}]: analytic {a:.12e} vs numeric {b:.12e} (diff {:.3e}, tol {tol:.3e})",
            (a - b).abs()
        );
        if b.abs() > 1e-9 {
            nonzero += 1;
        }
    }
    // A vacuous pass (everything zero) would hide a broken check.
    assert!(nonzero > 0, "{name}: numeric gradient is identically zero");
}

/// Asserts exact-enough equality for hand-computed forward results.
fn assert_close(name: &str, got: &[f64], want: &[f64], tol: f64) {
    assert_eq!(got.len(), want.len(), "{name}: lengths differ");
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        assert!((g - w).abs() <= tol, "{name}[{i}]: got {g:.15} want {w:.15}");
    }
}

/// Geometries for the conv checks: odd sizes, stride 2 with padding,
/// non-square kernel, 1x1 strided kernel.
fn conv_geoms() -> Vec<Conv2dGeom> {
    vec![
        Conv2dGeom { n: 3, c_in: 5, h: 7, w: 5, c_out: 4, kh: 3, kw: 3, stride: 2, pad: 1 },
        Conv2dGeom { n: 2, c_in: 3, h: 5, w: 7, c_out: 5, kh: 2, kw: 3, stride: 1, pad: 0 },
        Conv2dGeom { n: 3, c_in: 3, h: 7, w: 5, c_out: 3, kh: 3, kw: 3, stride: 1, pad: 1 },
        Conv2dGeom { n: 1, c_in: 5, h: 7, w: 5, c_out: 3, kh: 1, kw: 1, stride: 2, pad: 0 },
    ]
}

fn conv_inputs(g: &Conv2dGeom, rng: &mut Rng) -> (Vec<f64>, Vec<f64>, Vec<f64>, Vec<f64>) {
    let x = rng.vec(g.n * g.c_in * g.h * g.w);
    let w = rng.vec(g.c_out * g.c_in * g.kh * g.kw);
    let b = rng.vec(g.c_out);
    let r = rng.vec(g.n * g.c_out * g.out_h() * g.out_w());
    (x, w, b, r)
}

// Shapes shared by the batch-norm / pooling checks: batch 3, 5 channels, 7x5.
const N: usize = 3;
const C: usize = 5;
const H: usize = 7;
const W: usize = 5;
const HW: usize = H * W;

// ---------------------------------------------------------------------------
// Finite-difference gradient checks
// ---------------------------------------------------------------------------

#[test]
fn gradcheck_numeric_grad_itself() {
    // f(x) = sum(x_i^3) + x_0 x_1 has gradient 3 x_i^2 (+ the cross terms).
    let x = vec![0.3, -1.2, 2.0, 0.7, -0.4];
    let mut f = |v: &[f64]| v.iter().map(|t| t * t * t).sum::<f64>() + v[0] * v[1];
    let g = numeric_grad(&mut f, &x, EPS);
    let mut want: Vec<f64> = x.iter().map(|t| 3.0 * t * t).collect();
    want[0] += x[1];
    want[1] += x[0];
    assert_grad_close("numeric_grad", &want, &g);
}

#[test]
fn gradcheck_matmul_all_transposes() {
    // dA and dB of C = op(A) op(B), expressed with matmul itself:
    // d op(A) = dC op(B)^T, d op(B) = op(A)^T dC; stored gradients are
    // transposed back when the operand is stored transposed.
    let (m, k, n) = (3, 5, 7);
    let mut rng = Rng::new(11);
    for &(ta, tb) in &[(false, false), (true, false), (false, true), (true, true)] {
        let a = rng.vec(m * k);
        let b = rng.vec(k * n);
        let r = rng.vec(m * n);
        // dA in storage layout: [m,k] = R B'^T  or  [k,m] = B' R^T.
        let da = if ta { matmul(&b, &r, k, n, m, tb, true) } else { matmul(&r, &b, m, n, k, false, !tb) };
        // dB in storage layout: [k,n] = A'^T R  or  [n,k] = R^T A'.
        let db = if tb { matmul(&r, &a, n, m, k, true, ta) } else { matmul(&a, &r, k, m, n, !ta, false) };
        let num_a = numeric_grad(&mut |v| project(&matmul(v, &b, m, k, n, ta, tb), &r), &a, EPS);
        let num_b = numeric_grad(&mut |v| project(&matmul(&a, v, m, k, n, ta, tb), &r), &b, EPS);
        assert_grad_close(&format!("matmul dA (ta={ta}, tb={tb})"), &da, &num_a);
        assert_grad_close(&format!("matmul dB (ta={ta}, tb={tb})"), &db, &num_b);
    }
}

// Linear backward is not a separate reference function: these checks pin
// down how it composes from `matmul` (dx = dy W, dW = dy^T x, db = colsum dy).
const LIN_N: usize = 3;
const LIN_IN: usize = 7;
const LIN_OUT: usize = 5;

fn linear_inputs() -> (Vec<f64>, Vec<f64>, Vec<f64>, Vec<f64>) {
    let mut rng = Rng::new(12);
    (rng.vec(LIN_N * LIN_IN), rng.vec(LIN_OUT * LIN_IN), rng.vec(LIN_OUT), rng.vec(LIN_N * LIN_OUT))
}

#[test]
fn gradcheck_linear_input() {
    let (x, w, b, r) = linear_inputs();
    let dx = matmul(&r, &w, LIN_N, LIN_OUT, LIN_IN, false, false);
    let num = numeric_grad(&mut |v| project(&linear(v, &w, Some(&b), LIN_N, LIN_IN, LIN_OUT), &r), &x, EPS);
    assert_grad_close("linear dx", &dx, &num);
}

#[test]
fn gradcheck_linear_weight() {
    let (x, w, b, r) = linear_inputs();
    let dw = matmul(&r, &x, LIN_OUT, LIN_N, LIN_IN, true, false);
    let num = numeric_grad(&mut |v| project(&linear(&x, v, Some(&b), LIN_N, LIN_IN, LIN_OUT), &r), &w, EPS);
    assert_grad_close("linear dW", &dw, &num);
}

#[test]
fn gradcheck_linear_bias() {
    let (x, w, b, r) = linear_inputs();
    let db: Vec<f64> = (0..LIN_OUT).map(|o| (0..LIN_N).map(|s| r[s * LIN_OUT + o]).sum()).collect();
    let num = numeric_grad(&mut |v| project(&linear(&x, &w, Some(v), LIN_N, LIN_IN, LIN_OUT), &r), &b, EPS);
    assert_grad_close("linear db", &db, &num);
}

#[test]
fn gradcheck_conv2d_input() {
    let mut rng = Rng::new(21);
    for g in conv_geoms() {
        let (x, w, b, r) = conv_inputs(&g, &mut rng);
        let dx = conv2d_grad_input(&r, &w, &g);
        let num = numeric_grad(&mut |v| project(&conv2d(v, &w, Some(&b), &g), &r), &x, EPS);
        assert_grad_close(&format!("conv2d dx {g:?}"), &dx, &num);
    }
}

#[test]
fn gradcheck_conv2d_weight() {
    let mut rng = Rng::new(22);
    for g in conv_geoms() {
        let (x, w, b, r) = conv_inputs(&g, &mut rng);
        let dw = conv2d_grad_weight(&r, &x, &g);
        let num = numeric_grad(&mut |v| project(&conv2d(&x, v, Some(&b), &g), &r), &w, EPS);
        assert_grad_close(&format!("conv2d dw {g:?}"), &dw, &num);
    }
}

#[test]
fn gradcheck_conv2d_bias() {
    let mut rng = Rng::new(23);
    for g in conv_geoms() {
        let (x, w, b, r) = conv_inputs(&g, &mut rng);
        let db = conv2d_grad_bias(&r, &g);
        let num = numeric_grad(&mut |v| project(&conv2d(&x, &w, Some(v), &g), &r), &b, EPS);
        assert_grad_close(&format!("conv2d db {g:?}"), &db, &num);
    }
}

/// Inputs for the training-mode batch-norm checks. `x` gets a per-channel
/// offset and scale so the statistics are not trivial.
fn bn_inputs(seed: u64) -> (Vec<f64>, Vec<f64>, Vec<f64>, Vec<f64>) {
    let mut rng = Rng::new(seed);
    let mut x = rng.vec(N * C * HW);
    for s in 0..N {
        for ch in 0..C {
            for i in 0..HW {
                x[(s * C + ch) * HW + i] = 0.3 * ch as f64 + (1.0 + 0.5 * ch as f64) * x[(s * C + ch) * HW + i];
            }
        }
    }
    let gamma = rng.vec_in(C, 0.5, 1.5);
    let beta = rng.vec(C);
    let r = rng.vec(N * C * HW);
    (x, gamma, beta, r)
}

const BN_EPS: f64 = 1e-5;

#[test]
fn gradcheck_batchnorm_train() {
    let (x, gamma, beta, r) = bn_inputs(31);
    let out = batchnorm_train(&x, &gamma, &beta, N, C, HW, BN_EPS);
    let (dx, _, _) = batchnorm_train_backward(&r, &x, &gamma, &out.mean, &out.invstd, N, C, HW);
    let num = numeric_grad(&mut |v| project(&batchnorm_train(v, &gamma, &beta, N, C, HW, BN_EPS).y, &r), &x, EPS);
    assert_grad_close("batchnorm_train dx", &dx, &num);
}

#[test]
fn gradcheck_batchnorm_train_gamma() {
    let (x, gamma, beta, r) = bn_inputs(32);
    let out = batchnorm_train(&x, &gamma, &beta, N, C, HW, BN_EPS);
    let (_, dgamma, _) = batchnorm_train_backward(&r, &x, &gamma, &out.mean, &out.invstd, N, C, HW);
    let num = numeric_grad(&mut |v| project(&batchnorm_train(&x, v, &beta, N, C, HW, BN_EPS).y, &r), &gamma, EPS);
    assert_grad_close("batchnorm_train dgamma", &dgamma, &num);
}

#[test]
fn gradcheck_batchnorm_train_beta() {
    let (x, gamma, beta, r) = bn_inputs(33);
    let out = batchnorm_train(&x, &gamma, &beta, N, C, HW, BN_EPS);
    let (_, _, dbeta) = batchnorm_train_backward(&r, &x, &gamma, &out.mean, &out.invstd, N, C, HW);
    let num = numeric_grad(&mut |v| project(&batchnorm_train(&x, &gamma, v, N, C, HW, BN_EPS).y, &r), &beta, EPS);
    assert_grad_close("batchnorm_train dbeta", &dbeta, &num);
}

/// Inputs for the eval-mode batch-norm checks: running statistics are fixed
/// constants (positive variance).
struct BnEvalInputs {
    x: Vec<f64>,
    gamma: Vec<f64>,
    beta: Vec<f64>,
    rm: Vec<f64>,
    rv: Vec<f64>,
    r: Vec<f64>,
}

fn bn_eval_inputs(seed: u64) -> BnEvalInputs {
    let mut rng = Rng::new(seed);
    BnEvalInputs {
        x: rng.vec(N * C * HW),
        gamma: rng.vec_in(C, 0.5, 1.5),
        beta: rng.vec(C),
        rm: rng.vec(C),
        rv: rng.vec_in(C, 0.2, 2.0),
        r: rng.vec(N * C * HW),
    }
}

#[test]
fn gradcheck_batchnorm_eval() {
    let BnEvalInputs { x, gamma, beta, rm, rv, r } = bn_eval_inputs(34);
    let (dx, _, _) = batchnorm_eval_backward(&r, &x, &gamma, &rm, &rv, N, C, HW, BN_EPS);
    let num =
        numeric_grad(&mut |v| project(&batchnorm_eval(v, &gamma, &beta, &rm, &rv, N, C, HW, BN_EPS), &r), &x, EPS);
    assert_grad_close("batchnorm_eval dx", &dx, &num);
}

#[test]
fn gradcheck_batchnorm_eval_gamma() {
    let BnEvalInputs { x, gamma, beta, rm, rv, r } = bn_eval_inputs(35);
    let (_, dgamma, _) = batchnorm_eval_backward(&r, &x, &gamma, &rm, &rv, N, C, HW, BN_EPS);
    let num =
        numeric_grad(&mut |v| project(&batchnorm_eval(&x, v, &beta, &rm, &rv, N, C, HW, BN_EPS), &r), &gamma, EPS);
    assert_grad_close("batchnorm_eval dgamma", &dgamma, &num);
}

#[test]
fn gradcheck_batchnorm_eval_beta() {
    let BnEvalInputs { x, gamma, beta, rm, rv, r } = bn_eval_inputs(36);
    let (_, _, dbeta) = batchnorm_eval_backward(&r, &x, &gamma, &rm, &rv, N, C, HW, BN_EPS);
    let num =
        numeric_grad(&mut |v| project(&batchnorm_eval(&x, &gamma, v, &rm, &rv, N, C, HW, BN_EPS), &r), &beta, EPS);
    assert_grad_close("batchnorm_eval dbeta", &dbeta, &num);
}

#[test]
fn gradcheck_relu() {
    let mut rng = Rng::new(41);
    let x = rng.vec_away_from_zero(N * C * HW);
    let r = rng.vec(x.len());
    let dx = relu_backward(&r, &x);
    let num = numeric_grad(&mut |v| project(&relu(v), &r), &x, EPS);
    assert_grad_close("relu dx", &dx, &num);
}

#[test]
fn gradcheck_batchnorm_train_then_relu() {
    // The fused GPU kernel's reference: relu(bn(x)), backward = bn backward of the masked dy.
    let (x, gamma, beta, r) = bn_inputs(42);
    let out = batchnorm_train(&x, &gamma, &beta, N, C, HW, BN_EPS);
    let dy = relu_backward(&r, &out.y);
    let (dx, _, _) = batchnorm_train_backward(&dy, &x, &gamma, &out.mean, &out.invstd, N, C, HW);
    let num =
        numeric_grad(&mut |v| project(&relu(&batchnorm_train(v, &gamma, &beta, N, C, HW, BN_EPS).y), &r), &x, EPS);
    assert_grad_close("relu(batchnorm_train) dx", &dx, &num);
}

#[test]
fn gradcheck_add_then_relu() {
    let mut rng = Rng::new(43);
    let (a, b) = (rng.vec(N * C * HW), rng.vec(N * C * HW));
    // Keep a + b away from the kink at 0, where the finite difference is not the derivative.
    let b: Vec<f64> = b.iter().zip(&a).map(|(&v, &u)| if (u + v).abs() < 0.05 { v + 0.1 } else { v }).collect();
    let r = rng.vec(a.len());
    let da = relu_backward(&r, &add(&a, &b));
    let num = numeric_grad(&mut |v| project(&relu(&add(v, &b)), &r), &a, EPS);
    assert_grad_close("relu(a + b) da", &da, &num);
}

#[test]
fn gradcheck_shortcut_a() {
    let mut rng = Rng::new(42);
    let pad_c = 2;
    let x = rng.vec(N * C * H * W);
    let r = rng.vec(N * (C + 2 * pad_c) * H.div_ceil(2) * W.div_ceil(2));
    let dx = shortcut_a_backward(&r, N, C, H, W, pad_c);
    let num = numeric_grad(&mut |v| project(&shortcut_a(v, N, C, H, W, pad_c), &r), &x, EPS);
    assert_grad_close("shortcut_a dx", &dx, &num);
}

#[test]
fn gradcheck_maxpool2d() {
    // Random continuous inputs: ties within a window (where the gradient is
    // undefined) have probability ~0, and the fixed seed makes it reproducible.
    let mut rng = Rng::new(43);
    for &(k, stride, pad) in &[(3, 2, 1), (2, 2, 0), (3, 1, 1), (2, 1, 1)] {
        let x = rng.vec(N * C * H * W);
        let oh = (H + 2 * pad - k) / stride + 1;
        let ow = (W + 2 * pad - k) / stride + 1;
        let r = rng.vec(N * C * oh * ow);
        let (_, idx) = maxpool2d(&x, N, C, H, W, k, stride, pad);
        let dx = maxpool2d_backward(&r, &idx, N, C, H, W, oh, ow);
        let num = numeric_grad(&mut |v| project(&maxpool2d(v, N, C, H, W, k, stride, pad).0, &r), &x, EPS);
        assert_grad_close(&format!("maxpool2d dx k={k} s={stride} p={pad}"), &dx, &num);
    }
}

#[test]
fn gradcheck_global_avgpool() {
    let mut rng = Rng::new(44);
    let x = rng.vec(N * C * HW);
    let r = rng.vec(N * C);
    let dx = global_avgpool_backward(&r, N, C, HW);
    let num = numeric_grad(&mut |v| project(&global_avgpool(v, N, C, HW), &r), &x, EPS);
    assert_grad_close("global_avgpool dx", &dx, &num);
}

#[test]
fn gradcheck_adaptive_avgpool2d() {
    // Overlapping down-sampling windows, identity, and up-sampling.
    let mut rng = Rng::new(45);
    for &(oh, ow) in &[(3, 2), (7, 5), (1, 1), (9, 6), (4, 3)] {
        let x = rng.vec(N * C * H * W);
        let r = rng.vec(N * C * oh * ow);
        let dx = adaptive_avgpool2d_backward(&r, N, C, H, W, oh, ow);
        let num = numeric_grad(&mut |v| project(&adaptive_avgpool2d(v, N, C, H, W, oh, ow), &r), &x, EPS);
        assert_grad_close(&format!("adaptive_avgpool2d dx -> {oh}x{ow}"), &dx, &num);
    }
}

#[test]
fn gradcheck_dropout() {
    let mut rng = Rng::new(46);
    let p = 0.3;
    let x = rng.vec(N * C * HW);
    let keep: Vec<f64> = (0..x.len()).map(|_| if rng.unit() < p { 0.0 } else { 1.0 }).collect();
    let r = rng.vec(x.len());
    let dx = dropout_backward(&r, &keep, p);
    let num = numeric_grad(&mut |v| project(&dropout(v, &keep, p), &r), &x, EPS);
    assert_grad_close("dropout dx", &dx, &num);
}

#[test]
fn gradcheck_softmax_cross_entropy() {
    let mut rng = Rng::new(47);
    let (n, classes) = (3, 7);
    let logits: Vec<f64> = rng.vec(n * classes).iter().map(|v| 3.0 * v).collect();
    let labels: Vec<u32> = (0..n).map(|_| rng.below(classes as u32)).collect();
    let (_, dlogits) = softmax_cross_entropy(&logits, &labels, n, classes);
    let num = numeric_grad(&mut |v| softmax_cross_entropy(v, &labels, n, classes).0, &logits, EPS);
    assert_grad_close("softmax_cross_entropy dlogits", &dlogits, &num);
}

// ---------------------------------------------------------------------------
// Exact forward tests, worked by hand
// ---------------------------------------------------------------------------

#[test]
fn forward_elementwise_helpers() {
    let a = [1.0, -2.0, 3.5];
    let b = [0.5, 4.0, -1.5];
    assert_eq!(add(&a, &b), vec![1.5, 2.0, 2.0]);
    assert_eq!(scale(&a, 2.0), vec![2.0, -4.0, 7.0]);
    assert_eq!(axpy(2.0, &a, &b), vec![2.5, 0.0, 5.5]);
    assert_eq!(sum(&a), 2.5);
    assert_eq!(mean(&b), 1.0);
}

#[test]
fn forward_matmul_transposes() {
    // A = [[1,2,3],[4,5,6]] (2x3), B = [[1,0],[0,1],[1,1]] (3x2)
    // A B = [[4,5],[10,11]].
    let a = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
    let at = [1.0, 4.0, 2.0, 5.0, 3.0, 6.0]; // A^T stored [3,2]
    let b = [1.0, 0.0, 0.0, 1.0, 1.0, 1.0];
    let bt = [1.0, 0.0, 1.0, 0.0, 1.0, 1.0]; // B^T stored [2,3]
    let want = [4.0, 5.0, 10.0, 11.0];
    assert_eq!(matmul(&a, &b, 2, 3, 2, false, false), want);
    assert_eq!(matmul(&at, &b, 2, 3, 2, true, false), want);
    assert_eq!(matmul(&a, &bt, 2, 3, 2, false, true), want);
    assert_eq!(matmul(&at, &bt, 2, 3, 2, true, true), want);
}

#[test]
fn forward_linear() {
    // x = [[1,2]], W = [[1,1],[2,-1],[0,3]], b = [0.5,0,-1]
    // y = [1+2+0.5, 2-2+0, 0+6-1] = [3.5, 0, 5].
    let y = linear(&[1.0, 2.0], &[1.0, 1.0, 2.0, -1.0, 0.0, 3.0], Some(&[0.5, 0.0, -1.0]), 1, 2, 3);
    assert_eq!(y, vec![3.5, 0.0, 5.0]);
}

#[test]
fn forward_conv2d_1x1x3x3() {
    // x = [[1,2,3],[4,5,6],[7,8,9]].
    let x: Vec<f64> = (1..=9).map(f64::from).collect();

    // 2x2 kernel [[1,2],[3,4]], no padding, stride 1, bias 0.5:
    // out[0,0] = 1*1+2*2+3*4+4*5 = 37, out[0,1] = 2+6+15+24 = 47,
    // out[1,0] = 4+10+21+32 = 67, out[1,1] = 5+12+24+36 = 77.
    let g = Conv2dGeom { n: 1, c_in: 1, h: 3, w: 3, c_out: 1, kh: 2, kw: 2, stride: 1, pad: 0 };
    assert_eq!((g.out_h(), g.out_w()), (2, 2));
    let y = conv2d(&x, &[1.0, 2.0, 3.0, 4.0], Some(&[0.5]), &g);
    assert_eq!(y, vec![37.5, 47.5, 67.5, 77.5]);

    // 3x3 all-ones kernel, pad 1, stride 2: (3+2-3)/2+1 = 2; each output sums
    // the 2x2 corner block of real pixels: 1+2+4+5, 2+3+5+6, 4+5+7+8, 5+6+8+9.
    let g = Conv2dGeom { n: 1, c_in: 1, h: 3, w: 3, c_out: 1, kh: 3, kw: 3, stride: 2, pad: 1 };
    assert_eq!((g.out_h(), g.out_w()), (2, 2));
    let y = conv2d(&x, &[1.0; 9], None, &g);
    assert_eq!(y, vec![12.0, 16.0, 24.0, 28.0]);

    // Backward of the same: each dy spreads over the pixels its window saw.
    // dy = [1,2,3,4]: pixel (1,1) is in all four windows -> 10.
    let dx = conv2d_grad_input(&[1.0, 2.0, 3.0, 4.0], &[1.0; 9], &g);
    assert_eq!(dx, vec![1.0, 3.0, 2.0, 4.0, 10.0, 6.0, 3.0, 7.0, 4.0]);
    assert_eq!(conv2d_grad_bias(&[1.0, 2.0, 3.0, 4.0], &g), vec![10.0]);
}

#[test]
fn forward_batchnorm_train_and_running_update() {
    // One channel, n = 2, hw = 2: x = [1,2 | 3,4]; mean 2.5,
    // biased var = (2.25+0.25+0.25+2.25)/4 = 1.25.
    let x = [1.0, 2.0, 3.0, 4.0];
    let out = batchnorm_train(&x, &[2.0], &[1.0], 2, 1, 2, 0.0);
    assert_close("mean", &out.mean, &[2.5], 1e-15);
    assert_close("var", &out.var, &[1.25], 1e-15);
    let inv = 1.0 / 1.25f64.sqrt();
    assert_close("invstd", &out.invstd, &[inv], 1e-15);
    let want: Vec<f64> = x.iter().map(|v| 2.0 * (v - 2.5) * inv + 1.0).collect();
    assert_close("y", &out.y, &want, 1e-14);

    // Running update, momentum 0.1, count 4: rm = 0.9*0 + 0.1*2.5 = 0.25,
    // rv = 0.9*1 + 0.1*1.25*4/3 = 0.9 + 1/6.
    let (mut rm, mut rv) = ([0.0], [1.0]);
    batchnorm_running_update(&mut rm, &mut rv, &out.mean, &out.var, 4, 0.1);
    assert_close("running_mean", &rm, &[0.25], 1e-15);
    assert_close("running_var", &rv, &[0.9 + 1.0 / 6.0], 1e-15);

    // Eval with those statistics (eps 0): y = 3*(x - 0.25)/sqrt(rv) - 1.
    let y = batchnorm_eval(&x, &[3.0], &[-1.0], &rm, &rv, 2, 1, 2, 0.0);
    let want: Vec<f64> = x.iter().map(|v| 3.0 * (v - 0.25) / rv[0].sqrt() - 1.0).collect();
    assert_close("eval y", &y, &want, 1e-14);
}

#[test]
fn forward_relu_and_dropout() {
    assert_eq!(relu(&[-1.0, 0.0, 2.0]), vec![0.0, 0.0, 2.0]);
    assert_eq!(relu_backward(&[5.0, 6.0, 7.0], &[-1.0, 0.0, 2.0]), vec![0.0, 0.0, 7.0]);
    let keep = [1.0, 0.0, 1.0, 0.0];
    assert_eq!(dropout(&[1.0, 2.0, 3.0, 4.0], &keep, 0.5), vec![2.0, 0.0, 6.0, 0.0]);
    assert_eq!(dropout_backward(&[1.0, 1.0, 1.0, 1.0], &keep, 0.5), vec![2.0, 0.0, 2.0, 0.0]);
    assert_eq!(dropout(&[1.0, 2.0], &[0.0, 0.0], 1.0), vec![0.0, 0.0]);
}

#[test]
fn forward_shortcut_a() {
    // n=1, c=1, 3x3 -> [1, 3, 2, 2]: channel 1 = x[::2, ::2] = 1,3,7,9.
    let x: Vec<f64> = (1..=9).map(f64::from).collect();
    let y = shortcut_a(&x, 1, 1, 3, 3, 1);
    assert_eq!(y, vec![0.0, 0.0, 0.0, 0.0, 1.0, 3.0, 7.0, 9.0, 0.0, 0.0, 0.0, 0.0]);
    let dx = shortcut_a_backward(&y, 1, 1, 3, 3, 1);
    assert_eq!(dx, vec![1.0, 0.0, 3.0, 0.0, 0.0, 0.0, 7.0, 0.0, 9.0]);
}

#[test]
fn forward_maxpool2d_indices() {
    // k=2, s=2 on a 4x4 plane; the top-right window has a tie (7, 7) at
    // positions 6 and 7: the first one (6) wins. Bottom-left: 9 at 8 and 13 -> 8.
    #[rustfmt::skip]
    let x = [
        1.0, 5.0, 2.0, 0.0,
        3.0, 4.0, 7.0, 7.0,
        9.0, 0.0, 1.0, 2.0,
        8.0, 9.0, 3.0, 6.0,
    ];
    let (y, idx) = maxpool2d(&x, 1, 1, 4, 4, 2, 2, 0);
    assert_eq!(y, vec![5.0, 7.0, 9.0, 6.0]);
    assert_eq!(idx, vec![1, 6, 8, 15]);

    // k=3, s=2, pad=1 on an all-negative 3x3: padding is -inf, so it never
    // beats the negative values (zero padding would).
    let x: Vec<f64> = (1..=9).map(|v| -f64::from(v)).collect();
    let (y, idx) = maxpool2d(&x, 1, 1, 3, 3, 3, 2, 1);
    assert_eq!(y, vec![-1.0, -2.0, -4.0, -5.0]);
    assert_eq!(idx, vec![0, 1, 3, 4]);

    // Overlapping windows accumulate in backward: k=2, s=1 on a 3x3 plane
    // with the maximum in the centre -> every window picks position 4.
    let mut x = vec![0.0; 9];
    x[4] = 10.0;
    let (_, idx) = maxpool2d(&x, 1, 1, 3, 3, 2, 1, 0);
    assert_eq!(idx, vec![4, 4, 4, 4]);
    let dx = maxpool2d_backward(&[1.0, 2.0, 3.0, 4.0], &idx, 1, 1, 3, 3, 2, 2);
    assert_eq!(dx, vec![0.0, 0.0, 0.0, 0.0, 10.0, 0.0, 0.0, 0.0, 0.0]);
}

#[test]
fn forward_global_avgpool() {
    // [n=1, c=2, hw=3]
    let y = global_avgpool(&[1.0, 2.0, 6.0, -1.0, 0.0, 4.0], 1, 2, 3);
    assert_eq!(y, vec![3.0, 1.0]);
    assert_eq!(global_avgpool_backward(&[3.0, 6.0], 1, 2, 3), vec![1.0, 1.0, 1.0, 2.0, 2.0, 2.0]);
}

#[test]
fn forward_adaptive_avgpool2d_windows() {
    // 5x3 plane x[r][c] = 3r + c pooled to 3x2.
    // Rows (h=5, oh=3): [0,2), [1,4), [3,5). Cols (w=3, ow=2): [0,2), [1,3).
    // out[0][0] = mean{0,1,3,4} = 2       out[0][1] = mean{1,2,4,5} = 3
    // out[1][0] = mean{3,4,6,7,9,10} = 6.5 out[1][1] = mean{4,5,7,8,10,11} = 7.5
    // out[2][0] = mean{9,10,12,13} = 11   out[2][1] = mean{10,11,13,14} = 12
    let x: Vec<f64> = (0..15).map(f64::from).collect();
    let y = adaptive_avgpool2d(&x, 1, 1, 5, 3, 3, 2);
    assert_close("adaptive 5x3->3x2", &y, &[2.0, 3.0, 6.5, 7.5, 11.0, 12.0], 1e-14);

    // Up-sampling 1x2 -> 1x3: col windows [0,1), [0,2), [1,2).
    let y = adaptive_avgpool2d(&[2.0, 4.0], 1, 1, 1, 2, 1, 3);
    assert_close("adaptive 1x2->1x3", &y, &[2.0, 3.0, 4.0], 1e-15);
    // Backward: dy = [1,1,1] -> x0 gets 1 + 1/2, x1 gets 1/2 + 1.
    let dx = adaptive_avgpool2d_backward(&[1.0, 1.0, 1.0], 1, 1, 1, 2, 1, 3);
    assert_close("adaptive backward 1x2->1x3", &dx, &[1.5, 1.5], 1e-15);
}

#[test]
fn forward_softmax_cross_entropy_known_logits() {
    // Row 0: uniform logits over 3 classes, label 0 -> loss ln 3,
    //        d = ([1/3, 1/3, 1/3] - [1,0,0]) / 2.
    // Row 1: logits 1000 + ln[1,2,3] -> softmax [1/6, 2/6, 3/6] (only
    //        computable with max-subtraction), label 2 -> loss ln 2,
    //        d = ([1/6, 1/3, 1/2] - [0,0,1]) / 2.
    let logits = [0.0, 0.0, 0.0, 1000.0, 1000.0 + 2f64.ln(), 1000.0 + 3f64.ln()];
    let (loss, d) = softmax_cross_entropy(&logits, &[0, 2], 2, 3);
    let want_loss = (3f64.ln() + 2f64.ln()) / 2.0;
    assert!((loss - want_loss).abs() < 1e-12, "loss {loss} want {want_loss}");
    let want_d = [
        (1.0 / 3.0 - 1.0) / 2.0,
        (1.0 / 3.0) / 2.0,
        (1.0 / 3.0) / 2.0,
        (1.0 / 6.0) / 2.0,
        (1.0 / 3.0) / 2.0,
        (1.0 / 2.0 - 1.0) / 2.0,
    ];
    assert_close("dlogits", &d, &want_d, 1e-12);
}

#[test]
fn forward_sgd_momentum_weight_decay_mask() {
    // w = [1, -2, 0, 0.5], grad = [0.5, 0.25, 1, -1] (same both steps),
    // mask = [1, 1, 0, 1], lr 0.1, momentum 0.9, wd 0.1.
    //
    // Step 1: g = grad + 0.1 w = [0.6, 0.05, 1, -0.95] -> masked [0.6, 0.05, 0, -0.95]
    //         buf = g; w -= 0.1 buf -> [0.94, -2.005, 0, 0.595]
    // Step 2: g = [0.594, 0.0495, 0, -0.9405]
    //         buf = 0.9 [0.6, 0.05, 0, -0.95] + g = [1.134, 0.0945, 0, -1.7955]
    //         w -= 0.1 buf -> [0.8266, -2.01445, 0, 0.77455]
    let cfg = SgdConfig { lr: 0.1, momentum: 0.9, weight_decay: 0.1, nesterov: false };
    let grad = [0.5, 0.25, 1.0, -1.0];
    let mask = [1.0, 1.0, 0.0, 1.0];
    let mut w = [1.0, -2.0, 0.0, 0.5];
    let mut buf = [0.0; 4];
    sgd_step(&mut w, &grad, &mut buf, Some(&mask), &cfg);
    assert_close("sgd w1", &w, &[0.94, -2.005, 0.0, 0.595], 1e-12);
    assert_close("sgd buf1", &buf, &[0.6, 0.05, 0.0, -0.95], 1e-12);
    sgd_step(&mut w, &grad, &mut buf, Some(&mask), &cfg);
    assert_close("sgd w2", &w, &[0.8266, -2.01445, 0.0, 0.77455], 1e-12);
    assert_close("sgd buf2", &buf, &[1.134, 0.0945, 0.0, -1.7955], 1e-12);
    // The masked weight stays exactly 0 and so does its buffer.
    assert_eq!(w[2], 0.0);
    assert_eq!(buf[2], 0.0);
}

#[test]
fn forward_sgd_nesterov() {
    // Same data with nesterov: step = g + 0.9 buf.
    // Step 1: g = [0.6, 0.05, 0, -0.95], buf = g, step = 1.9 g
    //         = [1.14, 0.095, 0, -1.805] -> w = [0.886, -2.0095, 0, 0.6805]
    // Step 2: g = grad + 0.1 w = [0.5886, 0.04905, 0, -0.93195]
    //         buf = 0.9 [0.6, 0.05, 0, -0.95] + g = [1.1286, 0.09405, 0, -1.78695]
    //         step = g + 0.9 buf = [1.60434, 0.133695, 0, -2.540205]
    //         w = [0.725566, -2.0228695, 0, 0.9345205]
    let cfg = SgdConfig { lr: 0.1, momentum: 0.9, weight_decay: 0.1, nesterov: true };
    let grad = [0.5, 0.25, 1.0, -1.0];
    let mask = [1.0, 1.0, 0.0, 1.0];
    let mut w = [1.0, -2.0, 0.0, 0.5];
    let mut buf = [0.0; 4];
    sgd_step(&mut w, &grad, &mut buf, Some(&mask), &cfg);
    assert_close("nesterov w1", &w, &[0.886, -2.0095, 0.0, 0.6805], 1e-12);
    sgd_step(&mut w, &grad, &mut buf, Some(&mask), &cfg);
    assert_close("nesterov w2", &w, &[0.725566, -2.0228695, 0.0, 0.9345205], 1e-12);
    assert_close("nesterov buf2", &buf, &[1.1286, 0.09405, 0.0, -1.78695], 1e-12);
    assert_eq!(w[2], 0.0);
    assert_eq!(buf[2], 0.0);
}

#[test]
fn forward_sgd_plain_no_mask() {
    // momentum 0, wd 0, no mask: w -= lr * grad, buf = grad.
    let cfg = SgdConfig { lr: 0.5, momentum: 0.0, weight_decay: 0.0, nesterov: false };
    let mut w = [1.0, 2.0, 3.0];
    let mut buf = [0.0; 3];
    sgd_step(&mut w, &[2.0, -2.0, 0.5], &mut buf, None, &cfg);
    assert_eq!(w, [0.0, 3.0, 2.75]);
    assert_eq!(buf, [2.0, -2.0, 0.5]);
}
