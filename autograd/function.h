// apply<Op>(args...): runs an op's forward and, when any tensor argument needs grad
// and grad mode is on, records a node whose backward is the op's backward.
//
// An op is a struct (see ops/ and STYLE.md):
//
//   struct Exp {
//     static constexpr const char* kName = "exp";
//     struct Saved { Tensor y; };                       // exactly what backward needs
//     static Tensor forward(Ctx<Saved>& ctx, const Tensor& x);
//     static Grads backward(Ctx<Saved>& ctx, const Tensor& d_y);
//   };
//
// Tensor arguments (and std::vector<Tensor> arguments, flattened in order) are the
// differentiable inputs; anything else is an option passed through. backward returns
// one gradient per flattened tensor input, undefined where `ctx.needs(i)` is false.
// An op may return std::vector<Tensor> (several outputs); its backward then takes
// `const std::vector<Tensor>& d_outs`.
//
// forward runs with grad mode off, so what it computes and saves carries no history;
// the outputs handed back to the caller are fresh handles that carry the node, which
// keeps saved outputs from referencing their own node (no cycles).
#pragma once

#include <memory>
#include <type_traits>
#include <utility>
#include <vector>

#include "autograd/grad_mode.h"
#include "autograd/node.h"

namespace resona {

using Grads = std::vector<Tensor>;

template <class Saved>
struct Ctx {
  Saved saved;
  std::vector<bool> needs_input_grad;  // per flattened tensor input
  bool requires_grad = false;          // any input needs grad (and grad mode is on)
  bool needs(size_t i) const { return i < needs_input_grad.size() && needs_input_grad[i]; }
};

namespace autograd {

inline void collect_tensors(std::vector<const Tensor*>&) {}
template <class A, class... Rest>
void collect_tensors(std::vector<const Tensor*>& out, const A& a, const Rest&... rest) {
  if constexpr (std::is_same_v<std::decay_t<A>, Tensor>) {
    out.push_back(&a);
  } else if constexpr (std::is_same_v<std::decay_t<A>, std::vector<Tensor>>) {
    for (const Tensor& t : a) out.push_back(&t);
  }
  collect_tensors(out, rest...);
}

template <class Op>
class OpNode final : public Node {
 public:
  using Saved = typename Op::Saved;
  explicit OpNode(Ctx<Saved>&& ctx) : ctx_(std::move(ctx)) {}

  std::vector<Tensor> apply(const std::vector<Tensor>& grad_outputs) override {
    // release_saved() resets all of Saved (shapes and options too), so a released node
    // cannot compute anything: refuse instead of reading empty fields.
    RESONA_CHECK(!released_)
        << Op::kName << " backward: the graph was already freed (a backward without "
        << "retain_graph released its saved tensors); pass retain_graph=true to every "
        << "backward but the last to run backward through it again";
    Grads g;
    if constexpr (std::is_invocable_v<decltype(&Op::backward), Ctx<Saved>&,
                                      const std::vector<Tensor>&>) {
      g = Op::backward(ctx_, grad_outputs);
    } else {
      g = Op::backward(ctx_, grad_outputs.at(0));
    }
    RESONA_CHECK(g.size() == next_edges.size())
        << Op::kName << " backward returned " << g.size() << " gradients for " << next_edges.size()
        << " inputs";
    return g;
  }
  void release_saved() override {
    ctx_.saved = Saved{};
    released_ = true;
  }
  const char* name() const override { return Op::kName; }

 private:
  Ctx<Saved> ctx_;
  bool released_ = false;
};

// Gives `out` a fresh handle that carries the node as its grad_fn.
Tensor attach_output(const Tensor& out, const std::shared_ptr<Node>& node, int output_nr);

}  // namespace autograd

template <class Op, class... Args>
auto apply(const Args&... args) {
  using Saved = typename Op::Saved;
  std::vector<const Tensor*> inputs;
  autograd::collect_tensors(inputs, args...);

  Ctx<Saved> ctx;
  ctx.needs_input_grad.resize(inputs.size(), false);
  if (GradMode::enabled()) {
    for (size_t i = 0; i < inputs.size(); ++i) {
      bool r = inputs[i]->defined() && inputs[i]->requires_grad();
      ctx.needs_input_grad[i] = r;
      ctx.requires_grad |= r;
    }
  }

  using Out = decltype(Op::forward(ctx, args...));
  Out out = [&] {
    NoGradGuard no_grad;
    return Op::forward(ctx, args...);
  }();
  if (!ctx.requires_grad) return out;

  auto node = std::make_shared<autograd::OpNode<Op>>(std::move(ctx));
  node->next_edges.reserve(inputs.size());
  for (const Tensor* t : inputs) {
    node->next_edges.push_back(t->defined() ? autograd::edge_for(*t) : autograd::Edge{});
  }
  if constexpr (std::is_same_v<Out, Tensor>) {
    node->outputs.push_back({out.shape(), out.dtype(), out.device()});
    return autograd::attach_output(out, node, 0);
  } else {
    static_assert(std::is_same_v<Out, std::vector<Tensor>>,
                  "an op's forward returns Tensor or std::vector<Tensor>");
    std::vector<Tensor> res;
    res.reserve(out.size());
    for (size_t i = 0; i < out.size(); ++i) {
      node->outputs.push_back({out[i].shape(), out[i].dtype(), out[i].device()});
    }
    for (size_t i = 0; i < out.size(); ++i) {
      res.push_back(autograd::attach_output(out[i], node, static_cast<int>(i)));
    }
    return res;
  }
}

}  // namespace resona
