//! AlexNet through the whole pruning pipeline on ImageNet-style data: a tiny packed set
//! (32 training and 16 validation images stored at 256x256, 10 classes; random 224 crops + flips
//! for training, center crops for evaluation), ADMM-NN's per-layer rates (about 21x), two
//! SAS-ADMM outer iterations and one epoch of masked retraining, through the binary as a user
//! runs it. On a driver with a 128 MiB storage-binding limit (lavapipe) AlexNet's 61 M weights
//! (244 MB) and fc6 (151 MB) are larger than one binding, so every prunable-parameter kernel runs
//! in pieces here.

mod common;

use sasprune::checkpoint::{self, Checkpoint, Normalize};
use sasprune::data::packed::write_packed;
use sasprune::models::Model;
use std::process::Command;

/// ADMM-NN's AlexNet shares (data/alexnet_admm_nn_rates.txt), written out here by hand, and
/// each layer's weight count.
const LAYERS: [(&str, f64, usize); 8] = [
    ("features.0.weight", 0.19, 64 * 3 * 11 * 11),
    ("features.3.weight", 0.80, 192 * 64 * 5 * 5),
    ("features.6.weight", 0.81, 384 * 192 * 3 * 3),
    ("features.8.weight", 0.80, 256 * 384 * 3 * 3),
    ("features.10.weight", 0.80, 256 * 256 * 3 * 3),
    ("classifier.1.weight", 0.972, 4096 * 9216),
    ("classifier.4.weight", 0.941, 4096 * 4096),
    ("classifier.6.weight", 0.907, 10 * 4096),
];

/// Weights NumPy's percentile (linear interpolation) leaves strictly below at share p:
/// ⌈p·(n − 1)⌉ when the magnitudes are distinct (as random weights are).
fn pruned_by_numpy(n: usize, p: f64) -> usize {
    (p * (n - 1) as f64).ceil() as usize
}

#[test]
fn alexnet_prunes_end_to_end_on_packed_imagenet_style_data() {
    let tmp = common::TempDir::new("alexnet-pipeline");
    let data = tmp.path().join("pack");
    std::fs::create_dir_all(&data).unwrap();
    let mut rng = common::Rng::new(10);
    let mut images = |n: usize| -> Vec<(u32, Vec<u8>)> {
        (0..n).map(|i| ((i % 10) as u32, (0..3 * 256 * 256).map(|_| rng.next_u64() as u8).collect())).collect()
    };
    write_packed(&data.join("train.pack"), 256, 256, 10, images(32)).unwrap();
    write_packed(&data.join("val.pack"), 256, 256, 10, images(16)).unwrap();
    // a dense start with 10 classes (random weights: the test is about the pipeline's mechanics)
    let weights = tmp.path().join("dense.safetensors");
    let model = Model::build("alexnet", 10, 3).unwrap();
    checkpoint::save_model(&model, &weights, Normalize::IMAGENET, &[]).unwrap();
    drop(model);
    let rates = concat!(env!("CARGO_MANIFEST_DIR"), "/data/alexnet_admm_nn_rates.txt");
    let out = tmp.path().join("run");
    let args = [
        "--model",
        "alexnet",
        "--layer-rates",
        rates,
        "--schedule",
        "quick",
        "--inner",
        "1",
        "--outer",
        "2",
        "--k0",
        "1",
        "--k-avg",
        "1",
        "--batch",
        "4",
        "--retrain-epochs",
        "1",
        "--retrain-batch",
        "8",
        "--lr",
        "0.001",
        "--tune",
        "off",
    ];
    let run = Command::new(env!("CARGO_BIN_EXE_sasprune"))
        .args(args)
        .args([
            "--data",
            data.to_str().unwrap(),
            "--weights",
            weights.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&run.stdout), String::from_utf8_lossy(&run.stderr));
    assert!(run.status.success(), "{stdout}\n{stderr}");
    assert!(stderr.contains("input normalization: imagenet"), "{stderr}");
    assert!(stdout.contains("top-5:"), "the report shows top-5 for ImageNet-style runs:\n{stdout}");

    // every layer keeps exactly what ADMM-NN's shares leave, counted in the saved file, and every
    // pruned weight is exactly 0 after retraining
    let pruned = Checkpoint::load(&out.join("pruned.safetensors")).unwrap().tensors;
    let masks = Checkpoint::load(&out.join("masks.safetensors")).unwrap().tensors;
    let (mut total, mut kept_total) = (0, 0);
    for (name, share, n) in LAYERS {
        let (shape, w) = &pruned[name];
        assert_eq!(shape.iter().product::<usize>(), n, "{name}");
        let (_, m) = &masks[&format!("{name}_mask")];
        assert_eq!(m.iter().filter(|&&v| v == 0.0).count(), pruned_by_numpy(n, share), "{name}: mask zeros");
        assert!(w.iter().zip(m).all(|(&w, &m)| m != 0.0 || w == 0.0), "{name}: a pruned weight is not exactly 0");
        let kept = w.iter().filter(|&&v| v != 0.0).count();
        assert!(kept <= n - pruned_by_numpy(n, share), "{name}: {kept} non-zero weights");
        total += n;
        kept_total += kept;
    }
    let file_rate = total as f64 / kept_total as f64;
    assert!((20.0..23.0).contains(&file_rate), "ADMM-NN's shares give about 21x, the file holds {file_rate:.2}x");
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("report.json")).unwrap()).unwrap();
    assert_eq!(report["model"], "alexnet");
    assert_eq!(report["layers"].as_array().unwrap().len(), 8, "5 conv + 3 fc layers");
    assert_eq!(report["weights"].as_u64().unwrap() as usize, total);
    assert!((report["rate_achieved"].as_f64().unwrap() - file_rate).abs() < 1e-3, "{report}");
    for phase in ["dense", "after_admm", "after_prune", "retrain_final"] {
        let t5 = report["top5"][phase].as_f64().unwrap();
        let t1 = report["top1"][phase].as_f64().unwrap();
        assert!((0.0..=100.0).contains(&t5) && t5 >= t1, "{phase}: top-1 {t1}, top-5 {t5}");
    }
    assert_eq!(report["eval_images"], 16);
    // the report, shown by `cargo test` (written past the harness's output capture)
    use std::io::Write;
    let table = std::fs::read_to_string(out.join("report.txt")).unwrap();
    let _ = writeln!(std::io::stderr(), "AlexNet pipeline on the tiny pack:\n{table}");
}
