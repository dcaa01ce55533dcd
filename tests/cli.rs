//! The command line as a user meets it: the quick benchmark writes valid JSON lines, and bad
//! flags end in a clear message and a non-zero exit, never a panic.

mod common;

use std::path::PathBuf;
use std::process::Command;

fn sasprune(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_sasprune")).args(args).output().expect("the binary runs");
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

/// `sasprune` with one environment variable set (for fault injection): the exit code and stderr.
fn sasprune_with(args: &[&str], var: &str, value: &str) -> (Option<i32>, String) {
    let out =
        Command::new(env!("CARGO_BIN_EXE_sasprune")).args(args).env(var, value).output().expect("the binary runs");
    (out.status.code(), String::from_utf8_lossy(&out.stderr).into())
}

/// `sasprune` with owned arguments: the exit code and stderr.
fn sasprune_code(args: &[String]) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_sasprune")).args(args).output().expect("the binary runs");
    (out.status.code(), String::from_utf8_lossy(&out.stderr).into())
}

/// A temporary directory with a fake CIFAR set (8 images per file, 40 training images) and the
/// path of a run directory in it.
struct TinyRun {
    tmp: common::TempDir,
    data: String,
    run: String,
}

impl TinyRun {
    fn new(name: &str) -> TinyRun {
        let tmp = common::TempDir::new(name);
        let data = tmp.path().join("cifar");
        common::write_fake_cifar(&data, 8, 0);
        let run = tmp.path().join("run").display().to_string();
        TinyRun { data: data.display().to_string(), run, tmp }
    }

    /// ResNet-20 weights for `classes` classes, freshly initialized, saved in the temporary
    /// directory; returns their path.
    fn weights(&self, classes: usize) -> String {
        let path = self.tmp.path().join(format!("w{classes}.safetensors"));
        let model = sasprune::models::Model::build("resnet20", classes, 1).unwrap();
        sasprune::checkpoint::save_model(&model, &path, sasprune::checkpoint::Normalize::CIFAR, &[]).unwrap();
        path.display().to_string()
    }

    /// The pipeline on the fake set from `weights` to 3x into the run directory, then `extra`.
    fn pipeline_args<'a>(&'a self, weights: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
        let base =
            ["--model", "resnet20", "--rate", "3x", "--data", &self.data, "--out", &self.run, "--weights", weights];
        [&base[..], extra].concat()
    }

    /// `train` on the fake set into the run directory: ResNet-20, one epoch of batch 8 (5
    /// steps), then `extra`.
    fn train_args<'a>(&'a self, extra: &[&'a str]) -> Vec<&'a str> {
        let base =
            ["train", "--model", "resnet20", "--data", &self.data, "--out", &self.run, "--epochs", "1", "--batch", "8"];
        [&base[..], extra].concat()
    }
}

#[test]
fn bench_quick_writes_json_lines_with_the_adapter() {
    let path = std::env::temp_dir().join(format!("sasprune-bench-{}.jsonl", std::process::id()));
    std::fs::remove_file(&path).ok();
    let file = path.to_str().unwrap();
    let (ok, stdout, stderr) = sasprune(&["bench", "--quick", "--filter", "gemm", "--out", file]);
    assert!(ok, "{stdout}\n{stderr}");
    let (ok, _, stderr) = sasprune(&["bench", "--quick", "--filter", "fused", "--out", file]);
    assert!(ok, "{stderr}");
    let text = std::fs::read_to_string(&path).unwrap();
    let lines: Vec<serde_json::Value> =
        text.lines().map(|l| serde_json::from_str(l).expect("a JSON object per line")).collect();
    assert_eq!(lines.len(), 3, "gemm, fused sgd, fused sas-admm:\n{text}");
    for v in &lines {
        assert!(v["value"].as_f64().unwrap() > 0.0, "{v}");
        assert!(!v["adapter"].as_str().unwrap().is_empty());
        for key in ["vendor_id", "device_type", "backend", "driver", "version", "commit", "unit", "ms", "timing"] {
            assert!(!v[key].is_null(), "{key} missing in {v}");
        }
        // Kernels are timed on the device wherever the adapter has timestamp queries.
        let on_device = v["timing"].as_str().unwrap().starts_with("device");
        assert_eq!(on_device, v["timestamp_queries"].as_bool().unwrap(), "{v}");
    }
    assert_eq!(lines[0]["name"], "gemm 256x256x256");
    assert_eq!(lines[0]["unit"], "GFLOP/s");
    assert_eq!(lines[1]["unit"], "GB/s");
    assert!(stdout.contains("adapter: "), "{stdout}");
    std::fs::remove_file(&path).ok();
}

#[test]
fn bad_flags_end_in_clear_errors() {
    let cases: [(&[&str], &str); 23] = [
        (&["--rate", "6.6x"], "say which model to prune"),
        (&["--model", "resnet33", "--rate", "6.6x"], "unknown model 'resnet33'"),
        (&["--model", "resnet32", "--rate", "1x"], "above 1x"),
        (&["--model", "resnet32", "--rate", "100%"], "below 100%"),
        (&["--model", "resnet32"], "give a target with --rate"),
        (
            &["--model", "resnet32", "--rate", "6x", "--method", "lottery"],
            "invalid value 'lottery' for '--method <METHOD>'",
        ),
        (
            &["--model", "resnet32", "--rate", "6x", "--schedule", "slow"],
            "invalid value 'slow' for '--schedule <SCHEDULE>'",
        ),
        (&["--model", "resnet32", "--rate", "6x", "--subset", "0"], "--subset and --eval-limit must be at least 1"),
        (&["train", "--model", "resnet20", "--data", "/nonexistent-dir"], "/nonexistent-dir"),
        // two targets at once: refused, not one of them silently ignored
        (
            &["--model", "resnet32", "--rate", "6x", "--layer-rates", "data/alexnet_admm_nn_rates.txt"],
            "both set the pruning target",
        ),
        // sizes from flags are bounded before anything is allocated from them
        (&["train", "--model", "resnet20", "--batch", "100000000"], "--batch 100000000 is more than"),
        (&["train", "--model", "resnet20", "--classes", "1000000000"], "--classes 1000000000"),
        (&["eval", "--model", "resnet20", "--weights", "/nonexistent.safetensors", "--batch", "0"], "at least 1"),
        (&["eval", "--model", "alexnet", "--weights", "/nonexistent.safetensors", "--batch", "9999999"], "or less"),
        (&["--model", "resnet32", "--rate", "6x", "--retrain-batch", "999999999"], "--retrain-batch 999999999"),
        // accepted once and then ignored or without effect: refused, naming why
        (&["train", "--model", "resnet20", "--epochs", "10", "--milestones", "5,10"], "10 is not below --epochs 10"),
        (&["train", "--model", "resnet20", "--schedule", "cosine", "--gamma", "0.5"], "--schedule cosine decays"),
        (&["train", "--model", "resnet20", "--schedule", "cosine", "--milestones", "3"], "drop them"),
        (&["--resume", "/nonexistent-run", "--out", "/elsewhere"], "--out /elsewhere would be ignored"),
        (&["train", "--resume", "/nonexistent-run", "--out=/elsewhere"], "--out /elsewhere would be ignored"),
        (&["compare", "--model", "resnet20", "--rate", "3x", "--methods", "admm,magnitude,admm"], "names admm twice"),
        (&["compare", "--model", "resnet20", "--rate", "3x", "--deterministic", "--seeds", "2"], "give --seeds 1"),
        (&["compare", "--model", "resnet20", "--rate", "3x", "--admm-steps", "7"], "choose --admm-iterations instead"),
    ];
    for (args, expected) in cases {
        let (ok, stdout, stderr) = sasprune(args);
        assert!(!ok, "{args:?} should fail");
        if expected.contains("ignored") || expected.contains("twice") || expected.contains("--seeds 1") {
            let code = sasprune_code(&args.iter().map(|a| a.to_string()).collect::<Vec<_>>()).0;
            assert_eq!(code, Some(2), "{args:?}: bad usage");
        }
        assert!(stderr.contains(expected), "{args:?}: expected '{expected}' in:\n{stderr}{stdout}");
        assert!(!stderr.contains("panicked"), "{args:?} panicked:\n{stderr}");
    }
    // A new training run does not append to an existing one's metrics.
    let old_run = std::env::temp_dir().join(format!("sasprune-cli-oldrun-{}", std::process::id()));
    std::fs::create_dir_all(&old_run).unwrap();
    std::fs::write(old_run.join("metrics.csv"), "epoch,step\n1,390\n").unwrap();
    let (ok, _, stderr) = sasprune(&["train", "--model", "resnet20", "--out", old_run.to_str().unwrap()]);
    assert!(!ok && stderr.contains("already holds a training run") && stderr.contains("--resume"), "{stderr}");
    std::fs::remove_dir_all(&old_run).ok();
    // Global flags may stand before a subcommand; the pipeline's own flags may not.
    let (ok, stdout, stderr) = sasprune(&["--tune", "off", "devices"]);
    assert!(ok && !stdout.is_empty(), "{stdout}{stderr}");
    // each adapter says whether it can run --precision mixed (f16 shaders) and its tensor-core shapes
    assert!(
        stdout.lines().all(|l| l.contains("f16 ")
            && l.contains("cooperative matrices")
            && l.contains(" KiB, storage binding ")
            && l.ends_with(" MiB)")),
        "{stdout}"
    );
    let (ok, _, stderr) = sasprune(&["--model", "resnet32", "train", "--model", "resnet20"]);
    assert!(!ok && stderr.contains("--model belongs to the pruning pipeline"), "{stderr}");
    let (ok, _, stderr) = sasprune(&["--resume", "/nonexistent-run", "--beta", "0.1"]);
    assert!(!ok && stderr.contains("takes no others"), "{stderr}");
    let (ok, _, stderr) = sasprune(&["--resume", "/nonexistent-run"]);
    assert!(!ok && stderr.contains("cannot resume /nonexistent-run"), "{stderr}");
}

