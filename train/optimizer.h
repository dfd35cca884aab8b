// AdamW (Loshchilov & Hutter, 2019) and gradient utilities.
//
// For each parameter p with gradient g, at step t = 1, 2, ...:
//   p <- p * (1 - lr * wd)                      decoupled weight decay (not through g)
//   m <- beta1 m + (1 - beta1) g
//   v <- beta2 v + (1 - beta2) g^2
//   p <- p - lr * (m / (1 - beta1^t)) / (sqrt(v / (1 - beta2^t)) + eps)
// which is torch.optim.AdamW's update. The step count t is shared by all parameters;
// a parameter whose gradient is undefined at a step is left untouched (as PyTorch).
//
// State: m ("exp_avg") and v ("exp_avg_sq") per parameter, keyed by the parameter's
// name, in the parameter's dtype on the parameter's device, allocated (zero) at
// construction; named_state() lists them as "<param>.exp_avg" / "<param>.exp_avg_sq"
// for checkpoints.
//
// CPU parameters (float32 or float64, contiguous): the update loops run directly over
// the data, with no autograd graph. CUDA parameters (float32 master weights, contiguous,
// all on one GPU): one fused multi-tensor kernel updates every one of them that has a
// gradient (float32 or bfloat16, contiguous), with the same float32 arithmetic as the
// CPU loop (cuda/adamw.h). Its table of pointers lives on the device and is uploaded
// only when it changes, so a steady-state step neither copies nor waits.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "core/tensor.h"

namespace resona::train {

using NamedTensors = std::vector<std::pair<std::string, Tensor>>;

struct AdamWConfig {
  double lr = 1e-3;
  double beta1 = 0.9;
  double beta2 = 0.999;
  double eps = 1e-8;
  double weight_decay = 0.01;
  // Weight decay only on parameters with at least 2 dims (matrices, embeddings): norm
  // weights and biases are not decayed, the usual practice for language models.
  bool decay_only_matrices = true;
  // Embedding matrices (parameters whose name contains "embeddings", as FLA's
  // "model.embeddings.weight", and so a tied lm_head) are not decayed unless this is on.
  bool decay_embeddings = false;

  void validate() const;  // throws naming the field
};

class AdamW {
 public:
  // `params`: (name, leaf tensor) pairs, e.g. Module::named_parameters(); names unique.
  AdamW(NamedTensors params, const AdamWConfig& cfg);

  // One update of every parameter that has a gradient, at the current lr.
  void step();
  // Zeroes every parameter's gradient buffer in place (keeping it for the next backward).
  void zero_grad();

  void set_lr(double lr);
  double lr() const { return cfg_.lr; }
  const AdamWConfig& config() const { return cfg_; }
  // Updates done so far (t of the last step).
  int64_t step_count() const { return step_; }

  // "<param>.exp_avg" and "<param>.exp_avg_sq" for every parameter, in parameter order.
  NamedTensors named_state() const;
  // Restores the state written by named_state() and the step count; every name must be
  // present with the parameter's shape and dtype (the error names what does not match).
  void load_state(const NamedTensors& state, int64_t step_count);

  const NamedTensors& params() const { return params_; }

 private:
  struct Slot {
    Tensor exp_avg, exp_avg_sq;
    bool decay = true;
  };
  NamedTensors params_;
  std::vector<Slot> slots_;
  AdamWConfig cfg_;
  int64_t step_ = 0;
};

// Zeroes the gradient buffers of `params` in place (parameters without one are skipped).
void zero_grad(const std::vector<Tensor>& params);

// Global L2 norm over every defined gradient of `params`, accumulated in float64. When it
// exceeds `max_norm`, every gradient is scaled in place by max_norm / (norm + 1e-6) (as
// torch.nn.utils.clip_grad_norm_). Returns the norm before clipping; a non-finite norm
// is returned without scaling anything, so that the caller can skip the step.
//
// CUDA gradients (float32 or bfloat16, contiguous, one GPU; not mixed with CPU ones):
// the norm comes from a deterministic two-stage reduction on the device (float32 sums
// per chunk of 8192 elements, float64 across chunks), and the scale is computed and
// applied there too; returning the norm as a double is the only host sync.
double clip_grad_norm(const std::vector<Tensor>& params, double max_norm);
double clip_grad_norm(const NamedTensors& params, double max_norm);
// The same, returning the norm as a one-element float64 tensor on the gradients' device
// without waiting for it (CUDA); on the CPU, a CPU tensor.
Tensor clip_grad_norm_tensor(const std::vector<Tensor>& params, double max_norm);

}  // namespace resona::train
