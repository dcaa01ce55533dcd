//! The `sasprune` command line: parses the arguments (`cli::args`), runs the subcommand (one
//! module each under `cli/`, as cargo does) and turns the outcome into an exit code: 0 done,
//! 1 failed, 2 bad usage, 75 stopped by `--time-limit` (continue it with the printed command).

#[macro_use]
extern crate sasprune;

mod cli;

use cli::args::{parse_cli, Cli, Command};
use cli::{common, compare, eval, export, pipeline, train};
use sasprune::{gpu, Error, Result};
use std::ffi::OsString;

fn run(cli: Cli, args: &[OsString]) -> Result<()> {
    if let Some(text) = &cli.time_limit {
        // counted from the command's start, as a job scheduler counts it
        let limit = sasprune::time_limit::parse(text).map_err(Error::as_usage)?;
        if matches!(cli.command, Some(Command::Devices | Command::Bench { .. } | Command::Eval(_) | Command::Export(_)))
        {
            return Err(Error::Usage(
                "--time-limit applies to the pipeline, `train` and `compare`, which save and resume; drop it here"
                    .into(),
            ));
        }
        sasprune::time_limit::start(limit);
    }
    let mode = cli.tune;
    if mode.is_none() {
        sasprune::tune::mode_from_env()?;
    }
    sasprune::tune::configure(sasprune::tune::Settings { mode, cache: cli.tune_cache.clone() });
    let env = gpu::GpuOptions::from_env();
    let options = gpu::GpuOptions {
        backend: cli.backend.clone().or(env.backend),
        adapter: cli.adapter.clone().or(env.adapter),
        limits: env.limits,
    };
    let Some(command) = cli.command else {
        gpu::init(&options)?;
        return pipeline::run_pipeline(args, &cli.prune);
    };
    match command {
        Command::Devices => {
            let mut list = gpu::list_adapters(options.backend.as_deref())?;
            if list.is_empty() {
                list.push(match options.backend.as_deref() {
                    Some(b) => format!("no adapters on backend(s) {b}; `sasprune devices` without --backend lists the others"),
                    None => "no adapters found; on a machine without a GPU install a software Vulkan driver (Debian/Ubuntu: apt-get install mesa-vulkan-drivers)".into(),
                });
            }
            sasprune::logging::print_result(&(list.join("\n") + "\n"))
        }
        Command::Bench { filter, table, .. } if !table.is_empty() => {
            sasprune::logging::print_result(&sasprune::bench::table::side_by_side(&table, filter.as_deref())?)
        }
        Command::Bench { quick, filter, compact, out, .. } => {
            gpu::init(&options)?;
            sasprune::bench::run_and_record(&sasprune::bench::BenchConfig { quick, filter, compact }, &out).map(drop)
        }
        Command::Compare(c) => compare::run_compare(&c, args, &options).map_err(|e| match e {
            Error::TimeLimit(_) => {
                // every run of the comparison resumes like the pipeline: the same command continues
                common::with_resume_hint(e, &common::command_text(args), "every finished run and phase")
            }
            e => e,
        }),
        Command::Eval(a) => eval::run_eval(&a, &options),
        Command::Export(a) => export::run_export(&a, &options),
        Command::Train(a) => train::run_train(a, args, &options),
    }
}

fn main() {
    sasprune::logging::init();
    // as OsString: a path argument may be any bytes on Linux (std::env::args would panic on one)
    let args: Vec<OsString> = std::env::args_os().collect();
    let cli = match parse_cli() {
        Ok(cli) => cli,
        Err(e) => {
            errln!("error: {e}");
            std::process::exit(2);
        }
    };
    let result = run(cli, &args);
    if gpu::device_hung() {
        // Exit handlers (a driver's among them) and wgpu's queue would wait for the hung work.
        let why = match &result {
            Err(e) => e.to_string(),
            Ok(()) => "the GPU stopped finishing its work (see above)".into(),
        };
        errln!("error: {why}");
        gpu::end_process_now(1);
    }
    match result {
        Ok(()) => {}
        Err(e @ Error::TimeLimit(_)) => {
            errln!("{e}");
            std::process::exit(sasprune::time_limit::EXIT_CODE);
        }
        Err(e @ Error::Usage(_)) => {
            errln!("error: {e}");
            std::process::exit(2);
        }
        Err(e) => {
            errln!("error: {e}");
            std::process::exit(1);
        }
    }
}
