//! The kernel autotuner: on a GPU, the first time a GEMM-based kernel family (a matrix product
//! or a convolution kernel) meets a product shape, it times a handful of candidate plans (tile
//! shape, K-splits) on the real operands and keeps the fastest. Choices are cached in memory and
//! on disk, keyed by adapter, backend, driver, the device's workgroup memory and crate version,
//! so the same binary gets fast on
//! GPUs no one here has tried, and the second run pays nothing.
//!
//! Settings (flags `--tune` / `--tune-cache`, or env `SASPRUNE_TUNE` / `SASPRUNE_TUNE_CACHE`):
//! - mode `auto` (default: tune on GPUs, fixed defaults on software/CPU drivers), `on`, `off`
//!   (fixed defaults per device type: reproducible across machines);
//! - cache file: default `<OS cache dir>/sasprune/tune.json`; `none` keeps choices in memory.
//!
//! A cache that cannot be read or parsed, or holds entries this build does not know, is ignored
//! with a one-line note; it is never fatal. Writes are atomic (temporary file + rename).
//!
//! A candidate that fails or computes a wrong result is left out for the rest of the process; one
//! that ends the process (a driver crash, a device lost on it: see `trial`) is left out on that
//! adapter in the cache's `left_out` list from the next run on.

mod trial;

use crate::ops::gemm_plan::{tile_index, tile_name, Plan};
use crate::{Error, Result};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Whether plans are measured (`--tune`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// measure plans on GPUs, fixed defaults on software (CPU) drivers
    Auto,
    /// measure plans on every adapter
    On,
    /// fixed defaults per device type (reproducible across machines)
    Off,
}

impl std::str::FromStr for Mode {
    type Err = Error;
    fn from_str(s: &str) -> Result<Mode> {
        match s.trim().to_ascii_lowercase().as_str() {
            "" | "auto" => Ok(Mode::Auto),
            "on" | "1" | "yes" | "true" => Ok(Mode::On),
            "off" | "0" | "no" | "false" => Ok(Mode::Off),
            other => Err(Error::invalid(format!("tuning mode '{other}' is not one of auto, on, off"))),
        }
    }
}

/// Tuner settings; `None` fields fall back to the environment, then the defaults.
#[derive(Clone, Debug, Default)]
pub struct Settings {
    pub mode: Option<Mode>,
    /// The cache file; `Some("none")` keeps choices in memory only.
    pub cache: Option<PathBuf>,
}

/// One tuned choice as stored: the tile's name, K-splits, and the measured seconds.
#[derive(Clone, Debug, PartialEq)]
pub struct Choice {
    pub tile: String,
    pub splits: usize,
    pub seconds: f64,
}

/// The on-disk cache: every adapter's choices (other adapters' entries are kept as they are).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Cache {
    pub adapters: BTreeMap<String, BTreeMap<String, Choice>>,
    /// Per adapter, the tiles the tuner no longer tries there, with why (a run ended while it
    /// timed them): adapter key → tile name → reason.
    pub left_out: BTreeMap<String, BTreeMap<String, String>>,
}

const FORMAT: &str = "sasprune-tune-1";

impl Cache {
    /// Reads `path`. A missing file is an empty cache; an unreadable or malformed one is an empty
    /// cache and a note saying why (entries that do not parse are dropped, with a note).
    pub fn load(path: &Path) -> (Cache, Option<String>) {
        let text = match std::fs::read(path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return (Cache::default(), None),
            Err(e) => {
                return (
                    Cache::default(),
                    Some(format!("tuner cache {} is unreadable ({e}); ignoring it", path.display())),
                )
            }
        };
        match Cache::parse(&text) {
            Ok((cache, 0)) => (cache, None),
            Ok((cache, dropped)) => {
                let note = format!("tuner cache {}: ignored {dropped} malformed or unknown entries", path.display());
                (cache, Some(note))
            }
            Err(why) => (Cache::default(), Some(format!("tuner cache {} ignored: {why}", path.display()))),
        }
    }

