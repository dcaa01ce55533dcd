//! Naive CPU reference implementations, computed in `f64`.
//!
//! These functions are the test oracle for every GPU kernel: each one is a
//! straightforward loop nest written for obvious correctness, not speed. They
//! depend on nothing else in the crate and on no external crate.
//!
//! Conventions:
//! * every tensor is a flat, row-major slice; images are NCHW;
//! * outputs are returned as fresh `Vec<f64>`;
//! * slice lengths are checked with `assert_eq!` at entry, so misuse panics
//!   with a clear message instead of producing silently wrong numbers;
//! * `*_backward` / `*_grad_*` functions take the upstream gradient `dy`
//!   (same shape as the forward output) and return the gradient with respect
//!   to the named argument.

// ---------------------------------------------------------------------------
// Elementwise helpers
// ---------------------------------------------------------------------------

/// Elementwise `a + b`. Shapes: `a`, `b`, result all `[len]`.
pub fn add(a: &[f64], b: &[f64]) -> Vec<f64> {
    assert_eq!(a.len(), b.len(), "add: a and b lengths differ");
    a.iter().zip(b).map(|(x, y)| x + y).collect()
}

/// Elementwise `a * s`. Shapes: `a`, result `[len]`.
pub fn scale(a: &[f64], s: f64) -> Vec<f64> {
    a.iter().map(|x| x * s).collect()
}

/// Elementwise `alpha * x + y`. Shapes: `x`, `y`, result `[len]`.
pub fn axpy(alpha: f64, x: &[f64], y: &[f64]) -> Vec<f64> {
    assert_eq!(x.len(), y.len(), "axpy: x and y lengths differ");
    x.iter().zip(y).map(|(xi, yi)| alpha * xi + yi).collect()
}

/// Sum of all elements of `a` (`[len]`); 0 for an empty slice.
pub fn sum(a: &[f64]) -> f64 {
    a.iter().sum()
}

/// Arithmetic mean of all elements of `a` (`[len]`, `len > 0`).
pub fn mean(a: &[f64]) -> f64 {
    assert!(!a.is_empty(), "mean: empty slice");
    sum(a) / a.len() as f64
}

// ---------------------------------------------------------------------------
// Dense layers
// ---------------------------------------------------------------------------

/// General matrix product `C = op(A) * op(B)`.
///
/// Shapes: `op(A)` is `[m, k]`, `op(B)` is `[k, n]`, result `C` is `[m, n]`.
/// `A` is stored `[m, k]`, or `[k, m]` when `trans_a` (so `op(A) = A^T`).
/// `B` is stored `[k, n]`, or `[n, k]` when `trans_b` (so `op(B) = B^T`).
pub fn matmul(a: &[f64], b: &[f64], m: usize, k: usize, n: usize, trans_a: bool, trans_b: bool) -> Vec<f64> {
    assert_eq!(a.len(), m * k, "matmul: a must hold m*k elements");
    assert_eq!(b.len(), k * n, "matmul: b must hold k*n elements");
    // op(A)[i][p] and op(B)[p][j], read straight from storage.
    let a_at = |i: usize, p: usize| if trans_a { a[p * m + i] } else { a[i * k + p] };
    let b_at = |p: usize, j: usize| if trans_b { b[j * k + p] } else { b[p * n + j] };
    let mut c = vec![0.0; m * n];
    for i in 0..m {
        for j in 0..n {
            let mut acc = 0.0;
            for p in 0..k {
                acc += a_at(i, p) * b_at(p, j);
            }
            c[i * n + j] = acc;
        }
    }
    c
}

/// Fully connected layer `y = x W^T + b` (PyTorch `nn.Linear`).
///
/// Shapes: `x` `[n, in_f]`, `weight` `[out_f, in_f]`, `bias` `[out_f]`,
/// result `[n, out_f]`.
pub fn linear(x: &[f64], weight: &[f64], bias: Option<&[f64]>, n: usize, in_f: usize, out_f: usize) -> Vec<f64> {
    assert_eq!(x.len(), n * in_f, "linear: x must be [n, in_f]");
    assert_eq!(weight.len(), out_f * in_f, "linear: weight must be [out_f, in_f]");
    if let Some(b) = bias {
        assert_eq!(b.len(), out_f, "linear: bias must be [out_f]");
    }
    let mut y = vec![0.0; n * out_f];
    for s in 0..n {
        for o in 0..out_f {
            let mut acc = bias.map_or(0.0, |b| b[o]);
            for i in 0..in_f {
                acc += x[s * in_f + i] * weight[o * in_f + i];
            }
            y[s * out_f + o] = acc;
        }
    }
    y
}

// ---------------------------------------------------------------------------
// Convolution
// ---------------------------------------------------------------------------

/// Geometry of a 2-D convolution (no groups, no dilation, symmetric padding).
///
/// Input `[n, c_in, h, w]`, weight `[c_out, c_in, kh, kw]`,
/// output `[n, c_out, out_h, out_w]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Conv2dGeom {
    pub n: usize,
    pub c_in: usize,
    pub h: usize,
    pub w: usize,
    pub c_out: usize,
    pub kh: usize,
    pub kw: usize,
    pub stride: usize,
    pub pad: usize,
}

impl Conv2dGeom {
    /// Output height `(h + 2*pad - kh) / stride + 1`.
    pub fn out_h(&self) -> usize {
        assert!(self.stride > 0, "Conv2dGeom: stride must be > 0");
        assert!(self.h + 2 * self.pad >= self.kh, "Conv2dGeom: kernel taller than padded input");
        (self.h + 2 * self.pad - self.kh) / self.stride + 1
    }

