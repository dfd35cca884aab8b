// Finite-difference gradient check in float64.
//
// For f mapping the inputs to one output tensor, compares the analytic vector-Jacobian
// product (backward with a fixed random d_out) against central differences
//   (L(x + h e_i) - L(x - h e_i)) / 2h,   L(x) = <f(x), d_out>
// for every element of every input that requires grad. Inputs must be float64 CPU
// leaves. The report gives the worst relative error max|a - n| / max(1, |n|) per input.
#pragma once

#include <functional>
#include <string>
#include <vector>

#include "core/tensor.h"

namespace resona {

struct GradcheckOptions {
  double eps = 1e-6;       // step h
  double atol = 1e-6;      // pass when |a - n| <= atol + rtol * |n| everywhere
  double rtol = 1e-5;
  uint64_t seed = 1234;    // for d_out
};

struct GradcheckResult {
  bool ok = true;
  double max_abs_error = 0;
  double max_rel_error = 0;
  std::string report;  // per input: worst element, analytic vs numeric
};

GradcheckResult gradcheck(const std::function<Tensor(const std::vector<Tensor>&)>& f,
                          const std::vector<Tensor>& inputs, const GradcheckOptions& opt = {});

}  // namespace resona
