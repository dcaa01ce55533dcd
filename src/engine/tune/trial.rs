//! Which candidate plan the tuner is timing, kept on disk while it runs, so that a kernel that
//! takes the process down with it (a driver that crashes compiling or running it, a device lost
//! on it) costs one run and not every run: the next process finds the record of a process that
//! has ended mid-candidate and leaves that kernel out on that adapter.
//!
//! A tuning process writes its marker beside the cache file, `<cache>.trying-<pid>-<nonce>`
//! (the nonce: containers often give every run the same pid), while it tunes one product: it
//! holds an exclusive lock on the file (the OS releases it when the process ends, however it
//! ends), writes each candidate into it before the candidate runs and empties it after; the file
//! is removed when the product's choice is made. A marker that can be locked belongs to a process
//! that has ended; one that still names a candidate is that process's last trial. On Unix an
//! interrupted run (SIGINT, SIGTERM, SIGHUP: Ctrl-C, `kill`, a job's time limit) removes its
//! marker as it ends, so stopping a run blames no kernel.
//!
//! A candidate that runs far longer than the product's default plan took (`Limits`) is taken for
//! hung by a watchdog thread, which ends the run with a message and keeps the marker (a device
//! busy with a kernel that never ends cannot be used again by this process), so that the next
//! run leaves it out as well. The watchdog runs with or without a cache file.
//!
//! Locks must reach every process sharing the cache: on a network file system whose locks are
//! local to each host, another host's live marker looks ended (keep the cache on a local disk,
//! the default, or give each host its own `--tune-cache`).

use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime};

/// One candidate being timed: the adapter's cache key, the plan's tile and the product's key.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub(super) struct Trial {
    pub adapter: String,
    pub tile: String,
    pub product: String,
}

/// This process's marker file while it tunes a product (locked by it for as long as it is open).
pub(super) struct Marker {
    path: PathBuf,
    file: File,
}

fn prefix(cache: &Path) -> String {
    let name = cache.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "tune.json".into());
    format!("{name}.trying-")
}

/// The marker file of this process for `cache`.
pub(super) fn marker_path(cache: &Path) -> PathBuf {
    static NONCE: OnceLock<u128> = OnceLock::new();
    let nonce =
        NONCE.get_or_init(|| SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_nanos());
    cache.with_file_name(format!("{}{}-{nonce}", prefix(cache), std::process::id()))
}

impl Marker {
    /// Creates and locks this process's marker beside `cache`, making the cache's directory
    /// first (the first run on a machine tunes before it saves a cache). Another process's scan
    /// may hold the new file's lock for a moment; a file that stays unlockable is removed again.
    pub fn create(cache: &Path) -> std::io::Result<Marker> {
        let path = marker_path(cache);
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        interrupt::remove_on_interrupt(&path);
        let file = OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&path)?;
        let mut tries = 0;
        while let Err(e) = file.try_lock() {
            tries += 1;
            if tries == 10 {
                let _ = std::fs::remove_file(&path);
                return Err(std::io::Error::other(format!("cannot lock it: {e}")));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        file.set_len(0)?;
        Ok(Marker { path, file })
    }

    /// Names `trial` as the candidate now running.
    pub fn set(&mut self, trial: &Trial) -> std::io::Result<()> {
        let text = serde_json::to_vec(trial).map_err(std::io::Error::other)?;
        self.file.set_len(0)?;
        self.file.seek(SeekFrom::Start(0))?;
        self.file.write_all(&text)
    }

    /// No candidate running.
    pub fn clear(&mut self) -> std::io::Result<()> {
        self.file.set_len(0)
    }

    /// Removes the file: the product's choice is made.
    pub fn remove(self) -> std::io::Result<()> {
        std::fs::remove_file(&self.path)
    }
}

/// A marker an ended process left: its path and the candidate it names.
pub(super) struct LeftBehind {
    pub path: PathBuf,
    pub trial: Trial,
}

/// The markers beside `cache` that ended processes left naming a candidate (for the caller to
/// remove once it has recorded them), and a note for each that could not be read (those are
/// removed, as are empty ones more than a minute old). Markers of processes still running (locked
/// by them) are left alone, and so are empty ones just made (another process may be about to lock
/// its new marker).
pub(super) fn left_behind(cache: &Path) -> (Vec<LeftBehind>, Vec<String>) {
    let (mut found, mut notes) = (Vec::new(), Vec::new());
    let dir = match cache.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let Ok(entries) = std::fs::read_dir(dir) else { return (found, notes) };
    let prefix = prefix(cache);
    for entry in entries.flatten() {
        let path = entry.path();
        let marker = entry.file_name().to_string_lossy().starts_with(&prefix);
        let Some(mut file) = marker.then(|| OpenOptions::new().read(true).write(true).open(&path).ok()).flatten()
        else {
            continue;
        };
        // held by a live process (or a file system without locks: nothing can be told)
        if file.try_lock().is_err() {
            continue;
        }
        let mut text = Vec::new();
        let unreadable = match std::io::Read::read_to_end(&mut file, &mut text) {
            Ok(0) => {
                let age = file.metadata().and_then(|m| m.modified()).ok().and_then(|t| t.elapsed().ok());
                if age.is_some_and(|a| a > Duration::from_secs(60)) {
                    let _ = std::fs::remove_file(&path);
                }
                continue;
            }
            Ok(_) => match serde_json::from_slice::<Trial>(&text) {
                Ok(trial) => {
                    found.push(LeftBehind { path, trial });
                    continue;
                }
                Err(e) => e.to_string(),
            },
            Err(e) => e.to_string(),
        };
        notes.push(format!("ignored the unreadable tuner marker {} ({unreadable})", path.display()));
        let _ = std::fs::remove_file(&path);
    }
    (found, notes)
}

/// How long a candidate may take before the watchdog takes it for hung, from what the product's
/// default plan took on its first run (`first`: its compilation included) and on a later one
/// (`steady`). A candidate's first run compiles it, which some drivers take a minute or more
/// for: recording it may take 120 s + 20 x first (on NVIDIA's Vulkan driver about two minutes).
/// Its work on the device, waited for after that and
/// in the timed rounds, may take 30 s + 1000 x steady (the tuner runs a candidate up to 16
/// times, and a candidate may be several times slower than the default; a hung kernel never
/// ends).
#[derive(Clone, Copy, Debug)]
pub(super) struct Limits {
    pub compile: Duration,
    pub run: Duration,
}

impl Limits {
    pub fn from_default(first: Duration, steady: Duration) -> Limits {
        Limits {
            compile: Duration::from_secs(120) + first.saturating_mul(20),
            run: Duration::from_secs(30) + steady.saturating_mul(1000),
        }
    }
}

/// A thread that wakes every 200 ms and compares the running candidate's time with its limit;
/// past it, ends the process with a message (exit code 1), leaving the marker in place.
pub(super) mod watchdog {
    use super::*;

