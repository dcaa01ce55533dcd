//! Datasets and batch assembly.
//!
//! A [`Dataset`] hands out stored images as planar RGB bytes (channel-major, like CIFAR-10's
//! binary format) straight from a memory-mapped file, so opening ImageNet-sized data costs no
//! memory. [`fill_batch`] turns a list of sample indices into one NCHW `f32` batch, applying the
//! augmentation and normalization described by a [`BatchSpec`] exactly the way torchvision's
//! `RandomCrop(padding=..)` / `RandomHorizontalFlip` / `ToTensor` / `Normalize` chain does.
//!
//! Formats: [`cifar`] reads the official CIFAR-10 binary release; [`packed`] is this crate's
//! single-file format for ImageNet-style image folders (see `data/README.md`).

pub mod cifar;
pub mod packed;

use rand::Rng;

/// CIFAR-10's per-channel mean of the training images in [0, 1].
pub const CIFAR_MEAN: [f32; 3] = [0.4914, 0.4822, 0.4465];
/// CIFAR-10's per-channel standard deviation of the training images in [0, 1].
pub const CIFAR_STD: [f32; 3] = [0.2470, 0.2435, 0.2616];
/// ImageNet's per-channel pixel mean and standard deviation (pixels in [0, 1]), as torchvision's
/// models use them.
pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

/// A labelled image collection whose images all have the same size.
pub trait Dataset: Send + Sync {
    /// Number of samples.
    fn len(&self) -> usize;
    /// True when there are no samples (the loaders in this module never open such a dataset).
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Number of classes; every label is below this.
    fn classes(&self) -> usize;
    /// (channels = 3, height, width) of the stored images.
    fn image_size(&self) -> (usize, usize, usize);
    /// Planar RGB bytes of sample `i` (3*h*w: all red, then all green, then all blue, each
    /// row-major, like CIFAR's binary format) and its label. Panics if `i >= len()`.
    fn sample(&self, i: usize) -> (&[u8], u32);
}

/// How a batch is made from stored images: an optional zero padding, a crop of `out_h x out_w`
/// (random or centered), an optional random horizontal flip, then per-channel normalization.
#[derive(Clone, Debug)]
pub struct BatchSpec {
    /// Output image height.
    pub out_h: usize,
    /// Output image width.
    pub out_w: usize,
    /// Zero pixels added on every side of the stored image before cropping.
    pub pad: usize,
    /// Crop at a uniformly random offset; otherwise at the center.
    pub random_crop: bool,
    /// Mirror left-right with probability 0.5.
    pub flip: bool,
    /// Per-channel mean subtracted from pixels scaled to [0, 1].
    pub mean: [f32; 3],
    /// Per-channel standard deviation divided into the centered pixels.
    pub std: [f32; 3],
}

impl BatchSpec {
    /// CIFAR training augmentation: a 32x32 random crop of the image zero-padded by 4 on each
    /// side, then a random horizontal flip (torchvision `RandomCrop(32, padding=4)` +
    /// `RandomHorizontalFlip()`).
    pub fn cifar_train(mean: [f32; 3], std: [f32; 3]) -> Self {
        BatchSpec { out_h: 32, out_w: 32, pad: 4, random_crop: true, flip: true, mean, std }
    }

    /// Evaluation: no augmentation; a center crop to `out_h x out_w` when the stored images are
    /// larger (e.g. 224 from ImageNet images stored at 256).
    pub fn eval(out_h: usize, out_w: usize, mean: [f32; 3], std: [f32; 3]) -> Self {
        BatchSpec { out_h, out_w, pad: 0, random_crop: false, flip: false, mean, std }
    }
}

