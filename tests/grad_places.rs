//! Gradients written into a parameter store's gradient places (the arena the optimizer reads)
//! instead of added there: the same values as autograd's sums for plain leaves, and the adds
//! counted on the device. Its own test binary: the device timer counts every launch of the
//! process, so no other test may run beside it.

mod common;
use common::*;
use sasprune::ops::{batchnorm, conv2d, matmul};
use sasprune::Tensor;

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
