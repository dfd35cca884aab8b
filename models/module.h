// Module: a named tree of parameters, and the small layers every model is built from.
//
// A module registers its parameters and its child modules by name; named_parameters()
// walks the tree in registration order and joins the names with dots, as PyTorch and
// FLA/Hugging Face do ("model.layers.3.attn.q_proj.weight"). Those names key the
// checkpoints and the optimizer state, so a PyTorch user can load our safetensors.
//
// A parameter is an ordinary leaf Tensor (requires_grad on) that the module keeps a
// handle to; registering the same tensor twice (tied weights) lists it once, under the
// first name. Children are registered by reference and must live as long as the parent:
// modules hold their children as members (or in a ModuleList) and are neither copied
// nor moved.
//
// Layers (initialisation as FLA's _init_weights):
//   Linear(in, out):     y = x W^T + b;   W [out, in] ~ normal(0, 0.02), b [out] = 0
//   Embedding(V, D):     y = W[ids];      W [V, D] ~ normal(0, 0.02)
//   RMSNorm(D):          y = x * rsqrt(mean(x^2) + eps) * w;   w [D] = 1
//
// Mixed precision (MixedPrecision, at the end of this file) is the one place that makes a
// model compute in bfloat16 while float32 master weights train.
#pragma once

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "core/rng.h"
#include "core/tensor.h"

namespace resona::models {

using NamedTensors = std::vector<std::pair<std::string, Tensor>>;

class Module {
 public:
  Module() = default;
  virtual ~Module() = default;
  Module(const Module&) = delete;
  Module& operator=(const Module&) = delete;

  // Every parameter of this module and its descendants, in registration order, with
  // dotted names ("layers.0.mlp.up_proj.weight"), each tensor once. `prefix` is
  // prepended with a dot ("model" -> "model.layers.0...").
  NamedTensors named_parameters(const std::string& prefix = "") const;
  std::vector<Tensor> parameters() const;
  // Total number of elements over the (deduplicated) parameters.
  int64_t num_parameters() const;
  // The parameter with this dotted name; throws naming it and listing none if missing.
  Tensor parameter(const std::string& dotted_name) const;

  // Gives every parameter its dotted name (Tensor::name), so that errors about a
  // parameter say which one. Models call it once, at the end of construction.
  void name_parameters(const std::string& prefix = "");

  // Direct children, in registration order.
  const std::vector<std::pair<std::string, Module*>>& children() const { return children_; }

  // Moves every parameter to `device` in place (the layers' own handles follow).
  void to(Device device);

  // Training flag, set recursively (layers with dropout read it).
  void set_training(bool on);
  bool is_training() const { return training_; }

 protected:
  // Makes `t` a parameter called `name` (no dots; unique among this module's
  // parameters and children): sets requires_grad and returns the same handle.
  // `t` must be a floating-point leaf; the caller initialises it (init_* below).
  Tensor register_parameter(const std::string& name, Tensor t);
  // Adds `m` as a child called `name`; returns it.
  template <class M>
  M& register_module(const std::string& name, M& m) {
    add_child(name, &m);
    return m;
  }

 private:
  void add_child(const std::string& name, Module* m);
  void check_new_name(const std::string& name) const;
  void collect(const std::string& prefix, NamedTensors& out,
               std::vector<const TensorImpl*>& seen) const;

  // Parameters and children interleaved in registration order: exactly one of
  // `param` (defined) and `child` (non-null) is set.
  struct Entry {
    std::string name;
    Tensor param;
    Module* child = nullptr;
  };
  std::vector<Entry> entries_;
  std::vector<std::pair<std::string, Module*>> children_;
  bool training_ = true;
};

// Children "0", "1", ... owned by the list (e.g. a model's "layers").
template <class M>
class ModuleList : public Module {
 public:
  M& push_back(std::unique_ptr<M> m) {
    M& ref = *m;
    items_.push_back(std::move(m));
    register_module(std::to_string(items_.size() - 1), ref);
    return ref;
  }
  size_t size() const { return items_.size(); }
  M& operator[](size_t i) { return *items_.at(i); }
  const M& operator[](size_t i) const { return *items_.at(i); }