    /// Parses a cache file's bytes: the cache and how many entries were dropped.
    pub fn parse(bytes: &[u8]) -> std::result::Result<(Cache, usize), String> {
        let value: serde_json::Value = serde_json::from_slice(bytes).map_err(|e| format!("not JSON ({e})"))?;
        if value.get("format").and_then(|f| f.as_str()) != Some(FORMAT) {
            return Err(format!("not a {FORMAT} file"));
        }
        let adapters = value.get("adapters").and_then(|a| a.as_object()).ok_or("no \"adapters\" object")?;
        let mut cache = Cache::default();
        let mut dropped = value.get("left_out").map_or(0, |l| cache.parse_left_out(l));
        for (adapter, entries) in adapters {
            let Some(entries) = entries.as_object() else {
                dropped += 1;
                continue;
            };
            let slot = cache.adapters.entry(adapter.clone()).or_default();
            for (key, e) in entries {
                let tile = e.get("tile").and_then(|t| t.as_str());
                let splits = e.get("splits").and_then(|s| s.as_u64());
                let seconds = e.get("seconds").and_then(|s| s.as_f64()).unwrap_or(0.0);
                match (tile, splits) {
                    (Some(tile), Some(splits)) if (1..=1 << 20).contains(&splits) && tile_index(tile).is_some() => {
                        slot.insert(key.clone(), Choice { tile: tile.to_string(), splits: splits as usize, seconds });
                    }
                    _ => dropped += 1,
                }
            }
        }
        Ok((cache, dropped))
    }

    /// Reads a `"left_out"` object (adapter → tile → why) into the cache: how many entries were
    /// dropped (the whole object when it is not one, a tile this build does not know, a reason
    /// that is not text).
    fn parse_left_out(&mut self, left_out: &serde_json::Value) -> usize {
        let Some(left_out) = left_out.as_object() else { return 1 };
        let mut dropped = 0;
        for (adapter, tiles) in left_out {
            let Some(tiles) = tiles.as_object() else {
                dropped += 1;
                continue;
            };
            for (tile, why) in tiles {
                match why.as_str().filter(|_| tile_index(tile).is_some()) {
                    Some(why) => {
                        self.left_out.entry(adapter.clone()).or_default().insert(tile.clone(), why.into());
                    }
                    None => dropped += 1,
                }
            }
        }
        dropped
    }

    pub fn to_json(&self) -> String {
        let adapters: serde_json::Map<String, serde_json::Value> = (self.adapters.iter())
            .map(|(adapter, entries)| {
                let entries: serde_json::Map<String, serde_json::Value> = (entries.iter())
                    .map(|(k, c)| {
                        let v = serde_json::json!({ "tile": c.tile, "splits": c.splits, "seconds": c.seconds });
                        (k.clone(), v)
                    })
                    .collect();
                (adapter.clone(), serde_json::Value::Object(entries))
            })
            .collect();
        let mut doc = serde_json::json!({ "format": FORMAT, "adapters": adapters });
        if !self.left_out.is_empty() {
            doc["left_out"] = serde_json::json!(self.left_out);
        }
        serde_json::to_string_pretty(&doc).expect("a JSON value serializes") + "\n"
    }

    /// Writes the cache atomically (temporary file in the same directory, then rename).
    pub fn save(&self, path: &Path) -> Result<()> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        }
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        std::fs::write(&tmp, self.to_json()).map_err(|e| Error::io(&tmp, e))?;
        std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
    }
}

/// The default cache file: the OS cache directory's `sasprune/tune.json`.
pub fn default_cache_path() -> Option<PathBuf> {
    let env = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty()).map(PathBuf::from);
    let base = if cfg!(target_os = "windows") {
        env("LOCALAPPDATA")
    } else if cfg!(target_os = "macos") {
        env("HOME").map(|h| h.join("Library/Caches"))
    } else {
        env("XDG_CACHE_HOME").or_else(|| env("HOME").map(|h| h.join(".cache")))
    };
    base.map(|b| b.join("sasprune").join("tune.json"))
}

struct Tuner {
    enabled: bool,
    file: Option<PathBuf>,
    adapter_key: String,
    cache: Cache,
    /// Choices made in this process, by product key (what `choices` reports).
    used: BTreeMap<String, Choice>,
    /// Products measured (not read from the cache) in this process.
    measured: usize,
    /// Plan tiles whose kernels failed on this adapter in this process (left out from then on),
    /// and those the cache leaves out on it.
    failed: std::collections::BTreeSet<usize>,
    /// This process's in-trial marker while it tunes a product (with a cache file only).
    marker: Option<trial::Marker>,
    /// A marker could not be written (noted once); tuning goes on without.
    marker_failed: bool,
}