    /// Output width `(w + 2*pad - kw) / stride + 1`.
    pub fn out_w(&self) -> usize {
        assert!(self.stride > 0, "Conv2dGeom: stride must be > 0");
        assert!(self.w + 2 * self.pad >= self.kw, "Conv2dGeom: kernel wider than padded input");
        (self.w + 2 * self.pad - self.kw) / self.stride + 1
    }

    fn x_len(&self) -> usize {
        self.n * self.c_in * self.h * self.w
    }

    fn w_len(&self) -> usize {
        self.c_out * self.c_in * self.kh * self.kw
    }

    fn y_len(&self) -> usize {
        self.n * self.c_out * self.out_h() * self.out_w()
    }

    /// Input coordinate `o*stride + k - pad`, or `None` when it falls into the
    /// zero padding.
    fn in_coord(&self, o: usize, k: usize, size: usize) -> Option<usize> {
        let pos = (o * self.stride + k) as isize - self.pad as isize;
        if pos >= 0 && (pos as usize) < size {
            Some(pos as usize)
        } else {
            None
        }
    }
}

/// 2-D convolution with zero padding; cross-correlation like PyTorch
/// `nn.Conv2d` (the kernel is not flipped).
///
/// Shapes: `x` `[n, c_in, h, w]`, `w` `[c_out, c_in, kh, kw]`,
/// `bias` `[c_out]`, result `[n, c_out, out_h, out_w]`.
pub fn conv2d(x: &[f64], w: &[f64], bias: Option<&[f64]>, g: &Conv2dGeom) -> Vec<f64> {
    assert_eq!(x.len(), g.x_len(), "conv2d: x must be [n, c_in, h, w]");
    assert_eq!(w.len(), g.w_len(), "conv2d: w must be [c_out, c_in, kh, kw]");
    if let Some(b) = bias {
        assert_eq!(b.len(), g.c_out, "conv2d: bias must be [c_out]");
    }
    let (oh, ow) = (g.out_h(), g.out_w());
    let mut y = vec![0.0; g.y_len()];
    for s in 0..g.n {
        for co in 0..g.c_out {
            for oy in 0..oh {
                for ox in 0..ow {
                    let mut acc = bias.map_or(0.0, |b| b[co]);
                    for ci in 0..g.c_in {
                        for ky in 0..g.kh {
                            let Some(iy) = g.in_coord(oy, ky, g.h) else {
                                continue;
                            };
                            for kx in 0..g.kw {
                                let Some(ix) = g.in_coord(ox, kx, g.w) else {
                                    continue;
                                };
                                let xv = x[((s * g.c_in + ci) * g.h + iy) * g.w + ix];
                                let wv = w[((co * g.c_in + ci) * g.kh + ky) * g.kw + kx];
                                acc += xv * wv;
                            }
                        }
                    }
                    y[((s * g.c_out + co) * oh + oy) * ow + ox] = acc;
                }
            }
        }
    }
    y
}

/// Gradient of [`conv2d`] with respect to its input.
///
/// Shapes: `dy` `[n, c_out, out_h, out_w]`, `w` `[c_out, c_in, kh, kw]`,
/// result `dx` `[n, c_in, h, w]`. Written as the transpose of the forward
/// loop (scatter), so every tap the forward reads receives exactly its share.
pub fn conv2d_grad_input(dy: &[f64], w: &[f64], g: &Conv2dGeom) -> Vec<f64> {
    assert_eq!(dy.len(), g.y_len(), "conv2d_grad_input: dy must be [n, c_out, out_h, out_w]");
    assert_eq!(w.len(), g.w_len(), "conv2d_grad_input: w must be [c_out, c_in, kh, kw]");
    let (oh, ow) = (g.out_h(), g.out_w());
    let mut dx = vec![0.0; g.x_len()];
    for s in 0..g.n {
        for co in 0..g.c_out {
            for oy in 0..oh {
                for ox in 0..ow {
                    let d = dy[((s * g.c_out + co) * oh + oy) * ow + ox];
                    for ci in 0..g.c_in {
                        for ky in 0..g.kh {
                            let Some(iy) = g.in_coord(oy, ky, g.h) else {
                                continue;
                            };
                            for kx in 0..g.kw {
                                let Some(ix) = g.in_coord(ox, kx, g.w) else {
                                    continue;
                                };
                                let wv = w[((co * g.c_in + ci) * g.kh + ky) * g.kw + kx];
                                dx[((s * g.c_in + ci) * g.h + iy) * g.w + ix] += d * wv;
                            }
                        }
                    }
                }
            }
        }
    }
    dx
}

/// Gradient of [`conv2d`] with respect to its weight.
///
/// Shapes: `dy` `[n, c_out, out_h, out_w]`, `x` `[n, c_in, h, w]`,
/// result `dw` `[c_out, c_in, kh, kw]` (summed over the batch).
pub fn conv2d_grad_weight(dy: &[f64], x: &[f64], g: &Conv2dGeom) -> Vec<f64> {
    assert_eq!(dy.len(), g.y_len(), "conv2d_grad_weight: dy must be [n, c_out, out_h, out_w]");
    assert_eq!(x.len(), g.x_len(), "conv2d_grad_weight: x must be [n, c_in, h, w]");
    let (oh, ow) = (g.out_h(), g.out_w());
    let mut dw = vec![0.0; g.w_len()];
    for s in 0..g.n {
        for co in 0..g.c_out {
            for oy in 0..oh {
                for ox in 0..ow {
                    let d = dy[((s * g.c_out + co) * oh + oy) * ow + ox];
                    for ci in 0..g.c_in {
                        for ky in 0..g.kh {
                            let Some(iy) = g.in_coord(oy, ky, g.h) else {
                                continue;
                            };
                            for kx in 0..g.kw {
                                let Some(ix) = g.in_coord(ox, kx, g.w) else {
                                    continue;
                                };
                                let xv = x[((s * g.c_in + ci) * g.h + iy) * g.w + ix];
                                dw[((co * g.c_in + ci) * g.kh + ky) * g.kw + kx] += d * xv;
                            }
                        }
                    }
                }
            }
        }
    }
    dw
}

