//! `Tensor`: an f32 (or, for mixed precision's activations, f16) array on the GPU with a shape (row-major; NCHW for images) and, when it
//! takes part in differentiation, its place in the autograd graph. Cloning is cheap (an `Arc`).
//! A tensor may be a view into a larger shared buffer (a parameter arena) at an aligned offset.
//!
//! The graph's vocabulary lives here too ([`Node`], [`Backward`], [`needs_node`], [`no_grad`]):
//! ops record nodes with it, and `autograd` runs them backward. The layers are gpu ← tensor ←
//! ops ← autograd, each importing only the ones to its left (constructors that run a kernel,
//! `Tensor::zeros` and `Tensor::full`, are defined in `ops::elementwise`; `backward` and
//! `zero_grad` in `autograd`).

use crate::gpu::{self, Buffer, BufferView, Dtype};
use crate::{Error, Result};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

#[derive(Clone)]
pub struct Tensor(Arc<Inner>);

struct Inner {
    shape: Vec<usize>,
    storage: Arc<Buffer>,
    /// The element type in `storage`; ops compute in f32 and store their outputs in the type of
    /// the activation they read (see `gpu::Kernel`).
    dtype: Dtype,
    /// Byte offset of element 0 inside `storage`.
    offset: u64,
    /// The tensor's place in the autograd graph. Kept apart from the data so that graph edges
    /// (an op's inputs) do not keep input buffers alive: only what a backward rule saves does.
    meta: Edge,
}

/// A reference to a tensor's place in the autograd graph, without its data.
#[derive(Clone)]
pub struct Edge(Arc<Meta>);

struct Meta {
    id: u64,
    requires_grad: bool,
    /// Made by an op that recorded a node (as opposed to a leaf such as a parameter).
    from_op: bool,
    /// Set for tensors made by an op that needs gradients; taken when backward runs through it.
    node: Mutex<Option<Node>>,
    /// Accumulated gradient of a leaf tensor (a parameter).
    grad: Mutex<Option<Tensor>>,
    /// For parameters that live in an arena: their gradient's fixed place in the gradient
    /// arena, which backward adds into (so the optimizer is one launch over the arena).
    grad_slot: Option<GradSlot>,
}

/// A parameter's gradient place in its store's gradient arena, and whether it still holds the
/// zeros the store put there: then an op may write the gradient into it outright instead of
/// making a tensor that is then added to it (one launch per parameter and step saved).
/// One backward at a time per store (as everywhere in this crate): two threads running backward
/// over the same parameters at once could both find a place empty and both write it.
pub(crate) struct GradSlot {
    place: Tensor,
    /// Counts the store's zeroings of the whole arena.
    zeroings: Arc<AtomicU64>,
    /// The count when a gradient last went into `place`; any other value: `place` holds zeros.
    filled_at: AtomicU64,
}

impl GradSlot {
    /// A place that holds zeros now; `zeroings` counts the owner's zeroings of it from here on.
    pub(crate) fn new(place: Tensor, zeroings: Arc<AtomicU64>) -> GradSlot {
        let now = zeroings.load(Ordering::Relaxed);
        GradSlot { place, zeroings, filled_at: AtomicU64::new(now.wrapping_sub(1)) }
    }

    fn holds_zeros(&self) -> bool {
        self.filled_at.load(Ordering::Relaxed) != self.zeroings.load(Ordering::Relaxed)
    }

    fn mark_filled(&self) {
        self.filled_at.store(self.zeroings.load(Ordering::Relaxed), Ordering::Relaxed);
    }

    fn mark_zeroed(&self) {
        self.filled_at.store(self.zeroings.load(Ordering::Relaxed).wrapping_sub(1), Ordering::Relaxed);
    }
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

pub fn numel(shape: &[usize]) -> usize {
    shape.iter().product()
}

/// The bytes `n` elements of `dtype` take in a buffer: whole 32-bit words, as bindings and
/// uploads need.
fn stored_bytes(dtype: Dtype, n: usize) -> u64 {
    (dtype.bytes() * n as u64).next_multiple_of(4)
}

impl Tensor {
    fn wrap(
        storage: Arc<Buffer>,
        dtype: Dtype,
        offset: u64,
        shape: Vec<usize>,
        requires_grad: bool,
        node: Option<Node>,
    ) -> Tensor {
        Tensor::wrap_slot(storage, dtype, offset, shape, requires_grad, node, None)
    }