static SETTINGS: Mutex<Option<Settings>> = Mutex::new(None);
static TUNER: Mutex<Option<Tuner>> = Mutex::new(None);

/// Sets the tuner's settings (before the first kernel runs; flags win over the environment).
pub fn configure(settings: Settings) {
    *SETTINGS.lock().unwrap_or_else(|p| p.into_inner()) = Some(settings);
    *TUNER.lock().unwrap_or_else(|p| p.into_inner()) = None;
}

/// The mode `SASPRUNE_TUNE` sets, if any; a value that is not a mode is bad usage (the command
/// line checks it before any work: `--tune` overrides it).
pub fn mode_from_env() -> Result<Option<Mode>> {
    let value = std::env::var("SASPRUNE_TUNE").ok().filter(|v| !v.trim().is_empty());
    value.map(|v| v.parse::<Mode>().map_err(|e| Error::Usage(format!("SASPRUNE_TUNE={v}: {e}")))).transpose()
}

fn open_tuner() -> Result<Tuner> {
    let gpu = crate::gpu::get()?;
    let given = SETTINGS.lock().unwrap_or_else(|p| p.into_inner()).clone().unwrap_or_default();
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
    let mode = match given.mode {
        Some(m) => m,
        None => mode_from_env()?.unwrap_or(Mode::Auto),
    };
    let enabled = match mode {
        Mode::On => true,
        Mode::Off => false,
        Mode::Auto => !gpu.adapter.is_cpu(),
    };
    let file = match given.cache.or_else(|| env("SASPRUNE_TUNE_CACHE").map(PathBuf::from)) {
        Some(p) if p.as_os_str() == "none" => None,
        Some(p) => Some(p),
        None => default_cache_path(),
    };
    let a = &gpu.adapter;
    // (with the device's workgroup memory, which decides the tiles a product can run on: a
    // device opened with smaller limits, `SASPRUNE_LIMITS=webgpu`, tunes its own choices)
    let adapter_key = format!(
        "{} | {} | {} {} | {} B workgroup memory | sasprune {}",
        a.name,
        a.backend,
        a.driver,
        a.driver_info,
        a.max_workgroup_storage,
        env!("CARGO_PKG_VERSION")
    );
    let cache = match (&file, enabled) {
        (Some(path), true) => {
            let (mut cache, note) = Cache::load(path);
            if let Some(note) = note {
                errln!("note: {note}");
            }
            leave_out_what_ended_runs(&mut cache, path);
            cache
        }
        _ => Cache::default(),
    };
    let left_out = cache.left_out.get(&adapter_key).into_iter().flat_map(|tiles| tiles.keys());
    let failed = left_out.filter_map(|tile| tile_index(tile)).collect();
    Ok(Tuner {
        enabled,
        file,
        adapter_key,
        cache,
        used: BTreeMap::new(),
        measured: 0,
        failed,
        marker: None,
        marker_failed: false,
    })
}

/// Reads the markers of earlier processes that ended while they timed a candidate (see `trial`)
/// into the cache's `left_out` list of their adapters, with a note each, and saves the cache.
fn leave_out_what_ended_runs(cache: &mut Cache, path: &Path) {
    let (found, notes) = trial::left_behind(path);
    for note in notes {
        errln!("note: {note}");
    }
    for t in found.iter().map(|f| &f.trial) {
        let adapter = t.adapter.split(" | ").next().unwrap_or(&t.adapter);
        errln!(
            "note: an earlier run on {adapter} ended while the kernel tuner timed plan {} (for {}): a driver crash or a \
             lost device there, or the process was killed; the tuner leaves {} out on this adapter and driver from now \
             on (remove it from \"left_out\" in {} to time it again)",
            t.tile,
            t.product,
            t.tile,
            path.display()
        );
        let why = format!("a run ended while the tuner timed it for {}", t.product);
        cache.left_out.entry(t.adapter.clone()).or_default().insert(t.tile.clone(), why);
    }
    if found.is_empty() {
        return;
    }
    // the markers go once the cache says what they said
    match save_merged(cache, path) {
        Ok(()) => found.iter().for_each(|f| {
            let _ = std::fs::remove_file(&f.path);
        }),
        Err(e) => errln!(
            "note: could not save the tuner cache ({e}); the plans above are left out for this run, and the next \
             run reads their markers again"
        ),
    }
}

