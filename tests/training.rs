//! Training: learning-rate schedules, and a run stopped and resumed from its checkpoint ends
//! with exactly the weights of an uninterrupted run (same steps, same learning rates, same
//! batches). Needs CIFAR-10 in data/ for the second test; skips without it.

mod common;

use sasprune::checkpoint::Normalize;
use sasprune::data::cifar::Cifar10;
use sasprune::data::{CIFAR_MEAN, CIFAR_STD};
use sasprune::models::Model;
use sasprune::train::{self, LrSchedule, Progress, TrainConfig};
use std::path::PathBuf;

/// CIFAR-10 from data/, or None (the test then skips with a message naming `test`).
fn cifar(test: &str) -> Option<Cifar10> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("data");
    let missing = format!("no CIFAR-10 in {} (run bash data/get-cifar10.sh)", dir.display());
    let present = dir.join("cifar-10-batches-bin/test_batch.bin").exists();
    common::inputs_present(test, present, &missing).then(|| Cifar10::open(&dir).unwrap())
}

#[test]
fn learning_rate_schedules() {
    let cfg = TrainConfig::cifar_default();
    assert_eq!(cfg.lr_at(0, 0, 1000), 0.1);
    assert_eq!(cfg.lr_at(99, 0, 1000), 0.1);
    assert!((cfg.lr_at(100, 0, 1000) - 0.01).abs() < 1e-9);
    assert!((cfg.lr_at(150, 0, 1000) - 0.001).abs() < 1e-9);
    let cos = TrainConfig { schedule: LrSchedule::Cosine, ..cfg };
    assert_eq!(cos.lr_at(0, 0, 1000), 0.1);
    assert!((cos.lr_at(3, 500, 1000) - 0.05).abs() < 1e-7);
    assert!(cos.lr_at(9, 1000, 1000).abs() < 1e-9);
}

#[test]
fn a_resumed_training_run_continues_exactly() {
    let Some(cifar) = cifar("a_resumed_training_run") else { return };
    let test = sasprune::data::First { inner: &cifar.test, n: 50 };
    let norm = Normalize { mean: CIFAR_MEAN, std: CIFAR_STD };
    let cfg = TrainConfig {
        epochs: 2,
        batch: 16,
        subset: Some(48),
        schedule: LrSchedule::Cosine,
        eval_batch: 50,
        show_progress: false,
        ..TrainConfig::cifar_default()
    };
    let tmp = |tag: &str| std::env::temp_dir().join(format!("sasprune-resume-train-{tag}-{}", std::process::id()));
    // uninterrupted: 4 steps (one epoch of 3 and one step of the next)
    let mut a = Model::build("resnet20", 10, 3).unwrap();
    let stop4 = TrainConfig { max_steps: Some(4), ..cfg.clone() };
    let s = train::train(&mut a, &cifar.train, &test, norm, &stop4, &tmp("a"), Progress::default(), None).unwrap();
    assert_eq!(s.steps, 4);
    // stopped after 2 steps, then resumed in a fresh model from the checkpoint
    let mut b = Model::build("resnet20", 10, 3).unwrap();
    let stop2 = TrainConfig { max_steps: Some(2), ..cfg.clone() };
    train::train(&mut b, &cifar.train, &test, norm, &stop2, &tmp("b"), Progress::default(), None).unwrap();
    let mut c = Model::build("resnet20", 10, 77).unwrap();
    let (progress, _) = train::load_state(&mut c, &tmp("b"), &stop4).unwrap();
    assert_eq!(progress, Progress { step: 2 });
    let s = train::train(&mut c, &cifar.train, &test, norm, &stop4, &tmp("b"), progress, None).unwrap();
    assert_eq!(s.steps, 4);
    assert_eq!(c.store.state_dict().unwrap(), a.store.state_dict().unwrap(), "resumed weights differ");
    assert_eq!(c.store.momentum_dict().unwrap(), a.store.momentum_dict().unwrap(), "resumed momentum differs");
    assert_eq!(c.store.batches_tracked, a.store.batches_tracked);
    // the metrics file records the learning rate of each epoch
    let metrics = std::fs::read_to_string(tmp("b").join(train::METRICS_FILE)).unwrap();
    assert!(metrics.lines().count() >= 3, "{metrics}");
    // resuming with another batch size is refused
    let other = TrainConfig { batch: 32, ..stop4 };
    let err = train::load_state(&mut c, &tmp("b"), &other).unwrap_err().to_string();
    assert!(err.contains("batch 16") && err.contains("resume with the same settings"), "{err}");
    // A diverging run stops with a message naming the flag that sets its learning rate.
    let wild = TrainConfig { lr: 1e30, max_steps: Some(3), divergence_hint: "lower --wild-lr".into(), ..cfg.clone() };
    let mut d = Model::build("resnet20", 10, 3).unwrap();
    let err = train::train(&mut d, &cifar.train, &test, norm, &wild, &tmp("d"), Progress::default(), None)
        .unwrap_err()
        .to_string();
    assert!(err.contains("diverged") && err.contains("lower --wild-lr"), "{err}");
    // Inside an epoch the loss is read 10 steps late, while later steps run (the device does not
    // wait for the host): a run that diverges early in a long epoch still stops, at step 20,
    // naming step 10, the one whose loss it read (not at the epoch's end, step 30).
    let long = TrainConfig { batch: 2, subset: Some(60), epochs: 1, max_steps: None, ..wild };
    let mut e = Model::build("resnet20", 10, 3).unwrap();
    let err = train::train(&mut e, &cifar.train, &test, norm, &long, &tmp("e"), Progress::default(), None)
        .unwrap_err()
        .to_string();
    assert!(err.contains("diverged") && err.contains("by step 10 "), "{err}");
    assert_eq!(e.store.batches_tracked, 20, "steps run before the loss of step 10 was read");
    for t in ["a", "b", "d", "e"] {
        std::fs::remove_dir_all(tmp(t)).ok();
    }
}

