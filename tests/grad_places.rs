//! Gradients written into a parameter store's gradient places (the arena the optimizer reads)
//! instead of added there: the same values as autograd's sums for plain leaves, and the adds
//! counted on the device; and other launches a training step saves, counted. Its own test
//! binary: the device timer counts every launch of the process, so no other test may run beside
//! it, and its tests take turns (`TIMER`).

mod common;
use common::*;
use sasprune::ops::{batchnorm, conv2d, matmul};
use sasprune::Tensor;

/// Held by each test while it counts launches: the device timer is the whole process's.
static TIMER: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// A small graph over parameters of a store: a conv weight used by two convolutions, a conv
/// bias, a batch norm's scale and shift, a linear layer's weight and bias. `params` are (w,
/// bias, gamma, beta, fc weight, fc bias).
fn store_graph_backward(params: &[Tensor], x: &Tensor, r: &Tensor) {
    let [w, bias, gamma, beta, fc_w, fc_b] = params else { panic!("six parameters") };
    let y1 = conv2d::conv2d(x, w, Some(bias), 1, 1).unwrap();
    let y2 = conv2d::conv2d(&y1, w, None, 1, 1).unwrap();
    let (mean, var) = (tensor(&[0.0; 3], &[3]), tensor(&[1.0; 3], &[3]));
    let y3 = batchnorm::batch_norm(&y2, gamma, beta, &mean, &var, batchnorm::BatchNormConfig::default()).unwrap();
    let y4 = matmul::linear(&y3.reshape(&[2, 75]).unwrap(), fc_w, Some(fc_b)).unwrap();
    y4.backward_with(r.clone()).unwrap();
}

#[test]
fn gradients_written_into_a_stores_places_equal_added_ones() {
    let _turn = TIMER.lock().unwrap_or_else(|e| e.into_inner());
    use sasprune::nn::{ParamStore, Role};
    let mut rng = Rng::new(32);
    let values_of = |n: usize, rng: &mut Rng| f32_exact(&rng.vec(n));
    let shapes: [&[usize]; 6] = [&[3, 3, 3, 3], &[3], &[3], &[3], &[4, 75], &[4]];
    let init: Vec<Vec<f64>> = shapes.iter().map(|s| values_of(s.iter().product(), &mut rng)).collect();
    let x = tensor(&values_of(2 * 3 * 5 * 5, &mut rng), &[2, 3, 5, 5]);
    let r = tensor(&values_of(2 * 4, &mut rng), &[2, 4]);
    // plain leaves: every gradient is a new tensor, added up by autograd
    let plain: Vec<Tensor> = init.iter().zip(shapes).map(|(v, s)| param(v, s)).collect();
    store_graph_backward(&plain, &x, &r);
    let expected: Vec<Vec<f64>> = plain.iter().map(grad).collect();
    // the same parameters in a store: gradients go into their places in the gradient arena
    let mut store = ParamStore::new();
    let roles = [Role::PrunableWeight, Role::Param, Role::Param, Role::Param, Role::PrunableWeight, Role::Param];
    let ids: Vec<_> = (0..6)
        .map(|i| store.add(format!("p{i}"), shapes[i], roles[i], init[i].iter().map(|&v| v as f32).collect()))
        .collect();
    store.materialize().unwrap();
    let p: Vec<Tensor> = ids.iter().map(|&id| store.get(id).clone()).collect();
    // `adds`: how many gradients are added into a place (elementwise.axpy launches)
    let run = |what: &str, times: f64, adds: u32| {
        let gpu = sasprune::gpu::get().unwrap();
        let timed = gpu.start_device_timer(true).unwrap();
        store_graph_backward(&p, &x, &r);
        let launched = gpu
            .stop_device_timer()
            .unwrap()
            .map(|t| t.by_kernel.iter().filter(|k| k.0 == "elementwise.axpy").map(|k| k.2).sum::<u32>());
        for (i, t) in p.iter().enumerate() {
            let want: Vec<f64> = expected[i].iter().map(|v| v * times).collect();
            // bit for bit: a gradient written into zeros is the gradient, and the shared weight's
            // second gradient is added to its first as autograd adds them for plain leaves
            assert_eq!(grad(t), want, "{what}: parameter {i}");
        }
        match (timed, launched) {
            (true, Some(n)) => assert_eq!(n, adds, "{what}: gradients added into their places"),
            (true, None) => panic!("a timed backward reports its kernels"),
            (false, _) => eprintln!("SKIPPED counting launches: the adapter has no timestamp queries"),
        }
    };
    // into zeros, each gradient is written in place; only the shared weight's second is added
    run("first backward after materialize", 1.0, 1);
    // without zeroing, all six add (the shared weight's two gradients summed first)
    run("second backward without zeroing", 2.0, 6);
    store.zero_grad().unwrap();
    run("after the store zeroed its gradients", 1.0, 1);
    for t in &p {
        t.zero_grad().unwrap();
    }
    run("after each parameter zeroed its own gradient", 1.0, 1);
}

/// f32, and mixed precision where the adapter has f16.
fn precisions() -> Vec<sasprune::models::Precision> {
    use sasprune::models::Precision;
    let f16 = sasprune::gpu::get().unwrap().adapter.shader_f16;
    if f16 {
        vec![Precision::F32, Precision::Mixed]
    } else {
        vec![Precision::F32]
    }
}

