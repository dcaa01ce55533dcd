//! `--time-limit DURATION`: a run that must end before a wall-clock limit (a cluster job's, a
//! preemptible VM's, a 10-minute GPU slot's) saves its state and stops cleanly before it, instead
//! of being killed and repeating the work since its last save.
//!
//! The limit is process-wide, like the GPU device: it counts from [`start`] (the command's start),
//! and every loop that can stop asks [`fits`] before a piece of work — a training step (with the
//! evaluation that ends an epoch), an ADMM outer iteration, a phase's evaluation — passing its own
//! estimate of that work. [`fits`] adds the longest save this process has made so far (saves
//! report their cost with [`note_save`]) and a safety margin, so the state is written before the
//! limit, not after. A loop that is told no saves what it has and returns [`reached`], which the
//! command line turns into exit code [`EXIT_CODE`] with the command that continues the run.

use crate::Error;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The exit code of a run stopped by its time limit (BSD's EX_TEMPFAIL: "try again later"),
/// distinct from a failure (1) and from bad usage (2), so job scripts can resubmit on it.
pub const EXIT_CODE: i32 = 75;

struct Limit {
    deadline: Instant,
    limit: Duration,
    longest_save: Duration,
}

static LIMIT: Mutex<Option<Limit>> = Mutex::new(None);

fn with<T>(f: impl FnOnce(&mut Option<Limit>) -> T) -> T {
    f(&mut LIMIT.lock().unwrap_or_else(|e| e.into_inner()))
}

/// Parses `--time-limit`'s duration (`crate::duration::parse`: `90s`, `9m`, `2h`, `1h30m`, a unit
/// required, 1 second to 366 days).
pub fn parse(text: &str) -> crate::Result<Duration> {
    crate::duration::parse(text).ok_or_else(|| {
        Error::invalid(format!(
            "--time-limit '{text}' is not a duration: write it with units, e.g. 90s, 9m, 2h or 1h30m (1s to 366d)"
        ))
    })
}

/// Starts the limit: the run must have stopped `limit` from now.
pub fn start(limit: Duration) {
    with(|l| *l = Some(Limit { deadline: Instant::now() + limit, limit, longest_save: Duration::ZERO }));
}

/// A save of run state took `cost`: later checks keep room for one like it.
pub fn note_save(cost: Duration) {
    with(|l| {
        if let Some(l) = l {
            l.longest_save = l.longest_save.max(cost);
        }
    });
}

/// Whether `work` (the caller's estimate), then a save, still ends before the limit with a margin
/// to spare (2% of the limit, at least 1 s and at most 30 s). Always true without a limit.
pub fn fits(work: Duration) -> bool {
    with(|l| match l {
        None => true,
        Some(l) => {
            let margin = l.limit.mul_f64(0.02).clamp(Duration::from_secs(1), Duration::from_secs(30));
            Instant::now() + work + l.longest_save + margin <= l.deadline
        }
    })
}

/// The error a loop returns once it has saved its state because the next piece of work
/// (`what`) would not fit.
pub fn reached(what: &str) -> Error {
    let limit = with(|l| l.as_ref().map(|l| l.limit)).unwrap_or_default();
    Error::TimeLimit(format!("stopped before the time limit ({}) instead of {what}", crate::duration::describe(limit)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_limit_that_is_not_a_duration_names_the_flag() {
        assert_eq!(parse("1h30m").unwrap(), Duration::from_secs(5400));
        for text in ["", "9", "9x"] {
            let e = parse(text).expect_err(text).to_string();
            assert!(e.contains("--time-limit") && e.contains("9m"), "{text}: {e}");
        }
    }
}
