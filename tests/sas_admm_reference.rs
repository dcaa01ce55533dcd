//! SAS-ADMM end to end against an independent f64 CPU implementation of src/prune/ALGORITHM.md: a real
//! ResNet-20 (forward and backward written out here from the reference ops, batch norm in
//! training mode), the deterministic phase's minibatches (file order, no augmentation), and three
//! outer iterations of everything — h, the inner accelerated steps with their b_t, γ_t and η_k,
//! both dual updates, the soft threshold and the ergodic average from K_avg on — compared with
//! what the GPU phase leaves in W, Z, U and W_avg.

mod common;

use sasprune::checkpoint::Normalize;
use sasprune::data::cifar::Cifar10;
use sasprune::data::{fill_batch, Dataset};
use sasprune::models::Model;
use sasprune::prune::admm::{self, AdmmState, SasConfig};
use sasprune::prune::rate;
use sasprune::reference as cpu;
use std::collections::HashMap;

type Params = HashMap<String, Vec<f64>>;

/// One basic block's shape: input channels, planes, stride, input side.
struct Block {
    name: String,
    c_in: usize,
    planes: usize,
    stride: usize,
    side: usize,
}

fn blocks() -> Vec<Block> {
    let mut out = Vec::new();
    let (mut c_in, mut side) = (16, 32);
    for (stage, planes) in [16, 32, 64].into_iter().enumerate() {
        for i in 0..3 {
            let stride = if stage > 0 && i == 0 { 2 } else { 1 };
            out.push(Block { name: format!("layer{}.{i}", stage + 1), c_in, planes, stride, side });
            c_in = planes;
            side /= stride;
        }
    }
    out
}

fn geom(n: usize, c_in: usize, side: usize, c_out: usize, stride: usize) -> cpu::Conv2dGeom {
    cpu::Conv2dGeom { n, c_in, h: side, w: side, c_out, kh: 3, kw: 3, stride, pad: 1 }
}

