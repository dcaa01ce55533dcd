//! One error type for the whole crate: every failure a user can cause ends here, with a message
//! that names the problem and what to do about it.

use std::fmt;

#[derive(Debug)]
pub enum Error {
    /// No adapter matched; the text says what was looked for and how to install a driver.
    NoAdapter(String),
    /// The GPU runtime reported a failure (device lost, validation, mapping).
    Gpu(String),
    /// A buffer larger than the device allows.
    TooLarge { what: String, bytes: u64, limit: u64 },
    /// The device could not allocate a buffer (`in_use`: bytes already held by this process).
    OutOfMemory { what: String, bytes: u64, in_use: u64, detail: String },
    /// Operands of an op have shapes that do not fit together.
    Shape { op: &'static str, detail: String },
    /// A bad argument (flag, hyperparameter, file content) with an explanation.
    Invalid(String),
    /// A command line whose flags are wrong, found before any work started (the command line
    /// exits with 2, as for flags that do not parse).
    Usage(String),
    /// The loss became NaN or infinite; the text says what was kept and how to go on (a plain
    /// resume would diverge again).
    Diverged(String),
    /// `--time-limit` stopped the run after it saved its state; the text says where it stopped.
    /// Not a failure: the command line exits with `time_limit::EXIT_CODE` and how to continue.
    TimeLimit(String),
    /// An I/O failure, with the path it concerned.
    Io { path: String, source: std::io::Error },
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub fn shape(op: &'static str, detail: impl Into<String>) -> Self {
        Error::Shape { op, detail: detail.into() }
    }
    pub fn invalid(msg: impl Into<String>) -> Self {
        Error::Invalid(msg.into())
    }
    /// The error as bad usage where it is a bad argument (for the checks of a command's flags,
    /// before it starts); any other error unchanged.
    pub fn as_usage(self) -> Self {
        match self {
            Error::Invalid(msg) => Error::Usage(msg),
            e => e,
        }
    }
    /// The same kind of error, its text led by `context` (the phase it happened in, say), so that
    /// callers can still tell a bad input from a device failure.
    pub fn within(self, context: &str) -> Self {
        let lead = |m: String| format!("{context}: {m}");
        match self {
            Error::NoAdapter(m) => Error::NoAdapter(lead(m)),
            Error::Gpu(m) => Error::Gpu(lead(m)),
            Error::TooLarge { what, bytes, limit } => Error::TooLarge { what: lead(what), bytes, limit },
            Error::OutOfMemory { what, bytes, in_use, detail } => {
                Error::OutOfMemory { what: lead(what), bytes, in_use, detail }
            }
            Error::Shape { op, detail } => Error::Shape { op, detail: lead(detail) },
            Error::Invalid(m) => Error::Invalid(lead(m)),
            Error::Usage(m) => Error::Usage(lead(m)),
            Error::Diverged(m) => Error::Diverged(lead(m)),
            Error::TimeLimit(m) => Error::TimeLimit(lead(m)),
            Error::Io { path, source } => Error::Io { path: lead(path), source },
        }
    }
    pub fn io(path: impl AsRef<std::path::Path>, source: std::io::Error) -> Self {
        Error::Io { path: path.as_ref().display().to_string(), source }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::NoAdapter(msg) => write!(f, "no GPU adapter: {msg}"),
            Error::Gpu(msg) => write!(f, "GPU error: {msg}"),
            Error::TooLarge { what, bytes, limit } => write!(
                f,
                "{what} needs a buffer of {:.1} MiB but this device allows at most {:.1} MiB \
                 per buffer; use a smaller batch size or a device with more memory",
                *bytes as f64 / 1048576.0,
                *limit as f64 / 1048576.0
            ),
            Error::OutOfMemory { what, bytes, in_use, detail } => write!(
                f,
                "the device is out of memory allocating {:.1} MiB for {what} ({:.1} MiB already in use): {detail}; \
                 use a smaller batch size",
                *bytes as f64 / 1048576.0,
                *in_use as f64 / 1048576.0
            ),
            Error::Shape { op, detail } => write!(f, "shape mismatch in {op}: {detail}"),
            Error::Invalid(msg) | Error::Usage(msg) | Error::Diverged(msg) | Error::TimeLimit(msg) => {
                write!(f, "{msg}")
            }
            Error::Io { path, source } => write!(f, "{path}: {source}"),
        }
    }
}

impl std::error::Error for Error {}

/// A number as a user would type it in a message: `0.04`, `190`, and `1e30` or `1e-7` outside
/// [1e-4, 1e6) (Display would print 1e308 with all of its 309 digits). An f32 prints as the f32
/// the user typed (`1e30`, not the f64 it widens to).
pub fn number_text<T: Into<f64> + fmt::Display + fmt::LowerExp + Copy>(v: T) -> String {
    let x: f64 = v.into();
    if x == 0.0 || !x.is_finite() || (1e-4..1e6).contains(&x.abs()) {
        format!("{v}")
    } else {
        format!("{v:e}")
    }
}
