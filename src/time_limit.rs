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

/// Parses a duration as users write it: `90s`, `9m`, `2h`, `1h30m`, `1.5h` (a unit is required:
/// a bare number is ambiguous). Between 1 second and 366 days.
pub fn parse(text: &str) -> crate::Result<Duration> {
    let bad = || {
        Error::invalid(format!(
            "--time-limit '{text}' is not a duration: write it with units, e.g. 90s, 9m, 2h or 1h30m (1s to 366d)"
        ))
    };
    let t = text.trim();
    let mut seconds = 0.0f64;
    let mut number = String::new();
    let mut any = false;
    for c in t.chars() {
        if c.is_ascii_digit() || c == '.' {
            number.push(c);
            continue;
        }
        let unit = match c {
            's' => 1.0,
            'm' => 60.0,
            'h' => 3600.0,
            'd' => 86400.0,
            _ => return Err(bad()),
        };
        let v: f64 = number.parse().map_err(|_| bad())?;
        seconds += v * unit;
        number.clear();
        any = true;
    }
    if !number.is_empty() || !any || !seconds.is_finite() || !(1.0..=366.0 * 86400.0).contains(&seconds) {
        return Err(bad());
    }
    Ok(Duration::from_secs_f64(seconds))
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
    Error::TimeLimit(format!("stopped before the time limit ({}) instead of {what}", describe(limit)))
}

/// A duration as `1h30m`, `9m`, `45s`.
pub fn describe(d: Duration) -> String {
    let s = d.as_secs();
    let (h, m, sec) = (s / 3600, s / 60 % 60, s % 60);
    let mut out = String::new();
    if h > 0 {
        out += &format!("{h}h");
    }
    if m > 0 {
        out += &format!("{m}m");
    }
    if sec > 0 || out.is_empty() {
        out += &format!("{sec}s");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units_and_bad_ones_are_refused() {
        for (text, secs) in
            [("90s", 90.0), ("9m", 540.0), ("2h", 7200.0), ("1h30m", 5400.0), ("1.5h", 5400.0), ("1d", 86400.0)]
        {
            assert_eq!(parse(text).unwrap(), Duration::from_secs_f64(secs), "{text}");
        }
        for text in ["", "9", "m", "9x", "-5m", "0s", "0.5s", "400d", "1e3s", "nan", "9 m"] {
            let e = parse(text).expect_err(text).to_string();
            assert!(e.contains("--time-limit") && e.contains("9m"), "{text}: {e}");
        }
        assert_eq!(describe(Duration::from_secs(5400)), "1h30m");
        assert_eq!(describe(Duration::from_secs(45)), "45s");
    }
}