/// Saves `cache` at `path` after adding what the file holds that `cache` does not (choices for
/// other products, plans left out), so that processes tuning with the same cache file side by
/// side keep each other's results.
fn save_merged(cache: &mut Cache, path: &Path) -> Result<()> {
    let (on_disk, _) = Cache::load(path);
    for (adapter, entries) in on_disk.adapters {
        let ours = cache.adapters.entry(adapter).or_default();
        for (key, choice) in entries {
            ours.entry(key).or_insert(choice);
        }
    }
    for (adapter, tiles) in on_disk.left_out {
        let ours = cache.left_out.entry(adapter).or_default();
        for (tile, why) in tiles {
            ours.entry(tile).or_insert(why);
        }
    }
    cache.save(path)
}

fn plan_of(choice: &Choice) -> Option<Plan> {
    Some(Plan { tile: tile_index(&choice.tile)?, splits: choice.splits })
}

fn choice_of(plan: Plan, seconds: f64) -> Choice {
    Choice { tile: tile_name(plan.tile).to_string(), splits: plan.splits, seconds }
}

/// How the tuner checks a candidate's result against the default plan's on the same operands:
/// a kernel that a driver compiled wrongly, or that runs nothing (and so looks fastest), must
/// not be chosen. Kernels the local driver cannot run (Winograd, the cooperative-matrix tiles on
/// most GPUs) meet a GPU compiler first in a user's run.
/// The output tensor is filled with NaN before each plan runs, so that a kernel that writes
/// nothing cannot pass, and only what the default plan writes is compared (the output may be a
/// view holding other products' results, e.g. a column block); its contents are put back after.
pub(crate) struct ResultCheck<'a> {
    /// Reads the product's output tensor back (after a synchronize).
    pub read: &'a dyn Fn() -> Result<Vec<f32>>,
    /// Writes the whole output tensor.
    pub write: &'a dyn Fn(&[f32]) -> Result<()>,
    /// The largest difference allowed, relative to the largest |value| of the default's result.
    pub tolerance: f64,
}

/// Where `got` differs from `reference` by more than `tolerance` times the reference's largest
/// finite |value| (or is not finite where the reference is), the difference and that scale.
/// Positions where the reference itself is not finite (an overflowing step of mixed precision)
/// are not compared.
fn disagreement(reference: &[f32], got: &[f32], tolerance: f64) -> Option<(f64, f64)> {
    let finite = || reference.iter().zip(got).filter(|(r, _)| r.is_finite());
    let scale = finite().fold(0f64, |m, (&r, _)| m.max(f64::from(r).abs()));
    let worst = finite().fold(0f64, |m, (&r, &g)| {
        m.max(if g.is_finite() { (f64::from(g) - f64::from(r)).abs() } else { f64::INFINITY })
    });
    (got.len() != reference.len() || worst > tolerance * scale).then_some((worst, scale))
}

