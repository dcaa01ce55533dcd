//! Waiting for the device, with a limit: a kernel that never finishes (a driver that compiled it
//! wrongly, a GPU that stopped answering) ends the run with a message instead of holding it for
//! good. (The kernel tuner watches its candidates more closely, against the default plan's time:
//! `tune::trial`.)
//!
//! Submissions are waited for in turn, oldest first, each given the limit
//! (`SASPRUNE_DEVICE_TIMEOUT`, default 10 minutes). One submission holds at most one training
//! step, one evaluation batch or one ADMM iteration on the paths that queue work (they submit at
//! least that often), so the limit is the same however much work is queued behind it, and it is
//! far beyond what a step takes on any GPU. Lavapipe runs its work inside the submit, so there
//! the waits are short whatever happens. The limit is counted here, by waits of at most a second
//! each, not left to the backend: GL's fence waits end after about 2 s whatever they are given.
//!
//! Once a submission has run past the limit the device is taken for hung: every later submit and
//! wait fails at once (the run's error path must not wait again), and the command line ends the
//! process without the C library's exit handlers ([`end_process_now`]): a driver's handler, or
//! wgpu's queue as it is dropped, would wait for the hung work.

use crate::{Error, Result};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long one submission may run: 10 minutes unless `SASPRUNE_DEVICE_TIMEOUT` says otherwise.
const DEFAULT_LIMIT: Duration = Duration::from_secs(600);

/// Set when a submission ran past the limit.
static HUNG: AtomicBool = AtomicBool::new(false);

/// Set by fault injection (`SASPRUNE_FAULT_HANG`): the device's work never finishes from then on.
static HUNG_BY_FAULT: AtomicBool = AtomicBool::new(false);

/// Whether a submission has run past the limit in this process (the device cannot be used again).
pub fn device_hung() -> bool {
    HUNG.load(Ordering::SeqCst)
}

/// Fault injection: from now on no submission finishes, as if a kernel just dispatched never ended.
pub(super) fn inject_hang() {
    HUNG_BY_FAULT.store(true, Ordering::SeqCst);
}

/// Ends the process at once with `code`: other threads may be blocked inside the driver, so
/// neither destructors nor the C library's exit handlers (a driver's among them) run. Flush what
/// must be seen first.
pub fn end_process_now(code: i32) -> ! {
    #[cfg(unix)]
    unsafe {
        libc::_exit(code)
    }
    #[cfg(not(unix))]
    std::process::exit(code)
}

/// The limit `SASPRUNE_DEVICE_TIMEOUT` sets: seconds (`900`), a duration (`90s`, `15m`, `1h`), or
/// `off` (wait for good); unset or empty: 10 minutes.
pub(super) fn limit_from_env() -> Result<Option<Duration>> {
    parse_limit(std::env::var("SASPRUNE_DEVICE_TIMEOUT").ok().as_deref())
}

fn parse_limit(text: Option<&str>) -> Result<Option<Duration>> {
    let text = text.map(str::trim).unwrap_or("");
    if text.is_empty() {
        return Ok(Some(DEFAULT_LIMIT));
    }
    if text.eq_ignore_ascii_case("off") {
        return Ok(None);
    }
    let seconds = match text.parse::<f64>() {
        Ok(s) => Some(s),
        Err(_) => crate::duration::parse(text).map(|d| d.as_secs_f64()),
    };
    match seconds {
        Some(s) if s.is_finite() && (1.0..=366.0 * 86400.0).contains(&s) => Ok(Some(Duration::from_secs_f64(s))),
        // (an environment setting read before any work: bad usage, as a bad flag is)
        _ => Err(Error::Usage(format!(
            "SASPRUNE_DEVICE_TIMEOUT={text}: expected how long one submission of work may take the device before it \
             is taken for hung: seconds (600), a duration (90s, 15m, 1h) of at least 1 s, or `off`"
        ))),
    }
}

/// The submissions not yet waited for, oldest first, each with its sequence number (wgpu's
/// submission index cannot be compared).
///
/// Every submit and every poll of the device happens under this one lock. wgpu-core (30)
/// asserts, in a poll that waited for a submission and timed out, that a queue it finds empty
/// has finished that submission, by a fence value it read before another thread's poll (or the
/// poll inside a submit) emptied the queue: with threads sharing the device (tests do), polls
/// that can time out must not overlap each other or a submit.
pub(super) struct Submissions {
    limit: Option<Duration>,
    pending: Mutex<(u64, VecDeque<(u64, wgpu::SubmissionIndex)>)>,
}

impl Submissions {
    pub fn new(limit: Option<Duration>) -> Submissions {
        Submissions { limit, pending: Mutex::new((0, VecDeque::new())) }
    }