    /// Milliseconds after `epoch()` when the running candidate is taken for hung; 0: none running.
    static DEADLINE_MS: AtomicU64 = AtomicU64::new(0);
    /// The candidate running now passed its deadline (read by the signal handler).
    pub(super) static HUNG: AtomicBool = AtomicBool::new(false);
    /// The candidate's plan and product, and the limit it was given, for the message.
    static WATCHED: Mutex<Option<(String, String, Duration)>> = Mutex::new(None);

    fn epoch() -> Instant {
        static EPOCH: OnceLock<Instant> = OnceLock::new();
        *EPOCH.get_or_init(Instant::now)
    }

    fn now_ms() -> u64 {
        u64::try_from(epoch().elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Watches `tile` timed for `product` from now on, for at most `limit`.
    pub(in super::super) fn watch(tile: &str, product: &str, limit: Duration) {
        static THREAD: OnceLock<()> = OnceLock::new();
        stop();
        *WATCHED.lock().unwrap_or_else(|p| p.into_inner()) = Some((tile.into(), product.into(), limit));
        let limit_ms = u64::try_from(limit.as_millis()).unwrap_or(u64::MAX / 2);
        DEADLINE_MS.store(now_ms().saturating_add(limit_ms).max(1), Ordering::SeqCst);
        THREAD.get_or_init(|| {
            // (a thread that cannot start leaves hung kernels to be stopped by hand)
            let _ = std::thread::Builder::new().name("tuner watchdog".into()).spawn(run);
        });
    }

    /// The watched candidate has finished, failed, or the tuner gave up on it.
    pub(in super::super) fn stop() {
        DEADLINE_MS.store(0, Ordering::SeqCst);
        HUNG.store(false, Ordering::SeqCst);
    }

    fn run() {
        let mut woke = now_ms();
        loop {
            std::thread::sleep(Duration::from_millis(200));
            let (before, now) = (woke, now_ms());
            woke = now;
            let deadline = DEADLINE_MS.load(Ordering::SeqCst);
            // A wake-up long after the last one: the process was stopped (Ctrl-Z) or the machine
            // slept; that time is not the candidate's, so the deadline moves by it.
            let gap = now.saturating_sub(before);
            if gap > 2_000 && deadline != 0 {
                let _ = DEADLINE_MS.compare_exchange(
                    deadline,
                    deadline.saturating_add(gap),
                    Ordering::SeqCst,
                    Ordering::SeqCst,
                );
                continue;
            }
            if deadline == 0 || now < deadline {
                continue;
            }
            // (the candidate may have finished since the load: then its deadline is gone)
            if DEADLINE_MS.compare_exchange(deadline, u64::MAX, Ordering::SeqCst, Ordering::SeqCst).is_err() {
                continue;
            }
            HUNG.store(true, Ordering::SeqCst);
            if let Some((tile, product, limit)) = WATCHED.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
                errln!(
                    "error: kernel plan {tile} took more than {:.0} s while the kernel tuner timed it for {product} \
                     (the default plan took far less): it looks hung, and a device busy with it cannot go on. \
                     Run the command again (a run directory continues with --resume): the next run leaves {tile} out \
                     on this adapter",
                    limit.as_secs_f64()
                );
            }
            crate::gpu::end_process_now(1);
        }
    }
}

/// Unix: SIGINT, SIGTERM and SIGHUP remove this process's marker before they end it (as they
/// would have: the handler runs once, then the signal's default action), so a run stopped by
/// its user or a job scheduler does not make the next one leave a kernel out. Signals a parent
/// set to be ignored (`nohup`) stay ignored.
#[cfg(unix)]
mod interrupt {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    use std::path::Path;
    use std::sync::atomic::{AtomicPtr, Ordering};