/// Gradient of [`conv2d`] with respect to its bias.
///
/// Shapes: `dy` `[n, c_out, out_h, out_w]`, result `[c_out]` (sum of `dy`
/// over batch and spatial positions).
pub fn conv2d_grad_bias(dy: &[f64], g: &Conv2dGeom) -> Vec<f64> {
    assert_eq!(dy.len(), g.y_len(), "conv2d_grad_bias: dy must be [n, c_out, out_h, out_w]");
    let plane = g.out_h() * g.out_w();
    let mut db = vec![0.0; g.c_out];
    for s in 0..g.n {
        for (co, acc) in db.iter_mut().enumerate() {
            let start = (s * g.c_out + co) * plane;
            *acc += sum(&dy[start..start + plane]);
        }
    }
    db
}

// ---------------------------------------------------------------------------
// Batch normalization
// ---------------------------------------------------------------------------

/// Result of [`batchnorm_train`]. `y` is `[n, c, hw]`; `mean`, `var`
/// (biased batch variance, divided by `n*hw`) and `invstd = 1/sqrt(var+eps)`
/// are `[c]`.
#[derive(Clone, Debug, PartialEq)]
pub struct BatchNormOut {
    pub y: Vec<f64>,
    pub mean: Vec<f64>,
    pub var: Vec<f64>,
    pub invstd: Vec<f64>,
}

/// Training-mode batch normalization over `[n, c, hw]` (NCHW with `h*w`
/// flattened to `hw`): per-channel statistics over the `n*hw` values.
///
/// `y = gamma * (x - mean) * invstd + beta`. Shapes: `x` `[n, c, hw]`,
/// `gamma`, `beta` `[c]`; see [`BatchNormOut`] for the outputs.
pub fn batchnorm_train(
    x: &[f64],
    gamma: &[f64],
    beta: &[f64],
    n: usize,
    c: usize,
    hw: usize,
    eps: f64,
) -> BatchNormOut {
    assert_eq!(x.len(), n * c * hw, "batchnorm_train: x must be [n, c, hw]");
    assert_eq!(gamma.len(), c, "batchnorm_train: gamma must be [c]");
    assert_eq!(beta.len(), c, "batchnorm_train: beta must be [c]");
    assert!(n * hw > 0, "batchnorm_train: need at least one value per channel");
    let count = (n * hw) as f64;
    let mut mean_v = vec![0.0; c];
    let mut var_v = vec![0.0; c];
    let mut invstd = vec![0.0; c];
    for ch in 0..c {
        // Two-pass mean/variance: exact enough in f64 and obviously right.
        let mut s1 = 0.0;
        for s in 0..n {
            for i in 0..hw {
                s1 += x[(s * c + ch) * hw + i];
            }
        }
        let m = s1 / count;
        let mut s2 = 0.0;
        for s in 0..n {
            for i in 0..hw {
                let d = x[(s * c + ch) * hw + i] - m;
                s2 += d * d;
            }
        }
        mean_v[ch] = m;
        var_v[ch] = s2 / count;
        invstd[ch] = 1.0 / (var_v[ch] + eps).sqrt();
    }
    let mut y = vec![0.0; x.len()];
    for s in 0..n {
        for ch in 0..c {
            for i in 0..hw {
                let idx = (s * c + ch) * hw + i;
                y[idx] = gamma[ch] * (x[idx] - mean_v[ch]) * invstd[ch] + beta[ch];
            }
        }
    }
    BatchNormOut { y, mean: mean_v, var: var_v, invstd }
}

/// PyTorch running-statistics update after a training-mode batch norm.
///
/// `rm = (1-m) rm + m mean`; `rv = (1-m) rv + m * var_biased * count/(count-1)`
/// (the running variance uses the unbiased estimate). All slices are `[c]`;
/// `count = n*hw` must be > 1 (PyTorch refuses one value per channel too).
pub fn batchnorm_running_update(
    running_mean: &mut [f64],
    running_var: &mut [f64],
    mean: &[f64],
    var_biased: &[f64],
    count: usize,
    momentum: f64,
) {
    let c = running_mean.len();
    assert_eq!(running_var.len(), c, "batchnorm_running_update: running_var must be [c]");
    assert_eq!(mean.len(), c, "batchnorm_running_update: mean must be [c]");
    assert_eq!(var_biased.len(), c, "batchnorm_running_update: var_biased must be [c]");
    assert!(count > 1, "batchnorm_running_update: count must be > 1 for the unbiased variance");
    let unbias = count as f64 / (count - 1) as f64;
    for ch in 0..c {
        running_mean[ch] = (1.0 - momentum) * running_mean[ch] + momentum * mean[ch];
        running_var[ch] = (1.0 - momentum) * running_var[ch] + momentum * var_biased[ch] * unbias;
    }
}

