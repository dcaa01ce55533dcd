//! The packed image format: one file per split of an ImageNet-style dataset, read through a
//! memory map so that opening a 250 GB training set costs no memory and no copying.
//!
//! # Layout (`SASPACK1`)
//!
//! All integers are little-endian.
//!
//! | offset | size | field                                         |
//! |-------:|-----:|-----------------------------------------------|
//! |      0 |    8 | magic, the ASCII bytes `SASPACK1`             |
//! |      8 |    4 | `u32` height of every image                   |
//! |     12 |    4 | `u32` width of every image                    |
//! |     16 |    4 | `u32` number of classes                       |
//! |     20 |    4 | `u32` reserved, 0                             |
//! |     24 |    8 | `u64` count of records                        |
//! |     32 |      | `count` records of `4 + 3*height*width` bytes |
//!
//! Each record is a `u32` label (below the class count), then the image as planar RGB bytes:
//! `height*width` red bytes, then green, then blue, each plane row-major (the channel-major layout
//! of CIFAR-10's binary release). The file size is exactly `32 + count * (4 + 3*height*width)`.
//! Records may be in any order (training draws its own permutation).
//!
//! `data/pack_imagefolder.py` writes this format from an image-folder tree (`SRC/<class>/*.jpg`,
//! classes numbered in sorted name order), resizing the shorter side to a size and center
//! cropping to a square; ImageNet is stored at 256x256, and training takes random 224x224 crops.
//! [`write_packed`] writes it from Rust.

use std::fs::File;
use std::io::{BufWriter, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use memmap2::Mmap;

use super::{map_file, Dataset};
use crate::{Error, Result};

/// The first 8 bytes of every packed file.
pub const MAGIC: [u8; 8] = *b"SASPACK1";
/// Size of the header before the first record.
pub const HEADER_BYTES: u64 = 32;

/// The fields of a packed file's header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Header {
    height: u32,
    width: u32,
    classes: u32,
    count: u64,
}

impl Header {
    fn to_bytes(self) -> [u8; HEADER_BYTES as usize] {
        let mut bytes = [0u8; HEADER_BYTES as usize];
        bytes[0..8].copy_from_slice(&MAGIC);
        bytes[8..12].copy_from_slice(&self.height.to_le_bytes());
        bytes[12..16].copy_from_slice(&self.width.to_le_bytes());
        bytes[16..20].copy_from_slice(&self.classes.to_le_bytes());
        // bytes 20..24: reserved, 0
        bytes[24..32].copy_from_slice(&self.count.to_le_bytes());
        bytes
    }
}

/// Bytes per record (label + planar RGB), or None when it overflows.
fn record_bytes(height: u32, width: u32) -> Option<u64> {
    (height as u64).checked_mul(width as u64)?.checked_mul(3)?.checked_add(4)
}

fn u32_at(bytes: &[u8], offset: usize) -> u32 {
    u32::from_le_bytes([bytes[offset], bytes[offset + 1], bytes[offset + 2], bytes[offset + 3]])
}

/// One split stored in a packed file.
pub struct PackedSplit {
    path: PathBuf,
    map: Mmap,
    height: usize,
    width: usize,
    classes: usize,
    count: usize,
    record: usize,
}

impl PackedSplit {
    /// Opens and validates a packed file: the magic, the header fields (nonzero sizes, reserved
    /// 0, at least one record), the file size (exactly header + count records) and every label
    /// (below the class count). Errors name the file and what was expected.
    pub fn open(path: &Path) -> Result<PackedSplit> {
        let bad = |what: String| Error::invalid(format!("packed dataset {}: {what}", path.display()));
        let missing = || {
            Error::invalid(format!(
                "packed dataset {} does not exist; create it with `python3 data/pack_imagefolder.py \
                 SRC_DIR {}` (see data/README.md)",
                path.display(),
                path.display()
            ))
        };
        let map = map_file(path, missing, |len| {
            if len < HEADER_BYTES {
                Err(bad(format!(
                    "{len} bytes is shorter than the {HEADER_BYTES}-byte header; the file is \
                     truncated or not a packed dataset"
                )))
            } else {
                Ok(())
            }
        })?;

        let header = read_header(&map, &bad)?;
        let record = record_bytes(header.height, header.width);
        let expected = record.and_then(|r| r.checked_mul(header.count)).and_then(|r| r.checked_add(HEADER_BYTES));
        if expected != Some(map.len() as u64) {
            return Err(bad(format!(
                "size is {} bytes, expected {HEADER_BYTES} + {} records x (4 + 3x{}x{}) bytes = {}; \
                 the file is truncated or its header is corrupt",
                map.len(),
                header.count,
                header.height,
                header.width,
                expected.map_or("more than fits in 64 bits".to_string(), |e| e.to_string())
            )));
        }
        // The size matched the mapped length, so every quantity below fits in usize.
        let record = record.expect("checked above") as usize;
        let count = header.count as usize;

        check_labels(&map, &header, record, &bad)?;

        Ok(PackedSplit {
            path: path.to_path_buf(),
            map,
            height: header.height as usize,
            width: header.width as usize,
            classes: header.classes as usize,
            count,
            record,
        })
    }

    /// The file this split was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Dataset for PackedSplit {
    fn len(&self) -> usize {
        self.count
    }

    fn classes(&self) -> usize {
        self.classes
    }

    fn image_size(&self) -> (usize, usize, usize) {
        (3, self.height, self.width)
    }

    fn sample(&self, i: usize) -> (&[u8], u32) {
        assert!(i < self.count, "packed sample {i} out of range (split has {})", self.count);
        let offset = HEADER_BYTES as usize + i * self.record;
        let record = &self.map[offset..offset + self.record];
        (&record[4..], u32_at(record, 0))
    }
}