    /// The marker's path as a C string; a replaced one is leaked, since a handler may be reading
    /// it (one path per cache file a process uses).
    static MARKER: AtomicPtr<libc::c_char> = AtomicPtr::new(std::ptr::null_mut());

    extern "C" fn on_signal(signal: libc::c_int) {
        // unlink and raise are async-signal-safe (and so are atomic loads); SA_RESETHAND restored
        // the default action, which the raised signal takes once this handler returns. A
        // candidate the watchdog found hung keeps its marker: the next run leaves it out.
        let path = MARKER.load(Ordering::SeqCst);
        unsafe {
            if !path.is_null() && !super::watchdog::HUNG.load(Ordering::SeqCst) {
                libc::unlink(path);
            }
            libc::raise(signal);
        }
    }

    pub(super) fn remove_on_interrupt(path: &Path) {
        let Ok(path) = CString::new(path.as_os_str().as_bytes()) else { return };
        let old = MARKER.load(Ordering::SeqCst);
        if !old.is_null() && unsafe { std::ffi::CStr::from_ptr(old) } == path.as_c_str() {
            return;
        }
        MARKER.store(path.into_raw(), Ordering::SeqCst);
        if !old.is_null() {
            return; // the handlers are installed and now read the new path
        }
        for signal in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
            unsafe {
                let mut current: libc::sigaction = std::mem::zeroed();
                if libc::sigaction(signal, std::ptr::null(), &mut current) != 0 || current.sa_sigaction != libc::SIG_DFL
                {
                    continue;
                }
                let mut action: libc::sigaction = std::mem::zeroed();
                action.sa_sigaction = on_signal as *const () as libc::sighandler_t;
                action.sa_flags = libc::SA_RESETHAND;
                libc::sigemptyset(&mut action.sa_mask);
                libc::sigaction(signal, &action, std::ptr::null_mut());
            }
        }
    }
}

/// Elsewhere an interrupted run leaves its marker, and the next run leaves that kernel out with
/// a note saying how to time it again.
#[cfg(not(unix))]
mod interrupt {
    pub(super) fn remove_on_interrupt(_path: &std::path::Path) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markers_of_ended_processes_are_found_and_live_or_fresh_ones_left_alone() {
        let dir = std::env::temp_dir().join(format!("sasprune-trial-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let cache = dir.join("tune.json");
        let trial = Trial { adapter: "GPU | Vulkan".into(), tile: "c16q".into(), product: "k 1x2x3".into() };
        let marker = |name: &str, text: &[u8]| {
            let path = dir.join(format!("tune.json.trying-{name}"));
            std::fs::write(&path, text).unwrap();
            path
        };
        let ended = marker("7-1", &serde_json::to_vec(&trial).unwrap());
        let fresh_empty = marker("7-2", b"");
        let torn = marker("7-3", b"{\"adapter\":\"GP");
        let live = marker("7-4", &serde_json::to_vec(&trial).unwrap());
        let held = File::open(&live).unwrap();
        held.try_lock().unwrap();
        let other_cache = dir.join("other.json.trying-7-5");
        std::fs::write(&other_cache, serde_json::to_vec(&trial).unwrap()).unwrap();
        // this process's own marker, as it tunes: locked, so left alone like any live one
        let mut own = Marker::create(&cache).unwrap();
        own.set(&trial).unwrap();

        let (found, notes) = left_behind(&cache);
        assert_eq!(found.iter().map(|f| (&f.path, &f.trial)).collect::<Vec<_>>(), [(&ended, &trial)]);
        assert!(notes.len() == 1 && notes[0].contains("trying-7-3"), "{notes:?}");
        // the found one is the caller's to remove; the torn one is gone; a fresh empty one may be
        // another process's marker before its lock
        assert!(ended.exists() && !torn.exists() && fresh_empty.exists());
        assert!(live.exists() && other_cache.exists() && marker_path(&cache).exists());
        std::fs::remove_file(&ended).unwrap();
        own.remove().unwrap();
        assert!(!marker_path(&cache).exists());
        drop(held);
        // once its process has ended, the lock is gone and its trial is found
        assert_eq!(left_behind(&cache).0.len(), 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_candidate_may_take_minutes_to_compile_and_seconds_to_run() {
        let ms = Duration::from_millis;
        let limits = Limits::from_default(ms(400), ms(2));
        assert_eq!(limits.compile, Duration::from_secs(128));
        assert_eq!(limits.run, Duration::from_secs(32));
    }
}