 private:
  std::vector<std::unique_ptr<M>> items_;
};

// In-place initialisation of a parameter (not recorded by autograd). `normal` draws
// numel values from `gen` (advancing it) in the tensor's dtype; CPU float tensors only.
void init_normal(Tensor& t, Generator& gen, double std, double mean = 0.0);
void init_zeros(Tensor& t);
void init_ones(Tensor& t);

struct LinearOptions {
  bool bias = false;
  double init_std = 0.02;
  DType dtype = DType::kFloat32;
};

class Linear : public Module {
 public:
  Linear(int64_t in_features, int64_t out_features, Generator& gen, LinearOptions opt = {});
  // x [..., in] -> [..., out]
  Tensor forward(const Tensor& x) const;

  int64_t in_features() const { return in_; }
  int64_t out_features() const { return out_; }
  const Tensor& weight() const { return weight_; }  // [out, in]
  const Tensor& bias() const { return bias_; }      // [out], undefined without bias

 private:
  int64_t in_, out_;
  Tensor weight_, bias_;
};

class Embedding : public Module {
 public:
  Embedding(int64_t num_embeddings, int64_t dim, Generator& gen, double init_std = 0.02,
            DType dtype = DType::kFloat32);
  // ids [...] (int32/int64) -> [..., D]
  Tensor forward(const Tensor& ids) const;
  const Tensor& weight() const { return weight_; }  // [V, D]

 private:
  Tensor weight_;
};

class RMSNorm : public Module {
 public:
  explicit RMSNorm(int64_t dim, double eps = 1e-6, DType dtype = DType::kFloat32);
  // x [..., D] -> [..., D]
  Tensor forward(const Tensor& x) const;
  double eps() const { return eps_; }
  const Tensor& weight() const { return weight_; }  // [D]

 private:
  double eps_;
  Tensor weight_;
};

// Mixed-precision training: float32 master weights and optimizer state, compute in a
// lower precision (bfloat16 on CUDA: train.precision bf16).
//
// Every parameter exists twice:
//   master   a float32 leaf held here, named as the model's parameter. The optimizer
//            updates the masters, checkpoints store them (so a bf16 run's checkpoint is
//            the same file as an fp32 run's), and their gradients are float32.
//   compute  the model's own parameter, converted in place to the compute dtype at
//            construction. Every layer reads its parameters through its own handles, so
//            the whole forward computes in that dtype without any layer knowing: Linear
//            and lm_head products run as bf16 cuBLAS GEMMs accumulating in float32,
//            activations (and the saved ones) are bf16, and the kernels of the norms,
//            softmax, scans and recurrences keep their sums and states in float32 as
//            they do for any bf16 input; cross_entropy of bf16 logits returns a float32
//            loss (ops/loss.h).
//
// One training step:
//   forward + backward      gradients (in the compute dtype) reach the compute params
//   accumulate_grads()      master.grad += float32(compute.grad); compute grads dropped
//                           (once per micro-batch: the sum over micro-batches is float32)
//   clip, optimizer step    on the masters
//   refresh()               compute = round-to-nearest-even(master)
// This is exactly the scheme "cast the float32 weights to bf16 inside the forward" (the
// `cast` op's backward converts d_out back, as accumulate_grads does), with the cast
// done once per step instead of at every use, and without changing any layer.
//
// With the compute dtype equal to the parameters' own (fp32 training) nothing is copied:
// the masters are the model's parameters and accumulate_grads/refresh do nothing.
// Construct it after Module::to(device); the model must not move afterwards.
class MixedPrecision {
 public:
  MixedPrecision(Module& model, DType compute_dtype);

  // The float32 masters, in the model's parameter order and with its names: what the
  // optimizer, gradient clipping and checkpoints take.
  const NamedTensors& master_parameters() const { return masters_; }
  DType compute_dtype() const { return compute_dtype_; }
  bool active() const { return active_; }  // false: compute == master

  // Adds each compute parameter's gradient, converted to float32, into its master's
  // gradient (created on first use) and drops the compute gradient. Call after every
  // backward.
  void accumulate_grads();
  // Copies the masters into the compute parameters (rounded to the compute dtype). Call
  // after every change of the masters: an optimizer step, loading a checkpoint.
  void refresh();

 private:
  DType compute_dtype_;
  bool active_ = false;
  NamedTensors masters_;
  NamedTensors compute_;  // the model's parameters (same order as masters_)
};

}  // namespace resona::models