/// Backward of [`batchnorm_train`] (batch statistics depend on `x`).
///
/// With `xhat = (x - mean) * invstd` and `M = n*hw`:
/// `dbeta = sum(dy)`, `dgamma = sum(dy * xhat)`,
/// `dx = gamma * invstd / M * (M*dy - dbeta - xhat * dgamma)`.
/// Shapes: `dy`, `x`, `dx` `[n, c, hw]`; `gamma`, `mean`, `invstd`, `dgamma`,
/// `dbeta` `[c]`. Returns `(dx, dgamma, dbeta)`.
#[allow(clippy::too_many_arguments)]
pub fn batchnorm_train_backward(
    dy: &[f64],
    x: &[f64],
    gamma: &[f64],
    mean: &[f64],
    invstd: &[f64],
    n: usize,
    c: usize,
    hw: usize,
) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    assert_eq!(dy.len(), n * c * hw, "batchnorm_train_backward: dy must be [n, c, hw]");
    assert_eq!(x.len(), n * c * hw, "batchnorm_train_backward: x must be [n, c, hw]");
    assert_eq!(gamma.len(), c, "batchnorm_train_backward: gamma must be [c]");
    assert_eq!(mean.len(), c, "batchnorm_train_backward: mean must be [c]");
    assert_eq!(invstd.len(), c, "batchnorm_train_backward: invstd must be [c]");
    let count = (n * hw) as f64;
    let mut dgamma = vec![0.0; c];
    let mut dbeta = vec![0.0; c];
    for s in 0..n {
        for ch in 0..c {
            for i in 0..hw {
                let idx = (s * c + ch) * hw + i;
                let xhat = (x[idx] - mean[ch]) * invstd[ch];
                dbeta[ch] += dy[idx];
                dgamma[ch] += dy[idx] * xhat;
            }
        }
    }
    let mut dx = vec![0.0; x.len()];
    for s in 0..n {
        for ch in 0..c {
            for i in 0..hw {
                let idx = (s * c + ch) * hw + i;
                let xhat = (x[idx] - mean[ch]) * invstd[ch];
                dx[idx] = gamma[ch] * invstd[ch] / count * (count * dy[idx] - dbeta[ch] - xhat * dgamma[ch]);
            }
        }
    }
    (dx, dgamma, dbeta)
}

/// Eval-mode batch normalization with running statistics.
///
/// `y = gamma * (x - running_mean) / sqrt(running_var + eps) + beta`.
/// Shapes: `x`, result `[n, c, hw]`; `gamma`, `beta`, `running_mean`,
/// `running_var` `[c]`.
#[allow(clippy::too_many_arguments)]
pub fn batchnorm_eval(
    x: &[f64],
    gamma: &[f64],
    beta: &[f64],
    running_mean: &[f64],
    running_var: &[f64],
    n: usize,
    c: usize,
    hw: usize,
    eps: f64,
) -> Vec<f64> {
    assert_eq!(x.len(), n * c * hw, "batchnorm_eval: x must be [n, c, hw]");
    assert_eq!(gamma.len(), c, "batchnorm_eval: gamma must be [c]");
    assert_eq!(beta.len(), c, "batchnorm_eval: beta must be [c]");
    assert_eq!(running_mean.len(), c, "batchnorm_eval: running_mean must be [c]");
    assert_eq!(running_var.len(), c, "batchnorm_eval: running_var must be [c]");
    let mut y = vec![0.0; x.len()];
    for s in 0..n {
        for ch in 0..c {
            let inv = 1.0 / (running_var[ch] + eps).sqrt();
            for i in 0..hw {
                let idx = (s * c + ch) * hw + i;
                y[idx] = gamma[ch] * (x[idx] - running_mean[ch]) * inv + beta[ch];
            }
        }
    }
    y
}

/// Backward of [`batchnorm_eval`] (statistics are constants here).
///
/// `dx = dy * gamma / sqrt(rv + eps)`,
/// `dgamma = sum(dy * (x - rm) / sqrt(rv + eps))`, `dbeta = sum(dy)`.
/// Shapes: `dy`, `x`, `dx` `[n, c, hw]`; `gamma`, `running_mean`,
/// `running_var`, `dgamma`, `dbeta` `[c]`. Returns `(dx, dgamma, dbeta)`.
#[allow(clippy::too_many_arguments)]
pub fn batchnorm_eval_backward(
    dy: &[f64],
    x: &[f64],
    gamma: &[f64],
    running_mean: &[f64],
    running_var: &[f64],
    n: usize,
    c: usize,
    hw: usize,
    eps: f64,
) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    assert_eq!(dy.len(), n * c * hw, "batchnorm_eval_backward: dy must be [n, c, hw]");
    assert_eq!(x.len(), n * c * hw, "batchnorm_eval_backward: x must be [n, c, hw]");
    assert_eq!(gamma.len(), c, "batchnorm_eval_backward: gamma must be [c]");
    assert_eq!(running_mean.len(), c, "batchnorm_eval_backward: running_mean must be [c]");
    assert_eq!(running_var.len(), c, "batchnorm_eval_backward: running_var must be [c]");
    let mut dx = vec![0.0; x.len()];
    let mut dgamma = vec![0.0; c];
    let mut dbeta = vec![0.0; c];
    for s in 0..n {
        for ch in 0..c {
            let inv = 1.0 / (running_var[ch] + eps).sqrt();
            for i in 0..hw {
                let idx = (s * c + ch) * hw + i;
                dx[idx] = dy[idx] * gamma[ch] * inv;
                dgamma[ch] += dy[idx] * (x[idx] - running_mean[ch]) * inv;
                dbeta[ch] += dy[idx];
            }
        }
    }
    (dx, dgamma, dbeta)
}

// ---------------------------------------------------------------------------
// Activations, shortcuts, pooling, dropout
// ---------------------------------------------------------------------------

/// `max(x, 0)` elementwise. Shapes: `x`, result `[len]`.
pub fn relu(x: &[f64]) -> Vec<f64> {
    x.iter().map(|&v| if v > 0.0 { v } else { 0.0 }).collect()
}

/// Backward of [`relu`]: `dy` where `x > 0`, else 0 (gradient 0 at exactly
/// 0, like PyTorch). Shapes: `dy`, `x`, result `[len]`.
pub fn relu_backward(dy: &[f64], x: &[f64]) -> Vec<f64> {
    assert_eq!(dy.len(), x.len(), "relu_backward: dy and x lengths differ");
    dy.iter().zip(x).map(|(&d, &v)| if v > 0.0 { d } else { 0.0 }).collect()
}