/// The plan for product `key`: `default` when tuning is off; else the cached choice, or the
/// fastest of `candidates()` timed now through `run` (which records the product with a plan)
/// whose result `check` finds equal to the default plan's. The key must determine `default`
/// and the candidates: after the first call for a key, this is one map lookup (no candidate
/// list is built on a training step).
pub(crate) fn choose(
    key: &str,
    default: Plan,
    candidates: impl FnOnce() -> Vec<Plan>,
    run: impl Fn(Plan) -> Result<()>,
    check: ResultCheck,
) -> Result<Plan> {
    let mut guard = TUNER.lock().unwrap_or_else(|p| p.into_inner());
    if guard.is_none() {
        *guard = Some(open_tuner()?);
    }
    let tuner = guard.as_mut().expect("opened above");
    if let Some(plan) = tuner.used.get(key).and_then(plan_of) {
        return Ok(plan);
    }
    let candidates = candidates();
    if !tuner.enabled || candidates.len() < 2 {
        tuner.used.insert(key.to_string(), choice_of(default, 0.0));
        return Ok(default);
    }
    if let Some(plan) = tuner.cached(key, &candidates) {
        return Ok(plan);
    }
    let (first, steady) = warm_up(&run, default)?;
    let limits = trial::Limits::from_default(first, steady);
    // the default's result where it writes, NaN elsewhere
    let original = (check.read)()?;
    let poison = vec![f32::NAN; original.len()];
    (check.write)(&poison)?;
    run(default)?;
    let reference = (check.read)()?;
    let best = tuner.fastest_that_agrees(key, default, &candidates, &run, &check, &poison, &reference, limits);
    if best.is_err() {
        // (the marker keeps naming the candidate that failed with the device: the next run leaves it out)
        trial::watchdog::stop();
    }
    let best = best?;
    (check.write)(&original)?;
    let (plan, seconds) = best.unwrap_or((default, 0.0));
    tuner.record(key, plan, seconds);
    Ok(plan)
}

/// Brings the device to the clock a sustained workload gets before timing (GPUs slow down within
/// a second of light load; see bench::CLOCK_WARM_UP), unless one run already takes long. Returns
/// how long the default's first run took (compilation included) and a later one (for the
/// watchdog's limits, `trial::Limits`).
fn warm_up(run: &impl Fn(Plan) -> Result<()>, default: Plan) -> Result<(std::time::Duration, std::time::Duration)> {
    let gpu = crate::gpu::get()?;
    let timed = || -> Result<std::time::Duration> {
        let start = std::time::Instant::now();
        run(default)?;
        gpu.synchronize()?;
        Ok(start.elapsed())
    };
    let (first, steady) = (timed()?, timed()?);
    if first < std::time::Duration::from_millis(2) {
        keep_busy_for(std::time::Duration::from_millis(40), &mut || run(default))?;
    }
    Ok((first, steady))
}

impl Tuner {
    /// The cached choice for `key`, where it is still among `candidates` and has not failed here.
    fn cached(&mut self, key: &str, candidates: &[Plan]) -> Option<Plan> {
        let cached = self.cache.adapters.get(&self.adapter_key).and_then(|e| e.get(key))?.clone();
        let plan = plan_of(&cached).filter(|p| candidates.contains(p) && !self.failed.contains(&p.tile))?;
        self.used.insert(key.to_string(), cached);
        Some(plan)
    }

    /// Times every candidate that has not failed here and returns the fastest whose result agrees
    /// with the default's `reference` (each candidate's output filled with `poison` first, so a
    /// kernel that writes nothing cannot look fast). A candidate that does not run, or disagrees,
    /// is left out for the rest of the process with a note. Each one is named in the process's
    /// marker while it runs and watched for running past `limits` (see `trial`).
    #[allow(clippy::too_many_arguments)]
    fn fastest_that_agrees(
        &mut self,
        key: &str,
        default: Plan,
        candidates: &[Plan],
        run: &impl Fn(Plan) -> Result<()>,
        check: &ResultCheck,
        poison: &[f32],
        reference: &[f32],
        limits: trial::Limits,
    ) -> Result<Option<(Plan, f64)>> {
        let mut best: Option<(Plan, f64)> = None;
        for &plan in candidates {
            if self.failed.contains(&plan.tile) {
                continue;
            }
            if plan != default {
                (check.write)(poison)?;
                self.mark(key, plan, limits.compile);
            }
            // (once the candidate's first run is recorded, and so compiled, its work gets the
            // tighter limit)
            let watch_its_work = || {
                if plan != default {
                    trial::watchdog::watch(tile_name(plan.tile), key, limits.run);
                }
            };
            let seconds = match measure(|| run(plan), watch_its_work) {
                Ok(seconds) => seconds,
                // A candidate this adapter cannot run (a driver that rejects one kernel,
                // temporaries that do not fit) is dropped for the rest of the process, provided the
                // default still runs (it ran before; a lost device fails it too, and that error is
                // the run's).
                Err(e) if plan != default => {
                    if run(default).and_then(|()| crate::gpu::get()?.synchronize()).is_err() {
                        // (the marker stays: the next run leaves the plan out)
                        if self.marker.is_some() {
                            errln!(
                                "note: the device failed while the kernel tuner timed plan {} for {key}; the next run \
                                 leaves it out on this adapter",
                                tile_name(plan.tile)
                            );
                        }
                        return Err(e);
                    }
                    self.unmark();
                    errln!(
                        "note: kernel plan {} does not run here ({e}); the tuner leaves it out",
                        tile_name(plan.tile)
                    );
                    self.failed.insert(plan.tile);
                    continue;
                }
                Err(e) => return Err(e),
            };
            if plan != default {
                let got = (check.read)()?;
                self.unmark();
                if let Some((worst, scale)) = disagreement(reference, &got, check.tolerance) {
                    errln!(
                        "note: kernel plan {} computes a result that differs from the default plan's here (by up \
                         to {worst:.3e} where values reach {scale:.3e}, for {key}); the tuner leaves it out",
                        tile_name(plan.tile)
                    );
                    self.failed.insert(plan.tile);
                    continue;
                }
            }
            if best.is_none_or(|(_, s)| seconds < s) {
                best = Some((plan, seconds));
            }
        }
        Ok(best)
    }

