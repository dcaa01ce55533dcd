//! The pruning pipeline (no subcommand): its configuration from the flags, and the run.

use super::args::{AdmmLrSchedule, AdmmTrain, Cli, PruneArgs};
use super::common::{
    legacy_command_line, open_data, resume_record, saved_flags, saved_pipeline, say_adapter, start_run_record,
    with_resume_hint,
};
use clap::Parser;
use sasprune::models::Model;
use sasprune::prune::structure::Structure;
use sasprune::prune::{
    self,
    admm::{AdmmNnConfig, SasConfig},
    pipeline::{Method, PipelineConfig, Schedule},
};
use sasprune::run_dir::{self, DataRecord, RunLock, RunRecord};
use sasprune::train::{self, LrSchedule, TrainConfig};
use sasprune::{checkpoint, Error, Result};
use std::ffi::OsString;
use std::path::{Path, PathBuf};

/// The pipeline configuration the flags describe (validated before any work starts).
pub(crate) fn pipeline_config(a: &PruneArgs) -> Result<PipelineConfig> {
    let Some(model) = a.model.clone() else {
        return Err(Error::invalid(
            "say which model to prune, e.g. `sasprune --model resnet32 --rate 6.6x` (or run a subcommand; see --help)",
        ));
    };
    let spec = sasprune::models::spec(&model)?;
    let rate = target_rate(a)?;
    let method = a.method;
    let (sas, mut retrain, dense) = schedules(a, spec)?;
    let admm = admm_nn_config(a, &sas)?;
    if a.subset == Some(0) || a.eval_limit == Some(0) {
        return Err(Error::invalid("--subset and --eval-limit must be at least 1"));
    }
    if a.baseline_epochs > 1_000_000 {
        return Err(Error::invalid(format!("--baseline-epochs must be in 0..=1000000, got {}", a.baseline_epochs)));
    }
    retrain.validate_as("--retrain-epochs", "--retrain-batch")?;
    sasprune::models::check_batch(&model, sas.batch, "--batch")?;
    sasprune::models::check_batch(&model, retrain.batch, "--retrain-batch")?;
    dense.validate()?;
    let eval_every = retrain.eval_every;
    let rate_tag = match a.structure {
        Structure::Weight => a.rate.clone().unwrap_or_else(|| "layers".into()).replace('%', "pct"),
        Structure::Filter => format!("{}-filter", a.rate.clone().unwrap_or_default().replace('%', "pct")),
        Structure::TwoFour => "2of4".into(),
    };
    let out = a.out.clone().unwrap_or_else(|| PathBuf::from(format!("runs/{model}-{rate_tag}-{}", method.name())));
    retrain.divergence_hint = format!(
        "continue from it with a lower learning rate: `sasprune --resume {} --lr {}`",
        out.display(),
        train::lr_text(retrain.lr / 10.0)
    );
    Ok(PipelineConfig {
        model,
        rate,
        layer_rates: a.layer_rates.clone(),
        structure: a.structure,
        precision: a.precision,
        method,
        schedule: a.schedule.name().to_string(),
        sas,
        admm,
        retrain,
        dense: TrainConfig {
            eval_every,
            seed: a.seed,
            deterministic: a.deterministic,
            announce_eta_after: Some(20),
            // the dense phase's lr comes from --schedule, not --lr (that one is the retraining's)
            divergence_hint: "train the dense model with `sasprune train --lr ...` and pass it as --weights".into(),
            ..dense
        },
        weights: a.weights.clone(),
        widths: None,
        preloaded: Default::default(),
        normalize: a.data.normalize()?,
        out,
        seed: a.seed,
        subset: a.subset,
        eval_limit: a.eval_limit,
        deterministic: a.deterministic,
        baseline_epochs: a.baseline_epochs,
        extra_retrain_epochs: 0,
        show_progress: true,
    })
}

