//! The parameter store and its arenas.

use crate::gpu::{self, Buffer};
use crate::ops::loss_scale::{self, LossScale};
use crate::ops::{elementwise, sgd};
use crate::tensor::numel;
use crate::{Error, Result, Tensor};
use std::collections::BTreeMap;
use std::sync::Arc;

/// What a registered tensor is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// A conv or fc weight: part of the pruning vector W.
    PrunableWeight,
    /// Any other trained parameter (biases, batch-norm scale and shift).
    Param,
    /// State that is not trained (batch-norm running statistics).
    Buffer,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ParamId(usize);

pub struct Entry {
    pub name: String,
    pub shape: Vec<usize>,
    pub role: Role,
    /// Offset in elements inside its arena (the parameter arena, or the buffer arena).
    pub offset: usize,
    tensor: Option<Tensor>,
}

impl Entry {
    pub fn numel(&self) -> usize {
        numel(&self.shape)
    }
}

/// Host copies of named tensors: what checkpoints hold.
pub type StateDict = BTreeMap<String, (Vec<usize>, Vec<f32>)>;

pub struct Arenas {
    params: Arc<Buffer>,
    grads: Arc<Buffer>,
    momentum: Arc<Buffer>,
    buffers: Arc<Buffer>,
    params_len: usize,
    buffers_len: usize,
    /// The optimizer's step-skip flag (one word; set on the device by loss scaling when a
    /// step's gradients overflow, else always 0).
    skip: Tensor,
}

#[derive(Default)]
pub struct ParamStore {
    entries: Vec<Entry>,
    initial: Vec<Vec<f32>>,
    arenas: Option<Arenas>,
    /// Elements of the parameter arena covered by the prunable weights (gaps included).
    prunable_len: usize,
    /// Training-mode forward passes so far (PyTorch's batch-norm `num_batches_tracked`).
    pub batches_tracked: u64,
    /// How often the gradient arena was zeroed (the gradient places compare it with when they
    /// were last filled, to know whether they still hold zeros).
    zeroings: std::sync::Arc<std::sync::atomic::AtomicU64>,
    /// Dynamic loss scaling (mixed precision), once enabled.
    loss_scale: Option<LossScale>,
}

impl ParamStore {
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers a tensor with its initial value; returns its handle.
    pub fn add(&mut self, name: impl Into<String>, shape: &[usize], role: Role, init: Vec<f32>) -> ParamId {
        assert!(self.arenas.is_none(), "parameters are registered before materialize()");
        assert_eq!(init.len(), numel(shape), "initial value of the wrong size");
        self.entries.push(Entry { name: name.into(), shape: shape.to_vec(), role, offset: 0, tensor: None });
        self.initial.push(init);
        ParamId(self.entries.len() - 1)
    }

    /// Lays out the arenas and uploads the initial values.
    pub fn materialize(&mut self) -> Result<()> {
        let gpu = gpu::get()?;
        let align = (gpu.storage_alignment() / 4).max(1) as usize;
        let mut params_len = 0usize;
        let mut buffers_len = 0usize;
        for role in [Role::PrunableWeight, Role::Param, Role::Buffer] {
            for e in self.entries.iter_mut().filter(|e| e.role == role) {
                let end = if role == Role::Buffer { &mut buffers_len } else { &mut params_len };
                e.offset = (*end).div_ceil(align) * align;
                *end = e.offset + numel(&e.shape);
            }
            if role == Role::PrunableWeight {
                self.prunable_len = params_len;
            }
        }
        let arena = |len: usize, what: &str| -> Result<Arc<Buffer>> {
            let b = Arc::new(Buffer::new(gpu, 4 * len.max(1) as u64, what)?);
            fill_chunked(&b, len.max(1), 0.0)?;
            Ok(b)
        };
        let arenas = Arenas {
            params: arena(params_len, "the parameters")?,
            grads: arena(params_len, "the gradients")?,
            momentum: arena(params_len, "the momentum buffers")?,
            buffers: arena(buffers_len, "the batch-norm statistics")?,
            params_len,
            buffers_len,
            skip: loss_scale::skip_flag()?,
        };
        for (e, init) in self.entries.iter_mut().zip(self.initial.drain(..)) {
            let byte = 4 * e.offset as u64;
            let t = if e.role == Role::Buffer {
                Tensor::view_into(arenas.buffers.clone(), byte, &e.shape)?
            } else {
                let slot = Tensor::view_into(arenas.grads.clone(), byte, &e.shape)?;
                Tensor::view_into(arenas.params.clone(), byte, &e.shape)?.with_grad_slot(slot, self.zeroings.clone())?
            };
            t.write(&init)?;
            e.tensor = Some(t);
        }
        self.arenas = Some(arenas);
        Ok(())
    }

    fn arenas(&self) -> &Arenas {
        self.arenas.as_ref().expect("the store is materialized before use")
    }

