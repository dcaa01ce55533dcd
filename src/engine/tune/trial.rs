//! Which candidate plan the tuner is timing, kept on disk while it runs, so that a kernel that
//! takes the process down with it (a driver that crashes compiling or running it, a device lost
//! on it) costs one run and not every run: the next process finds the record of a process that
//! has ended mid-candidate and leaves that kernel out on that adapter.
//!
//! A tuning process writes its marker beside the cache file, `<cache>.trying-<pid>`, while it
//! tunes one product: it holds an exclusive lock on the file (the OS releases it when the
//! process ends, however it ends), writes each candidate into it before the candidate runs and
//! empties it after; the file is removed when the product's choice is made. A marker that can
//! be locked belongs to a process that has ended; one that still names a candidate is that
//! process's last trial. On Unix an interrupted run (SIGINT, SIGTERM, SIGHUP: Ctrl-C, `kill`, a
//! job's time limit) removes its marker as it ends, so stopping a run blames no kernel. A
//! candidate that runs far longer than the product's default plan took (`hang_limit`) is taken
//! for hung by a watchdog thread, which ends the run with a message and keeps the marker (a
//! device busy with a kernel that never ends cannot be used again by this process), so that the
//! next run leaves it out as well.

use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

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
    cache.with_file_name(format!("{}{}", prefix(cache), std::process::id()))
}

impl Marker {
    /// Creates and locks this process's marker beside `cache`.
    pub fn create(cache: &Path) -> std::io::Result<Marker> {
        let path = marker_path(cache);
        interrupt::remove_on_interrupt(&path);
        let file = OpenOptions::new().read(true).write(true).create(true).truncate(true).open(&path)?;
        file.try_lock().map_err(std::io::Error::other)?;
        Ok(Marker { path, file })
    }

    /// Names `trial` as the candidate now running; the watchdog takes it for hung after `limit`.
    pub fn set(&mut self, trial: &Trial, limit: Duration) -> std::io::Result<()> {
        let text = serde_json::to_vec(trial).map_err(std::io::Error::other)?;
        self.file.set_len(0)?;
        self.file.seek(SeekFrom::Start(0))?;
        self.file.write_all(&text)?;
        watchdog::watch(trial, limit);
        Ok(())
    }

    /// No candidate running.
    pub fn clear(&mut self) -> std::io::Result<()> {
        watchdog::stop();
        self.file.set_len(0)
    }

    /// Removes the file: the product's choice is made.
    pub fn remove(self) -> std::io::Result<()> {
        watchdog::stop();
        std::fs::remove_file(&self.path)
    }
}

/// How long a candidate may run before the watchdog takes it for hung, from what the product's
/// default plan took on its first run (`first`: compilation included, as the candidate's first
/// run includes its own) and on a later one (`steady`): 30 s + 10 x first + 1000 x steady. The
/// tuner runs a candidate up to 16 times while it times it, and a candidate may be several times
/// slower than the default; a hung kernel never ends.
pub(super) fn hang_limit(first: Duration, steady: Duration) -> Duration {
    Duration::from_secs(30) + first.saturating_mul(10) + steady.saturating_mul(1000)
}

/// A thread that wakes every 200 ms and compares the running candidate's time with its limit;
/// past it, ends the process with a message (exit code 1), leaving the marker in place.
mod watchdog {
    use super::*;

    /// Milliseconds after `epoch()` when the running candidate is taken for hung; 0: none running.
    static DEADLINE_MS: AtomicU64 = AtomicU64::new(0);
    /// The candidate running now passed its deadline (read by the signal handler).
    pub(super) static HUNG: AtomicBool = AtomicBool::new(false);
    /// The candidate's plan, product and limit, for the note.
    static WATCHED: Mutex<Option<(String, String, Duration)>> = Mutex::new(None);

    fn epoch() -> Instant {
        static EPOCH: OnceLock<Instant> = OnceLock::new();
        *EPOCH.get_or_init(Instant::now)
    }

    pub(super) fn watch(trial: &Trial, limit: Duration) {
        static THREAD: OnceLock<()> = OnceLock::new();
        *WATCHED.lock().unwrap_or_else(|p| p.into_inner()) = Some((trial.tile.clone(), trial.product.clone(), limit));
        HUNG.store(false, Ordering::SeqCst);
        let deadline = (epoch().elapsed() + limit).as_millis().max(1);
        DEADLINE_MS.store(u64::try_from(deadline).unwrap_or(u64::MAX), Ordering::SeqCst);
        THREAD.get_or_init(|| {
            // (a thread that cannot start leaves hung kernels to be stopped by hand)
            let _ = std::thread::Builder::new().name("tuner watchdog".into()).spawn(run);
        });
    }