/// The gradient of the mean cross-entropy with respect to every conv and fc weight (names as in
/// the checkpoint), batch norm with batch statistics.
fn resnet20_weight_gradients(p: &Params, x: &[f64], labels: &[u32], n: usize) -> HashMap<String, Vec<f64>> {
    let bn = |x: &[f64], name: &str, c: usize, hw: usize| {
        cpu::batchnorm_train(x, &p[&format!("{name}.weight")], &p[&format!("{name}.bias")], n, c, hw, 1e-5)
    };
    // forward, keeping what backward reads
    let g0 = geom(n, 3, 32, 16, 1);
    let c0 = cpu::conv2d(x, &p["conv1.weight"], None, &g0);
    let bn0 = bn(&c0, "bn1", 16, 1024);
    let mut a = cpu::relu(&bn0.y);
    struct Saved {
        input: Vec<f64>,
        c1: Vec<f64>,
        bn1: cpu::BatchNormOut,
        a1: Vec<f64>,
        c2: Vec<f64>,
        bn2: cpu::BatchNormOut,
        pre: Vec<f64>,
    }
    let mut saved = Vec::new();
    for b in blocks() {
        let out_side = b.side / b.stride;
        let c1 = cpu::conv2d(
            &a,
            &p[&format!("{}.conv1.weight", b.name)],
            None,
            &geom(n, b.c_in, b.side, b.planes, b.stride),
        );
        let bn1 = bn(&c1, &format!("{}.bn1", b.name), b.planes, out_side * out_side);
        let a1 = cpu::relu(&bn1.y);
        let c2 =
            cpu::conv2d(&a1, &p[&format!("{}.conv2.weight", b.name)], None, &geom(n, b.planes, out_side, b.planes, 1));
        let bn2 = bn(&c2, &format!("{}.bn2", b.name), b.planes, out_side * out_side);
        let short = if b.stride != 1 || b.c_in != b.planes {
            cpu::shortcut_a(&a, n, b.c_in, b.side, b.side, b.planes / 4)
        } else {
            a.clone()
        };
        let pre = cpu::add(&bn2.y, &short);
        let next = cpu::relu(&pre);
        saved.push(Saved { input: std::mem::replace(&mut a, next), c1, bn1, a1, c2, bn2, pre });
    }
    let pooled = cpu::global_avgpool(&a, n, 64, 64);
    let logits = cpu::linear(&pooled, &p["linear.weight"], Some(&p["linear.bias"]), n, 64, 10);
    let (_, dlogits) = cpu::softmax_cross_entropy(&logits, labels, n, 10);
    // backward
    let mut grads = HashMap::new();
    grads.insert("linear.weight".to_string(), cpu::matmul(&dlogits, &pooled, 10, n, 64, true, false));
    let dpooled = cpu::matmul(&dlogits, &p["linear.weight"], n, 10, 64, false, false);
    let mut da = cpu::global_avgpool_backward(&dpooled, n, 64, 64);
    for (b, s) in blocks().iter().zip(&saved).rev() {
        let out_side = b.side / b.stride;
        let hw = out_side * out_side;
        let dpre = cpu::relu_backward(&da, &s.pre);
        let name = |part: &str| format!("{}.{part}", b.name);
        let (dc2, _, _) = cpu::batchnorm_train_backward(
            &dpre,
            &s.c2,
            &p[&name("bn2.weight")],
            &s.bn2.mean,
            &s.bn2.invstd,
            n,
            b.planes,
            hw,
        );
        let g2 = geom(n, b.planes, out_side, b.planes, 1);
        grads.insert(name("conv2.weight"), cpu::conv2d_grad_weight(&dc2, &s.a1, &g2));
        let da1 = cpu::conv2d_grad_input(&dc2, &p[&name("conv2.weight")], &g2);
        let dz1 = cpu::relu_backward(&da1, &s.bn1.y);
        let (dc1, _, _) = cpu::batchnorm_train_backward(
            &dz1,
            &s.c1,
            &p[&name("bn1.weight")],
            &s.bn1.mean,
            &s.bn1.invstd,
            n,
            b.planes,
            hw,
        );
        let g1 = geom(n, b.c_in, b.side, b.planes, b.stride);
        grads.insert(name("conv1.weight"), cpu::conv2d_grad_weight(&dc1, &s.input, &g1));
        let dshort = if b.stride != 1 || b.c_in != b.planes {
            cpu::shortcut_a_backward(&dpre, n, b.c_in, b.side, b.side, b.planes / 4)
        } else {
            dpre.clone()
        };
        da = cpu::add(&cpu::conv2d_grad_input(&dc1, &p[&name("conv1.weight")], &g1), &dshort);
    }
    let dz0 = cpu::relu_backward(&da, &bn0.y);
    let (dc0, _, _) = cpu::batchnorm_train_backward(&dz0, &c0, &p["bn1.weight"], &bn0.mean, &bn0.invstd, n, 16, 1024);
    grads.insert("conv1.weight".to_string(), cpu::conv2d_grad_weight(&dc0, x, &g0));
    grads
}

/// CIFAR-10 files of random images (4 per file): natural-like statistics for batch norm, unlike
/// the patterned fake set, whose near-constant channels make f32 and f64 part ways.
fn write_random_cifar(dir: &std::path::Path) {
    let batches = dir.join("cifar-10-batches-bin");
    std::fs::create_dir_all(&batches).unwrap();
    let mut rng = common::Rng::new(77);
    for (f, name) in common::CIFAR_FILES.iter().enumerate() {
        let mut bytes = Vec::new();
        for r in 0..4 {
            bytes.push(common::fake_label(f, r, 4));
            bytes.extend((0..3072).map(|_| rng.next_u64() as u8));
        }
        std::fs::write(batches.join(name), bytes).unwrap();
    }
}