    /// The tensor of a registered parameter or buffer.
    pub fn get(&self, id: ParamId) -> &Tensor {
        self.entries[id.0].tensor.as_ref().expect("the store is materialized before use")
    }

    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    pub fn entry(&self, id: ParamId) -> &Entry {
        &self.entries[id.0]
    }

    pub fn find(&self, name: &str) -> Option<ParamId> {
        self.entries.iter().position(|e| e.name == name).map(ParamId)
    }

    /// Number of trained parameters (what papers call the parameter count).
    pub fn parameter_count(&self) -> usize {
        self.entries.iter().filter(|e| e.role != Role::Buffer).map(Entry::numel).sum()
    }

    /// The whole parameter arena / gradient arena / momentum arena as flat tensors.
    pub fn params_flat(&self) -> Result<Tensor> {
        let a = self.arenas();
        Tensor::view_into(a.params.clone(), 0, &[a.params_len.max(1)])
    }
    pub fn grads_flat(&self) -> Result<Tensor> {
        let a = self.arenas();
        Tensor::view_into(a.grads.clone(), 0, &[a.params_len.max(1)])
    }
    pub fn momentum_flat(&self) -> Result<Tensor> {
        let a = self.arenas();
        Tensor::view_into(a.momentum.clone(), 0, &[a.params_len.max(1)])
    }

    /// The non-trained buffers (batch-norm running statistics) as one flat tensor.
    pub fn buffers_flat(&self) -> Result<Tensor> {
        let a = self.arenas();
        Tensor::view_into(a.buffers.clone(), 0, &[a.buffers_len.max(1)])
    }

    /// Elements of the parameter arena holding the prunable weights (from offset 0).
    pub fn prunable_len(&self) -> usize {
        self.prunable_len
    }

    /// Zeroes every gradient (one launch).
    pub fn zero_grad(&self) -> Result<()> {
        fill_chunked(&self.arenas().grads, self.arenas().params_len, 0.0)?;
        // every gradient place holds zeros again: backward may write gradients into them
        self.zeroings.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }

    /// Zeroes every momentum buffer (one launch).
    pub fn reset_momentum(&self) -> Result<()> {
        fill_chunked(&self.arenas().momentum, self.arenas().params_len, 0.0)
    }

    /// One SGD step over every parameter. `mask`, when given, has the arena's length (1 outside
    /// the pruned range). One launch, or a few when the arena exceeds the device's binding limit.
    /// Skipped on the device when loss scaling found this step's gradients overflowed.
    pub fn sgd_step(&self, cfg: &sgd::SgdConfig, mask: Option<&Tensor>) -> Result<()> {
        let a = self.arenas();
        let view = |b: &Arc<Buffer>| Tensor::view_into(b.clone(), 0, &[a.params_len]);
        let m = mask.map(|m| Tensor::view_into(m.storage().clone(), m.byte_offset(), &[a.params_len])).transpose()?;
        sgd::sgd_step(&view(&a.params)?, &view(&a.grads)?, &view(&a.momentum)?, m.as_ref(), cfg, Some(&a.skip))
    }

    /// The flag other optimizers (the ADMM inner steps) bind to skip a step whose gradients
    /// overflowed.
    pub fn skip_flag(&self) -> &Tensor {
        &self.arenas().skip
    }

    /// Turns on dynamic loss scaling (mixed precision): from now on backward starts from
    /// [`ParamStore::loss_seed`], and [`ParamStore::unscale_gradients`] must follow it.
    pub fn enable_loss_scaling(&mut self) -> Result<()> {
        if self.loss_scale.is_none() {
            let skip = &self.arenas().skip;
            self.loss_scale = Some(LossScale::new(skip, loss_scale::INITIAL_SCALE, loss_scale::GROWTH_INTERVAL)?);
        }
        Ok(())
    }

    pub fn loss_scale(&self) -> Option<&LossScale> {
        self.loss_scale.as_ref()
    }

    /// The gradient backward starts from: the loss scale S, or None (1) without scaling.
    pub fn loss_seed(&self) -> Result<Option<Tensor>> {
        self.loss_scale.as_ref().map(|s| s.seed()).transpose()
    }

    /// With loss scaling: this step's gradients divided by S and checked for inf and NaN (the
    /// skip flag set if any is). Call after backward, before the optimizer. Nothing without
    /// scaling.
    pub fn unscale_gradients(&self) -> Result<()> {
        let Some(scale) = &self.loss_scale else { return Ok(()) };
        let a = self.arenas();
        scale.unscale(&Tensor::view_into(a.grads.clone(), 0, &[a.params_len.max(1)])?, a.params_len)
    }

    /// With loss scaling: the last step's outcome applied to S (the skip flag cleared), once its
    /// optimizer has run. Nothing without scaling, or when it already ran.
    pub fn update_loss_scale(&self) -> Result<()> {
        self.loss_scale.as_ref().map_or(Ok(()), |s| s.update())
    }

