//! Device memory of a training step: backward keeps only what it reads. (Its own test binary,
//! because the memory counters are per process and other tests would allocate alongside.)

use sasprune::bench::step_rate;
use sasprune::models::Model;

/// Floats per image that a CIFAR ResNet-(6n+2)'s backward pass must read: the image (read by
/// the first conv's weight gradient), then for the stem and every conv → BN → ReLU: the BN input
/// (the conv output) and the ReLU output (the next conv's input); in each block the two BN
/// inputs, the inner ReLU output and the block output; the pooled features (the linear
/// layer's input) and the logits (cross-entropy). Batch-norm outputs before a ReLU and the
/// residual sums are not needed.
fn resnet_saved_floats_per_image(n: usize, classes: usize) -> usize {
    let stage = |hw: usize, c: usize| n * 4 * hw * hw * c;
    3 * 32 * 32 + 2 * 16 * 32 * 32 + stage(32, 16) + stage(16, 32) + stage(8, 64) + 64 + classes
}

#[test]
fn a_training_step_holds_little_more_than_what_backward_needs() {
    let (name, n, batch) = ("resnet20", 3, 16);
    let (params, buffers) = {
        let model = Model::build(name, 10, 0).unwrap();
        let params = model.store.parameter_count();
        (params, model.store.entries().iter().map(|e| e.numel()).sum::<usize>() - params)
    }; // dropped here: the counters below must see only step_rate's model
       // parameters, their gradients and momentum, batch-norm statistics, saved activations
    let needed = 4 * (3 * params + buffers + batch * resnet_saved_floats_per_image(n, 10)) as u64;
    let r = step_rate(name, batch, 1).unwrap();
    let after_forward = r.after_forward_bytes as f64 / needed as f64;
    let peak = r.peak_step_bytes as f64 / needed as f64;
    eprintln!("needed {needed} B; after forward {after_forward:.3}x, peak {peak:.3}x");
    // Alignment padding and the loss's few bytes allow a little over; anything an op keeps
    // that backward does not read (a BN output, a residual sum) would add about 20%.
    assert!(
        (0.99..1.05).contains(&after_forward),
        "held after the forward pass: {after_forward:.3}x what backward needs"
    );
    assert!(peak <= 1.5, "peak step memory {peak:.3}x what backward needs (target 1.5x)");
}