    /// Names `plan` in this process's marker before it runs for product `key` (the marker is
    /// made when the first candidate of a product runs; without a cache file there is none) and
    /// has the watchdog give it `limit`.
    fn mark(&mut self, key: &str, plan: Plan, limit: std::time::Duration) {
        let tile = tile_name(plan.tile);
        if let Some(path) = self.file.clone().filter(|_| !self.marker_failed) {
            let t = trial::Trial { adapter: self.adapter_key.clone(), tile: tile.into(), product: key.into() };
            let marked = match self.marker.as_mut() {
                Some(marker) => marker.set(&t),
                None => trial::Marker::create(&path).and_then(|mut m| m.set(&t).map(|()| self.marker = Some(m))),
            };
            if let Err(e) = marked {
                errln!(
                    "note: could not write the tuner's marker {} ({e}); a kernel that crashes the driver while it is \
                     timed would be tried again by the next run",
                    trial::marker_path(&path).display()
                );
                self.marker_failed = true;
                self.marker = None;
            }
        }
        trial::watchdog::watch(tile, key, limit);
    }

    /// The candidate named in the marker has finished (or failed without taking the device along).
    fn unmark(&mut self) {
        trial::watchdog::stop();
        if let Some(Err(e)) = self.marker.as_mut().map(|m| m.clear()) {
            errln!("note: could not clear the tuner's marker ({e}); it is removed when the product is tuned");
        }
    }

    /// Keeps the choice for `key` for this process and in the cache file (a cache that cannot be
    /// saved is noted once and kept in memory), and removes the marker.
    fn record(&mut self, key: &str, plan: Plan, seconds: f64) {
        if let Some(Err(e)) = self.marker.take().map(trial::Marker::remove) {
            errln!("note: could not remove the tuner's marker ({e}); the next run will remove it");
        }
        self.measured += 1;
        let choice = choice_of(plan, seconds);
        self.used.insert(key.to_string(), choice.clone());
        self.cache.adapters.entry(self.adapter_key.clone()).or_default().insert(key.to_string(), choice);
        if let Some(path) = &self.file {
            if let Err(e) = save_merged(&mut self.cache, path) {
                errln!("note: could not save the tuner cache ({e}); choices are kept for this run only");
                self.file = None;
            }
        }
    }
}

/// Seconds one `run` takes: the best of 3 rounds of up to 5 runs in one submit each, after a
/// warm-up run (pipeline compilation; `recorded` is called once it is recorded). Host-timed
/// around submit + wait, so that it neither needs timestamp queries nor disturbs a device timer
/// the caller may have running; the submit's fixed latency is shared by the round's runs. Products that take milliseconds get fewer runs: long
/// bursts of full load (a 4096³ GEMM's candidates) drove an H200 into a lower clock for seconds.
fn measure(run: impl Fn() -> Result<()>, recorded: impl FnOnce()) -> Result<f64> {
    let gpu = crate::gpu::get()?;
    let start = std::time::Instant::now();
    run()?;
    recorded();
    gpu.synchronize()?;
    let first = start.elapsed().as_secs_f64();
    let reps = if first > 2e-3 { 1 } else { 5 };
    let mut best = f64::INFINITY;
    for _ in 0..3 {
        let start = std::time::Instant::now();
        for _ in 0..reps {
            run()?;
        }
        gpu.synchronize()?;
        best = best.min(start.elapsed().as_secs_f64() / reps as f64);
    }
    Ok(best)
}

