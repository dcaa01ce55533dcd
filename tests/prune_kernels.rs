//! The ADMM pruning kernels and the GPU per-layer selection against their f64 CPU references,
//! each run twice: bound whole, and in pieces of a tiny forced storage-binding size (the path
//! AlexNet's 61 M weights take on drivers with a 128 MiB limit), layers spanning many pieces.

mod common;
use common::*;
use sasprune::ops::{admm, group, reduce, select, sgd, with_binding_limit};
use sasprune::reference as cpu;

fn sas_h_inner_step_and_mix_match_reference() {
    let mut rng = Rng::new(40);
    let n = 70_001;
    let v = |rng: &mut Rng| f32_exact(&rng.vec(n));
    let (w, z, u, wb, d) = (v(&mut rng), v(&mut rng), v(&mut rng), v(&mut rng), v(&mut rng));
    let (wt, zt, ut, wbt, dt) =
        (tensor(&w, &[n]), tensor(&z, &[n]), tensor(&u, &[n]), tensor(&wb, &[n]), tensor(&d, &[n]));
    let ht = tensor(&vec![0.0; n], &[n]);
    admm::sas_h(&wt, &zt, &ut, &ht, 0.04, 0.05).unwrap();
    let h = cpu::sas_h(&w, &z, &u, 0.04, 0.05);
    assert_close("sas_h", &values(&ht), &h, ELEMENTWISE);
    let hat = tensor(&vec![0.0; n], &[n]);
    let h32 = f32_exact(&h);
    let h32t = tensor(&h32, &[n]);
    admm::sas_inner(&dt, &h32t, &wbt, &wt, &hat, 12.5, 0.04, 2.0 / 3.0, 0.5, None).unwrap();
    let (rwb, rw, rhat) = cpu::sas_inner(&d, &h32, &wb, &w, 12.5, 0.04, 2.0 / 3.0, 0.5);
    assert_close("sas_inner W̆", &values(&wbt), &rwb, ELEMENTWISE);
    assert_close("sas_inner W", &values(&wt), &rw, ELEMENTWISE);
    assert_close("sas_inner Ŵ", &values(&hat), &rhat, ELEMENTWISE);
    let out = tensor(&vec![0.0; n], &[n]);
    admm::mix(&zt, &ut, &out, 0.25).unwrap();
    let expected: Vec<f64> = (0..n).map(|i| 0.25 * z[i] + 0.75 * u[i]).collect();
    assert_close("mix", &values(&out), &expected, ELEMENTWISE);
}

fn sas_dual_updates_and_soft_threshold_match_reference() {
    let mut rng = Rng::new(41);
    let n = 5_003;
    let w = f32_exact(&rng.vec(n));
    let z = f32_exact(&rng.vec(n));
    let u: Vec<f64> = f32_exact(&rng.vec(n).iter().map(|x| x * 0.01).collect::<Vec<_>>());
    let (wt, zt, ut) = (tensor(&w, &[n]), tensor(&z, &[n]), tensor(&u, &[n]));
    let (dz, res) = (tensor(&vec![0.0; n], &[n]), tensor(&vec![0.0; n], &[n]));
    // λ/β = 0.25 so a good share of Z is thresholded to exactly 0
    admm::sas_dual(&wt, &zt, &ut, &dz, &res, 0.04, 0.01, 0.9, 1.09).unwrap();
    let (rz, ru, rdz, rres) = cpu::sas_dual(&w, &z, &u, 0.04, 0.01, 0.9, 1.09);
    let zv = values(&zt);
    assert_close("Z-step (soft threshold)", &zv, &rz, ELEMENTWISE);
    assert_close("dual updates U", &values(&ut), &ru, (1e-5, 1e-3));
    assert_close("dz", &values(&dz), &rdz, ELEMENTWISE);
    assert_close("W − Z", &values(&res), &rres, ELEMENTWISE);
    let zeros = zv.iter().filter(|&&v| v == 0.0).count();
    let ref_zeros = rz.iter().filter(|&&v| v == 0.0).count();
    assert!(zeros > n / 10, "the soft threshold must zero a good share exactly ({zeros})");
    assert!((zeros as i64 - ref_zeros as i64).abs() <= 2, "exact zeros: GPU {zeros}, reference {ref_zeros}");
    assert_eq!(cpu::soft_threshold(0.3, 0.25), 0.3 - 0.25);
    assert_eq!(cpu::soft_threshold(-0.3, 0.25), -0.3 + 0.25);
    assert_eq!(cpu::soft_threshold(0.2, 0.25), 0.0);
}