/// A batch of 4 random 32x32 images and their labels, from `seed`.
fn four_images(seed: u64) -> (Tensor, Tensor) {
    let mut rng = Rng::new(seed);
    let x = tensor(&rng.vec(4 * 3 * 32 * 32), &[4, 3, 32, 32]);
    let labels: Vec<f64> = (0..4).map(|_| rng.below(10) as f64).collect();
    (x, tensor(&labels, &[4]))
}

#[test]
fn a_resnet_blocks_input_gradients_are_summed_by_the_kernels_that_compute_them() {
    // A ResNet block's input feeds its first convolution and its shortcut. The shortcut's
    // gradient arrives first; the convolution's grad-input kernel (or, in the downsampling
    // blocks, the shortcut's backward) adds it as it writes its own, where autograd would add
    // the two afterwards: every parameter gradient must keep autograd's bits, in f32 and with
    // f16 activations, and no separate add may run.
    use sasprune::models::Model;
    let _turn = TIMER.lock().unwrap_or_else(|e| e.into_inner());
    let gpu = sasprune::gpu::get().unwrap();
    let (x, labels) = four_images(34);
    for precision in precisions() {
        let mut m = Model::build("resnet20", 10, 6).unwrap();
        m.set_precision(precision).unwrap();
        let mut step = || -> (Vec<f32>, Option<u32>) {
            let timed = gpu.start_device_timer(true).unwrap();
            m.gradient(&x, &labels, 0).unwrap();
            let adds = gpu
                .stop_device_timer()
                .unwrap()
                .map(|t| t.by_kernel.iter().filter(|k| k.0.starts_with("elementwise.add")).map(|k| k.2).sum());
            (m.store.grads_flat().unwrap().to_vec().unwrap(), adds.filter(|_| timed))
        };
        let (fused, fused_adds) = step();
        let (separate, separate_adds) = sasprune::autograd::with_separate_adds(&mut step);
        assert!(fused.iter().all(|v| v.is_finite()) && fused.iter().any(|&v| v != 0.0), "{precision:?}");
        let differ = fused.iter().zip(&separate).filter(|(a, b)| a.to_bits() != b.to_bits()).count();
        assert_eq!(differ, 0, "{precision:?}: {differ} of {} gradients differ", fused.len());
        match (fused_adds, separate_adds) {
            // (elementwise.add_relu is gone from training too: batch norm applies the residual)
            (Some(fused), Some(separate)) => {
                assert_eq!((fused, separate), (0, 9), "{precision:?}: separate adds (ResNet-20 has 9 blocks)")
            }
            _ => eprintln!("SKIPPED counting launches: the adapter has no timestamp queries"),
        }
    }
}

#[test]
fn a_resnets_batch_norms_combine_their_sums_without_finalize_launches() {
    // Training's batch norms combine their per-channel chunk sums in normalize and
    // backward_input (GPUs' default) or in finalize kernels of their own (software drivers'):
    // a ResNet-20 step from the same start must give the same loss, parameter gradients and
    // running statistics either way, bit for bit, in f32 and mixed precision, with no finalize
    // launch in the first and two per batch norm (19) in the second. Neither masks a gradient
    // by a ReLU in a pass of its own: batch norm's kernels do (elementwise.relu_backward: 0).
    use sasprune::models::Model;
    let _turn = TIMER.lock().unwrap_or_else(|e| e.into_inner());
    let gpu = sasprune::gpu::get().unwrap();
    let (x, labels) = four_images(35);
    for precision in precisions() {
        let step = |folded: bool| {
            batchnorm::with_folded_finalize(folded, || {
                let mut m = Model::build("resnet20", 10, 6).unwrap();
                m.set_precision(precision).unwrap();
                let timed = gpu.start_device_timer(true).unwrap();
                let loss = m.gradient(&x, &labels, 0).unwrap().to_vec().unwrap();
                let launches = gpu.stop_device_timer().unwrap().map(|t| {
                    let count = |of: &dyn Fn(&str) -> bool| t.by_kernel.iter().filter(|k| of(k.0)).map(|k| k.2).sum();
                    let finalize = count(&|k| k.starts_with("batchnorm.") && k.contains("finalize"));
                    (finalize, count(&|k| k.starts_with("elementwise.relu_backward")))
                });
                let state = [
                    loss,
                    m.store.grads_flat().unwrap().to_vec().unwrap(),
                    m.store.buffers_flat().unwrap().to_vec().unwrap(),
                ];
                (state, launches.filter(|_: &(u32, u32)| timed))
            })
        };
        let ((folded, folded_launches), (separate, separate_launches)) = (step(true), step(false));
        for ((name, a), b) in ["loss", "gradients", "running statistics"].iter().zip(&folded).zip(&separate) {
            assert!(a.iter().all(|v| v.is_finite()) && a.iter().any(|&v| v != 0.0), "{precision:?} {name}");
            let differ = a.iter().zip(b).filter(|(a, b)| a.to_bits() != b.to_bits()).count();
            assert_eq!(differ, 0, "{precision:?}: {differ} of {} {name} differ", a.len());
        }
        match (folded_launches, separate_launches) {
            (Some(f), Some(s)) => {
                assert_eq!(
                    (f, s),
                    ((0, 0), (38, 0)),
                    "{precision:?}: (finalize, relu_backward) launches, 19 batch norms"
                )
            }
            _ => eprintln!("SKIPPED counting launches: the adapter has no timestamp queries"),
        }
    }
}
