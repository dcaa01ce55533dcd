//! Randomized corruption of every file kind the program reads: CIFAR-10 batch files, packed
//! datasets, safetensors weights, training and ADMM state, a run directory's command.json, a
//! --layer-rates file and the kernel tuner's cache. Each kind gets seeded variants (truncation at
//! random offsets, random byte flips, header fields set to huge or negative values, wrong dtypes
//! and shapes, empty files, directories where a file is expected, appended garbage); every one
//! must be refused with a one-line error naming the file, or accepted when the corruption is
//! harmless (a flipped pixel or weight byte) — never a panic, an abort or a hang.
//!
//! SASPRUNE_FUZZ_CASES=N sets the variants per kind (default 100, what CI runs).

mod common;

use common::{Rng, TempDir};
use sasprune::checkpoint::{self, Normalize};
use sasprune::data::cifar::Cifar10;
use sasprune::data::packed::{write_packed, PackedSplit};
use sasprune::models::Model;
use sasprune::prune::admm::AdmmState;
use sasprune::prune::rate;
use sasprune::run_dir::{DataRecord, RunRecord, RunState};
use sasprune::train::{self, Progress, TrainConfig};
use sasprune::tune::Cache;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

fn cases() -> usize {
    std::env::var("SASPRUNE_FUZZ_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(100)
}

/// How a file is laid out, for the mutations that edit its header.
#[derive(Clone, Copy)]
enum Format {
    /// 8-byte little-endian header length, JSON header, data.
    Safetensors,
    /// 32-byte binary header: magic, height, width, classes, reserved, count.
    Packed,
    /// 3073-byte records: a label byte, then pixels.
    Cifar,
    /// JSON or plain text.
    Text,
}

/// One corrupted version of a file.
enum Variant {
    Bytes(Vec<u8>),
    Directory,
}

/// Variant `case` of `good`: the mutation kind cycles with the case number, its details come
/// from the seeded generator.
fn mutate(good: &[u8], format: Format, case: usize, rng: &mut Rng) -> (String, Variant) {
    let mut b = good.to_vec();
    let at = |rng: &mut Rng, n: usize| rng.below(n.max(1));
    let huge = |rng: &mut Rng| -> u64 {
        [u64::MAX, u64::MAX / 2, 1 << 40, i64::MIN as u64, (-1i64) as u64, 0, rng.next_u64()][rng.below(7)]
    };
    let what = match case % 8 {
        0 => {
            let n = at(rng, b.len());
            b.truncate(n);
            format!("truncated to {n} bytes")
        }
        1 => {
            let flips = 1 + rng.below(8);
            for _ in 0..flips {
                let i = at(rng, b.len());
                b[i] ^= 1 << rng.below(8);
            }
            format!("{flips} bits flipped")
        }
        2 => return ("empty".into(), Variant::Bytes(vec![])),
        3 => return ("a directory".into(), Variant::Directory),
        4 | 5 => match format {
            Format::Safetensors if case % 8 == 4 => {
                let v = huge(rng);
                b[..8].copy_from_slice(&v.to_le_bytes());
                format!("header length {v}")
            }
            Format::Safetensors => {
                // a weight set to NaN or ±infinity (4-byte aligned in the data area)
                let start = 8 + u64::from_le_bytes(b[..8].try_into().unwrap()) as usize;
                let i = start + 4 * rng.below((b.len() - start) / 4);
                let v = [f32::NAN, f32::INFINITY, f32::NEG_INFINITY][rng.below(3)];
                b[i..i + 4].copy_from_slice(&v.to_le_bytes());
                format!("a value at byte {i} set to {v}")
            }
            Format::Packed => {
                let (offset, width) = [(8, 4), (12, 4), (16, 4), (20, 4), (24, 8)][rng.below(5)];
                let v = huge(rng);
                b[offset..offset + width].copy_from_slice(&v.to_le_bytes()[..width]);
                format!("header field at {offset} set to {v}")
            }
            Format::Cifar => {
                let record = rng.below(b.len() / 3073);
                b[record * 3073] = 10 + rng.below(246) as u8;
                format!("label of record {record} set to {}", b[record * 3073])
            }
            _ => edit_numbers(&mut b, rng),
        },
        6 => match format {
            Format::Safetensors => edit_header_text(&mut b, rng),
            _ => edit_numbers(&mut b, rng),
        },
        _ => {
            let extra = 1 + rng.below(5000);
            let at_end = rng.below(2) == 0;
            let garbage: Vec<u8> = (0..extra).map(|_| rng.next_u64() as u8).collect();
            if at_end {
                b.extend(garbage);
            } else {
                let i = at(rng, b.len());
                b.splice(i..i, garbage);
            }
            format!("{extra} garbage bytes {}", if at_end { "appended" } else { "inserted" })
        }
    };
    (what, Variant::Bytes(b))
}

/// Replaces a run of digits somewhere in the text with a hostile number.
fn edit_numbers(b: &mut Vec<u8>, rng: &mut Rng) -> String {
    let runs: Vec<(usize, usize)> = digit_runs(b);
    if runs.is_empty() {
        b.extend(b"-1");
        return "-1 appended".into();
    }
    let (start, end) = runs[rng.below(runs.len())];
    let new = ["-1", "0", "99999999999999999999999", "1e308", "NaN", "-0.5", "4294967296", "18446744073709551615"]
        [rng.below(8)];
    b.splice(start..end, new.bytes());
    format!("a number replaced by {new}")
}

fn digit_runs(b: &[u8]) -> Vec<(usize, usize)> {
    let mut runs = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i].is_ascii_digit() {
            let s = i;
            while i < b.len() && b[i].is_ascii_digit() {
                i += 1;
            }
            runs.push((s, i));
        } else {
            i += 1;
        }
    }
    runs
}