/// CIFAR ResNet "option A" shortcut: spatial subsampling by 2 plus zero
/// channel padding.
///
/// Shapes: `x` `[n, c, h, w]`, result `[n, c + 2*pad_c, ceil(h/2), ceil(w/2)]`
/// with `y[:, pad_c..pad_c+c] = x[:, :, ::2, ::2]` and all other channels 0.
pub fn shortcut_a(x: &[f64], n: usize, c: usize, h: usize, w: usize, pad_c: usize) -> Vec<f64> {
    assert_eq!(x.len(), n * c * h * w, "shortcut_a: x must be [n, c, h, w]");
    let (oh, ow) = (h.div_ceil(2), w.div_ceil(2));
    let oc = c + 2 * pad_c;
    let mut y = vec![0.0; n * oc * oh * ow];
    for s in 0..n {
        for ch in 0..c {
            for oy in 0..oh {
                for ox in 0..ow {
                    y[((s * oc + ch + pad_c) * oh + oy) * ow + ox] = x[((s * c + ch) * h + 2 * oy) * w + 2 * ox];
                }
            }
        }
    }
    y
}

/// Backward of [`shortcut_a`]: routes `dy` back to the even positions of the
/// input; odd positions and padded channels get nothing.
///
/// Shapes: `dy` `[n, c + 2*pad_c, ceil(h/2), ceil(w/2)]`, result `[n, c, h, w]`.
pub fn shortcut_a_backward(dy: &[f64], n: usize, c: usize, h: usize, w: usize, pad_c: usize) -> Vec<f64> {
    let (oh, ow) = (h.div_ceil(2), w.div_ceil(2));
    let oc = c + 2 * pad_c;
    assert_eq!(dy.len(), n * oc * oh * ow, "shortcut_a_backward: dy must be [n, c+2*pad_c, ceil(h/2), ceil(w/2)]");
    let mut dx = vec![0.0; n * c * h * w];
    for s in 0..n {
        for ch in 0..c {
            for oy in 0..oh {
                for ox in 0..ow {
                    dx[((s * c + ch) * h + 2 * oy) * w + 2 * ox] = dy[((s * oc + ch + pad_c) * oh + oy) * ow + ox];
                }
            }
        }
    }
    dx
}

/// 2-D max pooling with a square `k x k` window.
///
/// Shapes: `x` `[n, c, h, w]`; outputs `[n, c, oh, ow]` with
/// `oh = (h + 2*pad - k)/stride + 1` (same for `ow`). Padding counts as
/// `-inf`, so it never wins. The second output holds, for every output, the
/// argmax position `iy*w + ix` inside its own input plane; ties go to the first
/// maximum in row-major window order. Requires `2*pad <= k` (as PyTorch does),
/// which guarantees every window covers at least one real input.
#[allow(clippy::too_many_arguments)]
pub fn maxpool2d(
    x: &[f64],
    n: usize,
    c: usize,
    h: usize,
    w: usize,
    k: usize,
    stride: usize,
    pad: usize,
) -> (Vec<f64>, Vec<u32>) {
    assert_eq!(x.len(), n * c * h * w, "maxpool2d: x must be [n, c, h, w]");
    assert!(k > 0 && stride > 0, "maxpool2d: k and stride must be > 0");
    assert!(2 * pad <= k, "maxpool2d: pad must be at most k/2");
    assert!(h + 2 * pad >= k && w + 2 * pad >= k, "maxpool2d: window larger than padded input");
    let oh = (h + 2 * pad - k) / stride + 1;
    let ow = (w + 2 * pad - k) / stride + 1;
    let mut y = vec![0.0; n * c * oh * ow];
    let mut idx = vec![0u32; n * c * oh * ow];
    for plane in 0..n * c {
        let xp = &x[plane * h * w..(plane + 1) * h * w];
        for oy in 0..oh {
            for ox in 0..ow {
                let mut best = f64::NEG_INFINITY;
                let mut best_i: Option<usize> = None;
                for ky in 0..k {
                    let iy = (oy * stride + ky) as isize - pad as isize;
                    if iy < 0 || iy as usize >= h {
                        continue;
                    }
                    for kx in 0..k {
                        let ix = (ox * stride + kx) as isize - pad as isize;
                        if ix < 0 || ix as usize >= w {
                            continue;
                        }
                        let pos = iy as usize * w + ix as usize;
                        // Strict `>` keeps the first maximum on ties; the
                        // `is_none` arm accepts a real -inf input as well.
                        if best_i.is_none() || xp[pos] > best {
                            best = xp[pos];
                            best_i = Some(pos);
                        }
                    }
                }
                let o = (plane * oh + oy) * ow + ox;
                y[o] = best;
                idx[o] = best_i.expect("maxpool2d: window covers no input") as u32;
            }
        }
    }
    (y, idx)
}

/// Backward of [`maxpool2d`]: each `dy` is added to the input position its
/// `idx` names (overlapping windows accumulate).
///
/// Shapes: `dy`, `idx` `[n, c, oh, ow]`; result `[n, c, h, w]`.
#[allow(clippy::too_many_arguments)]
pub fn maxpool2d_backward(
    dy: &[f64],
    idx: &[u32],
    n: usize,
    c: usize,
    h: usize,
    w: usize,
    oh: usize,
    ow: usize,
) -> Vec<f64> {
    assert_eq!(dy.len(), n * c * oh * ow, "maxpool2d_backward: dy must be [n, c, oh, ow]");
    assert_eq!(idx.len(), n * c * oh * ow, "maxpool2d_backward: idx must be [n, c, oh, ow]");
    let mut dx = vec![0.0; n * c * h * w];
    for plane in 0..n * c {
        for o in 0..oh * ow {
            let i = idx[plane * oh * ow + o] as usize;
            assert!(i < h * w, "maxpool2d_backward: index outside the input plane");
            dx[plane * h * w + i] += dy[plane * oh * ow + o];
        }
    }
    dx
}