    /// Every parameter and buffer, by name, copied to the host (two read-backs in all).
    pub fn state_dict(&self) -> Result<StateDict> {
        let params = self.params_flat()?.to_vec()?;
        let buffers = self.buffers_flat()?.to_vec()?;
        Ok(self
            .entries
            .iter()
            .map(|e| {
                let src = if e.role == Role::Buffer { &buffers } else { &params };
                (e.name.clone(), (e.shape.clone(), src[e.offset..e.offset + e.numel()].to_vec()))
            })
            .collect())
    }

    /// The momentum buffers by parameter name (host copies).
    pub fn momentum_dict(&self) -> Result<StateDict> {
        let m = self.momentum_flat()?.to_vec()?;
        Ok(self
            .entries
            .iter()
            .filter(|e| e.role != Role::Buffer)
            .map(|e| (e.name.clone(), (e.shape.clone(), m[e.offset..e.offset + e.numel()].to_vec())))
            .collect())
    }

    /// Loads every parameter and buffer from `dict`. A missing, unexpected or mis-shaped tensor
    /// is an error naming it (checked before anything is written).
    pub fn load_state_dict(&self, dict: &StateDict, source: &str) -> Result<()> {
        self.check_names(dict, source, |_| true)?;
        check_running_variances(dict, source)?;
        for e in &self.entries {
            let t = e.tensor.as_ref().expect("materialized");
            t.write(&dict[&e.name].1)?;
        }
        Ok(())
    }

    /// Loads momentum buffers saved by `momentum_dict`.
    pub fn load_momentum_dict(&self, dict: &StateDict, source: &str) -> Result<()> {
        self.check_names(dict, source, |e| e.role != Role::Buffer)?;
        let m = self.momentum_flat()?;
        for e in self.entries.iter().filter(|e| e.role != Role::Buffer) {
            let view = Tensor::view_into(m.storage().clone(), 4 * e.offset as u64, &e.shape)?;
            view.write(&dict[&e.name].1)?;
        }
        Ok(())
    }

    fn check_names(&self, dict: &StateDict, source: &str, wanted: impl Fn(&Entry) -> bool) -> Result<()> {
        let expected: Vec<&Entry> = self.entries.iter().filter(|e| wanted(e)).collect();
        let mut problems = Vec::new();
        for e in &expected {
            match dict.get(&e.name) {
                None => problems.push(format!("missing tensor '{}' (expected shape {:?})", e.name, e.shape)),
                Some((shape, _)) if *shape != e.shape => {
                    problems.push(format!("tensor '{}' has shape {shape:?}, expected {:?}", e.name, e.shape))
                }
                Some(_) => {}
            }
        }
        for name in dict.keys() {
            if !expected.iter().any(|e| &e.name == name) {
                problems.push(format!("unexpected tensor '{name}'"));
            }
        }
        if problems.is_empty() {
            return Ok(());
        }
        let shown = problems.len().min(8);
        Err(Error::invalid(format!(
            "{source} does not fit this model: {}{}",
            problems[..shown].join("; "),
            if problems.len() > shown { format!("; and {} more", problems.len() - shown) } else { String::new() }
        )))
    }
}

/// A batch norm's running variance at or below −eps: batch norm divides by sqrt(var + eps), so
/// such a channel evaluates to NaN or infinity. PyTorch never writes a negative variance, so the
/// file was edited or damaged; refusing it names the tensor where a NaN accuracy would not. (A
/// variance just below zero, above −eps, as a conversion's rounding may leave, still evaluates
/// to finite numbers and is kept as it is.)
fn check_running_variances(dict: &StateDict, source: &str) -> Result<()> {
    let eps = crate::ops::batchnorm::BatchNormConfig::default().eps;
    let mut names: Vec<&String> = dict.keys().filter(|n| n.ends_with("running_var")).collect();
    names.sort();
    for name in names {
        let values = &dict[name].1;
        let negative: Vec<usize> = (0..values.len()).filter(|&i| values[i] + eps <= 0.0).collect();
        if let Some(&first) = negative.first() {
            return Err(Error::invalid(format!(
                "{source}: tensor '{name}' holds {} running variance(s) of -{eps:e} or less (first: channel {first}, \
                 {}), which batch norm turns into NaN; a variance cannot be negative, so the file is damaged or was \
                 edited: use the weights as saved by PyTorch or sasprune",
                negative.len(),
                values[first]
            )));
        }
    }
    Ok(())
}

/// Fills the first `len` floats of an arena (fill itself goes in pieces past the binding limit).
fn fill_chunked(buffer: &Arc<Buffer>, len: usize, value: f32) -> Result<()> {
    elementwise::fill(&Tensor::view_into(buffer.clone(), 0, &[len])?, value)
}