/// Edits the JSON header of a safetensors file: a dtype, a shape or an offset, keeping the
/// header length consistent so that the edit itself is what the reader meets.
fn edit_header_text(b: &mut Vec<u8>, rng: &mut Rng) -> String {
    let n = u64::from_le_bytes(b[..8].try_into().unwrap()) as usize;
    let mut header = String::from_utf8_lossy(&b[8..8 + n]).to_string();
    let data = b[8 + n..].to_vec();
    let what = match rng.below(3) {
        0 if header.contains("\"F32\"") => {
            let to = ["F16", "BF16", "I64", "U8", "F64", "BOOL"][rng.below(6)];
            let hits: Vec<usize> = header.match_indices("\"F32\"").map(|(i, _)| i).collect();
            let i = hits[rng.below(hits.len())];
            header.replace_range(i..i + 5, &format!("\"{to}\""));
            format!("a dtype F32 -> {to}")
        }
        1 => {
            let shapes: Vec<usize> = header.match_indices("\"shape\":[").map(|(i, _)| i + 9).collect();
            let i = shapes[rng.below(shapes.len())];
            let end = i + header[i..].find(']').unwrap();
            let new = ["", "1", "0", "3,3", "4294967296,4294967296", "99999999"][rng.below(6)];
            header.replace_range(i..end, new);
            format!("a shape set to [{new}]")
        }
        _ => {
            let mut bytes = header.into_bytes();
            let what = edit_numbers(&mut bytes, rng);
            header = String::from_utf8_lossy(&bytes).to_string();
            format!("header: {what}")
        }
    };
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend(header.as_bytes());
    out.extend(data);
    *b = out;
    what
}

/// Counts of what the variants of one file kind did.
#[derive(Default, Debug)]
struct Tally {
    accepted: usize,
    refused: usize,
}