/// `--rate`, or a placeholder when `--layer-rates` gives every layer its share (one of the two)
/// or under `--structure 2:4` (which has its own rate and takes neither).
pub(crate) fn target_rate(a: &PruneArgs) -> Result<prune::rate::Rate> {
    if a.structure == Structure::TwoFour {
        return match (&a.rate, &a.layer_rates) {
            (None, None) => Ok(prune::rate::Rate::Percent(50.0)), // 2 of every 4: the plan's own
            _ => Err(Error::invalid(
                "--structure 2:4 sets the rate itself (2 of every 4 weights in each layer whose rows are whole quads): \
                 drop --rate and --layer-rates",
            )),
        };
    }
    if let (Structure::Filter, Some(f)) = (a.structure, &a.layer_rates) {
        return Err(Error::invalid(format!(
            "--layer-rates {} gives shares of weights, which only --structure weight prunes: with --structure filter \
             give --rate (e.g. 2x or 50%, the share of every channel set's channels)",
            f.display()
        )));
    }
    match (&a.rate, &a.layer_rates) {
        (Some(r), Some(f)) => Err(Error::invalid(format!(
            "--rate {r} and --layer-rates {} both set the pruning target: the file gives every layer its \
             percentage, so drop --rate (or the file)",
            f.display()
        ))),
        (Some(r), _) => prune::rate::parse_rate(r),
        (None, Some(_)) => Ok(prune::rate::Rate::Percent(50.0)), // unused: the file decides
        (None, None) => Err(Error::invalid("give a target with --rate (e.g. 6.6x or 85%) or --layer-rates FILE")),
    }
}

/// Sets `$target` to the flag's value when the flag was given.
macro_rules! set {
    ($target:expr, $flag:expr) => {
        if let Some(v) = $flag {
            $target = v;
        }
    };
}

/// SAS-ADMM's settings and the retraining and dense-training configurations: `--schedule`'s,
/// with the flags given on top. Dense training and masked retraining follow the model's recipe
/// (for the ResNets the CIFAR one, which is also the paper's retraining); quick shortens both to
/// cosine schedules.
fn schedules(a: &PruneArgs, spec: &sasprune::models::ModelSpec) -> Result<(SasConfig, TrainConfig, TrainConfig)> {
    let recipe = TrainConfig::from_recipe(&spec.recipe);
    let (mut sas, mut retrain, dense) = match a.schedule {
        Schedule::Paper => (SasConfig::paper(), recipe.clone(), recipe),
        Schedule::Quick => {
            let retrain =
                TrainConfig { epochs: 15, lr: recipe.lr / 2.0, schedule: LrSchedule::Cosine, ..recipe.clone() };
            let dense = TrainConfig { epochs: 30, schedule: LrSchedule::Cosine, ..recipe };
            (SasConfig::quick(), retrain, dense)
        }
    };
    set!(sas.beta, a.beta);
    set!(sas.rho, a.rho);
    set!(sas.lambda, a.lambda);
    set!(sas.inner, a.inner);
    if let Some(outer) = a.outer {
        // K_avg follows K unless given: the schedule's share of averaged iterations
        sas = sas.with_outer(outer);
    }
    set!(sas.k_avg, a.k_avg);
    set!(sas.k0, a.k0);
    set!(sas.v, a.v);
    set!(sas.q, a.q);
    set!(sas.r, a.r);
    set!(sas.s, a.s);
    set!(sas.batch, a.batch);
    sas.file_order = a.deterministic;
    retrain.deterministic = a.deterministic;
    if let Some(epochs) = a.retrain_epochs {
        // the recipe's learning-rate drops at the same share of the shorter or longer run
        retrain = retrain.with_epochs(epochs);
    }
    set!(retrain.lr, a.lr);
    set!(retrain.batch, a.retrain_batch);
    set!(retrain.eval_every, a.eval_every);
    retrain.seed = a.seed;
    sas.validate()?;
    Ok((sas, retrain, dense))
}