fn admm_nn_gradient_and_dual_match_reference() {
    let mut rng = Rng::new(42);
    let n = 3_001;
    let v = |rng: &mut Rng| f32_exact(&rng.vec(n));
    let (w, z, u, g) = (v(&mut rng), v(&mut rng), v(&mut rng), v(&mut rng));
    let mask: Vec<f64> = (0..n).map(|i| (i % 3 != 0) as u8 as f64).collect();
    let (wt, zt, ut, gt, mt) =
        (tensor(&w, &[n]), tensor(&z, &[n]), tensor(&u, &[n]), tensor(&g, &[n]), tensor(&mask, &[n]));
    admm::admm_grad(&wt, &zt, &ut, &gt, 1.5e-3).unwrap();
    let expected: Vec<f64> = (0..n).map(|i| g[i] + 1.5e-3 * (w[i] - z[i] + u[i])).collect();
    assert_close("admm_grad", &values(&gt), &expected, ELEMENTWISE);
    let (dz, res) = (tensor(&vec![0.0; n], &[n]), tensor(&vec![0.0; n], &[n]));
    admm::admm_dual(&wt, &mt, &zt, &ut, &dz, &res).unwrap();
    let rz: Vec<f64> = (0..n).map(|i| mask[i] * (w[i] + u[i])).collect();
    let ru: Vec<f64> = (0..n).map(|i| u[i] + w[i] - rz[i]).collect();
    assert_close("admm Z = Π(W + U)", &values(&zt), &rz, ELEMENTWISE);
    assert_close("admm U += W − Z", &values(&ut), &ru, ELEMENTWISE);
    assert_close("admm dz", &values(&dz), &(0..n).map(|i| rz[i] - z[i]).collect::<Vec<_>>(), ELEMENTWISE);
    assert_close("admm res", &values(&res), &(0..n).map(|i| w[i] - rz[i]).collect::<Vec<_>>(), ELEMENTWISE);
    admm::multiply_in_place(&wt, &mt).unwrap();
    assert_close("hard prune W *= mask", &values(&wt), &(0..n).map(|i| w[i] * mask[i]).collect::<Vec<_>>(), (0.0, 0.0));
}

/// The GPU's per-layer selection of `x` over `layers` (offset, len, k), checked: exactly k zeros
/// per layer and the f64 reference's mask. Returns the mask.
fn exact_count_mask(x: &[f64], layers: &[(usize, usize, usize)]) -> Vec<f64> {
    let n = x.len();
    let sel: Vec<select::LayerSelect> =
        layers.iter().map(|&(offset, len, k)| select::LayerSelect { offset, len, k }).collect();
    let mask = tensor(&vec![1.0; n], &[n]);
    select::magnitude_mask(&tensor(x, &[n]), &sel, &mask).unwrap();
    let m = values(&mask);
    for &(offset, len, k) in layers {
        let zeros = m[offset..offset + len].iter().filter(|&&v| v == 0.0).count();
        assert_eq!(zeros, k, "layer at {offset} must have exactly {k} zeros");
    }
    assert_eq!(m, cpu::magnitude_mask(x, layers), "GPU mask differs from the reference");
    m
}

fn per_layer_magnitude_masks_have_exact_counts_and_match_reference() {
    let mut rng = Rng::new(43);
    let n = 50_000;
    let mut x = f32_exact(&rng.vec(n));
    // ties: a run of exact zeros (as soft-thresholding leaves) and repeated values
    x[1000..3000].fill(0.0);
    for i in (20_000..20_100).step_by(2) {
        x[i] = 0.5;
    }
    let layers = [
        (0, 432, 367),
        (512, 2304, 1958),
        (3000, 9216, 7833),
        (12_288, 36_864, 31_334),
        (49_200, 7, 0),
        (49_300, 640, 640),
    ];
    let m = exact_count_mask(&x, &layers);
    assert!(m[432..512].iter().all(|&v| v == 1.0), "gaps between layers stay untouched");
}

/// The structured Z-step's two halves around an element-wise soft threshold are the fused
/// `sas_dual`: the same reference, through sas_split → soft_threshold_in_place → sas_close.
fn sas_split_and_close_around_the_soft_threshold_match_the_fused_reference() {
    let mut rng = Rng::new(47);
    let n = 5_003;
    let w = f32_exact(&rng.vec(n));
    let z = f32_exact(&rng.vec(n));
    let u: Vec<f64> = f32_exact(&rng.vec(n).iter().map(|x| x * 0.01).collect::<Vec<_>>());
    let (wt, zt, ut) = (tensor(&w, &[n]), tensor(&z, &[n]), tensor(&u, &[n]));
    let (v, dz, res) = (tensor(&vec![0.0; n], &[n]), tensor(&vec![0.0; n], &[n]), tensor(&vec![0.0; n], &[n]));
    admm::sas_split(&wt, &zt, &ut, &v, &dz, 0.04, 0.9).unwrap();
    let u_half: Vec<f64> = (0..n).map(|i| u[i] - 0.9 * 0.04 * (w[i] - z[i])).collect();
    assert_close("sas_split U½", &values(&ut), &u_half, (1e-5, 1e-3));
    assert_close("sas_split −Z", &values(&dz), &z.iter().map(|x| -x).collect::<Vec<_>>(), (0.0, 0.0));
    admm::soft_threshold_in_place(&v, 0.01 / 0.04).unwrap();
    admm::mix(&v, &v, &zt, 1.0).unwrap();
    admm::sas_close(&wt, &zt, &ut, &dz, &res, 0.04, 1.09).unwrap();
    let (rz, ru, rdz, rres) = cpu::sas_dual(&w, &z, &u, 0.04, 0.01, 0.9, 1.09);
    assert_close("split Z-step (soft threshold)", &values(&zt), &rz, ELEMENTWISE);
    assert_close("split dual updates U", &values(&ut), &ru, (1e-5, 1e-3));
    assert_close("split dz", &values(&dz), &rdz, ELEMENTWISE);
    assert_close("split W − Z", &values(&res), &rres, ELEMENTWISE);
}