/// Writes every variant of `good` to `path`, runs `read` on it, and checks the outcome: an error
/// is one line naming `names` (the file or its directory), nothing panics, nothing takes long.
fn fuzz(
    kind: &str,
    path: &Path,
    names: &str,
    good: &[u8],
    format: Format,
    read: &mut dyn FnMut() -> Result<(), String>,
) {
    let mut rng = Rng::new(0x5eed ^ (kind.len() as u64 * 7919));
    let mut tally = Tally::default();
    // the unmodified file is accepted: the suite tests the reader, not a broken fixture
    std::fs::write(path, good).unwrap();
    if let Err(e) = read() {
        panic!("{kind}: the uncorrupted file is refused: {e}");
    }
    for case in 0..cases() {
        let (what, variant) = mutate(good, format, case, &mut rng);
        if path.is_dir() {
            std::fs::remove_dir_all(path).unwrap();
        } else {
            let _ = std::fs::remove_file(path);
        }
        match &variant {
            Variant::Bytes(b) => std::fs::write(path, b).unwrap(),
            Variant::Directory => std::fs::create_dir_all(path).unwrap(),
        }
        let start = Instant::now();
        let outcome = catch_unwind(AssertUnwindSafe(&mut *read));
        let took = start.elapsed();
        match outcome {
            Err(_) => panic!("{kind} case {case} ({what}): the reader panicked"),
            Ok(Ok(())) => tally.accepted += 1,
            Ok(Err(msg)) => {
                assert!(!msg.contains('\n'), "{kind} case {case} ({what}): a multi-line error:\n{msg}");
                assert!(msg.contains(names), "{kind} case {case} ({what}): the error does not name {names}: {msg}");
                tally.refused += 1;
            }
        }
        assert!(took < Duration::from_secs(20), "{kind} case {case} ({what}) took {took:?}");
    }
    if path.is_dir() {
        std::fs::remove_dir_all(path).unwrap();
    }
    std::fs::write(path, good).unwrap();
    // written past the test harness's output capture, so that `cargo test` shows it
    use std::io::Write;
    let _ = writeln!(
        std::io::stderr(),
        "corruption: {kind}: {} cases, {} refused with a message naming the file, {} accepted (harmless), 0 panics",
        cases(),
        tally.refused,
        tally.accepted
    );
    assert!(tally.refused > cases() / 3, "{kind}: only {} of {} variants were refused", tally.refused, cases());
}

fn text(e: impl std::fmt::Display) -> String {
    e.to_string()
}

#[test]
fn cifar_batch_files() {
    let tmp = TempDir::new("fuzz-cifar");
    let batches = common::write_fake_cifar(tmp.path(), 4, 0);
    let path = batches.join("data_batch_3.bin");
    let good = std::fs::read(&path).unwrap();
    let dir = tmp.path().to_path_buf();
    fuzz("CIFAR-10 batch file", &path, "data_batch_3.bin", &good, Format::Cifar, &mut || {
        Cifar10::open(&dir).map(drop).map_err(text)
    });
}

#[test]
fn packed_datasets() {
    let tmp = TempDir::new("fuzz-packed");
    let path = tmp.path().join("train.pack");
    let samples: Vec<(u32, Vec<u8>)> =
        (0..6).map(|i| (i % 3, (0..3 * 5 * 7).map(|p| (p * 3 + i) as u8).collect())).collect();
    write_packed(&path, 5, 7, 3, samples).unwrap();
    let good = std::fs::read(&path).unwrap();
    let p = path.clone();
    fuzz("packed dataset", &path, "train.pack", &good, Format::Packed, &mut || {
        PackedSplit::open(&p).map(drop).map_err(text)
    });
}

