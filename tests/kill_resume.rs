//! Kill at any moment: a small pruning pipeline run (ResNet-20 on a fake CIFAR set, every phase)
//! is stopped with SIGKILL at seeded random moments — in the ADMM iterations, inside checkpoint
//! writes, in retraining, while the report is written — and continued with `--resume` (or, when
//! it died before recording its flags, started again as a user would). The final pruned weights
//! must be bit-identical to an uninterrupted run's, and every state file in the run directory must
//! be whole after every kill.

mod common;

use sasprune::checkpoint::{self, Checkpoint, Normalize};
use sasprune::models::Model;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

fn run_to_end(args: &[String]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_sasprune")).args(args).output().expect("the binary runs")
}

/// The pruned network's tensors (metadata such as timings left out).
fn pruned(dir: &Path) -> sasprune::nn::StateDict {
    Checkpoint::load(&dir.join("pruned.safetensors")).expect("pruned.safetensors").tensors
}

/// Every safetensors file in the run directory reads back whole.
fn assert_state_files_whole(dir: &Path, when: &str) {
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.extension().is_some_and(|e| e == "safetensors") {
            if let Err(e) = Checkpoint::load(&path) {
                panic!("{when}: {} is not whole: {e}", path.display());
            }
        }
    }
}

#[test]
fn a_pipeline_killed_at_random_moments_resumes_to_identical_weights() {
    let tmp = common::TempDir::new("kill-resume");
    let data = tmp.path().join("cifar");
    common::write_fake_cifar(&data, 8, 0);
    let weights = tmp.path().join("dense.safetensors");
    let model = Model::build("resnet20", 10, 4).unwrap();
    checkpoint::save_model(&model, &weights, Normalize::CIFAR, &[]).unwrap();

    // the uninterrupted run, twice: the first may compile the driver's shaders cold (471 s against 29 s on
    // Mesa 22.3), the runs killed later find them cached, so the kill moments are drawn
    // from the second run's length
    let straight = tmp.path().join("straight");
    let out = run_to_end(&common::small_pipeline_args(&straight, &data, &weights));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let expected = pruned(&straight);
    let again = tmp.path().join("straight-again");
    let started = Instant::now();
    let out = run_to_end(&common::small_pipeline_args(&again, &data, &weights));
    let whole = started.elapsed();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(pruned(&again) == expected, "two uninterrupted runs differ");

    let mut rng = common::Rng::new(20261130);
    let kills = std::env::var("SASPRUNE_KILL_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(3);
    let mut killed = 0;
    for case in 0..kills {
        let dir = tmp.path().join(format!("killed{case}"));
        let args = common::small_pipeline_args(&dir, &data, &weights);
        // two kills per run at seeded moments of the run's length, then a run to the end
        for attempt in 0..3 {
            let resume = dir.join("command.json").exists();
            let line: Vec<String> = if resume {
                vec!["--resume".into(), dir.display().to_string(), "--tune".into(), "off".into()]
            } else {
                args.clone()
            };
            if attempt == 2 {
                let out = run_to_end(&line);
                assert!(out.status.success(), "case {case}: {}", String::from_utf8_lossy(&out.stderr));
                break;
            }
            let at = whole.mul_f64((rng.uniform() + 1.0) / 2.0 * 0.9);
            let mut child = Command::new(env!("CARGO_BIN_EXE_sasprune"))
                .args(&line)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap();
            let deadline = Instant::now() + at;
            while Instant::now() < deadline && child.try_wait().unwrap().is_none() {
                std::thread::sleep(Duration::from_millis(5));
            }
            let running = child.try_wait().unwrap().is_none();
            let _ = child.kill(); // SIGKILL
            let _ = child.wait();
            killed += usize::from(running);
            eprintln!("case {case}: killed after {at:.2?} (resumed: {resume}; still running: {running})");
            if dir.exists() {
                assert_state_files_whole(&dir, &format!("case {case} after a kill at {at:?}"));
            }
        }
        // the whole files, bytes and all (metadata in a fixed order)
        for f in ["pruned.safetensors", "masks.safetensors"] {
            assert!(
                std::fs::read(dir.join(f)).unwrap() == std::fs::read(straight.join(f)).unwrap(),
                "case {case}: {f}"
            );
        }
        let got = pruned(&dir);
        assert_eq!(got.len(), expected.len());
        for (name, (shape, values)) in &expected {
            let (s, v) = &got[name];
            assert_eq!(s, shape, "case {case}: {name}");
            assert!(v == values, "case {case}: {name} differs from the uninterrupted run's");
        }
        // one row per outer iteration, in order, with the uninterrupted run's values (a row logged
        // after the last saved state is dropped when the iteration runs again)
        let metrics = |d: &Path| -> Vec<String> {
            let text = std::fs::read_to_string(d.join("admm_metrics.csv")).expect("admm_metrics.csv");
            // every column but the iteration's wall time (column 7)
            let without_seconds = |l: &str| {
                l.split(',').enumerate().filter(|(i, _)| *i != 7).map(|(_, v)| v).collect::<Vec<_>>().join(",")
            };
            text.lines().map(without_seconds).collect()
        };
        assert_eq!(metrics(&dir), metrics(&straight), "case {case}: the ADMM metrics differ");
        let report: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.join("report.json")).unwrap()).expect("report.json whole");
        assert!(report["rate_achieved"].as_f64().unwrap() >= 3.0, "{report}");
        assert!(!dir.join("lock").exists(), "case {case}: the finished run left its lock");
    }
    // every kill comes before 90% of a whole run: most find the run still going
    assert!(killed >= kills, "only {killed} of {} kills found the run still going: the test proves little", 2 * kills);
}