#[test]
fn three_sas_admm_outer_iterations_match_an_f64_implementation_of_the_algorithm() {
    let tmp = common::TempDir::new("sas-reference");
    write_random_cifar(tmp.path());
    let cifar = Cifar10::open(tmp.path()).unwrap();
    let norm = Normalize::CIFAR;
    // The paper's β, ρ, v, r, s with λ = 1e-3 (λ/β = 0.025 puts a share of Z at exactly 0);
    // K_avg = 1 averages W_1..W_3; k0 = 2 makes the inner length grow at k = 3.
    let cfg = SasConfig {
        lambda: 1e-3,
        inner: 2,
        outer: 3,
        k_avg: 1,
        k0: 2,
        batch: 2,
        file_order: true,
        ..SasConfig::paper()
    };
    let mut model = Model::build("resnet20", 10, 7).unwrap();
    let spec = sasprune::train::train_spec(&model, &cifar.train, norm, true);
    let layers = rate::prunable_layers(&model.store);
    let dict = model.store.state_dict().unwrap();
    let mut params: Params =
        dict.iter().map(|(k, (_, v))| (k.clone(), v.iter().map(|&x| x as f64).collect())).collect();

    // the GPU phase
    let mut state = AdmmState::start(&model).unwrap();
    let hidden = indicatif::ProgressBar::hidden();
    let plan = common::weight_plan(&model);
    admm::run_sas_admm(
        admm::PhaseContext {
            model: &mut model,
            data: &cifar.train,
            spec: &spec,
            norm,
            seed: 0,
            dir: tmp.path(),
            bar: &hidden,
        },
        &cfg,
        &plan,
        &mut state,
        |_| Ok(()),
    )
    .unwrap();
    assert_eq!(
        state.gradients,
        2 + 2 + 4,
        "M_1 = M_2 = 2 (k0 = 2: M_2 = ⌈2·(2/2)^1.1⌉), M_3 = ⌈2·1.5^1.1⌉ = ⌈3.12⌉ = 4"
    );

    // the same in f64 on the CPU, written from src/prune/ALGORITHM.md
    let p = layers.iter().map(|l| l.len).sum::<usize>();
    let flatten = |m: &Params| -> Vec<f64> { layers.iter().flat_map(|l| m[&l.name].iter().copied()).collect() };
    let mut w = flatten(&params);
    let (mut z, mut u, mut w_breve, mut w_avg) = (w.clone(), vec![0.0; p], w.clone(), w.clone());
    let mut w_sum = vec![0.0; p];
    let (beta, rho, lambda) = (cfg.beta as f64, cfg.rho as f64, cfg.lambda as f64);
    let (mut g, n) = (0usize, cfg.batch);
    let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(0); // unused: no augmentation
    let (mut images, mut labels) = (Vec::new(), Vec::new());
    for k in 1..=cfg.outer {
        let h: Vec<f64> = (0..p).map(|i| rho * w[i] + u[i] - beta * (w[i] - z[i])).collect();
        let (mk, eta) = if k < cfg.k0 {
            (cfg.inner, 1.0 / cfg.v)
        } else {
            let c = cfg.inner as f64 / (cfg.k0 as f64).powf(cfg.q);
            let mk = (c * (k as f64).powf(cfg.q)).ceil();
            (mk as usize, cfg.inner as f64 * (cfg.inner as f64 + 1.0) / (cfg.v * mk * (mk + 1.0)))
        };
        for t in 1..=mk {
            let (b, gamma) = (2.0 / (t as f64 + 1.0), 2.0 / (eta * t as f64));
            let w_hat: Vec<f64> = (0..p).map(|i| b * w_breve[i] + (1.0 - b) * w[i]).collect();
            // d = ∇f(Ŵ) on minibatch g: images g·n .. g·n + n − 1 in file order
            for l in &layers {
                params.insert(l.name.clone(), w_hat[l.offset..l.offset + l.len].to_vec());
            }
            let idx: Vec<usize> = (0..n).map(|i| (g * n + i) % cifar.train.len()).collect();
            fill_batch(&cifar.train, &idx, &spec, &mut rng, &mut images, &mut labels);
            let x: Vec<f64> = images.iter().map(|&v| v as f64).collect();
            let y: Vec<u32> = labels.iter().map(|&v| v as u32).collect();
            let grads = resnet20_weight_gradients(&params, &x, &y, n);
            let d = flatten(&grads);
            for i in 0..p {
                w_breve[i] = (gamma * w_breve[i] + h[i] - d[i]) / (gamma + rho);
                w[i] = b * w_breve[i] + (1.0 - b) * w[i];
            }
            g += 1;
        }
        for i in 0..p {
            let u_half = u[i] - cfg.r as f64 * beta * (w[i] - z[i]);
            let v = w[i] - u_half / beta;
            z[i] = v.signum() * (v.abs() - lambda / beta).max(0.0);
            u[i] = u_half - cfg.s as f64 * beta * (w[i] - z[i]);
        }
        // W_avg: the mean of the W iterates K_avg … k (K_avg included) once k > K_avg
        if k >= cfg.k_avg {
            (0..p).for_each(|i| w_sum[i] += w[i]);
        }
        w_avg = if k > cfg.k_avg { w_sum.iter().map(|s| s / (k - cfg.k_avg + 1) as f64).collect() } else { w.clone() };
    }

    // Against the largest magnitude of each vector. Measured on lavapipe: W, Z, W_avg 2e-7, U 3e-6
    // relative; the bounds leave room for other drivers' summation orders (src/prune/ALGORITHM.md quotes
    // ~2e-4 for W and Z, ~2e-3 for U over many more gradients).
    let close = |what: &str, gpu: &[f32], reference: &[f64], rel: f64| {
        let scale = reference.iter().fold(0.0f64, |m, v| m.max(v.abs()));
        let worst = gpu.iter().zip(reference).map(|(&a, &b)| (a as f64 - b).abs()).fold(0.0, f64::max);
        assert!(worst <= rel * scale, "{what}: worst difference {worst:.3e} against a scale of {scale:.3e}");
    };
    let moved = w.iter().zip(&w_avg).any(|(a, b)| a != b);
    assert!(moved, "W_avg must differ from the last W after averaging three iterates");
    let zeros = z.iter().filter(|&&v| v == 0.0).count();
    assert!(zeros > p / 100, "the soft threshold must zero part of Z ({zeros} of {p})");
    close("W", &state.w.to_vec().unwrap(), &w, 2e-5);
    close("Z", &state.z.to_vec().unwrap(), &z, 2e-5);
    close("U", &state.u.to_vec().unwrap(), &u, 2e-4);
    close("W_avg", &state.w_avg.to_vec().unwrap(), &w_avg, 2e-5);
    close("the network's weights (W_avg)", &admm::arena_prefix(&model).unwrap().to_vec().unwrap(), &w_avg, 2e-5);
}

