//! `sasprune eval`: top-1, top-5 and loss of a model's weights on the test set.

use super::args::EvalArgs;
use super::common::{classes_for, open_data, say_adapter};
use sasprune::models::Model;
use sasprune::{checkpoint, gpu, train, Error, Result};

/// Evaluates `a.weights` on the test set, as text or (`--json`) one JSON object.
pub(crate) fn run_eval(a: &EvalArgs, options: &gpu::GpuOptions) -> Result<()> {
    sasprune::models::spec(&a.model).map_err(Error::as_usage)?;
    let flag_norm = a.data.normalize().map_err(Error::as_usage)?;
    gpu::init(options)?;
    if !a.json {
        say_adapter()?;
    }
    let batch = match a.batch {
        Some(b) => sasprune::models::check_batch(&a.model, b, "--batch").map(|_| b).map_err(Error::as_usage)?,
        None => sasprune::models::largest_batch(&a.model)?.min(500),
    };
    let (_, test) = open_data(&a.model, a.data.data.as_deref())?;
    let classes = classes_for(a.classes, test.as_ref())?;
    // read once (a pipe cannot be read twice); a compact model is rebuilt at its widths
    let ck = checkpoint::Checkpoint::load(&a.weights)?;
    let widths = sasprune::models::widths_in(&ck.metadata, &a.weights)?;
    let mut model = Model::build_arch(&a.model, classes, widths.as_deref(), 0)?;
    let stored = checkpoint::load_model_from(&mut model, &ck, &a.weights)?;
    model.set_precision(a.precision)?;
    let norm = checkpoint::choose_normalize(flag_norm, stored, &a.model, &a.weights.display().to_string());
    let r = train::evaluate(&mut model, test.as_ref(), norm, batch, !a.json)?;
    if a.json {
        let doc = serde_json::json!({
            "model": a.model, "top1": r.top1, "top5": r.top5, "loss": r.loss, "images": r.images,
            "seconds": r.seconds, "adapter": gpu::get()?.adapter.name, "precision": a.precision,
        });
        sasprune::logging::print_result(&format!("{doc}\n"))
    } else {
        sasprune::logging::print_result(&format!(
            "{} ({}): top-1 {:.2}% | top-5 {:.2}% | loss {:.4} | {} images in {:.1} s ({:.0} img/s)\n",
            a.model,
            a.precision,
            r.top1,
            r.top5,
            r.loss,
            r.images,
            r.seconds,
            r.images as f64 / r.seconds
        ))
    }
}