/// `eval_every`: the test set is evaluated after every N-th epoch and after the last one (the
/// other epochs' metrics rows hold no accuracy), and 0 is refused.
#[test]
fn evaluation_every_n_epochs_and_after_the_last() {
    let Some(cifar) = cifar("evaluation_every_n_epochs") else { return };
    let test = sasprune::data::First { inner: &cifar.test, n: 20 };
    let norm = Normalize { mean: CIFAR_MEAN, std: CIFAR_STD };
    let cfg = TrainConfig {
        epochs: 3,
        batch: 8,
        subset: Some(8),
        lr: 0.01,
        schedule: LrSchedule::Cosine,
        eval_batch: 20,
        eval_every: 2,
        show_progress: false,
        ..TrainConfig::cifar_default()
    };
    let out = std::env::temp_dir().join(format!("sasprune-eval-every-{}", std::process::id()));
    std::fs::remove_dir_all(&out).ok();
    let mut m = Model::build("resnet20", 10, 1).unwrap();
    let s = train::train(&mut m, &cifar.train, &test, norm, &cfg, &out, Progress::default(), None).unwrap();
    assert_eq!((s.steps, s.final_eval.map(|e| e.images)), (3, Some(20)));
    let metrics = std::fs::read_to_string(out.join(train::METRICS_FILE)).unwrap();
    let top1: Vec<bool> = metrics.lines().skip(1).map(|l| l.split(',').nth(4).unwrap() != "NaN").collect();
    assert_eq!(top1, [false, true, true], "evaluated after epochs 2 and 3 only:\n{metrics}");
    let zero = TrainConfig { eval_every: 0, ..cfg };
    let e = train::train(&mut m, &cifar.train, &test, norm, &zero, &out, Progress::default(), None).unwrap_err();
    assert!(e.to_string().contains("--eval-every must be at least 1"), "{e}");
    std::fs::remove_dir_all(&out).ok();
}
