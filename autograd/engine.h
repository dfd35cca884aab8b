// Reverse-mode differentiation over the dynamic graph.
//
// backward(roots, grads): nodes run in a topological order (a node runs only after every
// node that feeds it a gradient has run), gradients reaching the same output are summed,
// and gradients reaching a leaf are accumulated into leaf.grad() (added in place when a
// gradient is already there, so steady-state training reuses the buffers). A leaf's
// contributions are summed first and accumulated once, after the last node that feeds
// it has run; its post_accumulate_hooks then run once per backward. Saved tensors are
// released after each node runs unless `retain_graph`; a later backward through a
// released node throws a resona::Error saying the graph was already freed.
#pragma once

#include <vector>

#include "core/tensor.h"

namespace resona::autograd {

void backward(const std::vector<Tensor>& roots, const std::vector<Tensor>& grad_roots,
              bool retain_graph = false);

// Gradients of `outputs` w.r.t. `inputs` without touching any .grad() (used by
// gradcheck). Inputs that the outputs do not depend on get undefined tensors.
std::vector<Tensor> grad(const std::vector<Tensor>& outputs, const std::vector<Tensor>& inputs,
                         const std::vector<Tensor>& grad_outputs, bool retain_graph = false);

}  // namespace resona::autograd
