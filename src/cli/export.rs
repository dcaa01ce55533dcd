//! `sasprune export`: a model's weights as an ONNX file for deployment runtimes.

use super::args::ExportArgs;
use super::common::say_adapter;
use sasprune::checkpoint::{self, Checkpoint, Normalize};
use sasprune::export::onnx::{self, ExportOptions};
use sasprune::models::{self, DataKind, Model};
use sasprune::{gpu, Error, Result};
use std::path::Path;

/// Exports `a.weights` to `a.out` and says what the file holds and how large it is.
pub(crate) fn run_export(a: &ExportArgs, options: &gpu::GpuOptions) -> Result<()> {
    let spec = models::spec(&a.model).map_err(Error::as_usage)?;
    let flag_norm = a.normalize.as_deref().map(Normalize::from_flag).transpose().map_err(Error::as_usage)?;
    let names = a.class_names.as_deref().map(read_class_names).transpose()?;
    let same = |x: &Path, y: &Path| {
        std::fs::canonicalize(x).ok().zip(std::fs::canonicalize(y).ok()).is_some_and(|(x, y)| x == y)
    };
    if same(&a.out, &a.weights) {
        return Err(Error::Usage(format!(
            "--out {} is the weights file --weights reads: the ONNX file would replace it; choose another --out",
            a.out.display()
        )));
    }
    gpu::init(options)?;
    say_adapter()?;
    let ck = Checkpoint::load(&a.weights)?;
    // the weights' classifier decides before the names file, which is then checked against it
    let classes = a
        .classes
        .or_else(|| ck.tensors.get(spec.classifier).and_then(|(shape, _)| shape.first().copied()))
        .or(names.as_ref().map(Vec::len))
        .unwrap_or(spec.classes);
    if let Some(names) = &names {
        if names.len() != classes {
            return Err(Error::invalid(format!(
                "{} names {} classes, but the model has {classes}; give one name per line for every class",
                a.class_names.as_deref().unwrap_or(Path::new("")).display(),
                names.len()
            )));
        }
    }
    let widths = models::widths_in(&ck.metadata, &a.weights)?;
    let mut model = Model::build_arch(&a.model, classes, widths.as_deref(), 0)?;
    let shown = a.weights.display().to_string();
    let stored = checkpoint::load_model_from(&mut model, &ck, &a.weights)?;
    let norm = checkpoint::choose_normalize(flag_norm, stored, &a.model, &shown);
    let names = names.or_else(|| {
        (spec.data == DataKind::Cifar10 && classes == 10)
            .then(|| sasprune::data::cifar::CLASS_NAMES.iter().map(|s| s.to_string()).collect())
    });
    let export_options =
        ExportOptions { fold_bn: a.fold_bn, normalize_in_graph: a.normalize_in_graph, sparse: a.sparse };
    let source = a.weights.file_name().map(|f| f.to_string_lossy().to_string()).unwrap_or(shown);
    let exported = onnx::export(&model, export_options, norm, names.as_deref(), &[("weights", source)])?;
    checkpoint::write_atomic(&a.out, &exported.bytes)?;
    report(a, &exported, &model);
    Ok(())
}

/// One name per line (blank lines and surrounding spaces dropped).
fn read_class_names(path: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let names: Vec<String> = text.lines().map(str::trim).filter(|l| !l.is_empty()).map(String::from).collect();
    if names.is_empty() {
        return Err(Error::invalid(format!("{}: no class names in it; give one per line", path.display())));
    }
    for (i, name) in names.iter().enumerate() {
        if let Some(j) = names[..i].iter().position(|n| n == name) {
            return Err(Error::invalid(format!(
                "{}: class '{name}' is named twice (classes {j} and {i}); every class needs its own name",
                path.display()
            )));
        }
    }
    Ok(names)
}

fn megabytes(bytes: u64) -> String {
    format!("{:.2} MB", bytes as f64 / 1e6)
}

/// What was written: the file, its size against an all-dense export, and the pruned layers.
fn report(a: &ExportArgs, e: &onnx::Exported, model: &Model) {
    let (dense, stored): (u64, u64) = e.layers.iter().fold((0, 0), |(d, s), l| (d + l.dense_bytes, s + l.stored_bytes));
    outln!(
        "wrote {} ({}, opset {}): prunable weights {}",
        a.out.display(),
        megabytes(e.bytes.len() as u64),
        onnx::OPSET,
        onnx::prunable_text(&e.layers)
    );
    if e.layers.iter().all(|l| l.nonzero == 0) {
        errln!(
            "warning: every prunable weight in {} is 0, so the network's output does not depend on its \
             input; check that these are the weights meant (a run's pruned.safetensors or retrain/model.safetensors)",
            a.weights.display()
        );
    }
    if a.sparse {
        outln!(
            "--sparse: the prunable layers take {} instead of {} ({:.2}x smaller); the file {} instead of about {}",
            megabytes(stored),
            megabytes(dense),
            dense as f64 / stored.max(1) as f64,
            megabytes(e.bytes.len() as u64),
            megabytes(e.dense_file_bytes())
        );
    }
    let (c, h, w) = model.input;
    outln!(
        "input '{}': float32 [batch, {c}, {h}, {w}], {}; output '{}': float32 [batch, {}] logits",
        onnx::INPUT,
        if a.normalize_in_graph {
            "pixels in [0, 1]"
        } else {
            "normalized as the metadata's normalize_mean and normalize_std say"
        },
        onnx::OUTPUT,
        model.classes
    );
}
