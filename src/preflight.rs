//! The memory check before a long run. wgpu cannot say how much memory a device has, so each
//! phase's largest moment — the vectors it holds beside the model plus one training step or one
//! evaluation pass at its batch — is tried on the device before any phase runs. A run that does
//! not fit then stops at its start, naming the flag to lower, instead of hours in; an evaluation
//! batch (which changes no result) is halved until it fits. Callers run it where it tells
//! something (`Gpu::memory_can_be_checked`).

use crate::autograd::no_grad;
use crate::models::{Model, Pass};
use crate::{gpu, Error, Result, Tensor};

/// What a phase does at its largest moment.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Work {
    /// Forward + backward at the batch (the optimizer's buffers are part of the model).
    Train,
    /// A forward pass without gradients.
    Eval,
}

/// One phase's peak: `vectors` device vectors of `vector_len` elements held during `work`.
#[derive(Clone, Debug)]
pub struct Probe {
    pub phase: &'static str,
    /// The flag that sets `batch`, or how to change it when no flag does.
    pub flag: &'static str,
    pub batch: usize,
    pub work: Work,
    pub vectors: usize,
    pub vector_len: usize,
}

/// Tries every probe on the device. Returns the evaluation batch that fits (`eval_batch`, or a
/// half of it, …, when the device could not hold it). The model's weights, momentum and
/// batch-norm statistics (and mixed precision's loss scale) are unchanged afterwards; its
/// gradients are zero.
pub fn check_memory(model: &mut Model, probes: &[Probe], eval_batch: usize) -> Result<usize> {
    let saved_statistics = model.store.buffers_flat()?.to_vec()?;
    let saved_tracked = model.store.batches_tracked;
    let saved_scale = model.store.loss_scale().map(|s| s.to_vec()).transpose()?;
    let result = run_probes(model, probes, eval_batch);
    model.store.buffers_flat()?.write(&saved_statistics)?;
    model.store.batches_tracked = saved_tracked;
    if let (Some(scale), Some(saved)) = (model.store.loss_scale(), saved_scale) {
        scale.load(&saved)?; // the probes' steps count neither as good nor as skipped
    }
    model.store.zero_grad()?;
    result
}

fn run_probes(model: &mut Model, probes: &[Probe], mut eval_batch: usize) -> Result<usize> {
    for p in probes {
        if p.work == Work::Eval {
            loop {
                let probe = Probe { batch: p.batch.min(eval_batch), ..p.clone() };
                match try_probe(model, &probe) {
                    Err(e) if is_memory(&e) && probe.batch > 1 => {
                        eval_batch = probe.batch / 2;
                        outln!(
                            "memory check: evaluation at batch {} does not fit this device; evaluating at batch \
                             {eval_batch} instead (the results are the same)",
                            probe.batch
                        );
                        gpu::get()?.trim_pool();
                    }
                    other => break other.map_err(|e| explain(e, &probe))?,
                }
            }
        } else {
            try_probe(model, p).map_err(|e| explain(e, p))?;
        }
    }
    Ok(eval_batch)
}

fn try_probe(model: &mut Model, p: &Probe) -> Result<()> {
    let held = (0..p.vectors).map(|_| Tensor::uninit(&[p.vector_len.max(1)])).collect::<Result<Vec<_>>>()?;
    let (c, h, w) = model.input;
    let x = Tensor::zeros(&[p.batch, c, h, w])?;
    match p.work {
        Work::Train => {
            let y = Tensor::zeros(&[p.batch])?;
            model.gradient(&x, &y, 0)?;
        }
        Work::Eval => no_grad(|| model.forward(&x, Pass::Eval).map(drop))?,
    }
    gpu::get()?.synchronize()?;
    drop(held);
    Ok(())
}

fn is_memory(e: &Error) -> bool {
    matches!(e, Error::OutOfMemory { .. } | Error::TooLarge { .. })
}

fn explain(e: Error, p: &Probe) -> Error {
    let what = match &e {
        Error::OutOfMemory { what, bytes, in_use, detail } => format!(
            "allocating {:.1} MiB for {what} with {:.1} MiB in use failed ({detail})",
            *bytes as f64 / 1048576.0,
            *in_use as f64 / 1048576.0
        ),
        Error::TooLarge { what, bytes, limit } => format!(
            "{what} needs a buffer of {:.1} MiB and the device allows {:.1} MiB per buffer",
            *bytes as f64 / 1048576.0,
            *limit as f64 / 1048576.0
        ),
        _ => return e,
    };
    let advice = if p.batch > 1 {
        format!("lower {} (now {}; try {})", p.flag, p.batch, p.batch / 2)
    } else {
        "even batch 1 does not fit: use a device with more memory".to_string()
    };
    Error::invalid(format!(
        "memory check before the run (nothing has run yet): {} does not fit this device: {what}; {advice}",
        p.phase
    ))
}