/// Global average pooling over the spatial positions.
///
/// Shapes: `x` `[n, c, hw]`, result `[n, c]`.
pub fn global_avgpool(x: &[f64], n: usize, c: usize, hw: usize) -> Vec<f64> {
    assert_eq!(x.len(), n * c * hw, "global_avgpool: x must be [n, c, hw]");
    assert!(hw > 0, "global_avgpool: hw must be > 0");
    (0..n * c).map(|p| mean(&x[p * hw..(p + 1) * hw])).collect()
}

/// Backward of [`global_avgpool`]: every position receives `dy / hw`.
///
/// Shapes: `dy` `[n, c]`, result `[n, c, hw]`.
pub fn global_avgpool_backward(dy: &[f64], n: usize, c: usize, hw: usize) -> Vec<f64> {
    assert_eq!(dy.len(), n * c, "global_avgpool_backward: dy must be [n, c]");
    let mut dx = vec![0.0; n * c * hw];
    for p in 0..n * c {
        for i in 0..hw {
            dx[p * hw + i] = dy[p] / hw as f64;
        }
    }
    dx
}

/// PyTorch adaptive-pool window `[start, end)` for output index `i`:
/// `start = floor(i*size/out)`, `end = ceil((i+1)*size/out)`.
fn adaptive_window(i: usize, size: usize, out: usize) -> (usize, usize) {
    let start = (i * size) / out;
    let end = ((i + 1) * size).div_ceil(out);
    (start, end)
}

/// Adaptive average pooling to a fixed `[oh, ow]` output, with PyTorch's
/// (possibly overlapping) windows, see `adaptive_window`.
///
/// Shapes: `x` `[n, c, h, w]`, result `[n, c, oh, ow]`.
pub fn adaptive_avgpool2d(x: &[f64], n: usize, c: usize, h: usize, w: usize, oh: usize, ow: usize) -> Vec<f64> {
    assert_eq!(x.len(), n * c * h * w, "adaptive_avgpool2d: x must be [n, c, h, w]");
    assert!(h > 0 && w > 0 && oh > 0 && ow > 0, "adaptive_avgpool2d: sizes must be > 0");
    let mut y = vec![0.0; n * c * oh * ow];
    for plane in 0..n * c {
        for oy in 0..oh {
            let (y0, y1) = adaptive_window(oy, h, oh);
            for ox in 0..ow {
                let (x0, x1) = adaptive_window(ox, w, ow);
                let mut acc = 0.0;
                for iy in y0..y1 {
                    for ix in x0..x1 {
                        acc += x[(plane * h + iy) * w + ix];
                    }
                }
                y[(plane * oh + oy) * ow + ox] = acc / ((y1 - y0) * (x1 - x0)) as f64;
            }
        }
    }
    y
}

/// Backward of [`adaptive_avgpool2d`]: each `dy` is spread evenly over its
/// window; overlapping windows accumulate.
///
/// Shapes: `dy` `[n, c, oh, ow]`, result `[n, c, h, w]`.
pub fn adaptive_avgpool2d_backward(
    dy: &[f64],
    n: usize,
    c: usize,
    h: usize,
    w: usize,
    oh: usize,
    ow: usize,
) -> Vec<f64> {
    assert_eq!(dy.len(), n * c * oh * ow, "adaptive_avgpool2d_backward: dy must be [n, c, oh, ow]");
    assert!(h > 0 && w > 0 && oh > 0 && ow > 0, "adaptive_avgpool2d_backward: sizes must be > 0");
    let mut dx = vec![0.0; n * c * h * w];
    for plane in 0..n * c {
        for oy in 0..oh {
            let (y0, y1) = adaptive_window(oy, h, oh);
            for ox in 0..ow {
                let (x0, x1) = adaptive_window(ox, w, ow);
                let share = dy[(plane * oh + oy) * ow + ox] / ((y1 - y0) * (x1 - x0)) as f64;
                for iy in y0..y1 {
                    for ix in x0..x1 {
                        dx[(plane * h + iy) * w + ix] += share;
                    }
                }
            }
        }
    }
    dx
}

/// The keep mask (1 kept, 0 dropped) that the dropout kernels draw for `n` elements with
/// probability `p` and `seed`: element i is kept when u_i >= p, where u_i is the top 24 bits of
/// pcg(pcg(i) ^ seed) scaled to [0, 1) and pcg is the PCG output permutation
/// (s = v·747796405 + 2891336453; w = ((s >> ((s >> 28) + 4)) ^ s)·277803737; w ^ (w >> 22)),
/// all in wrapping u32 arithmetic. Comparing in f32 matches the shader exactly: u_i and p are
/// both f32 there, and every 24-bit fraction is exact in f32.
pub fn dropout_keep_mask(n: usize, p: f32, seed: u32) -> Vec<f64> {
    let pcg = |v: u32| {
        let s = v.wrapping_mul(747_796_405).wrapping_add(2_891_336_453);
        let w = ((s >> ((s >> 28) + 4)) ^ s).wrapping_mul(277_803_737);
        (w >> 22) ^ w
    };
    (0..n as u32)
        .map(|i| {
            let u = (pcg(pcg(i) ^ seed) >> 8) as f32 * (1.0 / 16_777_216.0);
            if u >= p {
                1.0
            } else {
                0.0
            }
        })
        .collect()
}

/// Inverted dropout with an explicit keep mask: `x * keep / (1 - p)`.
///
/// Shapes: `x`, `keep` (entries 0 or 1), result `[len]`. `0 <= p <= 1`; for
/// `p == 1` nothing is kept and the result is all zeros (as in PyTorch).
pub fn dropout(x: &[f64], keep: &[f64], p: f64) -> Vec<f64> {
    assert_eq!(x.len(), keep.len(), "dropout: x and keep lengths differ");
    let s = dropout_scale(p);
    x.iter().zip(keep).map(|(&v, &k)| v * k * s).collect()
}

