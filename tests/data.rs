//! Dataset tests on files each test writes into its own temporary directory: the CIFAR-10 binary
//! reader and its validation, the packed format, and batch assembly (normalization, padding,
//! random crops and flips) checked against direct computations.

mod common;

use rand::rngs::StdRng;
use rand::SeedableRng;
use sasprune::data::cifar::Cifar10;
use sasprune::data::packed::{write_packed, PackedSplit};
use sasprune::data::{fill_batch, BatchSpec, Dataset, CIFAR_MEAN, CIFAR_STD};

use common::{fake_label, fake_pixel, write_fake_cifar, TempDir};
use std::path::Path;

/// Records per file in this file's fake CIFAR sets.
const RECORDS_PER_FILE: usize = 2;

fn error_text(result: sasprune::Result<impl std::fmt::Debug>) -> String {
    match result {
        Ok(value) => panic!("expected an error, got {value:?}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn cifar_reads_every_record_exactly() {
    let tmp = TempDir::new("cifar-read");
    let batches = write_fake_cifar(tmp.path(), RECORDS_PER_FILE, 0);
    // Both the parent directory and the batches directory itself are accepted.
    for dir in [tmp.path(), batches.as_path()] {
        let cifar = Cifar10::open(dir).expect("open fake CIFAR");
        assert_eq!(cifar.train.len(), 5 * RECORDS_PER_FILE);
        assert_eq!(cifar.test.len(), RECORDS_PER_FILE);
        for split in [&cifar.train, &cifar.test] {
            assert_eq!(split.classes(), 10);
            assert_eq!(split.image_size(), (3, 32, 32));
        }
        for i in 0..cifar.train.len() {
            let (f, r) = (i / RECORDS_PER_FILE, i % RECORDS_PER_FILE);
            let (pixels, label) = cifar.train.sample(i);
            assert_eq!(label, fake_label(f, r, RECORDS_PER_FILE) as u32, "train label {i}");
            let expected: Vec<u8> = (0..3072).map(|p| fake_pixel(f, r, p)).collect();
            assert_eq!(pixels, &expected[..], "train pixels {i}");
        }
        for r in 0..RECORDS_PER_FILE {
            let (pixels, label) = cifar.test.sample(r);
            assert_eq!(label, fake_label(5, r, RECORDS_PER_FILE) as u32);
            let expected: Vec<u8> = (0..3072).map(|p| fake_pixel(5, r, p)).collect();
            assert_eq!(pixels, &expected[..]);
        }
    }
    let located = Cifar10::locate(Some(tmp.path())).expect("locate with a directory");
    assert_eq!((located.train.len(), located.test.len()), (10, 2));
}

#[test]
fn cifar_missing_directory_says_how_to_get_the_data() {
    let tmp = TempDir::new("cifar-nodir");
    let missing = tmp.path().join("nowhere");
    let msg = error_text(Cifar10::open(&missing));
    assert!(msg.contains(&missing.display().to_string()), "{msg}");
    assert!(msg.contains("https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz"), "{msg}");
    assert!(msg.contains("--data"), "{msg}");

    // An existing directory without the batches is reported the same way.
    let msg = error_text(Cifar10::open(tmp.path()));
    assert!(msg.contains("cifar-10-batches-bin"), "{msg}");
    assert!(msg.contains("cifar-10-binary.tar.gz"), "{msg}");
}

#[test]
fn cifar_missing_file_is_named() {
    let tmp = TempDir::new("cifar-nofile");
    let batches = write_fake_cifar(tmp.path(), RECORDS_PER_FILE, 0);
    let gone = batches.join("data_batch_4.bin");
    std::fs::remove_file(&gone).expect("remove a batch");
    let msg = error_text(Cifar10::open(tmp.path()));
    assert!(msg.contains(&gone.display().to_string()), "{msg}");
    assert!(msg.contains("missing"), "{msg}");
    assert!(msg.contains("cifar-10-binary.tar.gz"), "{msg}");
}

#[test]
fn cifar_bad_sizes_are_named() {
    let tmp = TempDir::new("cifar-size");
    let batches = write_fake_cifar(tmp.path(), RECORDS_PER_FILE, 0);
    let victim = batches.join("test_batch.bin");
    // One byte short of two records, one byte over, and empty: all rejected.
    for len in [2 * 3073 - 1, 2 * 3073 + 1, 0] {
        let bytes = vec![1u8; len];
        std::fs::write(&victim, bytes).expect("rewrite test batch");
        let msg = error_text(Cifar10::open(tmp.path()));
        assert!(msg.contains(&victim.display().to_string()), "{msg}");
        assert!(msg.contains(&format!("size {len} bytes")), "{msg}");
        assert!(msg.contains("3073"), "{msg}");
    }
}

#[test]
fn cifar_bad_label_is_named() {
    let tmp = TempDir::new("cifar-label");
    let batches = write_fake_cifar(tmp.path(), RECORDS_PER_FILE, 0);
    let victim = batches.join("data_batch_2.bin");
    let mut bytes = std::fs::read(&victim).expect("read batch");
    bytes[3073] = 10; // label of record 1
    std::fs::write(&victim, bytes).expect("rewrite batch");
    let msg = error_text(Cifar10::open(tmp.path()));
    assert!(msg.contains(&victim.display().to_string()), "{msg}");
    assert!(msg.contains("record 1"), "{msg}");
    assert!(msg.contains("label 10"), "{msg}");
}

/// An in-memory dataset for batch tests: planar RGB images of one size.
struct Images {
    h: usize,
    w: usize,
    samples: Vec<(Vec<u8>, u32)>,
}

impl Dataset for Images {
    fn len(&self) -> usize {
        self.samples.len()
    }
    fn classes(&self) -> usize {
        10
    }
    fn image_size(&self) -> (usize, usize, usize) {
        (3, self.h, self.w)
    }
    fn sample(&self, i: usize) -> (&[u8], u32) {
        (&self.samples[i].0, self.samples[i].1)
    }
}

/// `n` images of h x w whose bytes are all in 1..=255, so padding (0) is distinguishable.
fn nonzero_images(n: usize, h: usize, w: usize) -> Images {
    let samples = (0..n)
        .map(|i| {
            let pixels = (0..3 * h * w).map(|p| (1 + (p * 13 + i * 57) % 255) as u8).collect();
            (pixels, (i % 10) as u32)
        })
        .collect();
    Images { h, w, samples }
}

fn normalize(x: u8, c: usize, mean: [f32; 3], std: [f32; 3]) -> f32 {
    (x as f32 / 255.0 - mean[c]) / std[c]
}

/// The output torchvision would give for crop offset (oy, ox) of the image padded by `pad`,
/// optionally flipped: built by literally padding the bytes with zeros, cropping, mirroring,
/// and normalizing.
fn reference_crop(
    pixels: &[u8],
    (h, w, pad): (usize, usize, usize),
    (out_h, out_w): (usize, usize),
    (oy, ox, flip): (usize, usize, bool),
) -> Vec<f32> {
    let (ph, pw) = (h + 2 * pad, w + 2 * pad);
    let mut padded = vec![0u8; 3 * ph * pw];
    for c in 0..3 {
        for y in 0..h {
            for x in 0..w {
                padded[(c * ph + y + pad) * pw + x + pad] = pixels[(c * h + y) * w + x];
            }
        }
    }
    let mut out = Vec::with_capacity(3 * out_h * out_w);
    for c in 0..3 {
        for y in 0..out_h {
            for x in 0..out_w {
                let cx = if flip { out_w - 1 - x } else { x };
                let byte = padded[(c * ph + oy + y) * pw + ox + cx];
                out.push(normalize(byte, c, CIFAR_MEAN, CIFAR_STD));
            }
        }
    }
    out
}

#[test]
fn eval_batch_is_exactly_normalized_bytes() {
    let ds = nonzero_images(5, 32, 32);
    let spec = BatchSpec::eval(32, 32, CIFAR_MEAN, CIFAR_STD);
    let indices = [3, 0, 4, 4];
    let (mut images, mut labels) = (Vec::new(), Vec::new());
    fill_batch(&ds, &indices, &spec, &mut StdRng::seed_from_u64(1), &mut images, &mut labels);
    assert_eq!(images.len(), indices.len() * 3 * 32 * 32);
    assert_eq!(labels, vec![3.0, 0.0, 4.0, 4.0]);
    for (b, &i) in indices.iter().enumerate() {
        let (pixels, _) = ds.sample(i);
        for (p, &byte) in pixels.iter().enumerate() {
            let expected = normalize(byte, p / 1024, CIFAR_MEAN, CIFAR_STD);
            assert_eq!(images[b * 3072 + p], expected, "image {b} value {p}");
        }
    }
}

#[test]
fn eval_batch_center_crops_larger_images() {
    // 9x12 stored, 4x6 out: offsets (9-4)/2 = 2 rows and (12-6)/2 = 3 columns.
    let ds = nonzero_images(2, 9, 12);
    let spec = BatchSpec::eval(4, 6, CIFAR_MEAN, CIFAR_STD);
    let (mut images, mut labels) = (Vec::new(), Vec::new());
    fill_batch(&ds, &[1, 0], &spec, &mut StdRng::seed_from_u64(1), &mut images, &mut labels);
    assert_eq!(images.len(), 2 * 3 * 4 * 6);
    for (b, i) in [1, 0].into_iter().enumerate() {
        let expected = reference_crop(ds.sample(i).0, (9, 12, 0), (4, 6), (2, 3, false));
        assert_eq!(&images[b * 72..(b + 1) * 72], &expected[..], "image {b}");
    }
}

/// Finds which (oy, ox, flip) candidate `out` equals; panics if none does.
fn identify_crop(
    out: &[f32],
    pixels: &[u8],
    geometry: (usize, usize, usize),
    out_size: (usize, usize),
) -> (usize, usize, bool) {
    let (h, w, pad) = geometry;
    let mut found = None;
    for oy in 0..=h + 2 * pad - out_size.0 {
        for ox in 0..=w + 2 * pad - out_size.1 {
            for flip in [false, true] {
                if reference_crop(pixels, geometry, out_size, (oy, ox, flip)) == out {
                    assert!(found.is_none(), "two candidate crops match");
                    found = Some((oy, ox, flip));
                }
            }
        }
    }
    found.expect("output is none of the (2*pad+1)^2*2 candidate crops")
}

#[test]
fn train_batch_is_a_padded_crop_with_flip() {
    let ds = nonzero_images(8, 32, 32);
    let spec = BatchSpec::cifar_train(CIFAR_MEAN, CIFAR_STD);
    assert_eq!((spec.out_h, spec.out_w, spec.pad, spec.random_crop, spec.flip), (32, 32, 4, true, true));
    let pad_values: Vec<f32> = (0..3).map(|c| (0.0 - CIFAR_MEAN[c]) / CIFAR_STD[c]).collect();

    let mut rng = StdRng::seed_from_u64(7);
    let (mut images, mut labels) = (Vec::new(), Vec::new());
    let (mut seen_y, mut seen_x, mut seen_flip) = ([0usize; 9], [0usize; 9], [0usize; 2]);
    let indices: Vec<usize> = (0..40).map(|k| k % ds.len()).collect();
    for _ in 0..10 {
        fill_batch(&ds, &indices, &spec, &mut rng, &mut images, &mut labels);
        for (b, &i) in indices.iter().enumerate() {
            let out = &images[b * 3072..(b + 1) * 3072];
            let (oy, ox, flip) = identify_crop(out, ds.sample(i).0, (32, 32, 4), (32, 32));
            assert_eq!(labels[b], (i % 10) as f32);
            seen_y[oy] += 1;
            seen_x[ox] += 1;
            seen_flip[flip as usize] += 1;

            // Padded positions hold exactly (0 - mean) / std and nothing else does (all stored
            // bytes are nonzero). Crop column j is padded column ox + j; flipping moves it to
            // output column 31 - j.
            for c in 0..3 {
                for y in 0..32 {
                    for x in 0..32 {
                        let j = if flip { 31 - x } else { x };
                        let in_pad = !(4..36).contains(&(oy + y)) || !(4..36).contains(&(ox + j));
                        let value = out[(c * 32 + y) * 32 + x];
                        assert_eq!(value == pad_values[c], in_pad, "c {c} y {y} x {x}");
                    }
                }
            }
        }
    }
    // 400 draws: every offset 0..=8 on both axes and both flips occur, about evenly.
    for count in seen_y.iter().chain(&seen_x) {
        assert!((20..=70).contains(count), "offset counts {seen_y:?} {seen_x:?}");
    }
    assert!((150..=250).contains(&seen_flip[1]), "flip counts {seen_flip:?}");
}

#[test]
fn train_crop_of_a_larger_image_with_padding() {
    // Stored 6x5, pad 2, out 4x3: offsets 0..=6 rows, 0..=6 columns.
    let ds = nonzero_images(3, 6, 5);
    let spec =
        BatchSpec { out_h: 4, out_w: 3, pad: 2, random_crop: true, flip: true, mean: CIFAR_MEAN, std: CIFAR_STD };
    let mut rng = StdRng::seed_from_u64(11);
    let (mut images, mut labels) = (Vec::new(), Vec::new());
    let mut seen = std::collections::HashSet::new();
    let indices: Vec<usize> = (0..300).map(|k| k % 3).collect();
    fill_batch(&ds, &indices, &spec, &mut rng, &mut images, &mut labels);
    for (b, &i) in indices.iter().enumerate() {
        let out = &images[b * 36..(b + 1) * 36];
        seen.insert(identify_crop(out, ds.sample(i).0, (6, 5, 2), (4, 3)));
    }
    // 7 * 7 * 2 = 98 candidates; 300 draws reach nearly all of them.
    assert!(seen.len() >= 90, "only {} distinct crops", seen.len());
}

#[test]
fn same_seed_gives_the_same_batch() {
    let ds = nonzero_images(6, 32, 32);
    let spec = BatchSpec::cifar_train(CIFAR_MEAN, CIFAR_STD);
    let indices = [5, 1, 2, 2, 0, 3, 4, 1];
    let batch = |seed: u64| {
        let (mut images, mut labels) = (Vec::new(), Vec::new());
        fill_batch(&ds, &indices, &spec, &mut StdRng::seed_from_u64(seed), &mut images, &mut labels);
        (images, labels)
    };
    let (a, la) = batch(42);
    let (b, lb) = batch(42);
    let (c, _) = batch(43);
    assert_eq!(a, b);
    assert_eq!(la, lb);
    assert_ne!(a, c, "different seeds should give different crops");
}

#[test]
fn batch_buffers_are_reused() {
    let ds = nonzero_images(4, 32, 32);
    let spec = BatchSpec::eval(32, 32, CIFAR_MEAN, CIFAR_STD);
    let mut rng = StdRng::seed_from_u64(0);
    let mut images = Vec::with_capacity(4 * 3072);
    let mut labels = Vec::with_capacity(4);
    let (image_ptr, label_ptr) = (images.as_ptr(), labels.as_ptr());
    fill_batch(&ds, &[0, 1, 2, 3], &spec, &mut rng, &mut images, &mut labels);
    assert_eq!((images.len(), labels.len()), (4 * 3072, 4));
    // A smaller batch shrinks the vectors, keeping the allocation.
    fill_batch(&ds, &[2], &spec, &mut rng, &mut images, &mut labels);
    assert_eq!((images.len(), labels.len()), (3072, 1));
    assert_eq!(labels, vec![2.0]);
    assert_eq!(images[5], normalize(ds.sample(2).0[5], 0, CIFAR_MEAN, CIFAR_STD));
    fill_batch(&ds, &[3, 2, 1, 0], &spec, &mut rng, &mut images, &mut labels);
    assert_eq!((images.as_ptr(), labels.as_ptr()), (image_ptr, label_ptr));
    assert_eq!(labels, vec![3.0, 2.0, 1.0, 0.0]);
}

fn packed_samples(n: usize, h: usize, w: usize, classes: u32) -> Vec<(u32, Vec<u8>)> {
    (0..n)
        .map(|i| {
            let pixels = (0..3 * h * w).map(|p| ((p * 3 + i * 17) % 256) as u8).collect();
            ((i as u32 * 7) % classes, pixels)
        })
        .collect()
}

#[test]
fn packed_round_trip() {
    let tmp = TempDir::new("packed-round-trip");
    let path = tmp.path().join("train.pack");
    let samples = packed_samples(5, 7, 9, 4);
    let written = write_packed(&path, 7, 9, 4, samples.clone()).expect("write packed");
    assert_eq!(written, 5);
    let size = std::fs::metadata(&path).expect("packed file exists").len();
    assert_eq!(size, 32 + 5 * (4 + 3 * 7 * 9));
    // No temporary file is left beside it.
    let names: Vec<_> =
        std::fs::read_dir(tmp.path()).expect("list temp dir").map(|e| e.expect("dir entry").file_name()).collect();
    assert_eq!(names, vec![std::ffi::OsString::from("train.pack")]);

    let split = PackedSplit::open(&path).expect("open packed");
    assert_eq!(split.len(), 5);
    assert_eq!(split.classes(), 4);
    assert_eq!(split.image_size(), (3, 7, 9));
    for (i, (label, pixels)) in samples.iter().enumerate() {
        let (got_pixels, got_label) = split.sample(i);
        assert_eq!(got_label, *label, "label {i}");
        assert_eq!(got_pixels, &pixels[..], "pixels {i}");
    }

    // The header is the documented layout.
    let bytes = std::fs::read(&path).expect("read packed");
    assert_eq!(&bytes[0..8], b"SASPACK1");
    assert_eq!(&bytes[8..32], &[7, 0, 0, 0, 9, 0, 0, 0, 4, 0, 0, 0, 0, 0, 0, 0, 5, 0, 0, 0, 0, 0, 0, 0]);
    assert_eq!(&bytes[32..36], &samples[0].0.to_le_bytes());
    assert_eq!(&bytes[36 + 3 * 63..40 + 3 * 63], &samples[1].0.to_le_bytes());

    // A packed split feeds fill_batch like any dataset: 9 columns center-cropped to 5.
    let spec = BatchSpec::eval(7, 5, CIFAR_MEAN, CIFAR_STD);
    let (mut images, mut labels) = (Vec::new(), Vec::new());
    fill_batch(&split, &[4], &spec, &mut StdRng::seed_from_u64(0), &mut images, &mut labels);
    assert_eq!(images, reference_crop(&samples[4].1, (7, 9, 0), (7, 5), (0, 2, false)));
    assert_eq!(labels, vec![samples[4].0 as f32]);
}

#[test]
fn packed_validation_errors_name_the_file() {
    let tmp = TempDir::new("packed-errors");
    let good = tmp.path().join("good.pack");
    write_packed(&good, 4, 4, 3, packed_samples(3, 4, 4, 3)).expect("write packed");
    let bytes = std::fs::read(&good).expect("read packed");
    let record = 4 + 3 * 4 * 4;

    let check = |name: &str, contents: &[u8], expected: &[&str]| {
        let path = tmp.path().join(name);
        std::fs::write(&path, contents).expect("write corrupt file");
        let msg = error_text(PackedSplit::open(&path));
        assert!(msg.contains(&path.display().to_string()), "{msg}");
        for part in expected {
            assert!(msg.contains(part), "{msg} lacks {part}");
        }
    };

    let mut bad_magic = bytes.clone();
    bad_magic[0..8].copy_from_slice(b"SASPACK2");
    check("magic.pack", &bad_magic, &["SASPACK1"]);
    check("truncated.pack", &bytes[..bytes.len() - 1], &["size is", "expected"]);
    check("short.pack", &bytes[..20], &["20 bytes", "header"]);
    let mut long = bytes.clone();
    long.push(0);
    check("long.pack", &long, &[&format!("size is {}", bytes.len() + 1)]);

    let mut bad_label = bytes.clone();
    bad_label[32 + 2 * record..32 + 2 * record + 4].copy_from_slice(&3u32.to_le_bytes());
    check("label.pack", &bad_label, &["record 2", "label 3", "3 classes"]);

    let mut reserved = bytes.clone();
    reserved[20] = 1;
    check("reserved.pack", &reserved, &["reserved"]);

    let mut empty = bytes[..32].to_vec();
    empty[24..32].copy_from_slice(&0u64.to_le_bytes());
    check("empty.pack", &empty, &["no records"]);

    let missing = tmp.path().join("missing.pack");
    let msg = error_text(PackedSplit::open(&missing));
    assert!(msg.contains(&missing.display().to_string()), "{msg}");
    assert!(msg.contains("pack_imagefolder.py"), "{msg}");
}

#[test]
fn write_packed_rejects_bad_samples_and_leaves_nothing() {
    let tmp = TempDir::new("packed-write-errors");
    let path = tmp.path().join("out.pack");
    let mut samples = packed_samples(3, 2, 2, 5);
    samples[1].1.pop();
    let msg = error_text(write_packed(&path, 2, 2, 5, samples));
    assert!(msg.contains("sample 1 has 11 bytes"), "{msg}");

    let mut samples = packed_samples(3, 2, 2, 5);
    samples[2].0 = 5;
    let msg = error_text(write_packed(&path, 2, 2, 5, samples));
    assert!(msg.contains("sample 2 has label 5"), "{msg}");

    let msg = error_text(write_packed(&path, 2, 2, 5, Vec::new()));
    assert!(msg.contains("no samples"), "{msg}");
    let msg = error_text(write_packed(&path, 0, 2, 5, packed_samples(1, 0, 2, 5)));
    assert!(msg.contains("nonzero"), "{msg}");

    assert_eq!(std::fs::read_dir(tmp.path()).expect("list temp dir").count(), 0);
}

/// The copy `../shared/data/cifar10.sh data` builds, when present.
#[test]
fn real_cifar10_if_present() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("data");
    let missing = format!("{} has no cifar-10-batches-bin/ (run bash data/get-cifar10.sh)", dir.display());
    if !common::inputs_present("real_cifar10_if_present", dir.join("cifar-10-batches-bin").is_dir(), &missing) {
        return;
    }
    let cifar = Cifar10::open(&dir).expect("open CIFAR-10");
    assert_eq!(cifar.train.len(), 50_000);
    assert_eq!(cifar.test.len(), 10_000);
    // The official test split has 1,000 images per class.
    let mut counts = [0usize; 10];
    for i in 0..cifar.test.len() {
        counts[cifar.test.sample(i).1 as usize] += 1;
    }
    assert_eq!(counts, [1000; 10]);
}
