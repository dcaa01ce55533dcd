//! What the subcommands share: opening the data a model reads, the run record that `--resume`
//! replays, and what a failed or stopped run says it saved.

use sasprune::data::{cifar::Cifar10, packed::PackedSplit, Dataset};
use sasprune::models::DataKind;
use sasprune::run_dir::{self, DataRecord, RunRecord};
use sasprune::{checkpoint, gpu, train, Error, Result};
use std::ffi::OsString;
use std::path::{Path, PathBuf};

/// `--classes`, or as many classes as the data holds (CIFAR-10: 10; a pack: its header's count),
/// checked before anything is allocated from it.
pub(crate) fn classes_for(given: Option<usize>, data: &dyn Dataset) -> Result<usize> {
    let classes = given.unwrap_or(data.classes());
    sasprune::models::check_classes(classes)?;
    if classes < data.classes() {
        return Err(Error::invalid(format!(
            "--classes {classes} is fewer than the {} classes the data's labels hold: drop --classes (it defaults to \
             the data's) or give at least {0}",
            data.classes()
        )));
    }
    Ok(classes)
}

/// (train, test) datasets for `model`.
pub(crate) fn open_data(model: &str, dir: Option<&Path>) -> Result<(Box<dyn Dataset>, Box<dyn Dataset>)> {
    match sasprune::models::spec(model)?.data {
        DataKind::Packed => {
            let dir = dir.unwrap_or(Path::new("data"));
            let open = |f: &str| PackedSplit::open(&dir.join(f)).map(|s| Box::new(s) as Box<dyn Dataset>);
            Ok((open("train.pack")?, open("val.pack")?))
        }
        DataKind::Cifar10 => {
            let c = Cifar10::locate(dir)?;
            Ok((Box::new(c.train), Box::new(c.test)))
        }
    }
}

pub(crate) fn say_adapter() -> Result<()> {
    errln!("adapter: {}", gpu::get()?.adapter);
    Ok(())
}

/// Flags a run directory does not record: the global ones (they choose the machine, not the
/// result) and the run directory itself. All take a value.
pub(crate) const NOT_RECORDED: [&str; 7] =
    ["--backend", "--adapter", "--tune", "--tune-cache", "--time-limit", "--out", "--resume"];

/// The command line's tokens that describe the run: without the program name, the subcommand
/// `sub` and the flags in NOT_RECORDED (with their values).
pub(crate) fn recorded_args(args: &[OsString], sub: Option<&str>) -> Result<Vec<String>> {
    let mut out = Vec::new();
    let mut sub = sub;
    let mut skip_value = false;
    for t in args.iter().skip(1) {
        if std::mem::take(&mut skip_value) {
            continue;
        }
        // the run record is JSON text: a token it keeps must be UTF-8 (paths travel as OsString
        // everywhere else, and --out, which is not recorded, may be any name)
        let Some(t) = t.to_str() else {
            return Err(Error::invalid(format!(
                "'{}' is not UTF-8 text, and a run records its flags as text so that --resume can replay them: \
                 rename that file or directory (only --out may have such a name)",
                t.to_string_lossy()
            )));
        };
        if sub == Some(t) {
            sub = None;
            continue;
        }
        if NOT_RECORDED.contains(&t.split('=').next().unwrap_or("")) {
            skip_value = !t.contains('=');
            continue;
        }
        out.push(t.to_string());
    }
    Ok(out)
}

/// For `--resume DIR`: the run's record, with its `args` updated by the flags given now, which
/// must be among `overridable` (where the data lies, how far to go, a lower learning rate after
/// divergence); and the names of those flags. Callers take the saved flags ([`saved_flags`], or
/// for an older record [`legacy_command_line`]), apply the ones given now, store the result in
/// the record's `flags` and save it once the resumed run is validated, so the next resume
/// continues with them.
pub(crate) fn resume_record(
    dir: &Path,
    command: &str,
    args: &[OsString],
    overridable: &[&str],
) -> Result<(RunRecord, Vec<String>)> {
    refuse_another_out(dir, args)?;
    let sub = (command != "pipeline").then_some(command);
    let given = recorded_args(args, sub)?;
    let mut overrides = Vec::new();
    let mut extra = Vec::new();
    let mut tokens = given.iter();
    while let Some(t) = tokens.next() {
        let (name, inline) = match t.split_once('=') {
            Some((n, v)) => (n, Some(v.to_string())),
            None => (t.as_str(), None),
        };
        if overridable.contains(&name) {
            let value = inline.or_else(|| tokens.next().cloned()).unwrap_or_default();
            overrides.push((name.to_string(), value));
        } else {
            extra.push(t.as_str());
        }
    }
    if !extra.is_empty() {
        return Err(Error::Usage(format!(
            "--resume continues a run with the flags it started with (see {}); besides {} it takes no others \
             (got {}). To change settings, start a new run with --out",
            dir.join(run_dir::RECORD_FILE).display(),
            overridable.join(", "),
            extra.join(" ")
        )));
    }
    let mut record = RunRecord::load(dir, command)?;
    record.args = run_dir::replay(&record.args, &overrides);
    Ok((record, overrides.into_iter().map(|(name, _)| name).collect()))
}