/// Every plan chosen in this process: (product key, tile name, K-splits, measured seconds or 0
/// for a fixed default).
pub fn choices() -> Vec<(String, String, usize, f64)> {
    let guard = TUNER.lock().unwrap_or_else(|p| p.into_inner());
    guard
        .as_ref()
        .map(|t| t.used.iter().map(|(k, c)| (k.clone(), c.tile.clone(), c.splits, c.seconds)).collect())
        .unwrap_or_default()
}

/// The plans the cache leaves out on this adapter (tile name, why), once the tuner is open.
pub fn left_out() -> Vec<(String, String)> {
    let guard = TUNER.lock().unwrap_or_else(|p| p.into_inner());
    let tiles = guard.as_ref().and_then(|t| t.cache.left_out.get(&t.adapter_key));
    tiles.into_iter().flatten().map(|(tile, why)| (tile.clone(), why.clone())).collect()
}

/// How many products had their plans measured (not read from the cache) in this process.
pub fn measured() -> usize {
    TUNER.lock().unwrap_or_else(|p| p.into_inner()).as_ref().map_or(0, |t| t.measured)
}

/// Whether plans are being measured in this process (false until the first product is planned).
pub fn enabled() -> bool {
    TUNER.lock().unwrap_or_else(|p| p.into_inner()).as_ref().is_some_and(|t| t.enabled)
}

/// How this process picks kernel plans, for run records: measured per adapter ("tuned kernel
/// plans") or the fixed defaults per device type ("fixed kernel plans", `--tune off`, software
/// drivers), which compute the same numbers on any machine of that type.
pub fn plan_source() -> Result<&'static str> {
    let mut guard = TUNER.lock().unwrap_or_else(|p| p.into_inner());
    if guard.is_none() {
        *guard = Some(open_tuner()?);
    }
    Ok(if guard.as_ref().is_some_and(|t| t.enabled) { "tuned kernel plans" } else { "fixed kernel plans" })
}

/// Runs `f` back to back for `time` (at least once), waiting every 8 runs so the queue stays
/// short: a GPU lowers its clocks within a second of light load, so plans are timed (and the
/// bench measures) on a device kept busy first.
pub fn keep_busy_for(time: std::time::Duration, f: &mut impl FnMut() -> Result<()>) -> Result<()> {
    let gpu = crate::gpu::get()?;
    let start = std::time::Instant::now();
    let mut n = 0;
    while n == 0 || start.elapsed() < time {
        f()?;
        n += 1;
        if n % 8 == 0 {
            gpu.synchronize()?;
        } else {
            gpu.flush()?;
        }
    }
    gpu.synchronize()
}

#[cfg(test)]
mod tests {
    use super::disagreement;

    #[test]
    fn a_result_agrees_within_the_tolerance_of_its_largest_value() {
        let reference = [1.0, -4.0, 0.5, f32::INFINITY];
        // rounding-sized differences pass; an overflowing position of the reference is not compared
        assert_eq!(disagreement(&reference, &[1.001, -4.002, 0.499, 7.0], 1e-3), None);
        // a wrong value, a value not written (NaN) or an output of another length does not
        assert_eq!(disagreement(&reference, &[1.0, -4.0, 0.6, 7.0], 1e-3), Some((f64::from(0.6f32) - 0.5, 4.0)));
        assert_eq!(disagreement(&reference, &[1.0, f32::NAN, 0.5, 7.0], 1e-3), Some((f64::INFINITY, 4.0)));
        assert!(disagreement(&reference, &[1.0, -4.0], 1e-3).is_some());
        // an all-zero result must stay zero
        assert!(disagreement(&[0.0, 0.0], &[0.0, 1e-30], 1e-3).is_some());
    }
}