/// Fills `images` with the batch of samples `indices` and `labels` with their class indices.
///
/// `images` becomes `indices.len() * 3 * out_h * out_w` values, NCHW, each stored byte `x`
/// mapped to `(x / 255 - mean[c]) / std[c]`. Padding pixels are zero *before* normalization,
/// so they come out as `(0 - mean[c]) / std[c]` — torchvision pads the `ToTensor`'d image and
/// normalizes afterwards. `labels` becomes one `f32` class index per sample.
///
/// Random choices come from `rng`, per sample in order: crop row offset, crop column offset
/// (each uniform in `0..=padded - out`, i.e. `0..=2*pad` when the padded image is `2*pad`
/// larger than the output; drawn only when `spec.random_crop`), then the flip (probability 0.5;
/// drawn only when `spec.flip`). The flip mirrors the cropped image, as torchvision's
/// `RandomHorizontalFlip` after `RandomCrop` does. Without `random_crop` the crop is centered
/// (offset `(padded - out) / 2`, rounded down). The result is a pure function of the rng state.
///
/// Both vectors are resized in place, so buffers that are already big enough are reused
/// without reallocation.
///
/// Panics if an index is out of range, or the output size is zero or larger than the padded
/// stored image: caller bugs, not properties of a data file.
pub fn fill_batch(
    ds: &dyn Dataset,
    indices: &[usize],
    spec: &BatchSpec,
    rng: &mut impl Rng,
    images: &mut Vec<f32>,
    labels: &mut Vec<f32>,
) {
    let (channels, h, w) = ds.image_size();
    assert_eq!(channels, 3, "fill_batch expects 3-channel images");
    let (ph, pw) = (h + 2 * spec.pad, w + 2 * spec.pad);
    assert!(spec.out_h > 0 && spec.out_w > 0, "empty output size in {spec:?}");
    assert!(
        spec.out_h <= ph && spec.out_w <= pw,
        "output {}x{} is larger than the stored {h}x{w} images padded by {}",
        spec.out_h,
        spec.out_w,
        spec.pad
    );
    let plane = spec.out_h * spec.out_w;
    let per_image = 3 * plane;
    // resize (not clear + extend) keeps the allocation; every element is overwritten below.
    images.resize(indices.len() * per_image, 0.0);
    labels.resize(indices.len(), 0.0);

    // Normalized value of every byte per channel: one table lookup per pixel instead of a
    // division, and bit-identical to computing (x / 255 - mean) / std in f32 directly.
    let lut: [[f32; 256]; 3] =
        std::array::from_fn(|c| std::array::from_fn(|x| (x as f32 / 255.0 - spec.mean[c]) / spec.std[c]));

    for ((&index, out), label) in indices.iter().zip(images.chunks_exact_mut(per_image)).zip(labels.iter_mut()) {
        // Offsets are in padded coordinates: padded row r is stored row r - pad.
        let (oy, ox) = if spec.random_crop {
            (rng.random_range(0..=ph - spec.out_h), rng.random_range(0..=pw - spec.out_w))
        } else {
            ((ph - spec.out_h) / 2, (pw - spec.out_w) / 2)
        };
        let flip = spec.flip && rng.random_bool(0.5);
        let (pixels, class) = ds.sample(index);
        *label = class as f32;

        // Output column j reads padded column ox + j; stored columns [0, w) are the padded
        // columns [pad, pad + w), so the stored part of a row is output columns
        // [j_lo, j_hi) (before the flip).
        let j_lo = spec.pad.saturating_sub(ox).min(spec.out_w);
        let j_hi = (spec.pad + w).saturating_sub(ox).clamp(j_lo, spec.out_w);
        // Stored column of output column j_lo (irrelevant when the crop misses the image
        // horizontally, which only a padding wider than the output allows).
        let src_x0 = if j_hi > j_lo { ox + j_lo - spec.pad } else { 0 };
        for c in 0..3 {
            let table = &lut[c];
            let pad_value = table[0];
            let src_plane = &pixels[c * h * w..(c + 1) * h * w];
            for (y, dst) in out[c * plane..(c + 1) * plane].chunks_exact_mut(spec.out_w).enumerate() {
                let py = oy + y;
                if py < spec.pad || py >= spec.pad + h {
                    dst.fill(pad_value);
                    continue;
                }
                let row = &src_plane[(py - spec.pad) * w..(py - spec.pad + 1) * w];
                let src = &row[src_x0..src_x0 + (j_hi - j_lo)];
                // Flipping mirrors the cropped row: output column j takes crop column
                // out_w - 1 - j, so the stored span lands at [out_w - j_hi, out_w - j_lo).
                let (lo, hi) = if flip { (spec.out_w - j_hi, spec.out_w - j_lo) } else { (j_lo, j_hi) };
                dst[..lo].fill(pad_value);
                dst[hi..].fill(pad_value);
                if flip {
                    for (d, &s) in dst[lo..hi].iter_mut().zip(src.iter().rev()) {
                        *d = table[s as usize];
                    }
                } else {
                    for (d, &s) in dst[lo..hi].iter_mut().zip(src) {
                        *d = table[s as usize];
                    }
                }
            }
        }
    }
}

/// Opens `path` read-only and memory-maps it. `missing` makes the error for a file that does not
/// exist (so each format can say how to get its data); `check_len` validates the file size first,
/// because a size error is clearer than a failed parse and an empty file cannot be mapped.
fn map_file(
    path: &std::path::Path,
    missing: impl FnOnce() -> crate::Error,
    check_len: impl FnOnce(u64) -> crate::Result<()>,
) -> crate::Result<memmap2::Mmap> {
    let file = match std::fs::File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(missing()),
        Err(e) => return Err(crate::Error::io(path, e)),
    };
    let len = file.metadata().map_err(|e| crate::Error::io(path, e))?.len();
    check_len(len)?;
    if usize::try_from(len).is_err() {
        return Err(crate::Error::invalid(format!(
            "{}: {len} bytes do not fit this machine's address space",
            path.display()
        )));
    }
    // SAFETY: the map is read-only. Should another process modify or truncate the file while
    // it is mapped, reads could see changed bytes or fault; dataset files are not written while
    // they are being read, which is the usual contract of memory-mapped data.
    unsafe { memmap2::Mmap::map(&file) }.map_err(|e| crate::Error::io(path, e))
}

/// The first `n` samples of another dataset (quick runs, bounded evaluations).
pub struct First<'a> {
    pub inner: &'a dyn Dataset,
    pub n: usize,
}

impl Dataset for First<'_> {
    fn len(&self) -> usize {
        self.n.min(self.inner.len())
    }
    fn classes(&self) -> usize {
        self.inner.classes()
    }
    fn image_size(&self) -> (usize, usize, usize) {
        self.inner.image_size()
    }
    fn sample(&self, i: usize) -> (&[u8], u32) {
        self.inner.sample(i)
    }
}
