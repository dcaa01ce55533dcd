//! Helpers shared by the GPU tests: deterministic random data, f32/f64 conversion, and the
//! closeness check |gpu - ref| <= atol + rtol * |ref|.
#![allow(dead_code)]

use sasprune::Tensor;

/// xorshift64* — deterministic test data without extra dependencies.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E3779B97F4A7C15) | 1)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545F4914F6CDD1D)
    }
    /// Uniform in [-1, 1).
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0
    }
    pub fn vec(&mut self, n: usize) -> Vec<f64> {
        (0..n).map(|_| self.uniform()).collect()
    }
    /// Values in [lo, hi).
    pub fn vec_in(&mut self, n: usize, lo: f64, hi: f64) -> Vec<f64> {
        (0..n).map(|_| lo + (self.uniform() + 1.0) / 2.0 * (hi - lo)).collect()
    }
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
}

/// Rounds to f32 and back, so the reference sees exactly the values the GPU sees.
pub fn f32_exact(v: &[f64]) -> Vec<f64> {
    v.iter().map(|&x| x as f32 as f64).collect()
}

pub fn tensor(v: &[f64], shape: &[usize]) -> Tensor {
    let data: Vec<f32> = v.iter().map(|&x| x as f32).collect();
    Tensor::from_slice(&data, shape).expect("upload")
}

pub fn param(v: &[f64], shape: &[usize]) -> Tensor {
    tensor(v, shape).with_grad()
}

pub fn values(t: &Tensor) -> Vec<f64> {
    t.to_vec().expect("read back").iter().map(|&x| x as f64).collect()
}

pub fn grad(t: &Tensor) -> Vec<f64> {
    values(&t.grad().expect("gradient was computed"))
}

/// Tolerances for element-wise results and for long sums (GEMM, conv, reductions).
pub const ELEMENTWISE: (f64, f64) = (1e-5, 1e-4);
pub const LONG_SUM: (f64, f64) = (1e-4, 1e-3);

#[track_caller]
#[allow(clippy::neg_cmp_op_on_partial_ord)] // `!(d <= tol)` also catches NaN
pub fn assert_close(what: &str, gpu: &[f64], reference: &[f64], (atol, rtol): (f64, f64)) {
    assert_eq!(gpu.len(), reference.len(), "{what}: lengths differ");
    assert!(reference.iter().any(|&r| r != 0.0), "{what}: the reference is all zeros; the test would prove nothing");
    let bad = gpu.iter().zip(reference).position(|(&g, &r)| !((g - r).abs() <= atol + rtol * r.abs()));
    if let Some(i) = bad {
        panic!("{what}: element {i} is {} but the reference says {} (atol {atol}, rtol {rtol})", gpu[i], reference[i]);
    }
}

/// Whether a test's inputs (CIFAR-10 in data/, the shared pretrained weights) are here. When they
/// are not, the test is skipped with a line that `cargo test` shows (written past the harness's
/// output capture), or fails when `SASPRUNE_REQUIRE_DATA=1` says they must be there (.ci/run sets
/// it after building CIFAR-10, so CI cannot pass by skipping).
pub fn inputs_present(test: &str, present: bool, missing: &str) -> bool {
    if present {
        return true;
    }
    if std::env::var("SASPRUNE_REQUIRE_DATA").is_ok_and(|v| v == "1") {
        panic!("{test}: {missing}, and SASPRUNE_REQUIRE_DATA=1 says it must be here");
    }
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "SKIPPED {test}: {missing}");
    false
}

/// A fresh directory under the system temp dir, removed when dropped.
pub struct TempDir(std::path::PathBuf);

impl TempDir {
    pub fn new(name: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("sasprune-test-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create temp dir");
        TempDir(dir)
    }

    pub fn path(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub const CIFAR_FILES: [&str; 6] = [
    "data_batch_1.bin",
    "data_batch_2.bin",
    "data_batch_3.bin",
    "data_batch_4.bin",
    "data_batch_5.bin",
    "test_batch.bin",
];

/// Pixel byte `p` (0..3072) of record `r` of file `f` in a fake CIFAR set: distinct patterns
/// per file and record, so a read from the wrong offset shows.
pub fn fake_pixel(f: usize, r: usize, p: usize) -> u8 {
    ((p * 7 + r * 31 + f * 101) % 256) as u8
}

/// Label of record `r` of file `f` when every file holds `per_file` records.
pub fn fake_label(f: usize, r: usize, per_file: usize) -> u8 {
    ((f * per_file + r) % 10) as u8
}

/// Writes `dir/cifar-10-batches-bin/` with `per_file` records in each of the six files (pixel
/// bytes offset by `salt`, so two sets can differ); returns that path.
pub fn write_fake_cifar(dir: &std::path::Path, per_file: usize, salt: u8) -> std::path::PathBuf {
    let batches = dir.join("cifar-10-batches-bin");
    std::fs::create_dir_all(&batches).expect("create batches dir");
    for (f, name) in CIFAR_FILES.iter().enumerate() {
        let mut bytes = Vec::new();
        for r in 0..per_file {
            bytes.push(fake_label(f, r, per_file));
            bytes.extend((0..3072).map(|p| fake_pixel(f, r, p).wrapping_add(salt)));
        }
        std::fs::write(batches.join(name), bytes).expect("write batch file");
    }
    batches
}

/// A small pruning pipeline through the binary: ResNet-20 at 3x on a fake CIFAR set (`data`, from
/// [`write_fake_cifar`] with 8 images per file), quick schedule cut down to 3 outer iterations of
/// 8 images and 2 retraining epochs, fixed kernel plans; every phase runs in seconds on a
/// software driver. Used by the tests that stop and resume runs.
pub fn small_pipeline_args(out: &std::path::Path, data: &std::path::Path, weights: &std::path::Path) -> Vec<String> {
    let flags = "--model resnet20 --rate 3x --schedule quick --inner 2 --outer 3 --k0 1 --k-avg 1 --batch 8 \
                 --retrain-epochs 2 --retrain-batch 8 --lr 0.01 --subset 32 --eval-limit 8 --tune off";
    let mut args: Vec<String> = flags.split_whitespace().map(String::from).collect();
    for (flag, path) in [("--data", data), ("--weights", weights), ("--out", out)] {
        args.extend([flag.to_string(), path.display().to_string()]);
    }
    args
}

/// An unstructured 6.6x plan of `model` (what SAS-ADMM's phase takes when the structure does
/// not matter to a test).
#[allow(dead_code)]
pub fn weight_plan(model: &sasprune::models::Model) -> sasprune::prune::rate::Plan {
    use sasprune::prune::rate;
    rate::plan_uniform(rate::prunable_layers(&model.store), rate::Rate::Times(6.6), true).unwrap()
}
