//! Device memory: a training step holds little more than backward reads, and the memory check
//! before a run finds what does not fit without changing the model. (Their own test binary,
//! because the memory counters are per process and other tests would allocate alongside; the
//! tests here take turns.)

use sasprune::bench::step_rate;
use sasprune::gpu;
use sasprune::models::Model;
use sasprune::preflight::{check_memory, Probe, Work};
use std::sync::Mutex;

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

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
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
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

fn probe(phase: &'static str, flag: &'static str, batch: usize, work: Work) -> Probe {
    Probe { phase, flag, batch, work, vectors: 2, vector_len: 10_000 }
}

/// The peak bytes held while `probes` run (the pool emptied first, so every buffer is new).
fn peak_of(model: &mut Model, probes: &[Probe], eval_batch: usize) -> (u64, usize) {
    let g = gpu::get().unwrap();
    g.trim_pool();
    g.reset_peak_memory();
    let batch = check_memory(model, probes, eval_batch).unwrap();
    (g.memory_stats().peak_in_use, batch)
}

#[test]
fn the_memory_check_halves_the_evaluation_batch_names_the_flag_and_leaves_the_model_as_it_was() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let mut model = Model::build("resnet20", 10, 3).unwrap();
    // running statistics away from their initial values, so that restoring them shows
    let stats = model.store.buffers_flat().unwrap();
    stats.write(&(0..stats.numel()).map(|i| 0.5 + (i % 7) as f32).collect::<Vec<_>>()).unwrap();
    model.store.batches_tracked = 17;
    let before = model.store.state_dict().unwrap();
    let momentum = model.store.momentum_dict().unwrap();

    let train = probe("training", "--batch", 64, Work::Train);
    let (peak_train, _) = peak_of(&mut model, std::slice::from_ref(&train), 500);
    let (peak_eval64, batch) = peak_of(&mut model, &[probe("evaluation", "the evaluation batch", 64, Work::Eval)], 500);
    assert_eq!(batch, 500, "nothing to lower when everything fits");
    let (peak_eval8, _) = peak_of(&mut model, &[probe("evaluation", "the evaluation batch", 8, Work::Eval)], 8);
    eprintln!("peaks: train b64 {peak_train} B, eval b64 {peak_eval64} B, eval b8 {peak_eval8} B");
    assert!(peak_eval8 < peak_eval64 && peak_eval64 < peak_train);
    assert_eq!(model.store.state_dict().unwrap(), before, "weights and statistics restored bit for bit");
    assert_eq!(model.store.momentum_dict().unwrap(), momentum);
    assert_eq!(model.store.batches_tracked, 17);
    assert!(model.store.grads_flat().unwrap().to_vec().unwrap().iter().all(|&g| g == 0.0), "gradients zeroed");

    // A device between the two evaluation peaks: the evaluation batch is halved until it fits
    // (64 → 32 → …, never below 8), and the training step is refused naming its flag.
    gpu::simulate_memory_limit(Some((peak_eval8 + peak_eval64) / 2));
    let eval = probe("evaluation", "the evaluation batch", 64, Work::Eval);
    let fitted = check_memory(&mut model, &[eval], 64);
    let refused = check_memory(&mut model, &[train], 64);
    gpu::simulate_memory_limit(None);
    let fitted = fitted.unwrap();
    assert!((8..64).contains(&fitted) && 64 % fitted == 0, "evaluation batch {fitted}");
    let message = refused.expect_err("a training step at batch 64 does not fit").to_string();
    assert!(
        message.contains("training does not fit this device") && message.contains("lower --batch (now 64; try 32)"),
        "{message}"
    );
    assert_eq!(model.store.state_dict().unwrap(), before, "restored after a failed check too");
    assert_eq!(model.store.batches_tracked, 17);
}