#[test]
fn safetensors_weights_training_state_and_admm_state() {
    let tmp = TempDir::new("fuzz-safetensors");
    let mut model = Model::build("resnet20", 10, 1).unwrap();
    let norm = Normalize::CIFAR;
    // weights, as `eval --weights` and the pipeline's `--weights` read them
    let weights = tmp.path().join("weights.safetensors");
    checkpoint::save_model(&model, &weights, norm, &[]).unwrap();
    let good = std::fs::read(&weights).unwrap();
    let w = weights.clone();
    let mut target = Model::build("resnet20", 10, 2).unwrap();
    fuzz("safetensors weights", &weights, "weights.safetensors", &good, Format::Safetensors, &mut || {
        checkpoint::load_model(&mut target, &w).map_err(text)?;
        // accepted means harmless: a flipped bit that made a weight NaN or infinite is not
        let dict = target.store.state_dict().unwrap();
        if dict.values().any(|(_, v)| v.iter().any(|x| !x.is_finite())) {
            return Err("DEFECT: weights with non-finite values were accepted".into());
        }
        if dict.iter().any(|(name, (_, v))| name.ends_with("running_var") && v.iter().any(|x| *x + 1e-5 <= 0.0)) {
            return Err("DEFECT: a running variance that evaluates to NaN was accepted".into());
        }
        Ok(())
    });
    // training state (`train --resume`)
    let run = tmp.path().join("run");
    std::fs::create_dir_all(&run).unwrap();
    let cfg = TrainConfig { batch: 8, ..TrainConfig::cifar_default() };
    train::save_state(&model, &run, norm, Progress { step: 3 }, &cfg).unwrap();
    let state = run.join(train::STATE_FILE);
    let good = std::fs::read(&state).unwrap();
    let r = run.clone();
    fuzz("training state", &state, train::STATE_FILE, &good, Format::Safetensors, &mut || {
        train::load_state(&mut target, &r, &cfg).map(drop).map_err(text)
    });
    // ADMM state (the pipeline's --resume)
    let admm = AdmmState::start(&model).unwrap();
    admm.save(&model, &run, norm, "sas-admm").unwrap();
    let state = run.join("admm_state.safetensors");
    let good = std::fs::read(&state).unwrap();
    fuzz("ADMM state", &state, "admm_state.safetensors", &good, Format::Safetensors, &mut || match AdmmState::load(
        &mut model, &r, "sas-admm",
    ) {
        Ok(Some(_)) => Ok(()),
        Ok(None) => Err("admm_state.safetensors: not found".into()),
        Err(e) => Err(text(e)),
    });
}

#[test]
fn run_records_layer_rates_and_the_tuner_cache() {
    let tmp = TempDir::new("fuzz-text");
    // a run directory's command.json
    let data = tmp.path().join("cifar");
    let cifar = Cifar10::open(&data_dir(&data)).unwrap();
    let args: Vec<String> =
        ["--model", "resnet20", "--epochs", "3", "--data", "x y/\"quoted\""].map(String::from).to_vec();
    let record = RunRecord::new("train", args, DataRecord::of(&cifar.train, &cifar.test));
    let run = tmp.path().join("run");
    std::fs::create_dir_all(&run).unwrap();
    record.save(&run).unwrap();
    let path = run.join("command.json");
    let good = std::fs::read(&path).unwrap();
    let r = run.clone();
    fuzz("run record", &path, "command.json", &good, Format::Text, &mut || {
        let back = RunRecord::load(&r, "train").map_err(text)?;
        // a record that parses must still describe a run; a resumed run re-parses its flags
        if back.args.is_empty() {
            return Err(format!("{}: no flags", r.join("command.json").display()));
        }
        Ok(())
    });
    // a --layer-rates file
    let model = Model::build("resnet20", 10, 0).unwrap();
    let path = tmp.path().join("rates.txt");
    let good =
        b"# per-layer pruned percentages\nconv1 50\nlayer1.0.conv1 80%\nlayer3.2.conv2: 0.9\nlinear 20\n".to_vec();
    let p = path.clone();
    fuzz("layer-rates file", &path, "rates.txt", &good, Format::Text, &mut || {
        rate::plan_from_file(rate::prunable_layers(&model.store), &p).map(drop).map_err(text)
    });
    // a pipeline run's run_state.txt: what a resumed run skips and reports
    let run_state = tmp.path().join("state");
    std::fs::create_dir_all(&run_state).unwrap();
    let mut state = RunState::default();
    for (key, value) in [("dense.top1", 91.25), ("dense.done", 1.0), ("admm.seconds", 123.456789), ("admm.done", 1.0)] {
        state.set(&run_state, key, value).unwrap();
    }
    let path = run_state.join(RunState::FILE);
    let good = std::fs::read(&path).unwrap();
    let dir = run_state.clone();
    // a line changed into another valid one (a digit, a dropped line) cannot be told apart
    fuzz("run state", &path, RunState::FILE, &good, Format::Text, &mut || RunState::load(&dir).map(drop).map_err(text));
    assert_eq!(RunState::load(&dir).unwrap(), state, "run_state.txt round-trips exactly");
    // and a run never writes what it could not read back
    for (key, value) in [("admm.top1", f64::NAN), ("admm.top1", f64::INFINITY), ("admm.speed", 1.0)] {
        let e = RunState::default().set(&dir, key, value).unwrap_err().to_string();
        assert!(e.contains(RunState::FILE) && e.contains(key), "{e}");
    }
    assert_eq!(RunState::load(&dir).unwrap(), state, "a refused value leaves the file as it was");
    // the tuner's cache: never fatal; a bad one is an empty cache and a note naming it
    let path = tmp.path().join("tune.json");
    let mut cache = Cache::default();
    let choice = sasprune::tune::Choice { tile: "g64".into(), splits: 4, seconds: 1e-4 };
    cache.adapters.entry("GPU | Vulkan | 1 | sasprune 0".into()).or_default().insert("k 1x2x3".into(), choice);
    let why = "a run ended while the tuner timed it for k 4x5x6".to_string();
    cache.left_out.entry("GPU | Vulkan | 1 | sasprune 0".into()).or_default().insert("c16q".into(), why);
    cache.save(&path).unwrap();
    let good = std::fs::read(&path).unwrap();
    let p = path.clone();
    fuzz("tuner cache", &path, "tune.json", &good, Format::Text, &mut || match Cache::load(&p) {
        (_, Some(note)) => Err(note),
        (c, None) if c.adapters.len() <= 1 => Ok(()),
        (c, None) => Err(format!("tune.json: {} adapters from one", c.adapters.len())),
    });
}