/// ADMM-NN's settings: its authors' (within SAS-ADMM's gradient budget `sas`), with the flags
/// given on top.
fn admm_nn_config(a: &PruneArgs, sas: &SasConfig) -> Result<AdmmNnConfig> {
    let iterations = match a.schedule {
        Schedule::Quick => AdmmNnConfig::QUICK_ITERATIONS,
        Schedule::Paper => AdmmNnConfig::PAPER_ITERATIONS,
    };
    let mut admm = AdmmNnConfig::authors(sas, iterations);
    if let Some(n) = a.admm_iterations {
        // as given (validated below), sharing the same budget unless --admm-steps says otherwise
        admm.iterations = n;
        admm.steps = sas.total_gradients().div_ceil(n.max(1));
    }
    set!(admm.rho_growth, a.admm_rho_growth);
    set!(admm.rho_max, a.admm_rho_max);
    set!(admm.lr, a.admm_lr);
    set!(admm.weight_decay, a.admm_weight_decay);
    set!(admm.steps, a.admm_steps);
    admm.lr_drops = a.admm_lr_schedule != Some(AdmmLrSchedule::Constant);
    admm.train_all = a.admm_train != Some(AdmmTrain::Weights);
    admm.reset_momentum = a.admm_reset_momentum;
    if !admm.within_any_budget() && a.admm_steps.is_none() {
        // (its steps derived, not given: say where from)
        return Err(Error::invalid(format!(
            "ADMM-NN shares SAS-ADMM's budget of {} gradients: {} W-subproblems of {} steps each, beyond any \
             budget (at most 1,000,000 of 100,000,000); lower --outer or --inner, or give --admm-iterations \
             and --admm-steps",
            sas.total_gradients(),
            admm.iterations,
            admm.steps
        )));
    }
    admm.validate()?;
    // ρ0 matched to the W-subproblems as they now are, unless given
    admm.rho = a.admm_rho.unwrap_or_else(|| admm.matched_rho());
    admm.validate()?;
    Ok(admm)
}

/// For `--resume DIR`: the flags the run saved (or, from an older version's record, its argv
/// parsed again) with `--data` and `--lr` taken from `now` where given; the record holds them.
fn resumed_flags(dir: &Path, args: &[OsString], now: &PruneArgs) -> Result<(RunRecord, PruneArgs)> {
    let (mut record, given) = resume_record(dir, "pipeline", args, &["--data", "--lr"])?;
    let mut prune = match saved_flags::<PruneArgs>(dir, &record)? {
        Some(saved) => saved,
        None => {
            let line = legacy_command_line(dir, "pipeline", &record);
            Cli::try_parse_from(&line)
                .map_err(|e| Error::invalid(format!("{}: {e}", dir.join(run_dir::RECORD_FILE).display())))?
                .prune
        }
    };
    if given.iter().any(|f| f == "--data") {
        prune.data.data = now.data.data.clone();
    }
    if given.iter().any(|f| f == "--lr") {
        prune.lr = now.lr;
    }
    // Runs started before a rate needed its unit saved `--rate 6.6`, which meant 6.6x then.
    if let Some(r) = prune.rate.as_mut().filter(|r| r.trim().parse::<f64>().is_ok()) {
        r.push('x');
    }
    record.flags = Some(serde_json::to_value(&prune).expect("flags serialize"));
    prune.out = Some(dir.to_path_buf());
    Ok((record, prune))
}

/// The method's flags a run was given that its method does not read (checked and then unused:
/// SAS-ADMM's own settings under ADMM-NN, ADMM-NN's under SAS-ADMM, every ADMM setting under
/// magnitude pruning), as a sentence naming them; `None` when every given flag is read.
/// (`compare` runs several methods, so each of its flags is read by one of them.)
fn flags_the_method_ignores(a: &PruneArgs) -> Option<String> {
    let sas_step = [
        ("--beta", a.beta.is_some()),
        ("--rho", a.rho.is_some()),
        ("--lambda", a.lambda.is_some()),
        ("--k-avg", a.k_avg.is_some()),
        ("--v", a.v.is_some()),
        ("--r", a.r.is_some()),
        ("--s", a.s.is_some()),
    ];
    // the budget: ADMM-NN spends SAS-ADMM's gradients, in its minibatch (--batch last)
    let sas_budget = [
        ("--inner", a.inner.is_some()),
        ("--outer", a.outer.is_some()),
        ("--k0", a.k0.is_some()),
        ("--q", a.q.is_some()),
        ("--batch", a.batch.is_some()),
    ];
    let admm_nn = [
        ("--admm-rho", a.admm_rho.is_some()),
        ("--admm-rho-growth", a.admm_rho_growth.is_some()),
        ("--admm-rho-max", a.admm_rho_max.is_some()),
        ("--admm-lr", a.admm_lr.is_some()),
        ("--admm-lr-schedule", a.admm_lr_schedule.is_some()),
        ("--admm-weight-decay", a.admm_weight_decay.is_some()),
        ("--admm-train", a.admm_train.is_some()),
        ("--admm-reset-momentum", a.admm_reset_momentum),
        ("--admm-iterations", a.admm_iterations.is_some()),
        ("--admm-steps", a.admm_steps.is_some()),
    ];
    let (unread, why): (Vec<(&str, bool)>, &str) = match a.method {
        m if m == Method::SAS_ADMM => (admm_nn.to_vec(), "they set ADMM-NN (--method admm)"),
        // with both its iterations and steps given, ADMM-NN reads not even SAS-ADMM's budget
        m if m == Method::ADMM && a.admm_iterations.is_some() && a.admm_steps.is_some() => (
            [&sas_step[..], &sas_budget[..4]].concat(),
            "they set SAS-ADMM, whose budget --admm-iterations x --admm-steps replaces",
        ),
        m if m == Method::ADMM => (sas_step.to_vec(), "they set SAS-ADMM's steps; ADMM-NN reads only its budget"),
        m if m == Method::MAGNITUDE => {
            ([&sas_step[..], &sas_budget, &admm_nn].concat(), "they set the ADMM phase, which magnitude pruning skips")
        }
        _ => return None,
    };
    let given: Vec<&str> = unread.iter().filter(|(_, set)| *set).map(|(flag, _)| *flag).collect();
    (!given.is_empty()).then(|| {
        format!(
            "--method {} does not read {} ({why}); they have no effect on this run",
            a.method.name(),
            given.join(", ")
        )
    })
}