    fn wrap_slot(
        storage: Arc<Buffer>,
        dtype: Dtype,
        offset: u64,
        shape: Vec<usize>,
        requires_grad: bool,
        node: Option<Node>,
        grad_slot: Option<GradSlot>,
    ) -> Tensor {
        let meta = Edge(Arc::new(Meta {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            requires_grad,
            from_op: node.is_some(),
            node: Mutex::new(node),
            grad: Mutex::new(None),
            grad_slot,
        }));
        Tensor(Arc::new(Inner { shape, storage, dtype, offset, meta }))
    }

    /// An f32 tensor whose contents the caller (an op's kernel) will write in full.
    pub fn uninit(shape: &[usize]) -> Result<Tensor> {
        Tensor::uninit_as(Dtype::F32, shape)
    }

    /// A tensor of `dtype` whose contents the caller (an op's kernel) will write in full.
    pub fn uninit_as(dtype: Dtype, shape: &[usize]) -> Result<Tensor> {
        let n = numel(shape);
        if n == 0 {
            return Err(Error::shape("tensor", format!("shape {shape:?} has no elements")));
        }
        let gpu = gpu::get()?;
        let buffer = Buffer::new(gpu, stored_bytes(dtype, n), &format!("a tensor of shape {shape:?}"))?;
        Ok(Tensor::wrap(Arc::new(buffer), dtype, 0, shape.to_vec(), false, None))
    }

    /// A tensor of `dtype` holding `data` (rounded to the nearest f16 for f16).
    pub fn from_slice_as(dtype: Dtype, data: &[f32], shape: &[usize]) -> Result<Tensor> {
        if data.len() != numel(shape) {
            return Err(Error::shape(
                "Tensor::from_slice",
                format!("{} values do not fill shape {shape:?} ({} elements)", data.len(), numel(shape)),
            ));
        }
        let t = Tensor::uninit_as(dtype, shape)?;
        t.write(data)?;
        Ok(t)
    }

    pub fn dtype(&self) -> Dtype {
        self.0.dtype
    }

    pub fn from_slice(data: &[f32], shape: &[usize]) -> Result<Tensor> {
        Tensor::from_slice_as(Dtype::F32, data, shape)
    }

    /// A view of `shape` into `storage` at byte `offset` (aligned to the device's storage offset
    /// alignment): how parameters and gradients live inside one arena buffer.
    pub fn view_into(storage: Arc<Buffer>, offset: u64, shape: &[usize]) -> Result<Tensor> {
        Tensor::view_into_as(Dtype::F32, storage, offset, shape)
    }

    /// [`Tensor::view_into`] for elements of `dtype`.
    pub fn view_into_as(dtype: Dtype, storage: Arc<Buffer>, offset: u64, shape: &[usize]) -> Result<Tensor> {
        let gpu = gpu::get()?;
        let end = offset + stored_bytes(dtype, numel(shape));
        if !offset.is_multiple_of(gpu.storage_alignment()) || end > storage.size() {
            return Err(Error::shape(
                "Tensor::view_into",
                format!(
                    "view of {shape:?} at byte {offset} does not fit an aligned place in a {}-byte buffer",
                    storage.size()
                ),
            ));
        }
        Ok(Tensor::wrap(storage, dtype, offset, shape.to_vec(), false, None))
    }

    /// Overwrites the contents (in order with recorded GPU work), rounded to the nearest f16 for
    /// an f16 tensor.
    pub fn write(&self, data: &[f32]) -> Result<()> {
        if data.len() != self.numel() {
            return Err(Error::shape("Tensor::write", format!("{} values for shape {:?}", data.len(), self.shape())));
        }
        let gpu = gpu::get()?;
        match self.0.dtype {
            Dtype::F32 => gpu.upload(&self.0.storage, self.0.offset, bytemuck::cast_slice(data)),
            Dtype::F16 => {
                // uploads are whole 32-bit words: an odd count keeps the half after its end (a
                // view's neighbour) as the buffer holds it
                let mut halves: Vec<u16> = data.iter().map(|&v| half::f16::from_f32(v).to_bits()).collect();
                if halves.len() % 2 == 1 {
                    let last_word = self.0.offset + 2 * (halves.len() as u64 - 1);
                    let word = gpu.read(self.0.storage.view(last_word, 4))?;
                    halves.push(u16::from_ne_bytes([word[2], word[3]]));
                }
                gpu.upload(&self.0.storage, self.0.offset, bytemuck::cast_slice(&halves))
            }
        }
    }

    /// The contents as f32 (f16 widened exactly).
    pub fn to_vec(&self) -> Result<Vec<f32>> {
        let bytes = gpu::get()?.read(self.view())?;
        Ok(match self.0.dtype {
            Dtype::F32 => bytemuck::pod_collect_to_vec(&bytes),
            Dtype::F16 => {
                let halves: Vec<u16> = bytemuck::pod_collect_to_vec(&bytes);
                halves[..self.numel()].iter().map(|&h| half::f16::from_bits(h).to_f32()).collect()
            }
        })
    }

