#include "autograd/grad_mode.h"
#include "autograd/function.h"
#include "autograd/node.h"

namespace resona {

namespace {
thread_local bool g_grad_enabled = true;
}

bool GradMode::enabled() { return g_grad_enabled; }
void GradMode::set_enabled(bool on) { g_grad_enabled = on; }

namespace autograd {

Edge edge_for(const Tensor& t) {
  const AutogradMeta* m = t.autograd_meta_if_any();
  if (m == nullptr) return {};
  if (m->grad_fn) return Edge{m->grad_fn, m->output_nr, nullptr};
  if (m->requires_grad) return Edge{nullptr, 0, t.impl_ptr()};
  return {};
}

Tensor attach_output(const Tensor& out, const std::shared_ptr<Node>& node, int output_nr) {
  Tensor h = out.detach();
  AutogradMeta& m = h.autograd_meta();
  m.grad_fn = node;
  m.output_nr = output_nr;
  return h;
}

}  // namespace autograd
}  // namespace resona