    /// Submits `commands`; returns the submission's sequence number (for [`Self::wait`]).
    pub fn submit(&self, queue: &wgpu::Queue, commands: wgpu::CommandBuffer) -> u64 {
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        let index = queue.submit([commands]);
        pending.0 += 1;
        let seq = pending.0;
        pending.1.push_back((seq, index));
        seq
    }

    /// Fails once the device is taken for hung: nothing more is submitted to it.
    pub fn refuse_if_hung(&self) -> Result<()> {
        match device_hung() {
            true => Err(self.hung_error()),
            false => Ok(()),
        }
    }

    /// Waits until the device has finished submission `upto` and those before it (everything
    /// submitted when None), then runs the callbacks of finished work (read-back mappings).
    pub fn wait(&self, device: &wgpu::Device, upto: Option<u64>) -> Result<()> {
        self.refuse_if_hung()?;
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        while let Some((seq, index)) = pending.1.front() {
            if upto.is_some_and(|upto| *seq > upto) {
                break;
            }
            self.wait_for_one(device, index.clone())?;
            pending.1.pop_front();
        }
        // (each wait above ran the callbacks of what it waited for; a mapping asked for after
        // its work had finished is run by the next poll)
        let polled = device.poll(wgpu::PollType::Poll);
        drop(pending);
        polled.map(drop).map_err(|e| Error::Gpu(format!("polling the device failed: {e}")))
    }

    /// Runs the callbacks of finished work without waiting (a lost device's among them).
    pub fn poll(&self, device: &wgpu::Device) {
        let _pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        let _ = device.poll(wgpu::PollType::Poll);
    }

    /// Waits for one submission, a second at a time, until the limit has passed.
    fn wait_for_one(&self, device: &wgpu::Device, index: wgpu::SubmissionIndex) -> Result<()> {
        let deadline = self.limit.map(|limit| Instant::now() + limit);
        let past_deadline = || deadline.is_some_and(|d| Instant::now() >= d);
        if HUNG_BY_FAULT.load(Ordering::SeqCst) {
            while !past_deadline() {
                std::thread::sleep(Duration::from_millis(100));
            }
            return Err(self.taken_for_hung());
        }
        loop {
            let slice = Some(Duration::from_secs(1));
            match device.poll(wgpu::PollType::Wait { submission_index: Some(index.clone()), timeout: slice }) {
                Ok(_) => return Ok(()),
                Err(wgpu::PollError::Timeout) if past_deadline() => return Err(self.taken_for_hung()),
                Err(wgpu::PollError::Timeout) => {}
                // a submit that failed (its cause is reported by the device's error check) has
                // nothing to wait for
                Err(wgpu::PollError::WrongSubmissionIndex(..)) => return Ok(()),
            }
        }
    }

    fn taken_for_hung(&self) -> Error {
        HUNG.store(true, Ordering::SeqCst);
        self.hung_error()
    }

    fn hung_error(&self) -> Error {
        let limit = crate::duration::describe(self.limit.unwrap_or_default());
        Error::Gpu(format!(
            "the GPU has not finished one submission of work in {limit} (SASPRUNE_DEVICE_TIMEOUT): a kernel looks \
             hung (a driver fault, or a GPU that stopped answering), and this process cannot use the device again. \
             If it happens again at the same place, `--tune off` runs the fixed kernel plans; if the device is only \
             that slow, raise SASPRUNE_DEVICE_TIMEOUT (e.g. 30m, or `off`)"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_limit_is_ten_minutes_unless_set_in_seconds_a_duration_or_off() {
        assert_eq!(parse_limit(None).unwrap(), Some(Duration::from_secs(600)));
        assert_eq!(parse_limit(Some(" ")).unwrap(), Some(Duration::from_secs(600)));
        assert_eq!(parse_limit(Some("90")).unwrap(), Some(Duration::from_secs(90)));
        assert_eq!(parse_limit(Some("1.5")).unwrap(), Some(Duration::from_millis(1500)));
        assert_eq!(parse_limit(Some("15m")).unwrap(), Some(Duration::from_secs(900)));
        assert_eq!(parse_limit(Some("1h30m")).unwrap(), Some(Duration::from_secs(5400)));
        assert_eq!(parse_limit(Some("OFF")).unwrap(), None);
        for bad in ["0", "-5", "0.5", "ten", "5x", "nan", "inf", "400d"] {
            let e = parse_limit(Some(bad)).unwrap_err().to_string();
            assert!(e.contains(&format!("SASPRUNE_DEVICE_TIMEOUT={bad}")) && e.contains("`off`"), "{bad}: {e}");
        }
    }
}