/// The f64 ResNet-20 above is the network the GPU runs: its weight gradients agree with GPU
/// autograd (through the fused kernels) on random images, every layer.
#[test]
fn the_f64_resnet20_gradient_equals_the_gpu_gradient() {
    let tmp = common::TempDir::new("sas-reference-gradient");
    write_random_cifar(tmp.path());
    let cifar = Cifar10::open(tmp.path()).unwrap();
    let mut model = Model::build("resnet20", 10, 7).unwrap();
    let spec = sasprune::train::train_spec(&model, &cifar.train, Normalize::CIFAR, true);
    let dict = model.store.state_dict().unwrap();
    let params: Params = dict.iter().map(|(k, (_, v))| (k.clone(), v.iter().map(|&x| x as f64).collect())).collect();
    let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(0);
    let (mut images, mut labels) = (Vec::new(), Vec::new());
    fill_batch(&cifar.train, &[9, 14, 3], &spec, &mut rng, &mut images, &mut labels);
    let x: Vec<f64> = images.iter().map(|&v| v as f64).collect();
    let y: Vec<u32> = labels.iter().map(|&v| v as u32).collect();
    let reference = resnet20_weight_gradients(&params, &x, &y, 3);
    let xt = sasprune::Tensor::from_slice(&images, &[3, 3, 32, 32]).unwrap();
    let yt = sasprune::Tensor::from_slice(&labels, &[3]).unwrap();
    model.store.zero_grad().unwrap();
    let logits = model.forward(&xt, sasprune::models::Pass::Train { noise: 0 }).unwrap();
    sasprune::ops::loss::cross_entropy(&logits, &yt).unwrap().backward().unwrap();
    let g = model.store.grads_flat().unwrap().to_vec().unwrap();
    for layer in rate::prunable_layers(&model.store) {
        let gpu: Vec<f64> = g[layer.offset..layer.offset + layer.len].iter().map(|&v| v as f64).collect();
        common::assert_close(&format!("{} gradient", layer.name), &gpu, &reference[&layer.name], (1e-5, 1e-3));
    }
}