/// `--out` beside `--resume DIR` naming another directory: a resumed run continues in DIR (its
/// saved state is there), so the other name would be ignored; refused instead.
pub(crate) fn refuse_another_out(dir: &Path, args: &[OsString]) -> Result<()> {
    let mut tokens = args.iter().skip(1);
    while let Some(t) = tokens.next() {
        let out = match t.to_str() {
            Some("--out") => tokens.next().map(PathBuf::from),
            Some(t) => t.strip_prefix("--out=").map(PathBuf::from),
            None => None,
        };
        if let Some(out) = out.filter(|o| !same_directory(o, dir)) {
            let shown = match out.as_os_str().is_empty() {
                true => "''".to_string(),
                false => out.display().to_string(),
            };
            return Err(Error::Usage(format!(
                "--resume {} continues the run in that directory, where its state is; --out {shown} would be \
                 ignored: leave --out out (to start a separate run there, give --out without --resume)",
                dir.display()
            )));
        }
    }
    Ok(())
}

/// Whether two paths name one directory (the same text, or the same directory on disk).
fn same_directory(a: &Path, b: &Path) -> bool {
    a == b || matches!((a.canonicalize(), b.canonicalize()), (Ok(x), Ok(y)) if x == y)
}

/// The typed flags a record saved (None for a record of an older version, which saved argv only).
pub(crate) fn saved_flags<T: serde::de::DeserializeOwned>(dir: &Path, record: &RunRecord) -> Result<Option<T>> {
    let Some(flags) = &record.flags else { return Ok(None) };
    serde_json::from_value(flags.clone()).map(Some).map_err(|e| {
        Error::invalid(format!(
            "{}: its flags do not read back ({e}); the file is damaged",
            dir.join(run_dir::RECORD_FILE).display()
        ))
    })
}

/// For a record without typed flags (older versions): the command line to parse in its place,
/// its saved arguments replayed after the subcommand, with the run directory.
pub(crate) fn legacy_command_line(dir: &Path, command: &str, record: &RunRecord) -> Vec<OsString> {
    let mut line: Vec<OsString> = vec!["sasprune".into()];
    line.extend((command != "pipeline").then(|| OsString::from(command)));
    line.extend(record.args.iter().map(OsString::from));
    line.extend([if command == "pipeline" { "--out" } else { "--resume" }.into(), dir.as_os_str().to_owned()]);
    line
}

/// Writes the record of a new run into `dir` (its argv and its typed `flags`), refusing a
/// directory that already holds one.
pub(crate) fn start_run_record(
    dir: &Path,
    command: &str,
    args: &[OsString],
    data: DataRecord,
    flags: &impl serde::Serialize,
) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let sub = (command != "pipeline").then_some(command);
    let mut record = RunRecord::new(command, recorded_args(args, sub)?, data);
    record.flags = Some(serde_json::to_value(flags).expect("flags serialize"));
    record.save(dir)
}

/// A run that failed after it started (a full disk, a lost device, a diverged loss) keeps what it
/// saved: the error says what that is (`saved`, from [`saved_pipeline`] or [`saved_training`])
/// and how to continue, unless it already does.
pub(crate) fn with_resume_hint(e: Error, command: &str, saved: &str) -> Error {
    // a divergence message says what to change and how to go on; a resume alone would diverge again
    if matches!(e, Error::Diverged(_)) {
        return e;
    }
    if let Error::TimeLimit(msg) = e {
        return Error::TimeLimit(format!(
            "{msg}; saved: {saved}; continue with `{command}` (with --time-limit again for a limited session)"
        ));
    }
    // bad input (a damaged file, data the model cannot take): a plain resume meets it again
    let how = match e {
        Error::Invalid(_) => format!(
            "once that is fixed, continue with `{command}`; where a flag must change, start a new run (another --out)"
        ),
        _ => format!("continue with `{command}`"),
    };
    Error::invalid(format!("{e}; saved: {saved}; {how}"))
}

/// What a pipeline run directory holds for a resume, in words.
pub(crate) fn saved_pipeline(dir: &Path) -> String {
    let log = sasprune::run_dir::RunState::load(dir).unwrap_or_default();
    let mut parts: Vec<String> =
        sasprune::run_dir::RunState::PHASES.iter().filter(|p| log.done(p)).map(|p| format!("the {p} phase")).collect();
    if let Ok(meta) = checkpoint::read_metadata(&dir.join("admm_state.safetensors")) {
        if let Some(k) = meta.get("k").filter(|_| !log.done("admm")) {
            parts.push(format!("the ADMM phase through outer iteration {k}"));
        }
    }
    for phase in ["dense", "baseline", "retrain"] {
        if let Some(step) = train::saved_step(&dir.join(phase)).filter(|_| !log.done(phase)) {
            parts.push(format!("{phase} training through step {step}"));
        }
    }
    if parts.is_empty() {
        "nothing yet (the run starts over from its beginning)".into()
    } else {
        parts.join(", ")
    }
}

/// What a training run directory holds for a resume, in words.
pub(crate) fn saved_training(dir: &Path) -> String {
    match train::saved_step(dir) {
        Some(step) => format!("the checkpoint of step {step}"),
        None => "no checkpoint yet (the run starts over from step 0)".into(),
    }
}

/// The command line as a user would retype it (`sasprune` and the arguments, lossily as text).
pub(crate) fn command_text(args: &[OsString]) -> String {
    std::iter::once("sasprune".into())
        .chain(args.iter().skip(1).map(|a| a.to_string_lossy().into_owned()))
        .collect::<Vec<String>>()
        .join(" ")
}
