//! Checkpoints in safetensors with PyTorch's names: weights and batch-norm statistics (plus
//! `num_batches_tracked`, so `load_state_dict(strict=True)` accepts them), metadata such as the
//! input normalization, and training state. Every write is atomic: a temporary file in the
//! same directory, then a rename.

use crate::models::Model;
use crate::nn::StateDict;
use crate::{Error, Result};
use safetensors::tensor::{Dtype, TensorView};
use std::collections::HashMap;
use std::path::Path;

/// Suffix of PyTorch's batch-norm step counter (an int64 scalar we write and skip on load).
const BATCHES_TRACKED: &str = ".num_batches_tracked";

/// Input normalization: `(x/255 - mean) / std` per RGB channel.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Normalize {
    pub mean: [f32; 3],
    pub std: [f32; 3],
}

impl Normalize {
    /// CIFAR-10's statistics (what this crate's training uses by default for the ResNets).
    pub const CIFAR: Normalize = Normalize { mean: crate::data::CIFAR_MEAN, std: crate::data::CIFAR_STD };
    /// ImageNet's statistics, as torchvision's models (and many CIFAR repositories) use them.
    pub const IMAGENET: Normalize = Normalize { mean: crate::data::IMAGENET_MEAN, std: crate::data::IMAGENET_STD };

    /// The largest normalized input `--normalize` may produce from a pixel in [0, 1].
    pub const LARGEST_INPUT: f64 = 1e6;

    /// What a model is trained with when nothing else is said (its [`ModelSpec`]'s statistics:
    /// ImageNet's for AlexNet, CIFAR-10's for the ResNets).
    ///
    /// [`ModelSpec`]: crate::models::ModelSpec
    pub fn default_for(model: &str) -> Normalize {
        match crate::models::spec(model) {
            Ok(s) => Normalize { mean: s.mean, std: s.std },
            Err(_) => Normalize::CIFAR,
        }
    }

    /// The `--normalize` flag: `cifar`, `imagenet`, six numbers `MEAN_R,MEAN_G,MEAN_B,STD_R,
    /// STD_G,STD_B`, or two numbers `MEAN,STD` for all three channels (pixels scaled to [0, 1]).
    pub fn from_flag(text: &str) -> Result<Normalize> {
        let t = text.trim();
        match t {
            "cifar" => return Ok(Normalize::CIFAR),
            "imagenet" => return Ok(Normalize::IMAGENET),
            _ => {}
        }
        let bad = || {
            Error::invalid(format!(
                "--normalize '{text}': give cifar, imagenet, MEAN,STD (one of each for all channels) or six numbers \
                 R,G,B means then R,G,B standard deviations of pixels in [0, 1], e.g. 0.485,0.456,0.406,0.229,0.224,0.225"
            ))
        };
        let v: Vec<f32> =
            t.split(',').map(|x| x.trim().parse::<f32>()).collect::<std::result::Result<_, _>>().map_err(|_| bad())?;
        let n = match v.as_slice() {
            [m, s] => Normalize { mean: [*m; 3], std: [*s; 3] },
            [m0, m1, m2, s0, s1, s2] => Normalize { mean: [*m0, *m1, *m2], std: [*s0, *s1, *s2] },
            _ => return Err(bad()),
        };
        n.checked(&format!("--normalize '{text}'"))
    }

    /// `self` when its means are finite and its standard deviations positive and not so small
    /// that a pixel's input grows past ±1e6 (far inside f32's range, so no input and no logit
    /// becomes infinite); else an error about `what` (where the numbers came from).
    fn checked(self, what: &str) -> Result<Normalize> {
        if self.mean.iter().any(|m| !m.is_finite()) || self.std.iter().any(|s| !(s.is_finite() && *s > 0.0)) {
            return Err(Error::invalid(format!("{what}: means must be finite and standard deviations positive")));
        }
        // a pixel in [0, 1] becomes (p − mean) / std
        let largest = (0..3)
            .map(|c| (self.mean[c].abs().max((1.0 - self.mean[c]).abs()) / self.std[c]) as f64)
            .fold(0.0, f64::max);
        #[allow(clippy::neg_cmp_op_on_partial_ord)] // `!(x <= max)` also refuses NaN
        if !(largest <= Self::LARGEST_INPUT) {
            return Err(Error::invalid(format!(
                "{what} turns pixels in [0, 1] into values up to {largest:.1e}: give standard deviations \
                 of pixels scaled to [0, 1] (about 0.2-0.3 for natural images) and means in [0, 1]"
            )));
        }
        Ok(self)
    }

