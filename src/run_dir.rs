//! What a run directory records about how its run was started, so that `--resume DIR` alone
//! continues it with the same flags, and a dataset that moved (or changed) is recognised.
//!
//! `command.json` (written once, atomically, when a run starts):
//! `{"format": "sasprune-run-1", "command": "pipeline" | "train", "args": [...], "data": {...},
//! "flags": {...}}` where `flags` are the parsed flags (what `--resume` reads first), `args` are the command-line tokens the run was started with (without the program name,
//! the subcommand, `--out` and global flags such as `--backend`) and `data` fingerprints the
//! training and test sets: image count, image size, classes and a checksum of the first and last
//! records. Runs started before this file existed saved `command.txt` (one token per line);
//! it is still read.
//!
//! `run_state.txt` (rewritten atomically whenever a pipeline phase finishes): one
//! `phase.field=number` per line, e.g. `admm.top1=88.93` and `admm.done=1`.

use crate::checkpoint;
use crate::data::Dataset;
use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub const RECORD_FILE: &str = "command.json";
/// The pipeline's record before `command.json`: one flag or value per line.
pub const LEGACY_RECORD_FILE: &str = "command.txt";
const FORMAT: &str = "sasprune-run-1";
/// Records read from the front of a dataset for its checksum (plus the last one).
const CHECKSUM_RECORDS: usize = 64;

/// A dataset's identity, cheap to compute on a memory-mapped file of any size.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataFingerprint {
    pub images: usize,
    /// [channels, height, width]
    pub image_size: [usize; 3],
    pub classes: usize,
    /// FNV-1a (64 bit, hex) over the labels and pixels of the first 64 records and the last.
    pub checksum: String,
}

impl DataFingerprint {
    pub fn of(ds: &dyn Dataset) -> DataFingerprint {
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        let mut eat = |bytes: &[u8]| {
            for &b in bytes {
                hash = (hash ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3);
            }
        };
        let n = ds.len();
        let mut records: Vec<usize> = (0..n.min(CHECKSUM_RECORDS)).collect();
        if n > CHECKSUM_RECORDS {
            records.push(n - 1);
        }
        for i in records {
            let (pixels, label) = ds.sample(i);
            eat(&label.to_le_bytes());
            eat(pixels);
        }
        let (c, h, w) = ds.image_size();
        DataFingerprint { images: n, image_size: [c, h, w], classes: ds.classes(), checksum: format!("{hash:016x}") }
    }

    fn describe(&self) -> String {
        let [c, h, w] = self.image_size;
        format!("{} images of {c}x{h}x{w}, {} classes, checksum {}", self.images, self.classes, self.checksum)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataRecord {
    pub train: DataFingerprint,
    pub test: DataFingerprint,
}

impl DataRecord {
    pub fn of(train: &dyn Dataset, test: &dyn Dataset) -> DataRecord {
        DataRecord { train: DataFingerprint::of(train), test: DataFingerprint::of(test) }
    }
}

/// How a run was started.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunRecord {
    pub format: String,
    /// `pipeline` or `train`.
    pub command: String,
    pub args: Vec<String>,
    /// Absent in records of runs started before fingerprints were kept.
    pub data: Option<DataRecord>,
    /// The run's flags as the parser typed them (the command line's own structure, as JSON):
    /// what `--resume` reads. Absent in records of older versions, which `--resume` replays from
    /// `args` instead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flags: Option<serde_json::Value>,
}

impl RunRecord {
    pub fn new(command: &str, args: Vec<String>, data: DataRecord) -> RunRecord {
        RunRecord { format: FORMAT.into(), command: command.into(), args, data: Some(data), flags: None }
    }

    /// True when `dir` holds a record (of either format).
    pub fn exists(dir: &Path) -> bool {
        dir.join(RECORD_FILE).exists() || dir.join(LEGACY_RECORD_FILE).exists()
    }

    pub fn save(&self, dir: &Path) -> Result<()> {
        let path = dir.join(RECORD_FILE);
        let text = serde_json::to_string_pretty(self)
            .map_err(|e| Error::invalid(format!("writing {}: {e}", path.display())))?;
        checkpoint::write_atomic(&path, text.as_bytes())
    }