/// A fake CIFAR-10 set in `dir`, for the run record's fingerprint.
fn data_dir(dir: &Path) -> PathBuf {
    common::write_fake_cifar(dir, 2, 0);
    dir.to_path_buf()
}

/// The binary itself: corrupt inputs end in exit code 1 and one `error:` line naming the file.
#[test]
fn the_binary_exits_with_one_line_naming_the_file() {
    let tmp = TempDir::new("fuzz-binary");
    let data = tmp.path().join("cifar");
    let batches = common::write_fake_cifar(&data, 2, 0);
    let weights = tmp.path().join("w.safetensors");
    let model = Model::build("resnet20", 10, 1).unwrap();
    checkpoint::save_model(&model, &weights, Normalize::CIFAR, &[]).unwrap();
    let good = std::fs::read(&weights).unwrap();
    let mut rng = Rng::new(9);
    let run = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_sasprune")).args(args).output().unwrap();
        (out.status.code(), String::from_utf8_lossy(&out.stderr).to_string())
    };
    let (w, d) = (weights.to_str().unwrap(), data.to_str().unwrap());
    for case in [0, 2, 3, 4, 6] {
        let (what, variant) = mutate(&good, Format::Safetensors, case, &mut rng);
        let _ = std::fs::remove_file(&weights);
        let _ = std::fs::remove_dir_all(&weights);
        match variant {
            Variant::Bytes(b) => std::fs::write(&weights, b).unwrap(),
            Variant::Directory => std::fs::create_dir_all(&weights).unwrap(),
        }
        let (code, stderr) = run(&["eval", "--model", "resnet20", "--weights", w, "--data", d]);
        let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
        assert_eq!(code, Some(1), "weights {what}: {stderr}");
        assert!(errors.len() == 1 && errors[0].contains("w.safetensors"), "weights {what}: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
    let file = batches.join("test_batch.bin");
    let good = std::fs::read(&file).unwrap();
    let _ = std::fs::remove_dir_all(&weights);
    checkpoint::save_model(&model, &weights, Normalize::CIFAR, &[]).unwrap();
    for case in [0, 2, 4] {
        let (what, variant) = mutate(&good, Format::Cifar, case, &mut rng);
        let Variant::Bytes(b) = variant else { unreachable!() };
        std::fs::write(&file, b).unwrap();
        let (code, stderr) = run(&["eval", "--model", "resnet20", "--weights", w, "--data", d]);
        assert_eq!(code, Some(1), "test_batch.bin {what}: {stderr}");
        let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
        assert!(errors.len() == 1 && errors[0].contains("test_batch.bin"), "test_batch.bin {what}: {stderr}");
    }
}