    /// `imagenet`, `cifar`, or the numbers.
    pub fn describe(&self) -> String {
        let join = |v: [f32; 3]| v.map(|x| x.to_string()).join(",");
        let numbers = format!("mean {} std {}", join(self.mean), join(self.std));
        if *self == Normalize::IMAGENET {
            format!("imagenet ({numbers})")
        } else if *self == Normalize::CIFAR {
            format!("cifar ({numbers})")
        } else {
            numbers
        }
    }

    /// The metadata's `normalize_mean` and `normalize_std` (three numbers each), checked as
    /// `--normalize` is.
    fn from_metadata(mean: &str, std: &str) -> Result<Normalize> {
        let what = format!("its metadata's normalization (normalize_mean '{mean}', normalize_std '{std}')");
        let three = |s: &str| -> Option<[f32; 3]> {
            let v: Vec<f32> = s.split(',').map(|x| x.trim().parse().ok()).collect::<Option<_>>()?;
            v.try_into().ok()
        };
        match (three(mean), three(std)) {
            (Some(mean), Some(std)) => Normalize { mean, std }.checked(&what),
            _ => Err(Error::invalid(format!(
                "{what} is not three means and three standard deviations, comma-separated: give --normalize to \
                 override it, or fix the file"
            ))),
        }
    }

    pub fn to_metadata(self, meta: &mut HashMap<String, String>) {
        let join = |v: [f32; 3]| v.map(|x| x.to_string()).join(",");
        meta.insert("normalize_mean".into(), join(self.mean));
        meta.insert("normalize_std".into(), join(self.std));
    }
}

/// The input normalization for weights read from `what` (a file) whose metadata names `stored`,
/// given `--normalize` as `flag`: the flag wins, then the file's metadata, then the model's
/// default. Says on stderr which one is used and where it came from, and warns when it is a
/// guess (a plain PyTorch `save_file(model.state_dict())` carries no normalization).
pub fn choose_normalize(flag: Option<Normalize>, stored: Option<Normalize>, model: &str, what: &str) -> Normalize {
    match (flag, stored) {
        (Some(f), Some(s)) if f != s => {
            errln!("warning: --normalize {} overrides the normalization {what} names ({})", f.describe(), s.describe());
            f
        }
        (Some(f), _) => {
            errln!("input normalization: {} (--normalize)", f.describe());
            f
        }
        (None, Some(s)) => {
            errln!("input normalization: {} (from {what}'s metadata)", s.describe());
            s
        }
        (None, None) => {
            let d = Normalize::default_for(model);
            errln!(
                "warning: {what} does not say how its inputs were normalized; assuming {}, the default for {model}. \
                 If the weights were trained with other statistics, pass --normalize imagenet, cifar or MEAN,STD",
                d.describe()
            );
            d
        }
    }
}

/// The input normalization for a model trained from a fresh initialization: `--normalize` or
/// the model's default; says which on stderr.
pub fn normalize_for_training(flag: Option<Normalize>, model: &str) -> Normalize {
    let (n, source) = match flag {
        Some(f) => (f, "--normalize".to_string()),
        None => (Normalize::default_for(model), format!("the default for {model}")),
    };
    errln!("input normalization: {} ({source})", n.describe());
    n
}

/// A safetensors file read into host memory.
pub struct Checkpoint {
    pub tensors: StateDict,
    pub metadata: HashMap<String, String>,
    /// The largest `*.num_batches_tracked` value present (0 when none).
    pub batches_tracked: u64,
}