/// Groups of odd sizes over a vector with gaps: filters of 27, 144 and 1,500 weights (longer than
/// a tiny piece, so they cross piece boundaries), one- and zero-weight groups, a zero group.
fn odd_groups() -> (usize, Vec<(usize, usize)>) {
    let mut groups = vec![(0, 27), (27, 27), (60, 0), (64, 1)];
    groups.extend((0..7).map(|g| (100 + 144 * g, 144)));
    groups.extend((0..5).map(|g| (2_000 + 1_500 * g, 1_500)));
    groups.push((9_600, 3));
    (10_007, groups)
}

fn group_norms_and_group_soft_threshold_match_reference() {
    let mut rng = Rng::new(45);
    let (n, groups) = odd_groups();
    let mut x = f32_exact(&rng.vec(n));
    x[100..244].fill(0.0); // a zero group: its factor is 0, not NaN
    let g = group::Groups::new(n, &groups).unwrap();
    assert_eq!(g.len(), groups.len());
    let sumsq = tensor(&vec![7.0; groups.len()], &[groups.len()]);
    let xt = tensor(&x, &[n]);
    g.sum_squares(&xt, &sumsq).unwrap();
    let reference = cpu::group_sum_squares(&x, &groups);
    assert_close("group ‖x_g‖²", &values(&sumsq), &reference, LONG_SUM);
    assert_eq!(values(&sumsq)[2], 0.0, "an empty group's sum is 0");
    // τ such that some groups vanish and others shrink: |x| ~ U(−1, 1) gives ‖x_g‖ ≈ 0.58·√|g|
    let tau = 0.5;
    let factor = tensor(&vec![0.0; groups.len()], &[groups.len()]);
    g.soft_threshold(&xt, tau as f32, &sumsq, &factor).unwrap();
    let z = values(&xt);
    assert_close("group soft threshold", &z, &cpu::group_soft_threshold(&x, &groups, tau), ELEMENTWISE);
    let vanished = groups.iter().filter(|&&(o, l)| l > 0 && z[o..o + l].iter().all(|&v| v == 0.0)).count();
    let shrunk = groups.iter().filter(|&&(o, l)| l > 0 && z[o..o + l].iter().any(|&v| v != 0.0)).count();
    assert!(vanished >= 2 && shrunk >= 5, "τ = {tau}: {vanished} groups vanish exactly, {shrunk} shrink");
    assert_eq!(&z[9_603..], &x[9_603..], "elements outside every group are left alone");
    assert_eq!(&z[54..60], &x[54..60]);
}

fn two_four_selection_and_soft_threshold_match_reference() {
    let mut rng = Rng::new(46);
    let n = 9_000;
    let mut x = f32_exact(&rng.vec(n));
    // ties: all four equal, two equal largest, zeros (as a soft threshold leaves them)
    x[0..4].fill(0.25);
    x[4..8].copy_from_slice(&[0.1, -0.7, 0.7, 0.7]);
    x[8..16].fill(0.0);
    let layers = [(0, 1_200), (1_200, 4), (2_048, 6_000)];
    let q = group::Quads::new(n, &layers).unwrap();
    let xt = tensor(&x, &[n]);
    let mask = tensor(&vec![1.0; n], &[n]);
    q.mask(&xt, &mask).unwrap();
    let m = values(&mask);
    assert_eq!(m, cpu::two_four(&x, &layers, None), "2:4 mask differs from the reference");
    assert_eq!(&m[0..8], &[1.0, 1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 0.0], "ties go to the lower positions");
    for &(o, l) in &layers {
        assert!(m[o..o + l].chunks(4).all(|c| c.iter().sum::<f64>() == 2.0), "exactly 2 of every 4 kept");
    }
    assert!(m[1_204..2_048].iter().all(|&v| v == 1.0), "outside the layers the mask is left as it was");
    let z = tensor(&x, &[n]);
    q.soft_threshold(&xt, &z, 0.3).unwrap();
    assert_close("2:4 soft threshold", &values(&z), &cpu::two_four(&x, &layers, Some(0.3)), ELEMENTWISE);
    assert!(group::Quads::new(n, &[(2, 8)]).is_err(), "a layer not in whole quads is refused");
    assert!(group::Groups::new(n, &[(0, 10), (5, 10)]).is_err(), "overlapping groups are refused");
}