pub(crate) fn run_pipeline(args: &[OsString], a: &PruneArgs) -> Result<()> {
    // `--resume DIR` continues with the flags the run was started with.
    let (a, record) = match &a.resume {
        Some(dir) => {
            let (record, prune) = resumed_flags(dir, args, a)?;
            (prune, Some(record))
        }
        None => (a.clone(), None),
    };
    let cfg = pipeline_config(&a).map_err(Error::as_usage)?;
    if let Some(warning) = flags_the_method_ignores(&a) {
        errln!("warning: {warning}");
    }
    // Validate the plan and the data before any work starts.
    let (train_set, test_set) = open_data(&cfg.model, a.data.data.as_deref())?;
    let data = DataRecord::of(train_set.as_ref(), test_set.as_ref());
    say_adapter()?;
    let dense_done = sasprune::run_dir::RunState::load(&cfg.out)?.done("dense");
    let mut cfg = cfg;
    // a compact (filter-pruned) start is rebuilt at its widths: from the run's own dense copy once
    // it has one, else from the --weights file, read once (a pipe cannot be read twice) and
    // handed to the dense phase; a run past its dense start needs no --weights file
    let mut start = None;
    if dense_done {
        let path = cfg.out.join("dense.safetensors");
        cfg.widths = sasprune::models::widths_in(&checkpoint::read_metadata(&path)?, &path)?;
    } else if let Some(w) = cfg.weights.clone() {
        let ck = checkpoint::Checkpoint::load(&w)?;
        cfg.widths = sasprune::models::widths_in(&ck.metadata, &w)?;
        start = Some((ck, w));
    }
    let mut model = Model::build_arch(&cfg.model, train_set.classes(), cfg.widths.as_deref(), cfg.seed)?;
    model.set_precision(cfg.precision)?;
    prune::pipeline::make_plan(&model, &cfg)?;
    if let Some((ck, w)) = start {
        // names, shapes (the class count included) and values, before any work
        checkpoint::load_model_from(&mut model, &ck, &w)?;
        cfg.preloaded = checkpoint::Preloaded::new(ck);
    }
    let cfg = prune::pipeline::check_memory(&mut model, &cfg, train_set.as_ref(), test_set.as_ref())?;
    drop(model);
    let _lock = RunLock::acquire(&cfg.out)?;
    match record {
        Some(record) => {
            record.check_data(&cfg.out, &data, a.data.data.as_deref())?;
            record.save(&cfg.out)?;
        }
        None => {
            if RunRecord::exists(&cfg.out) {
                return Err(Error::invalid(format!(
                    "{} already holds a run: continue it with --resume {0} or choose another --out",
                    cfg.out.display()
                )));
            }
            start_run_record(&cfg.out, "pipeline", args, data, &a)?;
        }
    }
    prune::pipeline::run(&cfg, train_set.as_ref(), test_set.as_ref()).map_err(|e| {
        with_resume_hint(e, &format!("sasprune --resume {}", cfg.out.display()), &saved_pipeline(&cfg.out))
    })?;
    Ok(())
}