impl Checkpoint {
    /// Reads `path`. Tensors must be F32 (int64 `num_batches_tracked` scalars are accepted).
    pub fn load(path: &Path) -> Result<Checkpoint> {
        if path.is_dir() {
            return Err(Error::invalid(format!(
                "{} is a directory, not a safetensors file: give the weights file in it (a pipeline run's \
                 dense.safetensors or pruned.safetensors, a training run's model.safetensors)",
                path.display()
            )));
        }
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        let shown = path.display();
        let st = safetensors::SafeTensors::deserialize(&bytes)
            .map_err(|e| Error::invalid(format!("{shown} is not a valid safetensors file: {e}")))?;
        let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes)
            .map_err(|e| Error::invalid(format!("{shown} is not a valid safetensors file: {e}")))?;
        let mut tensors = StateDict::new();
        let mut batches_tracked = 0;
        for (name, view) in st.tensors() {
            if name.ends_with(BATCHES_TRACKED) && view.dtype() == Dtype::I64 && view.data().len() == 8 {
                let v = i64::from_le_bytes(view.data().try_into().expect("8 bytes"));
                batches_tracked = batches_tracked.max(v.max(0) as u64);
                continue;
            }
            if view.dtype() != Dtype::F32 {
                return Err(Error::invalid(format!(
                    "{shown}: tensor '{name}' is {:?}; only F32 tensors are supported",
                    view.dtype()
                )));
            }
            let values: Vec<f32> =
                view.data().chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes"))).collect();
            // NaN or infinity in weights or optimizer state would poison every later step
            // silently: a file holding them is corrupt, or comes from a run that diverged.
            let bad = values.iter().filter(|v| !v.is_finite()).count();
            if bad > 0 {
                return Err(Error::invalid(format!(
                    "{shown}: tensor '{name}' holds {bad} NaN or infinite values; the file is corrupt or was saved \
                     by a run that diverged"
                )));
            }
            tensors.insert(name, (view.shape().to_vec(), values));
        }
        Ok(Checkpoint { tensors, metadata: meta.metadata().clone().unwrap_or_default(), batches_tracked })
    }

    /// The tensors whose names start with `prefix`, with the prefix removed.
    pub fn with_prefix(&self, prefix: &str) -> StateDict {
        self.tensors.iter().filter_map(|(k, v)| Some((k.strip_prefix(prefix)?.to_string(), v.clone()))).collect()
    }

    /// The normalization the checkpoint's metadata names: None where it names none, an error
    /// where what it names is not a usable normalization (unreadable, a zero standard deviation).
    pub fn normalize(&self) -> Result<Option<Normalize>> {
        match (self.metadata.get("normalize_mean"), self.metadata.get("normalize_std")) {
            (None, None) => Ok(None),
            (mean, std) => {
                Normalize::from_metadata(mean.map_or("", String::as_str), std.map_or("", String::as_str)).map(Some)
            }
        }
    }
}

/// The `__metadata__` of a safetensors file, read from its header alone (a training or ADMM state
/// file can be gigabytes; a message about where a run stands needs only its step).
pub fn read_metadata(path: &Path) -> Result<HashMap<String, String>> {
    use std::io::Read;
    let bad = |why: &str| Error::invalid(format!("{} is not a valid safetensors file: {why}", path.display()));
    let mut f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let short = |e: std::io::Error, what: &str| match e.kind() {
        std::io::ErrorKind::UnexpectedEof => bad(&format!("the file ends inside its {what}")),
        _ => Error::io(path, e),
    };
    let mut len = [0u8; 8];
    f.read_exact(&mut len).map_err(|e| short(e, "8-byte header length"))?;
    let len = u64::from_le_bytes(len);
    if len > 100 << 20 {
        return Err(bad("its header claims more than 100 MB"));
    }
    let mut header = vec![0u8; len as usize];
    f.read_exact(&mut header).map_err(|e| short(e, "header"))?;
    let parsed: HashMap<String, serde_json::Value> =
        serde_json::from_slice(&header).map_err(|e| bad(&format!("header: {e}")))?;
    let meta = parsed.get("__metadata__").and_then(|m| m.as_object()).cloned().unwrap_or_default();
    Ok(meta.into_iter().filter_map(|(k, v)| Some((k, v.as_str()?.to_string()))).collect())
}

/// Writes `tensors` (F32) and `counters` (int64 scalars) with `metadata` to `path` atomically.
pub fn save(
    path: &Path,
    tensors: &StateDict,
    counters: &[(String, i64)],
    metadata: HashMap<String, String>,
) -> Result<()> {
    let f32_bytes: Vec<(&String, &Vec<usize>, Vec<u8>)> = tensors
        .iter()
        .map(|(name, (shape, v))| (name, shape, v.iter().flat_map(|x| x.to_le_bytes()).collect()))
        .collect();
    let i64_bytes: Vec<(&String, [u8; 8])> = counters.iter().map(|(n, v)| (n, v.to_le_bytes())).collect();
    let mut views = Vec::new();
    for (name, shape, data) in &f32_bytes {
        views.push((
            name.to_string(),
            TensorView::new(Dtype::F32, shape.to_vec(), data).map_err(|e| Error::invalid(format!("{name}: {e}")))?,
        ));
    }
    for (name, data) in &i64_bytes {
        views.push((
            name.to_string(),
            TensorView::new(Dtype::I64, vec![], data).map_err(|e| Error::invalid(format!("{name}: {e}")))?,
        ));
    }
    let bytes = safetensors::serialize(views, Some(metadata))
        .map_err(|e| Error::invalid(format!("serializing {}: {e}", path.display())))?;
    write_atomic(path, &canonical_header(bytes).map_err(|e| Error::invalid(format!("{}: {e}", path.display())))?)
}

