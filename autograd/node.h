// A node of the dynamic autograd graph: the backward of one op application.
//
// Edges point from a node to where each of its inputs' gradients goes: either the node
// that produced that input (and which of its outputs it was) or, for a leaf that
// requires grad, the leaf itself (the engine accumulates into leaf.grad()).
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "core/tensor.h"

namespace resona::autograd {

struct Edge {
  std::shared_ptr<Node> fn;          // producer of the input, or null
  int output_nr = 0;                 // which output of `fn`
  std::shared_ptr<TensorImpl> leaf;  // the input itself when it is a leaf needing grad
  bool active() const { return fn != nullptr || leaf != nullptr; }
};

// Shape, dtype and device of one output, so a missing gradient can be zero-filled.
struct OutputMeta {
  Shape shape;
  DType dtype;
  Device device;
};

class Node {
 public:
  virtual ~Node() = default;
  // Gradients w.r.t. the inputs (one per edge; undefined where not needed), given the
  // gradients w.r.t. the outputs (never undefined: absent ones arrive zero-filled).
  virtual std::vector<Tensor> apply(const std::vector<Tensor>& grad_outputs) = 0;
  // Drops the tensors saved for backward once they are no longer needed; apply() on a
  // released node throws a resona::Error saying the graph was already freed.
  virtual void release_saved() = 0;
  virtual const char* name() const = 0;

  std::vector<Edge> next_edges;
  std::vector<OutputMeta> outputs;
};

// Builds the edge for one input tensor (inactive when the input needs no grad).
Edge edge_for(const Tensor& t);

}  // namespace resona::autograd
