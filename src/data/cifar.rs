//! CIFAR-10 in its official binary layout, read through memory maps.
//!
//! The release `cifar-10-binary.tar.gz` unpacks to `cifar-10-batches-bin/` holding
//! `data_batch_1.bin` .. `data_batch_5.bin` (training, 10,000 images each) and `test_batch.bin`
//! (10,000 images). Each file is a plain sequence of 3,073-byte records: one label byte (0..=9,
//! see [`CLASS_NAMES`]) followed by a 32x32 image as 3,072 bytes of planar RGB (1,024 red bytes,
//! then green, then blue, each plane row-major). The files are used as they are: samples are
//! slices of the maps, so nothing is copied into memory up front.

use std::path::{Path, PathBuf};

use memmap2::Mmap;

use super::{map_file, Dataset};
use crate::{Error, Result};

/// Name of the directory the official tarball unpacks to.
pub const BATCHES_DIR: &str = "cifar-10-batches-bin";
/// Training files, in order.
pub const TRAIN_FILES: [&str; 5] =
    ["data_batch_1.bin", "data_batch_2.bin", "data_batch_3.bin", "data_batch_4.bin", "data_batch_5.bin"];
/// Test file.
pub const TEST_FILE: &str = "test_batch.bin";
/// Class names by label.
pub const CLASS_NAMES: [&str; 10] =
    ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"];
/// Official download of the binary release.
pub const DOWNLOAD_URL: &str = "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz";

const SIDE: usize = 32;
const IMAGE_BYTES: usize = 3 * SIDE * SIDE;
const RECORD_BYTES: usize = 1 + IMAGE_BYTES;
const CLASSES: usize = 10;

/// One split (train or test): the mapped files, read as one sequence of records.
pub struct CifarSplit {
    paths: Vec<PathBuf>,
    maps: Vec<Mmap>,
    /// starts[f] = index of the first record of file f; starts[files] = total record count.
    starts: Vec<usize>,
}

/// Both splits of CIFAR-10: 50,000 training and 10,000 test images in the official release.
pub struct Cifar10 {
    pub train: CifarSplit,
    pub test: CifarSplit,
}

impl Cifar10 {
    /// Opens CIFAR-10 from `dir`: the directory holding `cifar-10-batches-bin/`, or that
    /// directory itself.
    ///
    /// Validates everything before returning, so training cannot fail halfway on a bad file:
    /// every file is present, its size is a nonzero whole number of 3,073-byte records, and every
    /// label byte is in 0..=9. Errors name the file and what was expected; a missing directory or
    /// file says how to get the data.
    pub fn open(dir: &Path) -> Result<Cifar10> {
        let batches = batches_dir(dir)?;
        let train = CifarSplit::open(&batches, &TRAIN_FILES)?;
        let test = CifarSplit::open(&batches, &[TEST_FILE])?;
        Ok(Cifar10 { train, test })
    }

    /// Like [`Cifar10::open`], looking in `data/` (relative to the current directory) when no
    /// directory is given.
    pub fn locate(dir: Option<&Path>) -> Result<Cifar10> {
        Cifar10::open(dir.unwrap_or(Path::new("data")))
    }
}

/// How to get the data, for error messages about a missing directory or file.
fn how_to_get(dir: &Path) -> String {
    format!(
        "download {DOWNLOAD_URL} and unpack it into {} (so that {} exists), or pass --data DIR \
         with the directory that holds {BATCHES_DIR}/",
        dir.display(),
        dir.join(BATCHES_DIR).display()
    )
}