impl std::fmt::Debug for PackedSplit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PackedSplit")
            .field("path", &self.path)
            .field("count", &self.count)
            .field("height", &self.height)
            .field("width", &self.width)
            .field("classes", &self.classes)
            .finish()
    }
}

/// Writes `samples` (label, planar RGB bytes of `3*height*width`) to a packed file at `path`
/// and returns the number of records written.
///
/// The file appears atomically: everything goes to a temporary file beside `path` that is
/// renamed over it only when complete, so an interrupted run never leaves a truncated dataset.
/// Errors (nothing is left behind) for zero sizes, no samples, a sample of the wrong length or a
/// label not below `classes`.
pub fn write_packed(
    path: &Path,
    height: u32,
    width: u32,
    classes: u32,
    samples: impl IntoIterator<Item = (u32, Vec<u8>)>,
) -> Result<u64> {
    let bad = |what: String| Error::invalid(format!("writing {}: {what}", path.display()));
    if height == 0 || width == 0 || classes == 0 {
        return Err(bad(format!("height {height}, width {width} and classes {classes} must all be nonzero")));
    }
    let image_bytes = record_bytes(height, width)
        .and_then(|r| usize::try_from(r - 4).ok())
        .ok_or_else(|| bad(format!("images of {height}x{width} are too large")))?;

    let file_name = path.file_name().ok_or_else(|| bad("the path names no file".into()))?.to_string_lossy();
    let tmp = path.with_file_name(format!(".{file_name}.tmp-{}", std::process::id()));
    let result = write_records(&tmp, height, width, classes, image_bytes, samples, &bad).and_then(|count| {
        std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))?;
        Ok(count)
    });
    if result.is_err() {
        // Best effort: the temporary file may not even have been created.
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Writes the whole file at `tmp`: header with a placeholder count, the records, then the real
/// count (known only at the end, since `samples` is an iterator), and syncs it to disk.
fn write_records(
    tmp: &Path,
    height: u32,
    width: u32,
    classes: u32,
    image_bytes: usize,
    samples: impl IntoIterator<Item = (u32, Vec<u8>)>,
    bad: &dyn Fn(String) -> Error,
) -> Result<u64> {
    let io = |e| Error::io(tmp, e);
    let mut out = BufWriter::with_capacity(1 << 20, File::create(tmp).map_err(io)?);
    let mut header = Header { height, width, classes, count: 0 };
    out.write_all(&header.to_bytes()).map_err(io)?;
    for (i, (label, pixels)) in samples.into_iter().enumerate() {
        if label >= classes {
            return Err(bad(format!("sample {i} has label {label}, expected below {classes}")));
        }
        if pixels.len() != image_bytes {
            return Err(bad(format!(
                "sample {i} has {} bytes, expected 3x{height}x{width} = {image_bytes}",
                pixels.len()
            )));
        }
        out.write_all(&label.to_le_bytes()).map_err(io)?;
        out.write_all(&pixels).map_err(io)?;
        header.count += 1;
    }
    if header.count == 0 {
        return Err(bad("no samples to write".into()));
    }
    let mut file = out.into_inner().map_err(|e| Error::io(tmp, e.into_error()))?;
    file.seek(SeekFrom::Start(0)).map_err(io)?;
    file.write_all(&header.to_bytes()).map_err(io)?;
    file.sync_all().map_err(io)?;
    Ok(header.count)
}

/// The header of a mapped pack, checked: the magic, a zero reserved field, nonzero sizes and
/// at least one record. `bad` words an error about this file.
fn read_header(map: &Mmap, bad: &impl Fn(String) -> Error) -> Result<Header> {
    if map[0..8] != MAGIC {
        return Err(bad(format!(
            "starts with \"{}\", expected the magic \"SASPACK1\"; not a packed dataset (see \
             data/README.md)",
            map[0..8].escape_ascii()
        )));
    }
    let header = Header {
        height: u32_at(map, 8),
        width: u32_at(map, 12),
        classes: u32_at(map, 16),
        count: u64::from_le_bytes(map[24..32].try_into().expect("8-byte slice")),
    };
    let reserved = u32_at(map, 20);
    if reserved != 0 {
        return Err(bad(format!("reserved header field is {reserved}, expected 0 (written by a newer version?)")));
    }
    if header.height == 0 || header.width == 0 || header.classes == 0 {
        return Err(bad(format!(
            "header gives height {}, width {}, classes {}; all must be nonzero",
            header.height, header.width, header.classes
        )));
    }
    if header.count == 0 {
        return Err(bad("holds no records (count 0)".into()));
    }
    Ok(header)
}

/// Checks every record's label once, so that `sample` can hand them out unchecked.
fn check_labels(map: &Mmap, header: &Header, record: usize, bad: &impl Fn(String) -> Error) -> Result<()> {
    // Every record's label must be checked once here so that `sample` can hand out labels
    // unchecked. With large records each label sits on its own page: tell the kernel not to
    // read ahead, or this scan would read the whole (possibly huge) file.
    #[cfg(unix)]
    let random_scan = record >= 64 * 1024 && map.advise(memmap2::Advice::Random).is_ok();
    for i in 0..header.count as usize {
        let offset = HEADER_BYTES as usize + i * record;
        let label = u32_at(map, offset);
        if label >= header.classes {
            return Err(bad(format!(
                "record {i} (byte offset {offset}) has label {label}, expected below the \
                 {} classes in the header",
                header.classes
            )));
        }
    }
    #[cfg(unix)]
    if random_scan {
        // Only a hint: reading still works if restoring it fails.
        let _ = map.advise(memmap2::Advice::Normal);
    }
    Ok(())
}