/// The same safetensors file with its JSON header's keys (tensor names, and the metadata's keys
/// within `__metadata__`) in sorted order: the library writes the metadata map in hash order,
/// which differs from process to process, so two identical runs would write different bytes
/// (checksums, caches and `cmp` would see a change). Tensor offsets are relative to the header's
/// end and do not move.
fn canonical_header(bytes: Vec<u8>) -> std::result::Result<Vec<u8>, String> {
    use std::collections::BTreeMap;
    let len = u64::from_le_bytes(bytes.get(..8).ok_or("no header")?.try_into().map_err(|_| "no header")?) as usize;
    let header = bytes.get(8..8 + len).ok_or("header beyond the file")?;
    let parsed: BTreeMap<String, serde_json::Value> =
        serde_json::from_slice(header).map_err(|e| format!("header: {e}"))?;
    let sorted: BTreeMap<String, serde_json::Value> = parsed
        .into_iter()
        .map(|(k, v)| match v {
            serde_json::Value::Object(m) => {
                let inner: BTreeMap<String, serde_json::Value> = m.into_iter().collect();
                (k, serde_json::to_value(inner).unwrap_or_default())
            }
            v => (k, v),
        })
        .collect();
    let mut text = serde_json::to_vec(&sorted).map_err(|e| e.to_string())?;
    // the format pads the header with spaces so the data starts 8-byte aligned
    text.resize(text.len().next_multiple_of(8), b' ');
    let mut out = Vec::with_capacity(8 + text.len() + bytes.len() - 8 - len);
    out.extend_from_slice(&(text.len() as u64).to_le_bytes());
    out.extend_from_slice(&text);
    out.extend_from_slice(&bytes[8 + len..]);
    Ok(out)
}

/// Writes `bytes` to `path` through a temporary file in the same directory, flushed to disk
/// (fsync) before a rename over `path`, and the directory flushed after it: a crash or a full
/// disk at any moment leaves either the old file or the new one, never a mix. A failed write
/// removes its temporary file and leaves `path` as it was.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let tmp = path.with_extension(format!("{}.tmp", path.extension().and_then(|e| e.to_str()).unwrap_or("")));
    let write = || -> std::io::Result<()> {
        injected_write_fault(path)?;
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()
    };
    if let Err(e) = write() {
        let _ = std::fs::remove_file(&tmp);
        return Err(Error::Invalid(format!(
            "could not write {}: {e}; the previous version of the file (if any) is unchanged",
            path.display()
        )));
    }
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        Error::io(path, e)
    })?;
    // The rename is durable once the directory entry is on disk (not possible on every OS:
    // directories cannot be opened as files on Windows, where rename is durable by itself).
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
    }
    Ok(())
}

/// Fault injection for tests: `SASPRUNE_FAULT_WRITE=NAME[@N]` makes the N-th (default first)
/// atomic write of a file whose name contains NAME fail as a full disk would (ENOSPC).
fn injected_write_fault(path: &Path) -> std::io::Result<()> {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static MATCHING_WRITES: AtomicUsize = AtomicUsize::new(0);
    let Ok(spec) = std::env::var("SASPRUNE_FAULT_WRITE") else { return Ok(()) };
    let (name, nth) = match spec.split_once('@') {
        Some((n, k)) => (n.to_string(), k.parse().unwrap_or(1)),
        None => (spec.clone(), 1),
    };
    let file = path.file_name().map(|f| f.to_string_lossy().to_string()).unwrap_or_default();
    if !name.is_empty() && file.contains(&name) && MATCHING_WRITES.fetch_add(1, Ordering::SeqCst) + 1 == nth {
        return Err(std::io::Error::from_raw_os_error(28)); // ENOSPC: "No space left on device"
    }
    Ok(())
}

/// Saves the model's weights and batch-norm statistics with PyTorch names.
pub fn save_model(model: &Model, path: &Path, normalize: Normalize, extra: &[(&str, String)]) -> Result<()> {
    let dict = model.store.state_dict()?;
    let counters: Vec<(String, i64)> = dict
        .keys()
        .filter_map(|k| k.strip_suffix(".running_mean"))
        .map(|prefix| (format!("{prefix}{BATCHES_TRACKED}"), model.store.batches_tracked as i64))
        .collect();
    let mut meta = HashMap::new();
    model_metadata(model, normalize, &mut meta);
    for (k, v) in extra {
        meta.insert(k.to_string(), v.clone());
    }
    save(path, &dict, &counters, meta)
}