/// Backward of [`dropout`]: `dy * keep / (1 - p)`. Shapes as in [`dropout`].
pub fn dropout_backward(dy: &[f64], keep: &[f64], p: f64) -> Vec<f64> {
    assert_eq!(dy.len(), keep.len(), "dropout_backward: dy and keep lengths differ");
    let s = dropout_scale(p);
    dy.iter().zip(keep).map(|(&d, &k)| d * k * s).collect()
}

fn dropout_scale(p: f64) -> f64 {
    assert!((0.0..=1.0).contains(&p), "dropout: p must be in [0, 1]");
    if p >= 1.0 {
        0.0
    } else {
        1.0 / (1.0 - p)
    }
}

// ---------------------------------------------------------------------------
// Loss
// ---------------------------------------------------------------------------

/// Softmax cross-entropy, averaged over the batch.
///
/// Shapes: `logits` `[n, classes]`, `labels` `[n]` (each `< classes`).
/// Returns `(mean loss, dlogits)` with `dlogits` `[n, classes]` the gradient
/// of the *mean* loss: `(softmax - onehot) / n`. The row maximum is subtracted
/// before exponentiating so large logits do not overflow.
pub fn softmax_cross_entropy(logits: &[f64], labels: &[u32], n: usize, classes: usize) -> (f64, Vec<f64>) {
    assert_eq!(logits.len(), n * classes, "softmax_cross_entropy: logits must be [n, classes]");
    assert_eq!(labels.len(), n, "softmax_cross_entropy: labels must be [n]");
    assert!(n > 0 && classes > 0, "softmax_cross_entropy: n and classes must be > 0");
    let mut total = 0.0;
    let mut dlogits = vec![0.0; n * classes];
    for s in 0..n {
        let row = &logits[s * classes..(s + 1) * classes];
        let label = labels[s] as usize;
        assert!(label < classes, "softmax_cross_entropy: label out of range");
        let mx = row.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let denom: f64 = row.iter().map(|&z| (z - mx).exp()).sum();
        let log_denom = denom.ln();
        // loss_s = -log softmax[label] = log(sum exp(z - mx)) - (z_label - mx)
        total += log_denom - (row[label] - mx);
        for j in 0..classes {
            let p = (row[j] - mx).exp() / denom;
            let onehot = if j == label { 1.0 } else { 0.0 };
            dlogits[s * classes + j] = (p - onehot) / n as f64;
        }
    }
    (total / n as f64, dlogits)
}

// ---------------------------------------------------------------------------
// Optimizer
// ---------------------------------------------------------------------------

/// Hyper-parameters of [`sgd_step`] (PyTorch `torch.optim.SGD`, dampening 0).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SgdConfig {
    pub lr: f64,
    pub momentum: f64,
    pub weight_decay: f64,
    pub nesterov: bool,
}

/// One in-place SGD step, PyTorch semantics with dampening 0 and a momentum
/// buffer that starts at 0 (so the first step's `buf` equals `g`, matching
/// PyTorch's "buf = g on the first step"):
///
/// ```text
/// g    = grad + weight_decay * w
/// g   *= mask                      (if a mask is given)
/// buf  = momentum * buf + g
/// step = nesterov ? g + momentum * buf : buf
/// w   -= lr * step
/// ```
///
/// With a mask, a pruned weight that is 0 stays exactly 0 and its momentum
/// buffer stays 0. Shapes: `w`, `grad`, `momentum_buf`, `mask` all `[len]`.
pub fn sgd_step(w: &mut [f64], grad: &[f64], momentum_buf: &mut [f64], mask: Option<&[f64]>, cfg: &SgdConfig) {
    assert_eq!(grad.len(), w.len(), "sgd_step: grad and w lengths differ");
    assert_eq!(momentum_buf.len(), w.len(), "sgd_step: momentum_buf and w lengths differ");
    if let Some(m) = mask {
        assert_eq!(m.len(), w.len(), "sgd_step: mask and w lengths differ");
    }
    for i in 0..w.len() {
        let mut g = grad[i] + cfg.weight_decay * w[i];
        if let Some(m) = mask {
            g *= m[i];
        }
        momentum_buf[i] = cfg.momentum * momentum_buf[i] + g;
        let step = if cfg.nesterov { g + cfg.momentum * momentum_buf[i] } else { momentum_buf[i] };
        w[i] -= cfg.lr * step;
    }
}

// ---------------------------------------------------------------------------
// Finite differences
// ---------------------------------------------------------------------------

/// Central-difference gradient of a scalar function:
/// `grad[i] = (f(x + eps e_i) - f(x - eps e_i)) / (2 eps)`.
///
/// Shapes: `x`, result `[len]`. Calls `f` `2*len` times on a private copy of
/// `x`, so `x` itself is never modified.
pub fn numeric_grad(f: &mut dyn FnMut(&[f64]) -> f64, x: &[f64], eps: f64) -> Vec<f64> {
    assert!(eps > 0.0, "numeric_grad: eps must be > 0");
    let mut xp = x.to_vec();
    let mut g = vec![0.0; x.len()];
    for i in 0..x.len() {
        let orig = xp[i];
        xp[i] = orig + eps;
        let f_plus = f(&xp);
        xp[i] = orig - eps;
        let f_minus = f(&xp);
        xp[i] = orig;
        // Divide by the step actually taken, which can differ from 2*eps by
        // rounding when |x| is large.
        g[i] = (f_plus - f_minus) / ((orig + eps) - (orig - eps));
    }
    g
}