    /// Reads `dir`'s record; `command` is what the user asked to resume (a pipeline run cannot be
    /// resumed by `train`, nor the other way round).
    pub fn load(dir: &Path, command: &str) -> Result<RunRecord> {
        let path = dir.join(RECORD_FILE);
        let legacy = dir.join(LEGACY_RECORD_FILE);
        if !path.exists() && command == "pipeline" && legacy.exists() {
            let text = std::fs::read_to_string(&legacy).map_err(|e| Error::io(&legacy, e))?;
            return Ok(RunRecord {
                format: FORMAT.into(),
                command: command.into(),
                args: text.lines().map(String::from).collect(),
                data: None,
                flags: None,
            });
        }
        if !dir.is_dir() {
            return Err(Error::invalid(format!("cannot resume {}: no such run directory", dir.display())));
        }
        let bytes = std::fs::read(&path).map_err(|e| {
            Error::invalid(format!(
                "cannot resume {}: {} is missing or unreadable ({e}); it was not started by this version's \
                 `sasprune{}`",
                dir.display(),
                path.display(),
                if command == "train" { " train" } else { "" }
            ))
        })?;
        let record: RunRecord = serde_json::from_slice(&bytes)
            .map_err(|e| Error::invalid(format!("{} is not a valid run record: {e}", path.display())))?;
        if record.format != FORMAT {
            return Err(Error::invalid(format!(
                "{}: unknown format '{}' (this version reads {FORMAT})",
                path.display(),
                record.format
            )));
        }
        if record.command != command {
            let d = dir.display();
            let how = match record.command.as_str() {
                "train" => format!("continue it with `sasprune train --resume {d}`"),
                "pipeline" => format!("continue it with `sasprune --resume {d}`"),
                // (a comparison continues when its own command runs again: `--resume` is not its way)
                other => format!("continue it by running the same `sasprune {other} ...` command again"),
            };
            return Err(Error::invalid(format!("{d} holds a `{}` run: {how}", record.command)));
        }
        Ok(record)
    }

    /// Refuses to resume on data other than the run started with (a moved copy is fine).
    pub fn check_data(&self, dir: &Path, now: &DataRecord, data_dir: Option<&Path>) -> Result<()> {
        let Some(then) = &self.data else { return Ok(()) };
        for (what, a, b) in [("training", &then.train, &now.train), ("test", &then.test, &now.test)] {
            if a != b {
                let shown = data_dir.map_or_else(|| PathBuf::from("data"), Path::to_path_buf);
                return Err(Error::invalid(format!(
                    "the {what} set in {} ({}) is not the one {} started with ({}): point --data at that dataset \
                     (a moved copy is fine)",
                    shown.display(),
                    b.describe(),
                    dir.display(),
                    a.describe()
                )));
            }
        }
        Ok(())
    }
}

/// The tokens of a resumed run's command line: the saved `args`, with each flag named in
/// `overrides` replaced by the value given now (for instance a `--data` that moved).
/// `overrides` holds `(flag, value)` pairs.
pub fn replay(saved: &[String], overrides: &[(String, String)]) -> Vec<String> {
    let mut out = Vec::new();
    let mut skip_value = false;
    for t in saved {
        if std::mem::take(&mut skip_value) {
            continue;
        }
        let name = t.split('=').next().unwrap_or("");
        if overrides.iter().any(|(f, _)| f == name) {
            skip_value = !t.contains('=');
            continue;
        }
        out.push(t.clone());
    }
    for (f, v) in overrides {
        out.push(f.clone());
        out.push(v.clone());
    }
    out
}

/// One writer per run directory: `DIR/lock` holds the owning process's id and host while a run
/// works there, and is removed when the run ends (also on errors). A second process refuses the
/// directory, naming the owner; a lock whose process no longer runs on this host (killed, machine
/// rebooted) is taken over with a note.
pub struct RunLock {
    path: PathBuf,
}

pub const LOCK_FILE: &str = "lock";

impl RunLock {
    pub fn acquire(dir: &Path) -> Result<RunLock> {
        if dir.exists() && !dir.is_dir() {
            return Err(Error::invalid(format!(
                "{} is a file, not a run directory: give --out a directory (new, or the run's own)",
                dir.display()
            )));
        }
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let path = dir.join(LOCK_FILE);
        let me = format!("{} {}\n", std::process::id(), host_name());
        for _ in 0..2 {
            match std::fs::OpenOptions::new().write(true).create_new(true).open(&path) {
                Ok(mut f) => {
                    use std::io::Write;
                    if let Err(e) = f.write_all(me.as_bytes()) {
                        // a full disk: leave no empty lock behind for the next run to puzzle over
                        drop(f);
                        let _ = std::fs::remove_file(&path);
                        return Err(Error::io(&path, e));
                    }
                    return Ok(RunLock { path });
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    let text = std::fs::read_to_string(&path).unwrap_or_default();
                    let mut fields = text.split_whitespace();
                    let pid = fields.next().and_then(|p| p.parse::<u32>().ok());
                    let host = fields.next().unwrap_or("").to_string();
                    match (pid, host == host_name()) {
                        (Some(pid), true) if process_alive(pid) => {
                            return Err(Error::invalid(format!(
                                "{} is in use by another sasprune process (pid {pid}); wait for it to finish or stop \
                                 it, then resume",
                                dir.display()
                            )))
                        }
                        (Some(pid), false) => {
                            return Err(Error::invalid(format!(
                                "{} is in use by sasprune process {pid} on host {host}; if that process no longer \
                                 runs, delete {}",
                                dir.display(),
                                path.display()
                            )))
                        }
                        _ => {
                            errln!(
                                "note: taking over the stale lock {} (its process {} no longer runs)",
                                path.display(),
                                pid.map_or("?".to_string(), |p| p.to_string())
                            );
                            std::fs::remove_file(&path).map_err(|e| Error::io(&path, e))?;
                        }
                    }
                }
                Err(e) => return Err(Error::io(&path, e)),
            }
        }
        Err(Error::invalid(format!("could not take the lock {}: another process took it first", path.display())))
    }
}

impl Drop for RunLock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .map(|h| h.trim().to_string())
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok().or_else(|| std::env::var("COMPUTERNAME").ok()))
        .filter(|h| !h.is_empty() && !h.contains(char::is_whitespace))
        .unwrap_or_else(|| "localhost".into())
}

