//! Reverse-mode automatic differentiation on a tape.
//!
//! Every op that produces a tensor from inputs that need gradients attaches a [`Node`]: a
//! [`Backward`] object holding what the op saved, plus edges to the inputs (their place in the
//! graph, not their data: an input's buffer stays alive only if the backward rule saved it).
//! `backward` sorts the graph topologically, runs each node once in reverse order, and
//! accumulates (adds) gradients for tensors used more than once: where an op can, the kernel
//! that computes such a tensor's second gradient adds the first
//! ([`Backward::backward_adding`]). Each node is taken out of the graph as it runs, so the
//! buffers it saved are released as soon as they are no longer needed.

use crate::ops::elementwise;
use crate::tensor::{Edge, Tensor};
use crate::{Error, Result};
use std::collections::{HashMap, HashSet};

// The graph's vocabulary is the tensor's (ops record nodes without depending on this module).
pub use crate::tensor::{grad_enabled, needs_node, no_grad, Backward, Node};

impl Tensor {
    /// Backpropagates from this one-element tensor (a loss).
    pub fn backward(&self) -> Result<()> {
        if self.numel() != 1 {
            return Err(Error::shape("backward", format!("needs a single-value loss, got shape {:?}", self.shape())));
        }
        if !self.requires_grad() {
            return Err(Error::invalid("backward: this tensor does not depend on anything that requires a gradient"));
        }
        let seed = Tensor::full(self.shape(), 1.0)?;
        run_backward(self.edge(), seed)
    }

    /// Backpropagates from this tensor given the gradient of some scalar with respect to it
    /// (PyTorch's `y.backward(gradient)`).
    pub fn backward_with(&self, grad: Tensor) -> Result<()> {
        if grad.shape() != self.shape() {
            return Err(Error::shape(
                "backward_with",
                format!("gradient {:?} for tensor {:?}", grad.shape(), self.shape()),
            ));
        }
        if !self.requires_grad() {
            return Err(Error::invalid("backward: this tensor does not depend on anything that requires a gradient"));
        }
        run_backward(self.edge(), grad)
    }

    /// Clears a leaf's gradient (zeros in its gradient place, when it has one).
    pub fn zero_grad(&self) -> Result<()> {
        let edge = self.edge();
        match edge.grad_place() {
            Some(place) => {
                elementwise::fill(&place, 0.0)?;
                edge.mark_grad_place(false);
            }
            None => edge.set_grad(None),
        }
        Ok(())
    }
}

thread_local! {
    static SEPARATE_ADDS: std::cell::Cell<Option<bool>> = const { std::cell::Cell::new(None) };
}

/// Runs `f` with this thread's backward passes adding every gradient of a tensor used more than
/// once in a separate kernel (`elementwise.add`), never in the kernel that computes one
/// ([`Backward::backward_adding`]): the comparison that shows both give the same bits.
pub fn with_separate_adds<R>(f: impl FnOnce() -> R) -> R {
    crate::ops::with_override(&SEPARATE_ADDS, true, f)
}

/// Adds `g` to a leaf's gradient: into its gradient place, or to the gradient it holds.
fn accumulate_grad(edge: &Edge, g: Tensor) -> Result<()> {
    if let Some(place) = edge.grad_place() {
        elementwise::axpy(1.0, &g, &place)?;
        edge.mark_grad_place(true);
        return Ok(());
    }
    let merged = match edge.take_grad() {
        Some(prev) => elementwise::add(&prev, &g)?,
        None => g.detach(),
    };
    edge.set_grad(Some(merged));
    Ok(())
}

/// Runs backward from `root` with `seed` as the gradient of root.
pub(crate) fn run_backward(root: Edge, seed: Tensor) -> Result<()> {
    // Topological order by iterative depth-first search (deep ResNets would overflow recursion).
    let mut order: Vec<Edge> = Vec::new();
    let mut seen: HashSet<u64> = HashSet::new();
    let root_id = root.id();
    let mut stack: Vec<(Edge, bool)> = vec![(root, false)];
    while let Some((t, expanded)) = stack.pop() {
        if expanded {
            order.push(t);
            continue;
        }
        if !seen.insert(t.id()) {
            continue;
        }
        let inputs = t.node_inputs();
        stack.push((t, true));
        for input in inputs {
            if input.requires_grad() && !seen.contains(&input.id()) {
                stack.push((input, false));
            }
        }
    }
    let mut grads: HashMap<u64, Tensor> = HashMap::new();
    grads.insert(root_id, seed);
    // Consuming `order` drops each node (and the buffers it saved) once it has run.
    for t in order.into_iter().rev() {
        let Some(grad) = grads.remove(&t.id()) else { continue };
        match t.take_node() {
            None if t.made_by_op() => {
                return Err(Error::invalid(
                    "backward ran through this graph already (its saved buffers are released); \
                     run the forward pass again",
                ))
            }
            None => accumulate_grad(&t, grad)?,
            Some(node) => {
                // an input that appears twice gets no place: its two gradients add
                let places: Vec<Option<Tensor>> = (node.inputs.iter().enumerate())
                    .map(|(i, e)| e.empty_grad_place().filter(|_| !node.inputs[..i].iter().any(|o| o.id() == e.id())))
                    .collect();
                // an input that already has a gradient from its other uses (a ResNet block's
                // input, after its shortcut's): the op may add it in the kernel that computes
                // that input's gradient
                let once = |i: usize| node.inputs.iter().filter(|o| o.id() == node.inputs[i].id()).count() == 1;
                let pending = (0..node.inputs.len())
                    .filter(|&i| node.inputs[i].requires_grad() && once(i) && grads.contains_key(&node.inputs[i].id()))
                    .filter(|_| SEPARATE_ADDS.with(|c| c.get()) != Some(true));
                let mut added = None;
                for i in pending {
                    let prev = &grads[&node.inputs[i].id()];
                    if let Some(input_grads) = node.backward.backward_adding(&grad, &places, i, prev)? {
                        added = Some((i, input_grads));
                        break;
                    }
                }
                let (added, input_grads) = match added {
                    Some((i, input_grads)) => (Some(i), input_grads),
                    None => (None, node.backward.backward_into(&grad, &places)?),
                };
                drop(grad);
                for (i, (input, g)) in node.inputs.iter().zip(input_grads).enumerate() {
                    let Some(g) = g else { continue };
                    if !input.requires_grad() || input.took_grad_in_place(&g) {
                        continue;
                    }
                    let merged = match grads.remove(&input.id()) {
                        Some(_) if added == Some(i) => g,
                        Some(prev) => elementwise::add(&prev, &g)?,
                        None => g,
                    };
                    grads.insert(input.id(), merged);
                }
            }
        }
    }
    Ok(())
}