    pub(super) fn stop() {
        DEADLINE_MS.store(0, Ordering::SeqCst);
        HUNG.store(false, Ordering::SeqCst);
    }

    fn run() {
        loop {
            std::thread::sleep(Duration::from_millis(200));
            let deadline = DEADLINE_MS.load(Ordering::SeqCst);
            let now = u64::try_from(epoch().elapsed().as_millis()).unwrap_or(u64::MAX);
            if deadline == 0 || now < deadline || HUNG.swap(true, Ordering::SeqCst) {
                continue;
            }
            if let Some((tile, product, limit)) = WATCHED.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
                eprintln!(
                    "error: kernel plan {tile} ran for more than {:.0} s while the kernel tuner timed it for {product} \
                     (the default plan took far less): it looks hung, and a device busy with it cannot go on. \
                     Run the command again (a run directory continues with --resume): the next run leaves {tile} out \
                     on this adapter",
                    limit.as_secs_f64()
                );
            }
            end_process();
        }
    }

    /// Exits at once (code 1): the other threads may be blocked inside the driver, so neither
    /// their destructors nor the C library's exit handlers (a driver's among them) run.
    fn end_process() {
        #[cfg(unix)]
        unsafe {
            libc::_exit(1)
        }
        #[cfg(not(unix))]
        std::process::exit(1)
    }
}

/// The trials of ended processes whose markers lie beside `cache` (those that name one), and a
/// note for each marker that could not be read; every such marker is removed. Markers of
/// processes still running (locked) are left alone, and so is this process's own.
pub(super) fn left_behind(cache: &Path) -> (Vec<Trial>, Vec<String>) {
    let (mut trials, mut notes) = (Vec::new(), Vec::new());
    let dir = match cache.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let Ok(entries) = std::fs::read_dir(dir) else { return (trials, notes) };
    let (prefix, own) = (prefix(cache), marker_path(cache));
    for entry in entries.flatten() {
        let path = entry.path();
        let ours = entry.file_name().to_string_lossy().starts_with(&prefix) && path != own;
        let Some(mut file) = ours.then(|| OpenOptions::new().read(true).write(true).open(&path).ok()).flatten() else {
            continue;
        };
        // held by a live process (or a file system without locks: nothing can be told)
        if file.try_lock().is_err() {
            continue;
        }
        let mut text = Vec::new();
        match std::io::Read::read_to_end(&mut file, &mut text) {
            Ok(0) => {}
            Ok(_) => match serde_json::from_slice::<Trial>(&text) {
                Ok(trial) => trials.push(trial),
                Err(e) => notes.push(format!("ignored the unreadable tuner marker {} ({e})", path.display())),
            },
            Err(e) => notes.push(format!("ignored the unreadable tuner marker {} ({e})", path.display())),
        }
        if let Err(e) = std::fs::remove_file(&path) {
            notes.push(format!("could not remove the tuner marker {} ({e})", path.display()));
        }
    }
    (trials, notes)
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
    fn markers_of_ended_processes_are_read_and_removed_and_live_ones_left_alone() {
        let dir = std::env::temp_dir().join(format!("sasprune-trial-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let cache = dir.join("tune.json");
        let trial = Trial { adapter: "GPU | Vulkan".into(), tile: "c16q".into(), product: "k 1x2x3".into() };
        let marker = |pid: u32, text: &[u8]| {
            let path = dir.join(format!("tune.json.trying-{pid}"));
            std::fs::write(&path, text).unwrap();
            path
        };
        let ended = marker(1_000_001, &serde_json::to_vec(&trial).unwrap());
        let empty = marker(1_000_002, b"");
        let torn = marker(1_000_003, b"{\"adapter\":\"GP");
        let live = marker(1_000_004, &serde_json::to_vec(&trial).unwrap());
        let held = File::open(&live).unwrap();
        held.try_lock().unwrap();
        let other_cache = dir.join("other.json.trying-1000005");
        std::fs::write(&other_cache, serde_json::to_vec(&trial).unwrap()).unwrap();
        // this process's own marker, as it tunes
        let mut own = Marker::create(&cache).unwrap();
        own.set(&trial, Duration::from_secs(60)).unwrap();

        let (trials, notes) = left_behind(&cache);
        assert_eq!(trials, std::slice::from_ref(&trial));
        assert!(notes.len() == 1 && notes[0].contains("trying-1000003"), "{notes:?}");
        assert!(!ended.exists() && !empty.exists() && !torn.exists());
        assert!(live.exists() && other_cache.exists() && marker_path(&cache).exists());
        own.remove().unwrap();
        assert!(!marker_path(&cache).exists());
        drop(held);
        // once its process has ended, the lock is gone and its trial is read
        assert_eq!(left_behind(&cache).0, [trial]);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
