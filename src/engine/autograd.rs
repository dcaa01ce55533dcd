//! Reverse-mode automatic differentiation on a tape.
//!
//! Every op that produces a tensor from inputs that need gradients attaches a [`Node`]: a
//! [`Backward`] object holding what the op saved, plus edges to the inputs (their place in the
//! graph, not their data: an input's buffer stays alive only if the backward rule saved it). `backward` sorts the
//! graph topologically, runs each node once in reverse order, and accumulates (adds) gradients
//! for tensors used more than once. Each node is taken out of the graph as it runs, so the
//! buffers it saved are released as soon as they are no longer needed.

use crate::tensor::{Edge, Tensor};
use crate::Result;
use std::cell::Cell;
use std::collections::{HashMap, HashSet};

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
}

pub struct Node {
    pub backward: Box<dyn Backward>,
    pub inputs: Vec<Edge>,
}

thread_local! {
    static GRAD_ENABLED: Cell<bool> = const { Cell::new(true) };
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
                return Err(crate::Error::invalid(
                    "backward ran through this graph already (its saved buffers are released); \
                     run the forward pass again",
                ))
            }
            None => t.accumulate_grad(grad)?,
            Some(node) => {
                // an input that appears twice gets no place: its two gradients add
                let places: Vec<Option<Tensor>> = (node.inputs.iter().enumerate())
                    .map(|(i, e)| e.empty_grad_place().filter(|_| !node.inputs[..i].iter().any(|o| o.id() == e.id())))
                    .collect();
                let input_grads = node.backward.backward_into(&grad, &places)?;
                drop(grad);
                for (input, g) in node.inputs.iter().zip(input_grads) {
                    let Some(g) = g else { continue };
                    if !input.requires_grad() || input.took_grad_in_place(&g) {
                        continue;
                    }
                    let merged = match grads.remove(&input.id()) {
                        Some(prev) => crate::ops::elementwise::add(&prev, &g)?,
                        None => g,
                    };
                    grads.insert(input.id(), merged);
                }
            }
        }
    }
    Ok(())
}