/// Whether process `pid` runs on this machine. Where that cannot be told (no /proc), a lock is
/// assumed to be held.
fn process_alive(pid: u32) -> bool {
    if pid == std::process::id() {
        return false; // our id in an old lock: left by an earlier process (before a reboot)
    }
    let proc_dir = Path::new("/proc");
    if !proc_dir.join("self").exists() {
        return true;
    }
    // a zombie (killed, not yet reaped by its parent) holds nothing
    match std::fs::read_to_string(proc_dir.join(pid.to_string()).join("stat")) {
        Ok(stat) => !stat.rsplit_once(')').is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

/// The pipeline's finished phases and their results (`run_state.txt`), so that a resumed run
/// reloads a finished phase instead of running it again.
#[derive(Default, Debug, PartialEq)]
pub struct RunState(BTreeMap<String, f64>);

impl RunState {
    pub const FILE: &'static str = "run_state.txt";
    /// The phases, in the order they run, and the fields recorded for them.
    pub const PHASES: [&'static str; 5] = ["dense", "baseline", "admm", "prune", "retrain"];
    pub const FIELDS: [&'static str; 7] = ["top1", "top5", "seconds", "done", "final", "final5", "best"];

    /// `dir`'s record, empty where there is none. A line that this version did not write (a
    /// damaged or hand-edited file) is an error naming the file and the line: guessing would
    /// skip a phase or report a wrong accuracy.
    pub fn load(dir: &Path) -> Result<RunState> {
        let path = dir.join(Self::FILE);
        if !path.exists() {
            return Ok(RunState::default());
        }
        let bytes = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
        let damaged = |line: usize, why: String| {
            Error::invalid(format!(
                "{} is damaged at line {line}: {why}; each line is `phase.field=number` (e.g. admm.top1=88.9). \
                 Delete the file to run its phases again, or start a new run in another directory",
                path.display()
            ))
        };
        let text = std::str::from_utf8(&bytes).map_err(|e| {
            damaged(1 + bytes[..e.valid_up_to()].iter().filter(|&&b| b == b'\n').count(), "not UTF-8 text".into())
        })?;
        let mut state = RunState::default();
        for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
            let shown: String = line.chars().take(60).flat_map(char::escape_default).collect();
            let (key, value) = line.split_once('=').ok_or_else(|| damaged(i + 1, format!("'{shown}' has no '='")))?;
            if !Self::known_key(key) {
                return Err(damaged(i + 1, format!("'{shown}' names no phase result")));
            }
            let v: f64 = value
                .trim()
                .parse()
                .ok()
                .filter(|v: &f64| v.is_finite())
                .ok_or_else(|| damaged(i + 1, format!("'{shown}' has no finite number")))?;
            if state.0.insert(key.to_string(), v).is_some() {
                return Err(damaged(i + 1, format!("'{key}' is recorded twice")));
            }
        }
        Ok(state)
    }

    fn known_key(key: &str) -> bool {
        key.split_once('.').is_some_and(|(phase, field)| Self::PHASES.contains(&phase) && Self::FIELDS.contains(&field))
    }

    /// Records `key` (`phase.field`) and rewrites the file atomically. A value `load` would
    /// refuse is refused here, so that a run never leaves a record it cannot resume from.
    pub fn set(&mut self, dir: &Path, key: &str, value: f64) -> Result<()> {
        if !Self::known_key(key) || !value.is_finite() {
            return Err(Error::invalid(format!(
                "cannot record {key}={value} in {}: results must be finite numbers of a known phase",
                dir.join(Self::FILE).display()
            )));
        }
        self.0.insert(key.to_string(), value);
        // f64's Display is the shortest text that parses back to the same number
        let text: String = self.0.iter().map(|(k, v)| format!("{k}={v}\n")).collect();
        checkpoint::write_atomic(&dir.join(Self::FILE), text.as_bytes())
    }

    pub fn f64(&self, key: &str) -> Option<f64> {
        self.0.get(key).copied()
    }

    pub fn done(&self, phase: &str) -> bool {
        self.0.contains_key(&format!("{phase}.done"))
    }
}

/// Which adapter, and which kind of kernel plans, ran each pipeline phase, over every session
/// (`adapters.json`: `{"admm": ["NVIDIA H100 ... | tuned kernel plans", ...], ...}`). A run
/// directory may move to another machine and be resumed there; results stay valid, but a phase
/// that ran on two adapters (or with tuned plans on one machine and another's) is not
/// bit-reproducible by one of them, and the report says so.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PhaseAdapters(pub BTreeMap<String, Vec<String>>);

impl PhaseAdapters {
    pub const FILE: &'static str = "adapters.json";

    /// `dir`'s record, empty where there is none; a damaged file is an error naming it.
    pub fn load(dir: &Path) -> Result<PhaseAdapters> {
        let path = dir.join(Self::FILE);
        if !path.exists() {
            return Ok(PhaseAdapters::default());
        }
        let bytes = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
        serde_json::from_slice(&bytes).map_err(|e| {
            Error::invalid(format!(
                "{} is damaged ({e}); it records which adapter ran each phase: delete it to continue without that \
                 record",
                path.display()
            ))
        })
    }

    /// Records that `adapter` works on `phase` in this session (once per adapter) and rewrites
    /// the file atomically.
    pub fn record(&mut self, dir: &Path, phase: &str, adapter: &str) -> Result<()> {
        let list = self.0.entry(phase.to_string()).or_default();
        if list.iter().any(|a| a == adapter) {
            return Ok(());
        }
        list.push(adapter.to_string());
        let text = serde_json::to_string_pretty(&self.0).map_err(|e| Error::invalid(e.to_string()))?;
        checkpoint::write_atomic(&dir.join(Self::FILE), format!("{text}\n").as_bytes())
    }

    /// One line per phase that ran on more than one adapter or plan kind.
    pub fn mixed(&self) -> Vec<String> {
        self.0
            .iter()
            .filter(|(_, list)| list.len() > 1)
            .map(|(phase, list)| format!("{phase} ran on {}", list.join(" and then ")))
            .collect()
    }
}

/// Appends `line` to the CSV file `path`, writing `header` first when the file is new.
pub fn append_csv_row(path: &Path, header: &str, line: &str) -> Result<()> {
    use std::io::Write;
    let new = !path.exists();
    let mut f = std::fs::OpenOptions::new().create(true).append(true).open(path).map_err(|e| Error::io(path, e))?;
    if new {
        writeln!(f, "{header}").map_err(|e| Error::io(path, e))?;
    }
    writeln!(f, "{line}").map_err(|e| Error::io(path, e))
}

/// Drops the rows of the CSV file `path` (a header, then rows) whose count in column `col` (an
/// outer iteration, a training step) is past `last`, or that do not read: the work a resumed run
/// repeats because it ran after the last saved state. Rewritten atomically, and only when a row
/// goes.
pub fn keep_csv_rows_through(path: &Path, col: usize, last: usize) -> Result<()> {
    if !path.exists() {
        return Ok(());
    }
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let mut lines = text.lines();
    let Some(header) = lines.next() else { return Ok(()) };
    let within =
        |l: &&str| l.split(',').nth(col).and_then(|v| v.trim().parse::<usize>().ok()).is_some_and(|v| v <= last);
    let kept: Vec<&str> = lines.filter(within).collect();
    if kept.len() + 1 == text.lines().count() {
        return Ok(());
    }
    let body: String = std::iter::once(header).chain(kept).map(|l| format!("{l}\n")).collect();
    checkpoint::write_atomic(path, body.as_bytes())
}
