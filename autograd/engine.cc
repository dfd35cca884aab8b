#include "autograd/engine.h"

#include <deque>
#include <unordered_map>
#include <unordered_set>

#include "autograd/grad_mode.h"
#include "autograd/node.h"
#include "ops/elementwise.h"

namespace resona::autograd {
namespace {

// Sum of gradients reaching the same slot (out of place: a gradient may alias another).
void accumulate(Tensor& slot, const Tensor& g) { slot = slot.defined() ? add(slot, g) : g; }

void accumulate_leaf(const std::shared_ptr<TensorImpl>& leaf_impl, const Tensor& g_in) {
  Tensor leaf(leaf_impl);
  Tensor g = g_in;
  RESONA_CHECK(g.shape() == leaf.shape())
      << "backward produced a gradient " << g.describe() << " for leaf " << leaf.describe();
  if (g.dtype() != leaf.dtype()) g = g.to(leaf.dtype());
  AutogradMeta& m = leaf.autograd_meta();
  if (m.grad) {
    Tensor existing(m.grad);
    add_(existing, g);
  } else {
    m.grad = g.clone().impl_ptr();  // a fresh buffer: later steps add into it in place
  }
  for (auto& hook : m.post_accumulate_hooks) hook(leaf);
}

// Gradients headed for one leaf, summed until the last edge into it has run, so that
// the leaf's .grad() is updated (and its hooks run) once per backward, with the full
// gradient, as early as the graph allows.
struct LeafSlot {
  std::shared_ptr<TensorImpl> impl;
  Tensor grad;
  int pending = 0;  // edges into this leaf from nodes that have not run yet
  bool flushed = false;
};

struct Run {
  // Gradient slots of each node's outputs.
  std::unordered_map<Node*, std::vector<Tensor>> buffers;
  std::unordered_map<Node*, int> dependencies;
  std::unordered_map<Node*, std::shared_ptr<Node>> owners;
  std::unordered_map<TensorImpl*, LeafSlot> leaves;
  std::vector<TensorImpl*> leaf_order;  // first-seen order, for a deterministic final flush
  // Capture mode (grad()): gradients for these leaves go here, not into .grad().
  const std::unordered_map<TensorImpl*, size_t>* capture = nullptr;
  std::vector<Tensor>* captured = nullptr;

  LeafSlot& leaf_slot(const std::shared_ptr<TensorImpl>& leaf) {
    auto [it, fresh] = leaves.try_emplace(leaf.get());
    if (fresh) {
      it->second.impl = leaf;
      leaf_order.push_back(leaf.get());
    }
    return it->second;
  }

  void flush_leaf(LeafSlot& slot) {
    if (slot.flushed) return;
    slot.flushed = true;
    if (!slot.grad.defined()) return;
    if (capture) {
      auto it = capture->find(slot.impl.get());
      if (it != capture->end()) accumulate((*captured)[it->second], slot.grad);
      return;
    }
    accumulate_leaf(slot.impl, slot.grad);
  }

  void discover(const std::vector<std::shared_ptr<Node>>& roots) {
    std::vector<Node*> stack;
    for (const auto& r : roots) {
      if (owners.emplace(r.get(), r).second) stack.push_back(r.get());
    }
    while (!stack.empty()) {
      Node* n = stack.back();
      stack.pop_back();
      buffers[n].resize(n->outputs.size());
      for (const Edge& e : n->next_edges) {
        if (e.leaf) ++leaf_slot(e.leaf).pending;
        if (!e.fn) continue;
        ++dependencies[e.fn.get()];
        if (owners.emplace(e.fn.get(), e.fn).second) stack.push_back(e.fn.get());
      }
    }
  }

