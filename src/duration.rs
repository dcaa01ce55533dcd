//! Durations as users write them and read them (`90s`, `9m`, `1h30m`): for `--time-limit` and
//! for `SASPRUNE_DEVICE_TIMEOUT`. Below the engine, as `error` is, so that every layer may use it.

use std::time::Duration;

/// Parses a duration written with units: `90s`, `9m`, `2h`, `1h30m`, `1.5h`, `1d` (a unit is
/// required: a bare number is ambiguous). None unless it lies between 1 second and 366 days.
pub fn parse(text: &str) -> Option<Duration> {
    let mut seconds = 0.0f64;
    let mut number = String::new();
    let mut any = false;
    for c in text.trim().chars() {
        if c.is_ascii_digit() || c == '.' {
            number.push(c);
            continue;
        }
        let unit = match c {
            's' => 1.0,
            'm' => 60.0,
            'h' => 3600.0,
            'd' => 86400.0,
            _ => return None,
        };
        let v: f64 = number.parse().ok()?;
        seconds += v * unit;
        number.clear();
        any = true;
    }
    let in_range = seconds.is_finite() && (1.0..=366.0 * 86400.0).contains(&seconds);
    (number.is_empty() && any && in_range).then(|| Duration::from_secs_f64(seconds))
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
            assert_eq!(parse(text), Some(Duration::from_secs_f64(secs)), "{text}");
        }
        for text in ["", "9", "m", "9x", "-5m", "0s", "0.5s", "400d", "1e3s", "nan", "9 m"] {
            assert_eq!(parse(text), None, "{text}");
        }
        assert_eq!(describe(Duration::from_secs(5400)), "1h30m");
        assert_eq!(describe(Duration::from_secs(45)), "45s");
    }
}