/// For weights that do not fit `model`: what the file seems to hold instead, and what to do.
fn what_the_file_holds(ck: &Checkpoint, model: &str) -> Option<String> {
    let names: Vec<&String> = ck.tensors.keys().collect();
    if !names.is_empty() && names.iter().all(|n| n.starts_with("module.")) {
        return Some(
            "every name starts with 'module.' (a torch.nn.DataParallel model's state dict): save \
             model.module.state_dict() instead"
                .into(),
        );
    }
    let state_groups = ["model.", "admm.", "momentum."];
    if names.iter().any(|n| state_groups.iter().any(|g| n.starts_with(g))) {
        return Some(
            "it is a run's saved state, not a model's weights: give the weights the run wrote (`train`: \
             model.safetensors; the pipeline: dense.safetensors, pruned.safetensors or retrain/model.safetensors)"
                .into(),
        );
    }
    // a ResNet's depth from its first stage's blocks (6n + 2 layers), AlexNet from its features
    let blocks = (0..64).take_while(|i| ck.tensors.contains_key(&format!("layer1.{i}.conv1.weight"))).count();
    let holds = match blocks {
        0 if ck.tensors.contains_key("features.0.weight") => Some("alexnet".to_string()),
        0 => None,
        n => Some(format!("resnet{}", 6 * n + 2)),
    };
    let holds = holds.or_else(|| ck.metadata.get("model").cloned())?;
    (holds != model && crate::models::spec(&holds).is_ok())
        .then(|| format!("its tensors are those of {holds}: use --model {holds}"))
}

/// Loads weights and batch-norm statistics into `model` (every name and shape checked first);
/// returns the checkpoint's normalization metadata, if any.
pub fn load_model(model: &mut Model, path: &Path) -> Result<Option<Normalize>> {
    load_model_from(model, &Checkpoint::load(path)?, path)
}

/// [`load_model`] from a checkpoint already read (from `path`, named in errors): a file read
/// once, such as a pipe, loads into several models.
pub fn load_model_from(model: &mut Model, ck: &Checkpoint, path: &Path) -> Result<Option<Normalize>> {
    model.store.load_state_dict(&ck.tensors, &path.display().to_string()).map_err(|e| match e {
        Error::Invalid(msg) => match what_the_file_holds(ck, &model.name) {
            Some(hint) => Error::invalid(format!("{msg}; {hint}")),
            None => Error::invalid(msg),
        },
        e => e,
    })?;
    model.store.batches_tracked = ck.batches_tracked;
    ck.normalize().map_err(|e| Error::invalid(format!("{}: {e}", path.display())))
}

/// Dense weights read once before a run starts (checked against the model there), handed to the
/// run's dense phase, which takes them: `--weights <(cat file)` is a pipe that can be read only
/// once.
#[derive(Clone, Default)]
pub struct Preloaded(std::sync::Arc<std::sync::Mutex<Option<Checkpoint>>>);

impl Preloaded {
    pub fn new(ck: Checkpoint) -> Preloaded {
        Preloaded(std::sync::Arc::new(std::sync::Mutex::new(Some(ck))))
    }

    /// The checkpoint, once (later calls get `None`, and its memory is freed with the last use).
    pub fn take(&self) -> Option<Checkpoint> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).take()
    }
}

impl std::fmt::Debug for Preloaded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let held = self.0.lock().map(|g| g.is_some()).unwrap_or(false);
        write!(f, "Preloaded({})", if held { "held" } else { "taken" })
    }
}

/// Writes everything a resumable phase needs in ONE file (so a crash can never pair weights of
/// one step with optimizer state of another): the model's tensors under `model.`, each of
/// `extra`'s dictionaries under its prefix, mixed precision's loss-scale state (`loss_scale`),
/// and `metadata` plus the model's normalization and batch-norm counter.
pub fn save_bundle(
    path: &Path,
    model: &Model,
    norm: Normalize,
    extra: &[(&str, StateDict)],
    mut metadata: HashMap<String, String>,
) -> Result<()> {
    let mut dict = StateDict::new();
    for (k, v) in model.store.state_dict()? {
        dict.insert(format!("model.{k}"), v);
    }
    for (prefix, d) in extra {
        for (k, v) in d {
            dict.insert(format!("{prefix}{k}"), v.clone());
        }
    }
    if let Some(scale) = model.store.loss_scale() {
        dict.insert(LOSS_SCALE_KEY.into(), (vec![4], scale.to_vec()?));
    }
    model_metadata(model, norm, &mut metadata);
    metadata.insert("batches_tracked".into(), model.store.batches_tracked.to_string());
    save(path, &dict, &[], metadata)
}