#[test]
fn tuner_flags_tune_cache_and_reject_nonsense() {
    let dir = std::env::temp_dir().join(format!("sasprune-cli-tune-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cache = dir.join("tune.json");
    let (cache_s, out_s) = (cache.to_str().unwrap(), dir.join("b.jsonl"));
    let out_s = out_s.to_str().unwrap();
    let args = ["bench", "--tune", "on", "--tune-cache", cache_s, "--quick", "--filter", "conv 16->16", "--out", out_s];
    let (ok, stdout, stderr) = sasprune(&args);
    assert!(ok, "{stdout}\n{stderr}");
    assert!(stdout.contains("kernel plans were tuned"), "{stdout}");
    let stored: serde_json::Value = serde_json::from_slice(&std::fs::read(&cache).unwrap()).unwrap();
    let adapters = stored["adapters"].as_object().unwrap();
    assert_eq!(adapters.len(), 1, "{stored}");
    let entries = adapters.values().next().unwrap().as_object().unwrap();
    assert!(entries.keys().any(|k| k.starts_with("conv2d.grad_weight 16x144x")), "{stored}");
    // The second run reads every plan from the cache: nothing is tuned.
    let (ok, stdout, stderr) = sasprune(&args);
    assert!(ok, "{stderr}");
    assert!(!stdout.contains("kernel plans were tuned"), "{stdout}");
    // A corrupt cache is a note, not a failure.
    std::fs::write(&cache, b"\x7f garbage").unwrap();
    let (ok, _, stderr) = sasprune(&args);
    assert!(ok && stderr.contains("tuner cache") && stderr.contains("ignored"), "{stderr}");
    // Nonsense settings are refused with a message naming them.
    let (ok, _, stderr) = sasprune(&["devices", "--tune", "sometimes"]);
    assert!(!ok && stderr.contains("sometimes"), "{stderr}");
    let bench = ["bench", "--quick", "--filter", "gemm", "--out", out_s];
    let run = |var: &str, value: &str| {
        let (code, stderr) = sasprune_with(&bench, var, value);
        (code == Some(0), stderr)
    };
    let (ok, stderr) = run("SASPRUNE_TUNE", "maybe");
    assert!(!ok && stderr.contains("tuning mode 'maybe'"), "{stderr}");
    let (ok, stderr) = run("SASPRUNE_SHADER_CHECKS", "some");
    assert!(!ok && stderr.contains("SASPRUNE_SHADER_CHECKS=some"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    let batch_norm = ["bench", "--quick", "--filter", "batchnorm forward", "--out", out_s];
    let (code, stderr) = sasprune_with(&batch_norm, "SASPRUNE_BN_FINALIZE", "later");
    assert!(code == Some(1) && stderr.contains("SASPRUNE_BN_FINALIZE=later is not understood"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    std::fs::remove_dir_all(&dir).ok();
}

/// A kernel the driver rejects (simulated by SASPRUNE_FAULT_KERNEL) costs a note when it is one
/// of the tuner's candidates, not the run: training goes on with the plans that run, and the
/// cache keeps no choice of it. A kernel every plan needs fails the run with its name, never a
/// panic.
#[test]
fn a_kernel_the_driver_rejects_is_left_out_by_the_tuner() {
    let t = TinyRun::new("cli-kernel-fault");
    let cache = t.tmp.path().join("tune.json");
    let tuned = ["--steps", "2", "--tune", "on", "--tune-cache", cache.to_str().unwrap()];
    let (code, stderr) = sasprune_with(&t.train_args(&tuned), "SASPRUNE_FAULT_KERNEL", "conv2d.winograd");
    assert_eq!(code, Some(0), "{stderr}");
    let note = "kernel plan winograd2x2 does not run here";
    assert!(stderr.contains(note) && stderr.contains("SASPRUNE_FAULT_KERNEL=conv2d.winograd"), "{stderr}");
    assert_eq!(stderr.matches(note).count(), 1, "noted once, then left out: {stderr}");
    let stored = std::fs::read_to_string(&cache).unwrap();
    assert!(stored.contains("+winograd2x2") && !stored.contains("\"tile\": \"winograd2x2\""), "{stored}");

    let t = TinyRun::new("cli-kernel-fault-bn");
    let (code, stderr) = sasprune_with(&t.train_args(&["--steps", "1"]), "SASPRUNE_FAULT_KERNEL", "batchnorm");
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("SASPRUNE_FAULT_KERNEL=batchnorm rejects it") && !stderr.contains("panicked"), "{stderr}");
}

/// A kernel that a driver compiles wrongly and that runs nothing (so it looks fastest) is found
/// by the tuner, which compares each candidate's result with the default plan's, and left out:
/// the run is the same as one that never tried it.
#[test]
fn a_kernel_that_computes_nothing_is_left_out_by_the_tuner() {
    let t = TinyRun::new("cli-kernel-skip");
    let cache = t.tmp.path().join("tune.json");
    let tuned = ["--steps", "2", "--tune", "on", "--tune-cache", cache.to_str().unwrap()];
    let (code, stderr) = sasprune_with(&t.train_args(&tuned), "SASPRUNE_FAULT_SKIP", "g16s");
    assert_eq!(code, Some(0), "{stderr}");
    let note = "kernel plan g16s computes a result that differs from the default plan's here";
    assert!(stderr.contains(note), "{stderr}");
    assert_eq!(stderr.matches(note).count(), 1, "noted once, then left out: {stderr}");
    let stored = std::fs::read_to_string(&cache).unwrap();
    // (without the check, g16s, which does nothing, would be the fastest of its products)
    assert!(stored.contains("\"tile\"") && !stored.contains("\"tile\": \"g16s\""), "{stored}");
}

/// `sasprune train` on `t`'s data with `extra` flags: the exit code and stderr.
fn train(t: &TinyRun, extra: &[&str]) -> (Option<i32>, String) {
    sasprune_code(&t.train_args(extra).iter().map(|a| a.to_string()).collect::<Vec<_>>())
}

/// Waits until the tuner's marker beside `cache` names `tile`: `child` is timing it.
fn wait_until_timing(cache: &std::path::Path, tile: &str, child: &mut std::process::Child) {
    let start = std::time::Instant::now();
    while !tuner_markers(cache).iter().any(|m| m.contains(&format!("\"tile\":\"{tile}\""))) {
        assert!(start.elapsed().as_secs() < 600, "the run never timed {tile}");
        if let Some(status) = child.try_wait().unwrap() {
            panic!("the run ended ({status}) before it timed {tile}");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// `sasprune` with `args` and the fault `var` set to `tile`, started: its stdout discarded,
/// stderr into `stderr`.
fn spawn_faulted(args: Vec<&str>, var: &str, tile: &str, stderr: std::process::Stdio) -> std::process::Child {
    let mut command = Command::new(env!("CARGO_BIN_EXE_sasprune"));
    command.args(args).env(var, tile).stdout(std::process::Stdio::null()).stderr(stderr);
    command.spawn().unwrap()
}

/// The tuner's in-trial markers beside `cache` (files `tune.json.trying-PID-NONCE`), their contents.
fn tuner_markers(cache: &std::path::Path) -> Vec<String> {
    let dir = std::fs::read_dir(cache.parent().unwrap()).unwrap();
    let markers = dir.flatten().filter(|e| e.file_name().to_string_lossy().starts_with("tune.json.trying-"));
    // (a marker may go between the listing and the read)
    markers.filter_map(|e| std::fs::read_to_string(e.path()).ok()).collect()
}

/// A kernel that takes the process down while the tuner times it (simulated: the process aborts
/// at its first dispatch, as a driver crash would) costs that run only: the next run finds the
/// marker the ended process left, says which plan it was timing, leaves that plan out on this
/// adapter in the cache and trains; the run after it reads that from the cache without a note.
/// The first run's cache directory does not exist yet (the marker's makes it).
#[test]
fn a_kernel_that_crashes_the_run_while_timed_is_left_out_from_the_next_run_on() {
    let t = TinyRun::new("cli-kernel-crash");
    // (as on a machine's first run, the cache's directory does not exist yet)
    let cache = t.tmp.path().join("cache/sasprune/tune.json");
    let tuned = ["--steps", "2", "--tune", "on", "--tune-cache", cache.to_str().unwrap()];
    let crashed = Command::new(env!("CARGO_BIN_EXE_sasprune"))
        .args(t.train_args(&tuned))
        .env("SASPRUNE_FAULT_CRASH", "g16s")
        .current_dir(t.tmp.path())
        .output()
        .unwrap();
    assert!(!crashed.status.success() && crashed.status.code().is_none(), "{crashed:?}");
    assert!(!String::from_utf8_lossy(&crashed.stderr).contains("could not write the tuner's marker"), "{crashed:?}");
    let markers = tuner_markers(&cache);
    assert!(markers.len() == 1 && markers[0].contains("\"tile\":\"g16s\""), "{markers:?}");

    let note = "ended while the kernel tuner timed plan g16s";
    std::fs::remove_dir_all(&t.run).unwrap();
    let (code, stderr) = train(&t, &tuned);
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(stderr.matches(note).count(), 1, "{stderr}");
    assert!(stderr.contains("remove it from \"left_out\""), "{stderr}");
    let stored = std::fs::read_to_string(&cache).unwrap();
    let doc: serde_json::Value = serde_json::from_str(&stored).unwrap();
    let left_out = doc["left_out"].as_object().unwrap();
    assert!(left_out.len() == 1 && left_out.values().all(|tiles| tiles.get("g16s").is_some()), "{stored}");
    assert!(stored.contains("\"tile\"") && !stored.contains("\"tile\": \"g16s\""), "{stored}");
    assert!(tuner_markers(&cache).is_empty(), "a finished run leaves no marker");

    std::fs::remove_dir_all(&t.run).unwrap();
    let (code, stderr) = train(&t, &tuned);
    assert!(code == Some(0) && !stderr.contains(note), "{stderr}");
    assert_eq!(std::fs::read_to_string(&cache).unwrap(), stored, "nothing left to tune");
}

/// A kernel that never finishes while the tuner times it (simulated: every wait for the device
/// after its dispatch waits for good) ends the run with a message once it has run far longer
/// than the product's default plan took, instead of holding the run until someone stops it; the
/// next run leaves it out, as it does a kernel that crashed the run. Without a cache file (no
/// marker) the run ends the same way.
#[cfg(unix)]
#[test]
fn a_kernel_that_hangs_while_timed_ends_the_run_and_is_left_out_from_the_next_run_on() {
    let t = TinyRun::new("cli-kernel-hang");
    let cache = t.tmp.path().join("tune.json");
    let tuned = ["--steps", "2", "--tune", "on", "--tune-cache", cache.to_str().unwrap()];
    let in_memory = TinyRun::new("cli-kernel-hang-no-cache");
    let no_cache = ["--steps", "2", "--tune", "on", "--tune-cache", "none"];
    let hung = |args: Vec<&str>, stderr: &std::path::Path| {
        spawn_faulted(args, "SASPRUNE_FAULT_HANG", "g16s", std::fs::File::create(stderr).unwrap().into())
    };
    let stderr_paths = [t.tmp.path().join("stderr.txt"), in_memory.tmp.path().join("stderr.txt")];
    let mut children =
        [hung(t.train_args(&tuned), &stderr_paths[0]), hung(in_memory.train_args(&no_cache), &stderr_paths[1])];
    // The first run is stopped (as by Ctrl-Z) for longer than its limit once it times g16s: the
    // time stopped is not the candidate's, so after it goes on it still has most of its limit.
    let start = std::time::Instant::now();
    wait_until_timing(&cache, "g16s", &mut children[0]);
    std::thread::sleep(std::time::Duration::from_secs(1));
    let signal = |name: &str, child: &std::process::Child| {
        assert!(Command::new("kill").args([name, &child.id().to_string()]).status().unwrap().success());
    };
    // Both runs are watched together; each one's end is noted when it comes (the second one ends
    // while the first is stopped).
    let mut ended: [Option<(std::process::ExitStatus, std::time::Duration)>; 2] = [None, None];
    let mut watch = |children: &mut [std::process::Child; 2], for_only: Option<std::time::Duration>| {
        let from = std::time::Instant::now();
        loop {
            for (child, end) in children.iter_mut().zip(ended.iter_mut()) {
                if end.is_none() {
                    *end = child.try_wait().unwrap().map(|status| (status, start.elapsed()));
                }
            }
            let done = match for_only {
                Some(time) => from.elapsed() >= time,
                None => ended.iter().all(Option::is_some),
            };
            if done {
                break;
            }
            assert!(start.elapsed().as_secs() < 900, "a hung run did not end by itself");
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    };
    signal("-STOP", &children[0]);
    watch(&mut children, Some(std::time::Duration::from_secs(40)));
    signal("-CONT", &children[0]);
    let resumed = start.elapsed();
    watch(&mut children, None);
    for ((status, _), stderr_path) in ended.iter().map(|e| e.unwrap()).zip(&stderr_paths) {
        let stderr = std::fs::read_to_string(stderr_path).unwrap();
        assert_eq!(status.code(), Some(1), "{stderr}");
        assert!(stderr.contains("kernel plan g16s took more than") && stderr.contains("looks hung"), "{stderr}");
    }
    let after_resume = ended[0].unwrap().1.saturating_sub(resumed);
    assert!(after_resume.as_secs() >= 20, "ended {after_resume:?} after it went on");
    // the candidate had its work's limit (30 s + 1000x the default's few ms), not its
    // compilation's (120 s or more)
    for stderr_path in &stderr_paths {
        let stderr = std::fs::read_to_string(stderr_path).unwrap();
        let limit = stderr.split("took more than ").nth(1).and_then(|r| r.split(' ').next()?.parse::<u32>().ok());
        assert!(limit.is_some_and(|s| (30..120).contains(&s)), "{stderr}");
    }
    let markers = tuner_markers(&cache);
    assert!(markers.len() == 1 && markers[0].contains("\"tile\":\"g16s\""), "{markers:?}");

    std::fs::remove_dir_all(&t.run).unwrap();
    let (code, stderr) = train(&t, &tuned);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stderr.contains("ended while the kernel tuner timed plan g16s"), "{stderr}");
    let stored: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&cache).unwrap()).unwrap();
    assert!(stored["left_out"].as_object().unwrap().values().all(|tiles| tiles.get("g16s").is_some()), "{stored}");
}

/// A run stopped while the tuner times a kernel (here one that never finishes, stopped by
/// SIGTERM as a job's time limit or `timeout` would) blames nothing: it removes its marker as
/// it ends, by the signal as before, and the next run leaves no plan out.
#[cfg(unix)]
#[test]
fn a_run_stopped_while_the_tuner_times_a_kernel_leaves_no_plan_out() {
    use std::os::unix::process::ExitStatusExt;
    let t = TinyRun::new("cli-kernel-interrupted");
    let cache = t.tmp.path().join("tune.json");
    let tuned = ["--steps", "2", "--tune", "on", "--tune-cache", cache.to_str().unwrap()];
    let mut child = spawn_faulted(t.train_args(&tuned), "SASPRUNE_FAULT_HANG", "g16s", std::process::Stdio::null());
    wait_until_timing(&cache, "g16s", &mut child);
    let kill = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(kill.success());
    let status = child.wait().unwrap();
    assert_eq!(status.signal(), Some(15), "ended by the signal, as without the handler: {status}");
    assert!(tuner_markers(&cache).is_empty(), "the stopped run removed its marker");

    std::fs::remove_dir_all(&t.run).unwrap();
    let (code, stderr) = train(&t, &tuned);
    assert!(code == Some(0) && !stderr.contains("ended while the kernel tuner timed"), "{stderr}");
    assert!(!std::fs::read_to_string(&cache).unwrap().contains("left_out"));
}

/// `bench --table` puts a bench's JSON lines beside the PyTorch peer's, measuring nothing: the
/// real bench writes the lines here, the peer's are written as the peer writes them. Bad files
/// are named with the line; --table with --quick is a usage error.
#[test]
fn bench_table_puts_results_beside_the_peers() {
    let dir = common::TempDir::new("cli-bench-table");
    let ours = dir.path().join("bench.jsonl");
    let (ok, _, stderr) = sasprune(&["bench", "--quick", "--filter", "gemm 256", "--out", ours.to_str().unwrap()]);
    assert!(ok, "{stderr}");
    let measured: serde_json::Value =
        serde_json::from_str(std::fs::read_to_string(&ours).unwrap().lines().next().unwrap()).unwrap();
    let peer = dir.path().join("peer.jsonl");
    let theirs = serde_json::json!({"name": measured["name"], "value": measured["value"].as_f64().unwrap() / 2.0,
        "unit": "GFLOP/s", "adapter": "llvmpipe", "peer": "pytorch"});
    std::fs::write(&peer, theirs.to_string() + "\n").unwrap();
    let (ok, stdout, stderr) = sasprune(&["bench", "--table", ours.to_str().unwrap(), peer.to_str().unwrap()]);
    assert!(ok, "{stderr}");
    let row = format!("| {} | GFLOP/s |", measured["name"].as_str().unwrap());
    assert!(stdout.contains(&row) && stdout.contains("| 2.00x |"), "{stdout}");
    assert!(stdout.contains("| measurement | unit | sasprune | pytorch | sasprune / pytorch |"), "{stdout}");

    std::fs::write(&peer, "{\"name\": 1}\n").unwrap();
    let (code, stderr) = sasprune_code(&["bench".into(), "--table".into(), peer.display().to_string()]);
    assert!(code == Some(1) && stderr.contains("peer.jsonl:1") && !stderr.contains("panicked"), "{stderr}");
    let args = ["bench", "--quick", "--table", ours.to_str().unwrap()].map(String::from);
    let (code, stderr) = sasprune_code(&args);
    assert!(code == Some(2) && stderr.contains("--table") && stderr.contains("--quick"), "{stderr}");
}

/// A driver whose magnitude selection miscounts (as Mesa 22.3's lavapipe does on long layers;
/// here its mask kernel runs nothing) stops the pipeline before hard pruning with a message that
/// names the layer, the counts and what to do, instead of pruning to another rate.
#[test]
fn a_selection_that_miscounts_stops_hard_pruning_with_a_message() {
    let t = TinyRun::new("cli-select-skip");
    let weights = t.weights(10);
    let quick: Vec<&str> = "--schedule quick --outer 1 --inner 1 --k0 1 --k-avg 1 --batch 8 --retrain-epochs 1 \
                            --retrain-batch 8 --subset 16 --eval-limit 8"
        .split_whitespace()
        .collect();
    let args = t.pipeline_args(&weights, &quick);
    let (code, stderr) = sasprune_with(&args, "SASPRUNE_FAULT_SKIP", "select.write_mask");
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("hard pruning: the device's selection zeroed 0 weights of"), "{stderr}");
    assert!(
        stderr.contains("nothing was pruned") && stderr.contains("--resume") && !stderr.contains("panicked"),
        "{stderr}"
    );
    assert!(!PathBuf::from(&t.run).join("after_prune.safetensors").exists(), "nothing pruned was saved");
}

/// `compare` continues when run again into the same --out with the same flags (a moved copy of
/// the data allowed); other flags or other data are refused before any run continues state made
/// under the first ones, and `--method` / `--resume`, the pipeline's, are refused, not ignored.
#[test]
fn compare_continues_only_with_the_flags_and_data_it_started_with() {
    let t = TinyRun::new("cli-compare-record");
    let weights = t.weights(10);
    let out = t.tmp.path().join("cmp").display().to_string();
    let compare = |rate: &str, data: &str, extra: &[&str]| -> Vec<String> {
        let base = ["compare", "--model", "resnet20", "--rate", rate, "--methods", "magnitude", "--weights", &weights];
        // magnitude pruning retrains for the ADMM phase's budget too: one gradient of 8 images
        let tail = "--schedule quick --outer 1 --inner 1 --k0 1 --k-avg 1 --batch 8 --retrain-epochs 1 \
                    --retrain-batch 8 --subset 16 --eval-limit 8";
        let tail: Vec<&str> = tail.split_whitespace().collect();
        [&base[..], &tail[..], &["--data", data, "--out", &out][..], extra]
            .concat()
            .iter()
            .map(|s| s.to_string())
            .collect()
    };
    // refused by its memory check before any run started: no record is left, so other flags may
    // follow into the same --out
    let refused = compare("3x", &t.data, &[]);
    let refs: Vec<&str> = refused.iter().map(String::as_str).collect();
    let (code, stderr) = sasprune_with(&refs, "SASPRUNE_FAULT_DEVICE_MEMORY", "5000000");
    assert!(code == Some(1) && stderr.contains("does not fit"), "{stderr}");
    assert!(!PathBuf::from(&out).join("command.json").exists(), "a refused comparison leaves no record");
    // a decimal flag (f32) continues as given: its record reads back equal
    let (code, stderr) = sasprune_code(&compare("3x", &t.data, &["--lambda", "0.03"]));
    assert_eq!(code, Some(0), "{stderr}");
    let (code, stderr) = sasprune_code(&compare("3x", &t.data, &["--lambda", "0.03"]));
    assert_eq!(code, Some(0), "{stderr}");
    std::fs::remove_dir_all(&out).unwrap();
    let (code, stderr) = sasprune_code(&compare("3x", &t.data, &[]));
    assert_eq!(code, Some(0), "{stderr}");
    let record: serde_json::Value =
        serde_json::from_slice(&std::fs::read(PathBuf::from(&out).join("command.json")).unwrap()).unwrap();
    assert_eq!(record["command"], "compare");
    // the same flags continue (every run is done: nothing runs again), a moved copy included
    let moved = t.tmp.path().join("moved").display().to_string();
    std::fs::rename(&t.data, &moved).unwrap();
    let (code, stderr) = sasprune_code(&compare("3x", &moved, &[]));
    assert_eq!(code, Some(0), "{stderr}");
    // another rate, other data of the same shape: refused, naming the command it started with
    let (code, stderr) = sasprune_code(&compare("4x", &moved, &[]));
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("holds a comparison started with other flags") && stderr.contains("--rate 3x"), "{stderr}");
    let other = t.tmp.path().join("other");
    common::write_fake_cifar(&other, 8, 1);
    let (code, stderr) = sasprune_code(&compare("3x", other.to_str().unwrap(), &[]));
    assert!(code == Some(1) && stderr.contains("is not the one"), "{stderr}");
    // the pipeline's own flags: bad usage
    let (code, stderr) = sasprune_code(&compare("3x", &moved, &["--method", "admm"]));
    assert!(code == Some(2) && stderr.contains("give --methods instead of --method"), "{stderr}");
    let (code, stderr) = sasprune_code(&compare("3x", &moved, &["--resume", &out]));
    assert!(code == Some(2) && stderr.contains("takes no --resume"), "{stderr}");
}

/// A structure of `--structures` that cannot reach the target is refused before the first run
/// (structures run one after another: it used to end the comparison after the others' runs),
/// and the refused comparison leaves no record.
#[test]
fn compare_checks_every_structures_plan_before_any_run() {
    let t = TinyRun::new("cli-compare-plans");
    let weights = t.weights(10);
    let out = t.tmp.path().join("cmp");
    // (a tiny budget, so that a run that did start would end soon)
    let tiny = "--schedule quick --outer 1 --inner 1 --k0 1 --k-avg 1 --batch 8 --retrain-epochs 1 --retrain-batch 8 \
                --subset 16 --eval-limit 8 --methods magnitude";
    let args: Vec<String> = ["compare", "--model", "resnet20", "--rate", "50x", "--structures", "weight,filter"]
        .iter()
        .map(|s| s.to_string())
        .chain(tiny.split_whitespace().map(String::from))
        .chain(["--weights", &weights, "--data", &t.data].map(String::from))
        .chain(["--out".to_string(), out.display().to_string()])
        .collect();
    let (code, stderr) = sasprune_code(&args);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("--rate 50x cannot be reached by filter pruning resnet20"), "{stderr}");
    assert!(!out.join("seed0").exists() && !out.join("command.json").exists(), "nothing ran, nothing recorded");
}

/// `--retrain-epochs` moves the paper recipe's learning-rate drops (100 and 150 of 200 epochs)
/// to the same share of the run (150 of 200 lands at the end of 2 epochs, so it is left out);
/// left at 100 and 150, a 2-epoch retraining would never drop it.
#[test]
fn retraining_epochs_stretch_the_paper_recipes_milestones() {
    let t = TinyRun::new("cli-milestones");
    let weights = t.weights(10);
    let flags: Vec<&str> = "--schedule paper --method magnitude --retrain-epochs 2 --retrain-batch 8 --subset 16 \
                            --eval-limit 8"
        .split_whitespace()
        .collect();
    let (ok, stdout, stderr) = sasprune(&t.pipeline_args(&weights, &flags));
    assert!(ok, "{stdout}{stderr}");
    assert!(stdout.contains("masked retraining: 2 epochs of batch 8, lr 0.1 (times 0.1 at epochs 1)"), "{stdout}");
}

/// A target so high that layers keep fewer weights than they have output channels runs, with a
/// warning naming them (and the ADMM flags magnitude pruning does not read); bench with a filter
/// that matches nothing says so.
#[test]
fn a_target_that_empties_filters_is_warned_about() {
    let t = TinyRun::new("cli-starved");
    let weights = t.weights(10);
    let quick: Vec<&str> = "--schedule quick --outer 1 --inner 1 --k0 1 --k-avg 1 --batch 8 --retrain-epochs 1 \
                            --retrain-batch 8 --subset 16 --eval-limit 8 --method magnitude"
        .split_whitespace()
        .collect();
    let mut args = t.pipeline_args(&weights, &quick);
    let rate = args.iter().position(|a| *a == "3x").unwrap();
    args[rate] = "99.9%";
    let (code, stderr) = sasprune_code(&args.iter().map(|a| a.to_string()).collect::<Vec<_>>());
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        stderr.contains("keep fewer weights than they have output channels")
            && stderr.contains("layer3.2.conv2.weight (37 of 36864)"),
        "{stderr}"
    );
    // the ADMM phase's flags, which magnitude pruning does not read, are named
    assert!(
        stderr.contains(
            "warning: --method magnitude does not read --k-avg, --inner, --outer, --k0, --batch (they set the ADMM \
             phase, which magnitude pruning skips)"
        ),
        "{stderr}"
    );
    let (ok, stdout, _) = sasprune(&["bench", "--quick", "--filter", "no-such-measurement", "--out", "/dev/null"]);
    assert!(ok && stdout.contains("no measurement's name contains 'no-such-measurement'"), "{stdout}");
}

/// `train --resume DIR` alone continues a run with the flags it started with; a dataset that
/// moved is accepted with `--data`, a different one is refused; flags that change the result
/// are refused.
#[test]
fn train_resume_alone_continues_with_the_saved_flags_and_checks_the_data() {
    let t = TinyRun::new("cli-train-resume");
    let (run, data) = (PathBuf::from(&t.run), PathBuf::from(&t.data));
    let (run_s, data_s) = (t.run.as_str(), t.data.as_str());
    let (ok, stdout, stderr) = sasprune(&t.train_args(&["--steps", "2", "--lr", "0.05"]));
    assert!(ok, "{stdout}{stderr}");
    assert!(stdout.contains("trained 2 steps"), "{stdout}");
    assert!(stderr.contains("input normalization: cifar") && stderr.contains("the default for resnet20"), "{stderr}");
    let record: serde_json::Value =
        serde_json::from_slice(&std::fs::read(run.join("command.json")).unwrap()).expect("command.json is JSON");
    assert_eq!(record["command"], "train");
    assert_eq!(record["data"]["train"]["images"], 40);
    assert!(!record["args"].as_array().unwrap().iter().any(|a| a == "--out"), "{record}");
    // the typed flags, which --resume reads back (not where the run lives)
    let flags = &record["flags"];
    assert!((flags["lr"].as_f64().unwrap() - 0.05).abs() < 1e-7 && flags["steps"] == 2, "{record}");
    assert!(flags["model"] == "resnet20" && flags["schedule"] == "multistep" && flags["save_every"] == 500, "{record}");
    assert!(flags.get("out").is_none() && flags.get("resume").is_none(), "{record}");

    // alone, with more steps allowed
    let (ok, stdout, stderr) = sasprune(&["train", "--resume", run_s, "--steps", "4"]);
    assert!(ok, "{stdout}{stderr}");
    assert!(stderr.contains("at step 2") && stdout.contains("trained 4 steps"), "{stdout}{stderr}");
    // a flag that changes the result is refused, naming it
    let (ok, _, stderr) = sasprune(&["train", "--resume", run_s, "--momentum", "0.5"]);
    assert!(!ok && stderr.contains("takes no others") && stderr.contains("--momentum 0.5"), "{stderr}");
    // the data moved: the old place is named, the new one accepted
    let moved = t.tmp.path().join("moved");
    std::fs::rename(&data, &moved).unwrap();
    let (ok, _, stderr) = sasprune(&["train", "--resume", run_s, "--steps", "5"]);
    assert!(!ok && stderr.contains(data_s), "{stderr}");
    let (ok, stdout, stderr) =
        sasprune(&["train", "--resume", run_s, "--data", moved.to_str().unwrap(), "--steps", "5"]);
    assert!(ok && stdout.contains("trained 5 steps"), "{stdout}{stderr}");
    // other data of the same shape is refused
    let other = t.tmp.path().join("other");
    common::write_fake_cifar(&other, 8, 1);
    let (ok, _, stderr) = sasprune(&["train", "--resume", run_s, "--data", other.to_str().unwrap(), "--steps", "6"]);
    assert!(!ok && stderr.contains("is not the one") && stderr.contains("checksum"), "{stderr}");
    // one writer per run directory: a live owner is named, a dead one's lock is taken over
    let mut owner = Command::new("sleep").arg("60").spawn().unwrap();
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    std::fs::write(run.join("lock"), format!("{} {}\n", owner.id(), host.trim())).unwrap();
    let (ok, _, stderr) = sasprune(&["train", "--resume", run_s, "--data", moved.to_str().unwrap(), "--steps", "6"]);
    assert!(!ok && stderr.contains(&format!("in use by another sasprune process (pid {})", owner.id())), "{stderr}");
    owner.kill().unwrap();
    owner.wait().unwrap();
    let (ok, stdout, stderr) = sasprune(&["train", "--resume", run_s, "--steps", "6"]);
    assert!(ok && stderr.contains("taking over the stale lock"), "{stdout}{stderr}");
    assert!(!run.join("lock").exists(), "the lock goes with the process");
    // the pipeline does not resume a training run
    let (ok, _, stderr) = sasprune(&["--resume", run_s]);
    assert!(!ok && stderr.contains("holds a `train` run") && stderr.contains("sasprune train --resume"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

/// A run record of an older version (its argv, no typed flags) still resumes, by parsing its argv
/// again, and is saved back with its flags; a record whose flags name an unknown method is refused
/// naming the file.
#[test]
fn an_old_run_record_without_typed_flags_still_resumes() {
    let t = TinyRun::new("cli-old-record");
    let run = PathBuf::from(&t.run);
    let (ok, stdout, stderr) = sasprune(&t.train_args(&["--steps", "2", "--lr", "0.05"]));
    assert!(ok, "{stdout}{stderr}");
    let path = run.join("command.json");
    let mut record: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    record.as_object_mut().unwrap().remove("flags");
    std::fs::write(&path, serde_json::to_vec_pretty(&record).unwrap()).unwrap();
    let (ok, stdout, stderr) = sasprune(&["train", "--resume", &t.run, "--steps", "3"]);
    assert!(ok && stderr.contains("at step 2") && stdout.contains("trained 3 steps"), "{stdout}{stderr}");
    let record: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    assert!(record["flags"]["steps"] == 3 && (record["flags"]["lr"].as_f64().unwrap() - 0.05).abs() < 1e-7, "{record}");
    // a field an old record lacks takes the parser's default
    let mut record = record;
    record["flags"].as_object_mut().unwrap().remove("save_every");
    std::fs::write(&path, serde_json::to_vec_pretty(&record).unwrap()).unwrap();
    let (ok, stdout, stderr) = sasprune(&["train", "--resume", &t.run, "--steps", "4"]);
    assert!(ok && stdout.contains("trained 4 steps"), "{stdout}{stderr}");

    // a pipeline record whose flags cannot be read back is refused, naming the file
    let pipe = t.tmp.path().join("pipe");
    std::fs::create_dir_all(&pipe).unwrap();
    let bad = serde_json::json!({"format": record["format"], "command": "pipeline", "args": [], "data": null,
        "flags": {"model": "resnet20", "method": "no-such-method"}});
    std::fs::write(pipe.join("command.json"), bad.to_string()).unwrap();
    let (ok, _, stderr) = sasprune(&["--resume", pipe.to_str().unwrap()]);
    assert!(!ok && stderr.contains("command.json") && stderr.contains("unknown method 'no-such-method'"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

/// Evaluation says which input normalization it uses and where it came from, and warns when the
/// weights name none.
#[test]
fn eval_names_its_normalization_and_warns_when_it_guesses() {
    let tmp = common::TempDir::new("cli-normalize");
    let data = tmp.path().join("cifar");
    common::write_fake_cifar(&data, 2, 0);
    let data_s = data.to_str().unwrap();
    // weights without metadata, as `save_file(model.state_dict())` writes them
    let model = sasprune::models::Model::build("resnet20", 10, 3).unwrap();
    let bare = tmp.path().join("bare.safetensors");
    let dict = model.store.state_dict().unwrap();
    sasprune::checkpoint::save(&bare, &dict, &[], Default::default()).unwrap();
    let bare_s = bare.to_str().unwrap();
    let eval = |extra: &[&str]| {
        let mut args = vec!["eval", "--model", "resnet20", "--weights", bare_s, "--data", data_s];
        args.extend(extra);
        sasprune(&args)
    };
    let (ok, stdout, stderr) = eval(&[]);
    assert!(ok, "{stdout}{stderr}");
    assert!(stderr.contains("warning:") && stderr.contains("does not say how its inputs were normalized"), "{stderr}");
    assert!(stderr.contains("assuming cifar") && stderr.contains("--normalize imagenet"), "{stderr}");
    let (ok, _, stderr) = eval(&["--normalize", "imagenet"]);
    assert!(ok && stderr.contains("input normalization: imagenet") && stderr.contains("(--normalize)"), "{stderr}");
    assert!(!stderr.contains("warning"), "{stderr}");
    let (ok, _, stderr) = eval(&["--normalize", "0.5,0.25"]);
    assert!(ok && stderr.contains("mean 0.5,0.5,0.5 std 0.25,0.25,0.25"), "{stderr}");
    // weights that name theirs: used, and an override says what it overrides
    let named = tmp.path().join("named.safetensors");
    sasprune::checkpoint::save_model(&model, &named, sasprune::checkpoint::Normalize::IMAGENET, &[]).unwrap();
    let named_s = named.to_str().unwrap();
    let (ok, _, stderr) = sasprune(&["eval", "--model", "resnet20", "--weights", named_s, "--data", data_s]);
    assert!(ok && stderr.contains("input normalization: imagenet") && stderr.contains("metadata"), "{stderr}");
    let (ok, _, stderr) =
        sasprune(&["eval", "--model", "resnet20", "--weights", named_s, "--data", data_s, "--normalize", "cifar"]);
    assert!(ok && stderr.contains("--normalize cifar") && stderr.contains("overrides"), "{stderr}");
    for bad in ["0.5", "1,2,3", "0.5,0", "imagenett", "0.5,nan"] {
        let (ok, _, stderr) = eval(&["--normalize", bad]);
        assert!(!ok && stderr.contains(&format!("--normalize '{bad}'")), "{bad}: {stderr}");
    }
}

/// The CI install script keeps a Vulkan driver the machine already has (any ICD, not only Mesa's
/// software one) instead of installing Mesa over it.
#[test]
fn vulkan_install_script_keeps_an_existing_driver() {
    let tmp = common::TempDir::new("cli-icd");
    std::fs::write(tmp.path().join("nvidia_icd.json"), b"{\"ICD\": {\"library_path\": \"libGLX_nvidia.so.0\"}}")
        .unwrap();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/.ci/install-vulkan.sh");
    let out = Command::new("bash")
        .arg(script)
        .env("SASPRUNE_VULKAN_ICD_DIRS", tmp.path())
        .env_remove("VK_DRIVER_FILES")
        .env_remove("VK_ICD_FILENAMES")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("nvidia_icd.json") && stdout.contains("not installing the software driver"), "{stdout}");
}

/// A learning rate that makes the loss NaN stops the run within a few steps with a message that
/// names the step, the loss and the command that continues with a lower learning rate; that
/// command works, and the lower rate is kept for later resumes.
#[test]
fn a_diverged_training_run_says_how_to_continue_and_can() {
    let t = TinyRun::new("cli-diverge");
    let run_s = t.run.as_str();
    let (ok, stdout, stderr) = sasprune(&t.train_args(&["--steps", "3", "--lr", "1e30"]));
    assert!(!ok, "{stdout}{stderr}");
    assert!(stderr.contains("diverged") && stderr.contains("by step 3") && stderr.contains("NaN"), "{stderr}");
    let hint = format!("sasprune train --resume {run_s} --lr 1e29");
    assert!(stderr.contains(&hint), "expected `{hint}` in: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    // what the message says to run, runs (from the start: nothing was checkpointed before step 3)
    let (ok, stdout, stderr) = sasprune(&["train", "--resume", run_s, "--lr", "0.01"]);
    assert!(ok && stdout.contains("trained 3 steps"), "{stdout}{stderr}");
    let record = std::fs::read_to_string(PathBuf::from(run_s).join("command.json")).unwrap();
    assert!(record.contains("\"0.01\"") && !record.contains("1e30"), "the new rate is recorded:\n{record}");
}

/// `train --weights` of a pruned model (most prunable weights exactly 0) warns that training
/// without a mask lets them grow back; dense weights train without the warning.
#[test]
fn training_pruned_weights_warns_that_the_zeros_grow_back() {
    let t = TinyRun::new("cli-train-pruned");
    let dense = t.weights(10);
    let model = sasprune::models::Model::build("resnet20", 10, 1).unwrap();
    let mut dict = model.store.state_dict().unwrap();
    for e in model.store.entries().iter().filter(|e| e.role == sasprune::nn::Role::PrunableWeight) {
        let v = &mut dict.get_mut(&e.name).unwrap().1;
        let kept = v.len() / 10;
        v[kept..].fill(0.0);
    }
    model.store.load_state_dict(&dict, "pruned").unwrap();
    let pruned = t.tmp.path().join("pruned.safetensors");
    sasprune::checkpoint::save_model(&model, &pruned, sasprune::checkpoint::Normalize::CIFAR, &[]).unwrap();
    let pruned = pruned.display().to_string();
    let (ok, stdout, stderr) = sasprune(&t.train_args(&["--steps", "1", "--weights", &pruned]));
    assert!(ok, "{stdout}{stderr}");
    assert!(stderr.contains("prunable weights in") && stderr.contains("will grow back"), "{stderr}");
    std::fs::remove_dir_all(&t.run).unwrap();
    let (ok, stdout, stderr) = sasprune(&t.train_args(&["--steps", "1", "--weights", &dense]));
    assert!(ok && !stderr.contains("grow back"), "{stdout}{stderr}");
}

/// A comparison whose retraining diverges says how to go on: a new comparison with a lower rate
/// (its runs cannot be resumed alone with another --lr), not a pipeline resume of a directory
/// that is not one.
#[test]
fn a_diverged_comparison_says_to_run_it_again_with_a_lower_rate() {
    let t = TinyRun::new("cli-compare-diverge");
    let weights = t.weights(10);
    let out = t.tmp.path().join("cmp").display().to_string();
    let flags = "compare --model resnet20 --rate 3x --methods magnitude --schedule quick --outer 1 --inner 1 --k0 1 \
                 --k-avg 1 --batch 8 --retrain-epochs 1 --retrain-batch 8 --subset 16 --eval-limit 8 --lr 1e30";
    let mut args: Vec<&str> = flags.split_whitespace().collect();
    args.extend(["--weights", &weights, "--data", &t.data, "--out", &out]);
    let (ok, stdout, stderr) = sasprune(&args);
    assert!(!ok, "{stdout}{stderr}");
    let hint = format!("run the comparison again with a lower learning rate (e.g. --lr 1e29) into a new --out; the runs finished so far stay in {out}");
    assert!(stderr.contains("diverged") && stderr.contains(&hint), "{stderr}");
    assert!(!stderr.contains("--resume"), "{stderr}");
}

/// A checkpoint write that fails (a full disk, injected) stops the run with an error naming the
/// file and the cause; the previous checkpoint is intact, no temporary file is left, and the run
/// continues from that checkpoint.
#[test]
fn a_full_disk_stops_the_run_and_keeps_the_last_checkpoint() {
    let t = TinyRun::new("cli-enospc");
    let (run, run_s) = (PathBuf::from(&t.run), t.run.as_str());
    let args = t.train_args(&["--steps", "3", "--save-every", "1", "--lr", "0.01"]);
    let (code, stderr) = sasprune_with(&args, "SASPRUNE_FAULT_WRITE", "train_state@2");
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("train_state.safetensors") && stderr.contains("No space left on device"), "{stderr}");
    assert!(stderr.contains(&format!("sasprune train --resume {run_s}")), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    let state = sasprune::checkpoint::Checkpoint::load(&run.join("train_state.safetensors")).expect("still readable");
    assert_eq!(state.metadata["step"], "1", "the checkpoint of step 1 is intact");
    let leftovers: Vec<_> =
        std::fs::read_dir(&run).unwrap().flatten().filter(|e| e.path().to_string_lossy().ends_with(".tmp")).collect();
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
    let (ok, stdout, stderr) = sasprune(&["train", "--resume", run_s]);
    assert!(ok && stderr.contains("at step 1") && stdout.contains("trained 3 steps"), "{stdout}{stderr}");
}

/// A lost GPU device (injected: the device is destroyed mid-run, as a driver reset loses it)
/// ends the run with an error that says so and how to continue, never a panic; the run then
/// continues from its last checkpoint.
#[test]
fn a_lost_device_stops_the_run_with_a_message_and_resume_continues() {
    // Lost at the first submits or later in training, where the next kernel to build may fail on
    // the dead device before the loss is reported: the message names the cause, not a symptom.
    for at in ["1", "2", "4"] {
        let t = TinyRun::new(&format!("cli-device-lost-{at}"));
        let args = t.train_args(&["--steps", "4", "--save-every", "1", "--lr", "0.01"]);
        let (code, stderr) = sasprune_with(&args, "SASPRUNE_FAULT_LOSE_DEVICE", at);
        assert_eq!(code, Some(1), "lost at submit {at}: {stderr}");
        assert!(stderr.contains("device was lost") && !stderr.contains("panicked"), "lost at submit {at}: {stderr}");
    }
    let t = TinyRun::new("cli-device-lost");
    let run_s = t.run.as_str();
    let args = t.train_args(&["--steps", "4", "--save-every", "1", "--lr", "0.01"]);
    let (code, stderr) = sasprune_with(&args, "SASPRUNE_FAULT_LOSE_DEVICE", "3");
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("device was lost"), "{stderr}");
    assert!(stderr.contains(&format!("sasprune train --resume {run_s}")), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    let (ok, stdout, stderr) = sasprune(&["train", "--resume", run_s]);
    assert!(ok && stdout.contains("trained 4 steps"), "{stdout}{stderr}");
}

/// A kernel that never finishes outside the tuner (injected: the device finishes no work from
/// step 3's SGD on) ends the run once one submission has waited past `SASPRUNE_DEVICE_TIMEOUT`,
/// with a message that says so and how to continue, instead of holding it for good; the
/// checkpoint of step 2 is intact and the run continues from it.
#[test]
fn a_kernel_that_hangs_ends_the_run_after_the_device_wait_limit_and_resume_continues() {
    let t = TinyRun::new("cli-device-hang");
    let run_s = t.run.as_str();
    let args = t.train_args(&["--steps", "4", "--save-every", "1", "--lr", "0.01"]);
    let stderr_path = t.tmp.path().join("stderr.txt");
    let stderr_file = std::fs::File::create(&stderr_path).unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_sasprune"));
    command.args(&args).env("SASPRUNE_FAULT_HANG", "sgd.step@3").env("SASPRUNE_DEVICE_TIMEOUT", "2");
    let mut child = command.stdout(std::process::Stdio::null()).stderr(stderr_file).spawn().unwrap();
    // (a run that would wait for good is stopped and fails the test; the run's own steps take
    // about a second each here, and the error path must not wait again for each of its reads)
    let started = std::time::Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > std::time::Duration::from_secs(120) {
            let _ = child.kill();
            panic!("the hung run still waits after 120 s: {}", std::fs::read_to_string(&stderr_path).unwrap());
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let stderr = std::fs::read_to_string(&stderr_path).unwrap();
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("has not finished one submission of work in 2s"), "{stderr}");
    assert!(stderr.contains(&format!("sasprune train --resume {run_s}")), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    let state = sasprune::checkpoint::Checkpoint::load(&PathBuf::from(&t.run).join("train_state.safetensors")).unwrap();
    assert_eq!(state.metadata["step"], "2", "the checkpoint of step 2 is intact");
    let (ok, stdout, stderr) = sasprune(&["train", "--resume", run_s]);
    assert!(ok && stderr.contains("at step 2") && stdout.contains("trained 4 steps"), "{stdout}{stderr}");
    // The bench ends the same way: a hung device is not one model that does not fit
    let args = ["bench", "--quick", "--filter", "step", "--out", &format!("{run_s}-bench.jsonl")].map(String::from);
    let mut command = Command::new(env!("CARGO_BIN_EXE_sasprune"));
    command.args(args).env("SASPRUNE_FAULT_HANG", "sgd.step").env("SASPRUNE_DEVICE_TIMEOUT", "1");
    let out = command.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("has not finished one submission") && !stderr.contains("skipped ("), "{stderr}");
    // a limit that is not a duration is bad usage, refused before any work
    let other = format!("{run_s}-other");
    let mut args = t.train_args(&["--steps", "1"]);
    args.iter_mut().filter(|a| **a == run_s).for_each(|a| *a = &other);
    let (code, stderr) = sasprune_with(&args, "SASPRUNE_DEVICE_TIMEOUT", "soon");
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("SASPRUNE_DEVICE_TIMEOUT=soon") && !stderr.contains("panicked"), "{stderr}");
}

/// A run whose output nobody reads any more (stdout a pipe whose reader has ended, as after
/// `| head`) goes on to its end and saves; printing its lines does not end it with a panic.
#[test]
fn a_run_whose_output_pipe_is_closed_goes_on_and_saves() {
    let t = TinyRun::new("cli-closed-stdout");
    let mut child = Command::new(env!("CARGO_BIN_EXE_sasprune"))
        .args(t.train_args(&["--steps", "3", "--lr", "0.01"]))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && !stderr.contains("panicked"), "{:?}: {stderr}", out.status);
    let state = sasprune::checkpoint::Checkpoint::load(&PathBuf::from(&t.run).join("train_state.safetensors")).unwrap();
    assert_eq!(state.metadata["step"], "3", "the run trained to its end and saved");
}

/// Where stdout is what a command produces (`eval`'s result), a write that fails (here a full
/// device) is the command's failure, an error naming standard output, not a silent exit 0.
#[cfg(target_os = "linux")]
#[test]
fn a_result_that_cannot_be_written_fails_the_command() {
    let t = TinyRun::new("cli-full-stdout");
    let weights = t.weights(10);
    let full = std::fs::OpenOptions::new().write(true).open("/dev/full").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_sasprune"))
        .args(["eval", "--model", "resnet20", "--weights", &weights, "--data", &t.data, "--json"])
        .stdout(full)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("standard output") && !stderr.contains("panicked"), "{stderr}");
}

/// Weights that do not fit (here: trained for 100 classes, the data has 10) are refused before
/// any work starts: no run directory is recorded, and no resume is suggested.
#[test]
fn pipeline_weights_that_do_not_fit_are_refused_before_any_work() {
    let t = TinyRun::new("cli-weights-misfit");
    let weights = t.weights(100);
    let args = t.pipeline_args(&weights, &[]);
    let (ok, _, stderr) = sasprune(&args);
    assert!(!ok && stderr.contains("w100.safetensors") && stderr.contains("expected [10, 64]"), "{stderr}");
    assert!(!stderr.contains("--resume"), "nothing started, nothing to resume: {stderr}");
    assert!(!PathBuf::from(&t.run).join("command.json").exists());
}

/// A run that would not fit the device is refused by the memory check before it starts (here a
/// device of 60 MB, simulated: ResNet-20's ADMM phase holds about 110 MiB at batch 64 and 26 MiB
/// at batch 8): the message names the phase and the flag to lower, and nothing is recorded, so
/// the same command with a smaller batch starts the run, which then fits that device throughout.
#[test]
fn a_run_too_big_for_the_device_is_refused_at_its_start_with_the_flag_to_lower() {
    let t = TinyRun::new("cli-memory-check");
    let weights = t.weights(10);
    let run = |batch: &str| {
        let tiny =
            ["--schedule", "quick", "--outer", "1", "--inner", "1", "--k0", "1", "--k-avg", "1", "--batch", batch];
        let retrain = ["--retrain-epochs", "1", "--retrain-batch", "8", "--eval-limit", "8"];
        sasprune_with(
            &t.pipeline_args(&weights, &[&tiny[..], &retrain].concat()),
            "SASPRUNE_FAULT_DEVICE_MEMORY",
            "60000000",
        )
    };
    let (code, stderr) = run("64");
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("the ADMM phase does not fit this device") && stderr.contains("lower --batch (now 64; try 32)"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked") && !stderr.contains("--resume"), "{stderr}");
    assert!(!PathBuf::from(&t.run).join("command.json").exists(), "nothing recorded");
    let (code, stderr) = run("8");
    assert_eq!(code, Some(0), "{stderr}");
    assert!(PathBuf::from(&t.run).join("report.json").exists());
}

/// What a check of bad input as a new user would try found (issue 21), each refused before any
/// work with a message naming the flag or file, never a panic and never a wrong number.
#[test]
fn bad_input_a_new_user_tries_is_refused_naming_what_to_fix() {
    use std::os::unix::ffi::OsStrExt;
    let t = TinyRun::new("cli-bad-input");
    let weights = t.weights(10);
    let pipeline = |extra: &[&str]| {
        let mut args = vec!["--model", "resnet20", "--rate", "3x", "--data", &t.data, "--weights", &weights];
        args.extend_from_slice(extra);
        args.iter().map(|s| s.to_string()).collect::<Vec<_>>()
    };
    // weights whose metadata names a normalization dividing by zero; class names that do not fit
    let zero_std = t.tmp.path().join("zero-std.safetensors").display().to_string();
    let model = sasprune::models::Model::build("resnet20", 10, 1).unwrap();
    let divides_by_zero = sasprune::checkpoint::Normalize { mean: [0.5; 3], std: [0.0; 3] };
    sasprune::checkpoint::save_model(&model, std::path::Path::new(&zero_std), divides_by_zero, &[]).unwrap();
    let (two_names, twice) = (t.tmp.path().join("two.txt"), t.tmp.path().join("twice.txt"));
    std::fs::write(&two_names, "cat\ndog\n").unwrap();
    std::fs::write(&twice, "a\nb\nc\nd\ne\nf\ng\nh\ni\na\n").unwrap();
    let onnx = t.tmp.path().join("m.onnx").display().to_string();
    let compared = t.tmp.path().join("compared").to_str().unwrap().to_string();
    let export = |names: &std::path::Path| -> Vec<String> {
        [
            "export",
            "--model",
            "resnet20",
            "--weights",
            &weights,
            "--out",
            &onnx,
            "--class-names",
            names.to_str().unwrap(),
        ]
        .map(String::from)
        .to_vec()
    };
    let cases: Vec<(Vec<String>, &str)> = vec![
        // ranges of numeric flags, checked before any work
        (t.train_args(&["--gamma=-1"]).iter().map(|s| s.to_string()).collect(), "--gamma must be in (0, 1]"),
        (t.train_args(&["--gamma", "nan"]).iter().map(|s| s.to_string()).collect(), "--gamma must be in (0, 1]"),
        (pipeline(&["--retrain-epochs", "0"]), "--retrain-epochs must be in 1..=1000000"),
        (pipeline(&["--retrain-batch", "0"]), "--retrain-batch must be at least 1"),
        (
            t.train_args(&["--save-every", "0"]).iter().map(|s| s.to_string()).collect(),
            "--save-every must be at least 1",
        ),
        (t.train_args(&["--steps", "0"]).iter().map(|s| s.to_string()).collect(), "--steps must be at least 1"),
        (
            t.train_args(&["--milestones", "5,3"]).iter().map(|s| s.to_string()).collect(),
            "--milestones must be increasing epochs (e.g. 100,150), got 5,3",
        ),
        (pipeline(&["--baseline-epochs", "99999999999"]), "--baseline-epochs must be in 0..=1000000"),
        (pipeline(&["--v", "inf"]), "--v must be in (0, 1e6], got inf"),
        (pipeline(&["--r", "1e30", "--s", "1e30"]), "--r 1e30 and --s 1e30 lie outside"),
        (pipeline(&["--q", "1e308"]), "--q must be in (0, 3], got 1e308"),
        (pipeline(&["--beta", "1e30"]), "--beta must be in (0, 1e4], got 1e30"),
        (pipeline(&["--outer", "4", "--k-avg", "16"]), "--k-avg 16 is past the last outer iteration (--outer 4)"),
        (pipeline(&["--admm-rho-growth", "0.5"]), "--admm-rho-growth must be in [1, 10]"),
        (pipeline(&["--admm-weight-decay", "2"]), "--admm-weight-decay must be in [0, 1)"),
        (pipeline(&["--time-limit", "10"]), "--time-limit '10' is not a duration"),
        // structures: 2:4 sets its own rate, filter pruning takes a rate it can reach
        (pipeline(&["--structure", "2:4"]), "--structure 2:4 sets the rate itself"),
        (
            [
                "--model",
                "resnet20",
                "--structure",
                "filter",
                "--rate",
                "100x",
                "--data",
                &t.data,
                "--weights",
                &weights,
            ]
            .map(String::from)
            .to_vec(),
            "cannot be reached by filter pruning resnet20",
        ),
        (pipeline(&["--structure", "channels"]), "invalid value 'channels' for '--structure"),
        // precision: f32 or mixed, for the pipeline, train and eval alike
        (pipeline(&["--precision", "half"]), "invalid value 'half' for '--precision"),
        (t.train_args(&["--precision", "bf16"]).iter().map(|s| s.to_string()).collect(), "invalid value 'bf16'"),
        (
            ["--model", "resnet20", "--structure", "filter", "--layer-rates", &weights, "--data", &t.data]
                .map(String::from)
                .to_vec(),
            "only --structure weight prunes",
        ),
        (
            ["compare", "--paper-table", "--structure", "filter", "--data", &t.data].map(String::from).to_vec(),
            "--paper-table is the paper's unstructured pruning",
        ),
        // the paper table sets each row's model, rate and weights itself
        (
            ["compare", "--paper-table", "--model", "resnet32", "--data", &t.data].map(String::from).to_vec(),
            "--paper-table sets each row's model, rate and dense start itself: drop --model",
        ),
        (
            ["compare", "--paper-table", "--rows", "resnet20", "--data", &t.data].map(String::from).to_vec(),
            "the paper has no CIFAR row for 'resnet20'",
        ),
        (
            ["compare", "--paper-table", "--weights-dir", "/nonexistent", "--data", &t.data].map(String::from).to_vec(),
            "/nonexistent/resnet32.safetensors is not there",
        ),
        // a normalization that makes inputs infinite is refused, not reported as a top-1, whether
        // given or read from the weights' metadata
        (
            ["eval", "--model", "resnet20", "--weights", &zero_std, "--data", &t.data].map(String::from).to_vec(),
            "normalize_std '0,0,0'): means must be finite and standard deviations positive",
        ),
        (export(&two_names), "names 2 classes, but the model has 10"),
        (
            ["export", "--model", "resnet20", "--weights", &weights, "--out", &weights].map(String::from).to_vec(),
            "is the weights file --weights reads",
        ),
        // a budget that leaves ADMM-NN's derived schedule beyond any says where it comes from,
        // at once (its ρ0 match loops over the steps)
        (pipeline(&["--outer", "1000000"]), "ADMM-NN shares SAS-ADMM's budget"),
        // magnitude pruning's retraining for the ADMM budget, over 5 images: refused before any run
        (
            ["compare", "--model", "resnet20", "--rate", "2x", "--subset", "5", "--data", &t.data, "--out", &compared]
                .map(String::from)
                .to_vec(),
            "magnitude pruning would retrain for",
        ),
        (
            ["compare", "--model", "resnet20", "--rate", "2x", "--seed", "18446744073709551615", "--seeds", "2"]
                .iter()
                .chain(&["--data", &t.data, "--out", &compared])
                .map(|s| s.to_string())
                .collect(),
            "runs past the largest seed",
        ),
        (export(&twice), "class 'a' is named twice (classes 0 and 9)"),
        (t.train_args(&["--classes", "5"]).iter().map(|s| s.to_string()).collect(), "--classes 5 is fewer than the 10"),
        (t.train_args(&["--lr", "0"]).iter().map(|s| s.to_string()).collect(), "--lr must be a positive number, got 0"),
        (pipeline(&["--out", &weights]), "is a file, not a run directory"),
        (
            ["eval", "--model", "resnet20", "--weights", t.tmp.path().to_str().unwrap(), "--data", &t.data]
                .map(String::from)
                .to_vec(),
            "is a directory, not a safetensors file",
        ),
        // a normalization that makes inputs infinite is refused, not reported as a top-1
        (
            ["eval", "--model", "resnet20", "--weights", &weights, "--data", &t.data, "--normalize", "0,1e-45"]
                .map(String::from)
                .to_vec(),
            "turns pixels in [0, 1] into values up to",
        ),
    ];
    // flags in the wrong range or contradicting each other are bad usage (exit 2), as flags that
    // do not parse are; a file that is not what it should be is a failure (exit 1)
    let usage = [
        pipeline(&["--beta", "1e30"]),
        pipeline(&["--rate", "abc"]),
        t.train_args(&["--steps", "0"]).iter().map(|s| s.to_string()).collect(),
        ["compare", "--paper-table", "--model", "resnet32"].map(String::from).to_vec(),
        ["eval", "--model", "resnet21", "--weights", &weights].map(String::from).to_vec(),
        ["devices", "--time-limit", "1m"].map(String::from).to_vec(),
    ];
    for args in usage {
        let (code, stderr) = sasprune_code(&args);
        assert_eq!(code, Some(2), "{args:?}: {stderr}");
    }
    let (code, stderr) = sasprune_code(&export(&two_names));
    assert_eq!(code, Some(1), "{stderr}");
    for (args, expected) in cases {
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let (ok, stdout, stderr) = sasprune(&refs);
        assert!(!ok, "{args:?} should fail:\n{stdout}");
        assert!(stderr.contains(expected), "{args:?}: expected '{expected}' in:\n{stderr}");
        assert!(!stderr.contains("panicked") && !stdout.contains("top-1"), "{args:?}:\n{stderr}{stdout}");
        assert!(!PathBuf::from(&t.run).exists(), "{args:?} started work before refusing");
    }
    // the tuner's environment variable is named with its bad value, as bad usage before any work
    let (code, stderr) = sasprune_with(
        &["eval", "--model", "resnet20", "--weights", &weights, "--data", &t.data],
        "SASPRUNE_TUNE",
        "foo",
    );
    assert!(code == Some(2) && stderr.contains("SASPRUNE_TUNE=foo: tuning mode 'foo' is not one of"), "{stderr}");
    // data paths that are not what they should be say what they are
    let (ok, _, stderr) = sasprune(&["eval", "--model", "resnet20", "--weights", &weights, "--data", &weights]);
    assert!(!ok && stderr.contains("is a file, not a directory"), "{stderr}");
    let odd = t.tmp.path().join("odd");
    common::write_fake_cifar(&odd, 8, 0);
    let test_batch = odd.join("cifar-10-batches-bin/test_batch.bin");
    std::fs::remove_file(&test_batch).unwrap();
    std::fs::create_dir(&test_batch).unwrap();
    let (ok, _, stderr) =
        sasprune(&["eval", "--model", "resnet20", "--weights", &weights, "--data", odd.to_str().unwrap()]);
    assert!(!ok && stderr.contains("test_batch.bin is a directory, not a batch file"), "{stderr}");
    // paths that are not UTF-8 (legal on Linux): a clear error, never a panic
    let bad_name = std::ffi::OsStr::from_bytes(b"w\xff.safetensors");
    let out = Command::new(env!("CARGO_BIN_EXE_sasprune"))
        .args(["eval", "--model", "resnet20", "--data", &t.data, "--weights"])
        .arg(bad_name)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("No such file") && !stderr.contains("panicked"), "{stderr}");
    let out = Command::new(env!("CARGO_BIN_EXE_sasprune"))
        .args(["--model", "resnet20", "--rate", "3x", "--data", &t.data, "--out", &t.run, "--weights"])
        .arg(t.tmp.path().join(bad_name))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && !stderr.contains("panicked"), "{stderr}");
    // a finished training run whose state file is gone is not silently retrained from step 0
    let (ok, stdout, stderr) = sasprune(&t.train_args(&["--steps", "2", "--lr", "0.01"]));
    assert!(ok, "{stdout}{stderr}");
    let run = PathBuf::from(&t.run);
    std::fs::remove_file(run.join("train_state.safetensors")).unwrap();
    let metrics = std::fs::read(run.join("metrics.csv")).unwrap();
    let (ok, _, stderr) = sasprune(&["train", "--resume", &t.run, "--steps", "4"]);
    assert!(!ok && stderr.contains("train_state.safetensors is missing") && stderr.contains("--out"), "{stderr}");
    assert_eq!(std::fs::read(run.join("metrics.csv")).unwrap(), metrics, "metrics.csv was touched");
}

/// A failure at the first checkpoint says nothing was saved (and the resume starts over), instead
/// of claiming the work was kept.
#[test]
fn a_failure_before_any_checkpoint_says_nothing_was_saved() {
    let t = TinyRun::new("cli-first-save");
    let args = t.train_args(&["--steps", "2", "--save-every", "1", "--lr", "0.01"]);
    let (code, stderr) = sasprune_with(&args, "SASPRUNE_FAULT_WRITE", "train_state@1");
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("no checkpoint yet (the run starts over from step 0)"), "{stderr}");
    // and so it does
    let (ok, stdout, stderr) = sasprune(&["train", "--resume", &t.run]);
    assert!(ok && stdout.contains("trained 2 steps") && !stderr.contains("resuming"), "{stdout}{stderr}");
}

/// `--weights <(cat file)`: a pipe can be read once, and the pipeline reads its weights once
/// (checked, then handed to the dense phase) instead of failing on a second read.
#[test]
fn pipeline_weights_from_a_pipe_are_read_once() {
    let t = TinyRun::new("cli-pipe");
    let weights = t.weights(10);
    let fifo = t.tmp.path().join("weights.fifo");
    assert!(Command::new("mkfifo").arg(&fifo).status().unwrap().success());
    let (fifo_w, bytes) = (fifo.clone(), std::fs::read(&weights).unwrap());
    // one writer, once: a second read would wait for a writer that never comes (the test's
    // deadline below turns that into a failure instead of a hang)
    let writer = std::thread::spawn(move || std::fs::write(&fifo_w, bytes));
    let fifo_s = fifo.display().to_string();
    let quick: Vec<&str> = "--schedule quick --outer 1 --inner 1 --k0 1 --k-avg 1 --batch 8 --retrain-epochs 1 \
                            --retrain-batch 8 --subset 16 --eval-limit 8"
        .split_whitespace()
        .collect();
    let args = t.pipeline_args(&fifo_s, &quick);
    let mut child = Command::new(env!("CARGO_BIN_EXE_sasprune"))
        .args(&args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(900);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("the pipeline waited for a second read of its --weights pipe");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    assert!(status.success(), "{stderr}");
    writer.join().unwrap().unwrap();
    assert!(PathBuf::from(&t.run).join("report.json").exists());
}

/// A user's whole filter-pruning path on the command line: the pipeline writes
/// compact.safetensors, and eval, export and bench --compact take it as it is.
#[test]
fn filter_pruning_from_the_command_line_gives_a_compact_model_that_eval_export_and_bench_take() {
    let t = TinyRun::new("cli-filter");
    let weights = t.weights(10);
    let quick: Vec<&str> = "--structure filter --rate 1.5x --schedule quick --outer 1 --inner 1 --k0 1 --k-avg 1 \
                            --batch 8 --retrain-epochs 1 --retrain-batch 8 --subset 16 --eval-limit 8"
        .split_whitespace()
        .collect();
    let args: Vec<&str> = ["--model", "resnet20", "--data", &t.data, "--out", &t.run, "--weights", &weights]
        .into_iter()
        .chain(quick)
        .collect();
    let (ok, stdout, stderr) = sasprune(&args);
    assert!(ok, "{stdout}\n{stderr}");
    assert!(stdout.contains("structure filter | multiply-adds per image: dense 40.55 M"), "{stdout}");
    assert!(stdout.contains("compact model: compact.safetensors, channel-set widths"), "{stdout}");
    let compact = PathBuf::from(&t.run).join("compact.safetensors").display().to_string();
    let pruned = PathBuf::from(&t.run).join("pruned.safetensors").display().to_string();
    let eval = |w: &str| {
        let (ok, stdout, stderr) =
            sasprune(&["eval", "--model", "resnet20", "--weights", w, "--data", &t.data, "--json"]);
        assert!(ok, "{stderr}");
        let v: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
        (v["top1"].as_f64().unwrap(), v["loss"].as_f64().unwrap())
    };
    let ((t1, l1), (t2, l2)) = (eval(&pruned), eval(&compact));
    assert!(t1 == t2 && (l1 - l2).abs() <= 1e-5 * l1.abs().max(1.0), "masked {t1}% {l1}, compact {t2}% {l2}");
    let onnx = t.tmp.path().join("compact.onnx").display().to_string();
    let (ok, _, stderr) = sasprune(&["export", "--model", "resnet20", "--weights", &compact, "--out", &onnx]);
    assert!(ok && std::fs::metadata(&onnx).unwrap().len() > 0, "{stderr}");
    let jsonl = t.tmp.path().join("bench.jsonl");
    let bench = ["bench", "--quick", "--filter", "resnet20", "--compact", &compact, "--out", jsonl.to_str().unwrap()];
    let (ok, stdout, stderr) = sasprune(&bench);
    assert!(ok, "{stdout}\n{stderr}");
    let names: Vec<String> = std::fs::read_to_string(&jsonl)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["name"].as_str().unwrap().to_string())
        .collect();
    for n in ["resnet20 train step", "resnet20 eval", "resnet20-compact train step", "resnet20-compact eval"] {
        assert!(names.iter().any(|x| x.starts_with(n)), "{n} missing in {names:?}");
    }
    // a standard checkpoint is not a compact one
    let (ok, _, stderr) = sasprune(&["bench", "--quick", "--compact", &pruned, "--out", jsonl.to_str().unwrap()]);
    assert!(!ok && stderr.contains("not a compact one"), "{stderr}");
    // the compact model as a start: trained further, and pruned again (unstructured) by the pipeline
    let trained = t.tmp.path().join("train-compact").display().to_string();
    let (ok, _, stderr) = sasprune(&[
        "train",
        "--model",
        "resnet20",
        "--weights",
        &compact,
        "--data",
        &t.data,
        "--out",
        &trained,
        "--steps",
        "2",
        "--batch",
        "8",
    ]);
    assert!(ok, "{stderr}");
    let again = t.tmp.path().join("run-from-compact").display().to_string();
    let quick: Vec<&str> = "--rate 1.5x --schedule quick --outer 1 --inner 1 --k0 1 --k-avg 1 --batch 8 \
                            --retrain-epochs 1 --retrain-batch 8 --subset 16 --eval-limit 8"
        .split_whitespace()
        .collect();
    let args: Vec<&str> = ["--model", "resnet20", "--data", &t.data, "--out", &again, "--weights", &compact]
        .into_iter()
        .chain(quick)
        .collect();
    let (ok, stdout, stderr) = sasprune(&args);
    assert!(ok, "{stdout}\n{stderr}");
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(PathBuf::from(&again).join("report.json")).unwrap()).unwrap();
    let first: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(PathBuf::from(&t.run).join("report.json")).unwrap()).unwrap();
    assert_eq!(report["weights"], first["kept"], "the compact start's conv + fc weights are the first run's kept ones");
}