    /// The value of a one-element tensor.
    pub fn item(&self) -> Result<f32> {
        if self.numel() != 1 {
            return Err(Error::shape("Tensor::item", format!("shape {:?} is not a single value", self.shape())));
        }
        Ok(self.to_vec()?[0])
    }

    pub fn shape(&self) -> &[usize] {
        &self.0.shape
    }

    pub fn numel(&self) -> usize {
        numel(&self.0.shape)
    }

    pub fn id(&self) -> u64 {
        self.0.meta.0.id
    }

    /// This tensor's place in the graph, for an op's [`Node::inputs`].
    pub fn edge(&self) -> Edge {
        self.0.meta.clone()
    }

    /// The bytes of this tensor, for binding to a kernel.
    pub fn view(&self) -> BufferView<'_> {
        self.0.storage.view(self.0.offset, stored_bytes(self.0.dtype, self.numel())).with_dtype(self.0.dtype)
    }

    pub fn storage(&self) -> &Arc<Buffer> {
        &self.0.storage
    }

    pub fn byte_offset(&self) -> u64 {
        self.0.offset
    }

    pub fn requires_grad(&self) -> bool {
        self.0.meta.0.requires_grad
    }

    /// The same data as a leaf that accumulates a gradient (a parameter).
    pub fn with_grad(&self) -> Tensor {
        Tensor::wrap(self.0.storage.clone(), self.0.dtype, self.0.offset, self.0.shape.clone(), true, None)
    }

    /// The same data as a leaf whose gradient accumulates into `slot` (same shape, holding
    /// zeros now), which the owner zeroes between steps, counting each zeroing in `zeroings`.
    pub(crate) fn with_grad_slot(&self, slot: Tensor, zeroings: Arc<AtomicU64>) -> Result<Tensor> {
        if slot.shape() != self.shape() {
            return Err(Error::shape(
                "with_grad_slot",
                format!("slot {:?} for tensor {:?}", slot.shape(), self.shape()),
            ));
        }
        let slot = GradSlot::new(slot, zeroings);
        Ok(Tensor::wrap_slot(
            self.0.storage.clone(),
            self.0.dtype,
            self.0.offset,
            self.0.shape.clone(),
            true,
            None,
            Some(slot),
        ))
    }

    /// Whether `other` is this tensor's data (same buffer, offset and shape).
    pub fn same_data(&self, other: &Tensor) -> bool {
        Arc::ptr_eq(&self.0.storage, &other.0.storage)
            && self.0.offset == other.0.offset
            && self.shape() == other.shape()
    }

    /// The same data, cut off from the graph.
    pub fn detach(&self) -> Tensor {
        Tensor::wrap(self.0.storage.clone(), self.0.dtype, self.0.offset, self.0.shape.clone(), false, None)
    }

    /// An op's result: attaches `node` when the op must be differentiated.
    pub fn with_node(self, node: Option<Node>) -> Tensor {
        match node {
            None => self,
            Some(node) => Tensor::wrap(
                self.0.storage.clone(),
                self.0.dtype,
                self.0.offset,
                self.0.shape.clone(),
                true,
                Some(node),
            ),
        }
    }

    /// The same data with another shape of the same size (shares the buffer).
    pub fn reshape(&self, shape: &[usize]) -> Result<Tensor> {
        if numel(shape) != self.numel() {
            return Err(Error::shape("reshape", format!("{:?} cannot become {shape:?}", self.shape())));
        }
        let out = Tensor::wrap(self.0.storage.clone(), self.0.dtype, self.0.offset, shape.to_vec(), false, None);
        let node = needs_node(&[self])
            .then(|| Node { backward: Box::new(ReshapeBackward(self.shape().to_vec())), inputs: vec![self.edge()] });
        Ok(out.with_node(node))
    }

    /// The accumulated gradient of a leaf.
    pub fn grad(&self) -> Option<Tensor> {
        let meta = &self.0.meta.0;
        match &meta.grad_slot {
            Some(slot) => Some(slot.place.clone()),
            None => lock(&meta.grad).clone(),
        }
    }
}

impl Edge {
    pub(crate) fn id(&self) -> u64 {
        self.0.id
    }

    pub(crate) fn requires_grad(&self) -> bool {
        self.0.requires_grad
    }

    pub(crate) fn node_inputs(&self) -> Vec<Edge> {
        lock(&self.0.node).as_ref().map(|n| n.inputs.clone()).unwrap_or_default()
    }