  void execute(bool retain_graph) {
    std::deque<Node*> ready;
    for (auto& [n, owner] : owners) {
      if (dependencies[n] == 0) ready.push_back(n);
    }
    NoGradGuard no_grad;
    while (!ready.empty()) {
      Node* n = ready.front();
      ready.pop_front();
      std::vector<Tensor>& slots = buffers[n];
      bool any = false;
      for (const Tensor& s : slots) any |= s.defined();
      std::vector<Tensor> grads_in;
      if (any) {
        for (size_t i = 0; i < slots.size(); ++i) {
          if (!slots[i].defined()) {
            const OutputMeta& m = n->outputs[i];
            slots[i] = zeros(m.shape, m.dtype, m.device);
          }
        }
        grads_in = n->apply(slots);
        if (!retain_graph) n->release_saved();
      }
      slots.clear();
      for (size_t i = 0; i < n->next_edges.size(); ++i) {
        const Edge& e = n->next_edges[i];
        const Tensor* g = (any && grads_in[i].defined()) ? &grads_in[i] : nullptr;
        if (e.fn) {
          if (g) accumulate(buffers[e.fn.get()][e.output_nr], *g);
          if (--dependencies[e.fn.get()] == 0) ready.push_back(e.fn.get());
        } else if (e.leaf) {
          LeafSlot& slot = leaves.at(e.leaf.get());
          if (g) accumulate(slot.grad, *g);
          if (--slot.pending == 0) flush_leaf(slot);
        }
      }
    }
    // Leaves that were roots themselves and not reached through the graph.
    for (TensorImpl* l : leaf_order) flush_leaf(leaves.at(l));
  }

  void seed(const std::vector<Tensor>& roots, const std::vector<Tensor>& grads,
            std::vector<std::shared_ptr<Node>>& root_nodes) {
    RESONA_CHECK(roots.size() == grads.size())
        << "backward: " << roots.size() << " roots but " << grads.size() << " gradients";
    for (size_t i = 0; i < roots.size(); ++i) {
      const Tensor& r = roots[i];
      RESONA_CHECK(r.requires_grad())
          << "backward from " << r.describe() << ", which does not require grad";
      Tensor g = grads[i];
      if (!g.defined()) {
        RESONA_CHECK(r.numel() == 1)
            << "backward from non-scalar " << r.describe() << " needs an explicit gradient";
        g = ones(r.shape(), r.dtype(), r.device());
      }
      RESONA_CHECK(g.shape() == r.shape())
          << "backward: gradient " << g.describe() << " does not match root " << r.describe();
      if (r.grad_fn()) root_nodes.push_back(r.grad_fn());
    }
    discover(root_nodes);
    for (size_t i = 0; i < roots.size(); ++i) {
      const Tensor& r = roots[i];
      Tensor g = grads[i].defined() ? grads[i] : ones(r.shape(), r.dtype(), r.device());
      if (r.grad_fn()) {
        accumulate(buffers[r.grad_fn().get()][r.output_nr()], g);
      } else {
        accumulate(leaf_slot(r.impl_ptr()).grad, g);
      }
    }
  }
};

}  // namespace

void backward(const std::vector<Tensor>& roots, const std::vector<Tensor>& grad_roots,
              bool retain_graph) {
  Run run;
  std::vector<std::shared_ptr<Node>> root_nodes;
  run.seed(roots, grad_roots, root_nodes);
  run.execute(retain_graph);
}

std::vector<Tensor> grad(const std::vector<Tensor>& outputs, const std::vector<Tensor>& inputs,
                         const std::vector<Tensor>& grad_outputs, bool retain_graph) {
  std::unordered_map<TensorImpl*, size_t> index;
  for (size_t i = 0; i < inputs.size(); ++i) {
    RESONA_CHECK(inputs[i].is_leaf() && inputs[i].requires_grad())
        << "grad(): input " << i << " " << inputs[i].describe()
        << " must be a leaf that requires grad";
    index[inputs[i].impl()] = i;
  }
  std::vector<Tensor> captured(inputs.size());
  Run run;
  run.capture = &index;
  run.captured = &captured;
  std::vector<Tensor> gs = grad_outputs;
  gs.resize(outputs.size());
  std::vector<std::shared_ptr<Node>> root_nodes;
  run.seed(outputs, gs, root_nodes);
  run.execute(retain_graph);
  return captured;
}

}  // namespace resona::autograd

namespace resona {
void Tensor::backward(const Tensor& grad, bool retain_graph) const {
  autograd::backward({*this}, {grad}, retain_graph);
}
}  // namespace resona
