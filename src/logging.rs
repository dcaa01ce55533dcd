//! A logger for the `log` facade, which wgpu and its drivers report validation errors and
//! warnings through (without one installed they would be dropped silently). `RUST_LOG` filters
//! it as usual: a level (`warn`, the default; `error`, `info`, `debug`, `trace`, `off`) and
//! `target=level` pairs, comma-separated, e.g. `RUST_LOG=wgpu_hal=info,warn`. Lines go to stderr
//! above the progress bars (which are suspended while a line is written), never through them.

use std::sync::OnceLock;

/// `println!` that does not panic when stdout is gone (a pipe whose reader has ended, as after
/// `| head`): what a run prints is for its user, and its work and saves go on without them.
#[macro_export]
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

/// Writes `text` to stdout where it is what the command produces (`eval`, `devices`,
/// `bench --table`), not a log beside its files: a failed write (a full disk, a closed pipe) is
/// then the command's failure, an error naming standard output.
pub fn print_result(text: &str) -> crate::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes()).and_then(|()| out.flush()).map_err(|e| crate::Error::io("standard output", e))
}

/// `eprintln!` that does not panic when stderr is gone (see [`outln!`]).
#[macro_export]
macro_rules! errln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

/// Progress bars are drawn through this, so log lines can be printed above them.
pub fn bars() -> &'static indicatif::MultiProgress {
    static BARS: OnceLock<indicatif::MultiProgress> = OnceLock::new();
    BARS.get_or_init(indicatif::MultiProgress::new)
}

struct Filter {
    default: log::LevelFilter,
    /// (target prefix, level), the longest prefix first.
    targets: Vec<(String, log::LevelFilter)>,
}

impl Filter {
    fn parse(spec: &str) -> Filter {
        let mut f = Filter { default: log::LevelFilter::Warn, targets: Vec::new() };
        for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            match part.split_once('=') {
                Some((target, level)) => {
                    if let Ok(l) = level.trim().parse() {
                        f.targets.push((target.trim().to_string(), l));
                    }
                }
                None => {
                    if let Ok(l) = part.parse() {
                        f.default = l;
                    }
                }
            }
        }
        f.targets.sort_by_key(|(t, _)| std::cmp::Reverse(t.len()));
        f
    }

    fn level_for(&self, target: &str) -> log::LevelFilter {
        self.targets.iter().find(|(t, _)| target.starts_with(t.as_str())).map_or(self.default, |(_, l)| *l)
    }

    fn max(&self) -> log::LevelFilter {
        self.targets.iter().map(|(_, l)| *l).fold(self.default, std::cmp::max)
    }
}

struct Logger(Filter);

impl log::Log for Logger {
    fn enabled(&self, meta: &log::Metadata) -> bool {
        meta.level() <= self.0.level_for(meta.target())
    }

    fn log(&self, record: &log::Record) {
        if self.enabled(record.metadata()) {
            let line = format!("{} [{}] {}", record.level().as_str().to_lowercase(), record.target(), record.args());
            bars().suspend(|| errln!("{line}"));
        }
    }

    fn flush(&self) {}
}

/// Installs the logger (once; later calls do nothing), filtered by `RUST_LOG`.
pub fn init() {
    static LOGGER: OnceLock<Logger> = OnceLock::new();
    let logger = LOGGER.get_or_init(|| Logger(Filter::parse(&std::env::var("RUST_LOG").unwrap_or_default())));
    if log::set_logger(logger).is_ok() {
        log::set_max_level(logger.0.max());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rust_log_sets_a_default_and_per_target_levels() {
        let f = Filter::parse("wgpu_hal=info, warn ,wgpu_hal::vulkan=error,nonsense=loud");
        assert_eq!(f.level_for("sasprune"), log::LevelFilter::Warn);
        assert_eq!(f.level_for("wgpu_hal::gles"), log::LevelFilter::Info);
        assert_eq!(f.level_for("wgpu_hal::vulkan::device"), log::LevelFilter::Error);
        assert_eq!(f.max(), log::LevelFilter::Info);
        assert_eq!(Filter::parse("").level_for("wgpu"), log::LevelFilter::Warn);
        assert_eq!(Filter::parse("off").max(), log::LevelFilter::Off);
    }
}