/// What every saved model says about itself: its normalization, its name and, for a compact
/// (filter-pruned) network, its channel-set widths (what rebuilds it).
fn model_metadata(model: &Model, normalize: Normalize, meta: &mut HashMap<String, String>) {
    normalize.to_metadata(meta);
    meta.insert("model".into(), model.name.clone());
    if let Some(w) = &model.widths {
        let text: Vec<String> = w.iter().map(|x| x.to_string()).collect();
        meta.insert(crate::models::WIDTHS_KEY.into(), text.join(","));
    }
}

/// The loss-scale state's name in a bundle.
const LOSS_SCALE_KEY: &str = "loss_scale";

/// Loads the model part of a `save_bundle` file into `model`; returns the checkpoint (for the
/// other parts and the metadata) and its normalization.
pub fn load_bundle(path: &Path, model: &mut Model) -> Result<(Checkpoint, Normalize)> {
    let ck = Checkpoint::load(path)?;
    let shown = path.display().to_string();
    if ck.metadata.get("model") != Some(&model.name) {
        return Err(Error::invalid(format!(
            "{shown} holds state of a {} model, not {}",
            ck.metadata.get("model").map_or("different", |m| m),
            model.name
        )));
    }
    model.store.load_state_dict(&ck.with_prefix("model."), &shown)?;
    model.store.batches_tracked = ck.metadata.get("batches_tracked").and_then(|v| v.parse().ok()).unwrap_or(0);
    // a mixed-precision run goes on with its loss scale (an f32 run's bundle has none; a mixed run
    // resumed from one starts at the initial scale)
    if let (Some(scale), Some((_, saved))) = (model.store.loss_scale(), ck.tensors.get(LOSS_SCALE_KEY)) {
        scale.load(saved).map_err(|e| Error::invalid(format!("{shown}: {e}")))?;
    }
    let norm = (ck.normalize().map_err(|e| Error::invalid(format!("{shown}: {e}")))?)
        .ok_or_else(|| Error::invalid(format!("{shown} lacks normalization metadata")))?;
    Ok((ck, norm))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identical_content_gives_identical_bytes_whatever_the_metadata_order() {
        let dir = std::env::temp_dir().join(format!("sasprune-canonical-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut dict = StateDict::new();
        dict.insert("b.weight".into(), (vec![2, 3], vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]));
        dict.insert("a.bias".into(), (vec![3], vec![0.5, -0.5, 0.25]));
        let keys: Vec<String> = (0..40).map(|i| format!("key{i}")).collect();
        let forward: HashMap<String, String> = keys.iter().map(|k| (k.clone(), format!("v-{k}"))).collect();
        let mut backward = HashMap::new();
        for k in keys.iter().rev() {
            backward.insert(k.clone(), format!("v-{k}"));
        }
        let (p1, p2) = (dir.join("one.safetensors"), dir.join("two.safetensors"));
        save(&p1, &dict, &[], forward).unwrap();
        save(&p2, &dict, &[], backward).unwrap();
        let (b1, b2) = (std::fs::read(&p1).unwrap(), std::fs::read(&p2).unwrap());
        assert!(b1 == b2, "the same tensors and metadata gave different bytes");
        // the header's metadata keys are sorted, and the file reads back whole
        let len = u64::from_le_bytes(b1[..8].try_into().unwrap()) as usize;
        assert_eq!(len % 8, 0, "the data starts 8-byte aligned");
        let header = std::str::from_utf8(&b1[8..8 + len]).unwrap();
        let (k1, k10, k2) =
            (header.find("\"key1\"").unwrap(), header.find("\"key10\"").unwrap(), header.find("\"key2\"").unwrap());
        assert!(k1 < k10 && k10 < k2, "{header}");
        let ck = Checkpoint::load(&p1).unwrap();
        assert_eq!(ck.tensors["b.weight"], (vec![2, 3], vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]));
        assert_eq!(ck.metadata["key39"], "v-key39");
        std::fs::remove_dir_all(dir).ok();
    }
}