// ---------------------------------------------------------------------------
// ADMM pruning updates (SAS-ADMM: Yuan et al. 2024, Algorithm 1; ADMM-NN), element-wise over the prunable-weight vector.
// ---------------------------------------------------------------------------

/// `soft(x, τ) = sign(x)·max(|x| − τ, 0)`, the proximal operator of τ‖·‖₁.
pub fn soft_threshold(x: f64, tau: f64) -> f64 {
    x.signum() * (x.abs() - tau).max(0.0)
}

/// `h = ρ·W + U − β·(W − Z)`.
pub fn sas_h(w: &[f64], z: &[f64], u: &[f64], rho: f64, beta: f64) -> Vec<f64> {
    (0..w.len()).map(|i| rho * w[i] + u[i] - beta * (w[i] - z[i])).collect()
}

/// One SAS-ADMM inner step: returns (W̆', W', Ŵ for the next step with `b_next`).
#[allow(clippy::too_many_arguments)]
pub fn sas_inner(
    d: &[f64],
    h: &[f64],
    w_breve: &[f64],
    w: &[f64],
    gamma: f64,
    rho: f64,
    b: f64,
    b_next: f64,
) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let wb: Vec<f64> = (0..w.len()).map(|i| (gamma * w_breve[i] + h[i] - d[i]) / (gamma + rho)).collect();
    let wn: Vec<f64> = (0..w.len()).map(|i| b * wb[i] + (1.0 - b) * w[i]).collect();
    let hat = (0..w.len()).map(|i| b_next * wb[i] + (1.0 - b_next) * wn[i]).collect();
    (wb, wn, hat)
}

/// SAS-ADMM steps 4–6: returns (Z', U', Z' − Z, W − Z').
#[allow(clippy::type_complexity)]
pub fn sas_dual(
    w: &[f64],
    z: &[f64],
    u: &[f64],
    beta: f64,
    lambda: f64,
    r: f64,
    s: f64,
) -> (Vec<f64>, Vec<f64>, Vec<f64>, Vec<f64>) {
    let mut out = (vec![0.0; w.len()], vec![0.0; w.len()], vec![0.0; w.len()], vec![0.0; w.len()]);
    for i in 0..w.len() {
        let u_half = u[i] - r * beta * (w[i] - z[i]);
        let z_new = soft_threshold(w[i] - u_half / beta, lambda / beta);
        out.0[i] = z_new;
        out.1[i] = u_half - s * beta * (w[i] - z_new);
        out.2[i] = z_new - z[i];
        out.3[i] = w[i] - z_new;
    }
    out
}

/// Per-layer magnitude mask: within each (offset, len, k) range, 0 for the k smallest |x|
/// (ties: lower position first), 1 for the rest; 1 outside every range.
pub fn magnitude_mask(x: &[f64], layers: &[(usize, usize, usize)]) -> Vec<f64> {
    let mut mask = vec![1.0; x.len()];
    for &(offset, len, k) in layers {
        let mut order: Vec<usize> = (offset..offset + len).collect();
        order.sort_by(|&a, &b| x[a].abs().total_cmp(&x[b].abs()).then(a.cmp(&b)));
        for &i in &order[..k] {
            mask[i] = 0.0;
        }
    }
    mask
}

// ---------------------------------------------------------------------------
// Structured pruning (src/prune/ALGORITHM.md, "Structured variants").
// ---------------------------------------------------------------------------

/// Σ x² over each contiguous group (offset, len).
pub fn group_sum_squares(x: &[f64], groups: &[(usize, usize)]) -> Vec<f64> {
    groups.iter().map(|&(o, l)| x[o..o + l].iter().map(|v| v * v).sum()).collect()
}

/// The group soft threshold, the prox of τ·Σ_g √|g|·‖x_g‖₂: each group scaled by
/// max(0, 1 − τ√|g| / ‖x_g‖₂) (0 for a zero group); elements outside every group unchanged.
pub fn group_soft_threshold(x: &[f64], groups: &[(usize, usize)], tau: f64) -> Vec<f64> {
    let mut out = x.to_vec();
    for (&(o, l), sumsq) in groups.iter().zip(group_sum_squares(x, groups)) {
        let (norm, t) = (sumsq.sqrt(), tau * (l as f64).sqrt());
        let factor = if norm > t { 1.0 - t / norm } else { 0.0 };
        out[o..o + l].iter_mut().for_each(|v| *v *= factor);
    }
    out
}

/// Which elements of a quad the 2:4 selection keeps: the 2 largest |x|, a tie going to the
/// lower position.
pub fn two_four_keep(quad: &[f64]) -> [bool; 4] {
    let mut order = [0usize, 1, 2, 3];
    order.sort_by(|&a, &b| quad[b].abs().total_cmp(&quad[a].abs()).then(a.cmp(&b)));
    let mut keep = [false; 4];
    keep[order[0]] = true;
    keep[order[1]] = true;
    keep
}

/// Over each layer (offset, len) in whole quads: `Some(τ)` gives the kept values
/// soft-thresholded (SAS-ADMM's Z-step under 2:4), `None` the 0/1 mask; the other two are 0.
/// Elements outside the layers are those of `x` (Some) or 1 (None).
pub fn two_four(x: &[f64], layers: &[(usize, usize)], tau: Option<f64>) -> Vec<f64> {
    let mut out = match tau {
        Some(_) => x.to_vec(),
        None => vec![1.0; x.len()],
    };
    for &(o, l) in layers {
        for q in (o..o + l).step_by(4) {
            let keep = two_four_keep(&x[q..q + 4]);
            for i in 0..4 {
                out[q + i] = match (keep[i], tau) {
                    (false, _) => 0.0,
                    (true, Some(t)) => soft_threshold(x[q + i], t),
                    (true, None) => 1.0,
                };
            }
        }
    }
    out
}