/// 4 KiB: 1,024 floats per piece, so every vector above is bound in 3 to 70 pieces.
const TINY_BINDING: u64 = 4096;

/// Runs `check` on whole bindings, then again with every vector in pieces of TINY_BINDING.
fn whole_and_in_pieces(check: fn()) {
    check();
    with_binding_limit(TINY_BINDING, check);
}

#[test]
fn sas_admm_inner_kernels_whole_and_in_pieces() {
    whole_and_in_pieces(sas_h_inner_step_and_mix_match_reference);
}

#[test]
fn sas_admm_duals_and_soft_threshold_whole_and_in_pieces() {
    whole_and_in_pieces(sas_dual_updates_and_soft_threshold_match_reference);
}

#[test]
fn admm_nn_kernels_and_hard_prune_whole_and_in_pieces() {
    whole_and_in_pieces(admm_nn_gradient_and_dual_match_reference);
}

#[test]
fn sas_split_and_close_whole_and_in_pieces() {
    whole_and_in_pieces(sas_split_and_close_around_the_soft_threshold_match_the_fused_reference);
}

#[test]
fn group_soft_threshold_whole_and_in_pieces() {
    whole_and_in_pieces(group_norms_and_group_soft_threshold_match_reference);
}

#[test]
fn two_four_whole_and_in_pieces() {
    whole_and_in_pieces(two_four_selection_and_soft_threshold_match_reference);
}

#[test]
fn exact_count_masks_whole_and_in_pieces() {
    whole_and_in_pieces(per_layer_magnitude_masks_have_exact_counts_and_match_reference);
}

/// Masked SGD and the reductions the ADMM phase reports (‖·‖², ‖·‖₁) over vectors in pieces.
#[test]
fn masked_sgd_and_norms_in_pieces() {
    with_binding_limit(TINY_BINDING, || {
        let mut rng = Rng::new(44);
        let n = 10_007;
        let mask: Vec<f64> = (0..n).map(|i| (i % 4 != 1) as u8 as f64).collect();
        let mut w: Vec<f64> = f32_exact(&rng.vec(n)).iter().zip(&mask).map(|(w, m)| w * m).collect();
        let g = f32_exact(&rng.vec(n));
        let mut buf = vec![0.0; n];
        let (wt, bt) = (tensor(&w, &[n]), tensor(&buf, &[n]));
        let cfg = sgd::SgdConfig { lr: 0.1, momentum: 0.9, weight_decay: 1e-4, nesterov: true };
        sgd::sgd_step(&wt, &tensor(&g, &[n]), &bt, Some(&tensor(&mask, &[n])), &cfg, None).unwrap();
        let rcfg = cpu::SgdConfig { lr: 0.1, momentum: 0.9, weight_decay: 1e-4, nesterov: true };
        cpu::sgd_step(&mut w, &g, &mut buf, Some(&mask[..]), &rcfg);
        let got = values(&wt);
        assert_close("masked sgd in pieces", &got, &w, ELEMENTWISE);
        assert!((0..n).filter(|i| i % 4 == 1).all(|i| got[i] == 0.0), "pruned weights stay exactly 0");
        let x = f32_exact(&rng.vec(n));
        let xt = tensor(&x, &[n]);
        let sq: f64 = x.iter().map(|v| v * v).sum();
        let l1: f64 = x.iter().map(|v| v.abs()).sum();
        assert_close("‖x‖² in pieces", &values(&reduce::sum_squares(&xt).unwrap()), &[sq], LONG_SUM);
        assert_close("‖x‖₁ in pieces", &values(&reduce::sum_abs(&xt).unwrap()), &[l1], LONG_SUM);
    });
}

/// The exact-count selection where a layer is long enough that the counting kernel runs its
/// most workgroups (1,024 per layer, each striding over its share): AlexNet's layers take this
/// path, with short layers beside the long one in the same launch.
#[test]
fn exact_count_masks_with_a_layer_of_millions() {
    let mut rng = Rng::new(45);
    let n = 4_800_000;
    let x = f32_exact(&rng.vec(n));
    let layers = [(0, 23_232, 4_414), (23_232, 307_200, 245_760), (330_432, 4_469_568, 4_335_481)];
    exact_count_mask(&x, &layers);
}