    pub(crate) fn take_node(&self) -> Option<Node> {
        lock(&self.0.node).take()
    }

    /// Made by an op (as opposed to a leaf): its node is missing only after backward ran.
    pub(crate) fn made_by_op(&self) -> bool {
        self.0.from_op
    }

    /// Where an op may write this leaf's gradient outright: its gradient place, while that
    /// still holds zeros (no gradient went there since the owner zeroed it).
    pub(crate) fn empty_grad_place(&self) -> Option<Tensor> {
        self.0.grad_slot.as_ref().filter(|s| s.holds_zeros()).map(|s| s.place.clone())
    }

    /// True (and the place counted as filled) when an op wrote this leaf's gradient `g` into
    /// its gradient place.
    pub(crate) fn took_grad_in_place(&self, g: &Tensor) -> bool {
        match &self.0.grad_slot {
            Some(slot) if slot.place.same_data(g) => {
                slot.mark_filled();
                true
            }
            _ => false,
        }
    }

    /// A parameter's gradient place in its store's arena, when it has one.
    pub(crate) fn grad_place(&self) -> Option<Tensor> {
        self.0.grad_slot.as_ref().map(|s| s.place.clone())
    }

    /// Counts the gradient place as holding a gradient (`filled`) or zeros.
    pub(crate) fn mark_grad_place(&self, filled: bool) {
        if let Some(slot) = &self.0.grad_slot {
            if filled {
                slot.mark_filled()
            } else {
                slot.mark_zeroed()
            }
        }
    }

    /// Takes a leaf's accumulated gradient (one without a gradient place).
    pub(crate) fn take_grad(&self) -> Option<Tensor> {
        lock(&self.0.grad).take()
    }

    pub(crate) fn set_grad(&self, g: Option<Tensor>) {
        *lock(&self.0.grad) = g;
    }
}

impl std::fmt::Debug for Tensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tensor{:?}", self.shape())
    }
}

struct ReshapeBackward(Vec<usize>);

impl Backward for ReshapeBackward {
    fn backward(&self, g: &Tensor) -> Result<Vec<Option<Tensor>>> {
        Ok(vec![Some(g.detach().reshape(&self.0)?)])
    }
}

/// The backward rule of one op application: given the gradient of its output, the gradient of
/// each input (`None` where an input needs none).
pub trait Backward: Send + Sync {
    fn backward(&self, grad_output: &Tensor) -> Result<Vec<Option<Tensor>>>;

    /// `backward` for ops that can write a parameter's gradient where the optimizer reads it:
    /// `places[i]`, when given, is input i's gradient place in its store's arena, holding zeros;
    /// the op may write input i's gradient there and return that place as the gradient (which
    /// saves adding a new tensor into the place: a launch per parameter and step).
    fn backward_into(&self, grad_output: &Tensor, places: &[Option<Tensor>]) -> Result<Vec<Option<Tensor>>> {
        let _ = places;
        self.backward(grad_output)
    }

    /// `backward_into` with `pending`, the gradient input `input` already received from its
    /// other uses, added to that input's gradient by the kernel that computes it: `pending +
    /// own` (the sum autograd would form, one launch and two passes fewer), returned as a new
    /// tensor (never written into a gradient place: autograd keeps it as the input's whole
    /// gradient so far). `None` where the op does not do that for this input (the default);
    /// autograd then adds.
    fn backward_adding(
        &self,
        grad_output: &Tensor,
        places: &[Option<Tensor>],
        input: usize,
        pending: &Tensor,
    ) -> Result<Option<Vec<Option<Tensor>>>> {
        let _ = (grad_output, places, input, pending);
        Ok(None)
    }
}

/// What an op records for its output: its backward rule and edges to its inputs.
pub struct Node {
    pub backward: Box<dyn Backward>,
    pub inputs: Vec<Edge>,
}

thread_local! {
    static GRAD_ENABLED: std::cell::Cell<bool> = const { std::cell::Cell::new(true) };
}

/// Whether ops on this thread currently record the graph.
pub fn grad_enabled() -> bool {
    GRAD_ENABLED.with(|g| g.get())
}

/// Runs `f` without recording the graph (evaluation, optimizer updates).
pub fn no_grad<T>(f: impl FnOnce() -> T) -> T {
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            GRAD_ENABLED.with(|g| g.set(self.0));
        }
    }
    let _restore = Restore(GRAD_ENABLED.with(|g| g.replace(false)));
    f()
}

/// Whether an op applied to `inputs` must record a node.
pub fn needs_node(inputs: &[&Tensor]) -> bool {
    grad_enabled() && inputs.iter().any(|t| t.requires_grad())
}