/// Resolves `dir` to the directory holding the batch files.
fn batches_dir(dir: &Path) -> Result<PathBuf> {
    let nested = dir.join(BATCHES_DIR);
    if nested.is_dir() {
        return Ok(nested);
    }
    let is_batches_dir = dir.file_name().is_some_and(|name| name == BATCHES_DIR)
        || dir.join(TRAIN_FILES[0]).exists()
        || dir.join(TEST_FILE).exists();
    if is_batches_dir && dir.is_dir() {
        return Ok(dir.to_path_buf());
    }
    // The hint names the directory the tarball should be unpacked into.
    let parent = if dir.file_name().is_some_and(|name| name == BATCHES_DIR) {
        dir.parent().unwrap_or(Path::new("."))
    } else {
        dir
    };
    if !dir.exists() {
        return Err(Error::invalid(format!(
            "CIFAR-10 directory {} does not exist; {}",
            dir.display(),
            how_to_get(parent)
        )));
    }
    if !dir.is_dir() {
        return Err(Error::invalid(format!(
            "--data {} is a file, not a directory: give the directory that holds {BATCHES_DIR}/ (or that \
             directory itself)",
            dir.display()
        )));
    }
    if dir.join("cifar-10-batches-py").is_dir() {
        return Err(Error::invalid(format!(
            "{} holds cifar-10-batches-py/, the Python (pickle) release of CIFAR-10; this program \
             reads the binary release: {}",
            dir.display(),
            how_to_get(parent)
        )));
    }
    Err(Error::invalid(format!(
        "{} holds no {BATCHES_DIR}/ directory and no CIFAR-10 batch files; {}",
        dir.display(),
        how_to_get(parent)
    )))
}

impl CifarSplit {
    fn open(batches: &Path, names: &[&str]) -> Result<CifarSplit> {
        let mut split = CifarSplit { paths: Vec::new(), maps: Vec::new(), starts: vec![0] };
        for name in names {
            let path = batches.join(name);
            if path.is_dir() {
                return Err(Error::invalid(format!(
                    "CIFAR-10 file {} is a directory, not a batch file of 3,073-byte records; {}",
                    path.display(),
                    how_to_get(batches.parent().unwrap_or(Path::new(".")))
                )));
            }
            let map = map_file(
                &path,
                || {
                    Error::invalid(format!(
                        "CIFAR-10 file {} is missing (expected {} and {TEST_FILE} in {}); {}",
                        path.display(),
                        TRAIN_FILES.join(", "),
                        batches.display(),
                        how_to_get(batches.parent().unwrap_or(Path::new(".")))
                    ))
                },
                |len| check_size(&path, len),
            )?;
            check_labels(&path, &map)?;
            let records = map.len() / RECORD_BYTES;
            split.starts.push(split.starts[split.starts.len() - 1] + records);
            split.paths.push(path);
            split.maps.push(map);
        }
        Ok(split)
    }

    /// The files of this split, in record order.
    pub fn paths(&self) -> &[PathBuf] {
        &self.paths
    }
}

fn check_size(path: &Path, len: u64) -> Result<()> {
    if len == 0 || !len.is_multiple_of(RECORD_BYTES as u64) {
        return Err(Error::invalid(format!(
            "CIFAR-10 file {}: size {len} bytes is not a nonzero whole number of {RECORD_BYTES}-byte \
             records (1 label byte + {IMAGE_BYTES} pixel bytes); the file is truncated or is not \
             from the binary release ({DOWNLOAD_URL})",
            path.display()
        )));
    }
    Ok(())
}

fn check_labels(path: &Path, map: &[u8]) -> Result<()> {
    for (record, bytes) in map.chunks_exact(RECORD_BYTES).enumerate() {
        if bytes[0] as usize >= CLASSES {
            return Err(Error::invalid(format!(
                "CIFAR-10 file {}: record {record} (byte offset {}) has label {}, expected 0..=9; \
                 the file is corrupt or is not from the binary release ({DOWNLOAD_URL})",
                path.display(),
                record * RECORD_BYTES,
                bytes[0]
            )));
        }
    }
    Ok(())
}

impl Dataset for CifarSplit {
    fn len(&self) -> usize {
        self.starts[self.starts.len() - 1]
    }

    fn classes(&self) -> usize {
        CLASSES
    }

    fn image_size(&self) -> (usize, usize, usize) {
        (3, SIDE, SIDE)
    }

    fn sample(&self, i: usize) -> (&[u8], u32) {
        assert!(i < self.len(), "CIFAR-10 sample {i} out of range (split has {})", self.len());
        // The file holding record i is the last one starting at or before i.
        let file = self.starts.partition_point(|&start| start <= i) - 1;
        let offset = (i - self.starts[file]) * RECORD_BYTES;
        let record = &self.maps[file][offset..offset + RECORD_BYTES];
        (&record[1..], record[0] as u32)
    }
}

impl std::fmt::Debug for CifarSplit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CifarSplit").field("paths", &self.paths).field("len", &self.len()).finish()
    }
}

impl std::fmt::Debug for Cifar10 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cifar10").field("train", &self.train).field("test", &self.test).finish()
    }
}
