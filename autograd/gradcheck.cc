#include "autograd/gradcheck.h"

#include <cmath>
#include <sstream>

#include "autograd/engine.h"
#include "autograd/grad_mode.h"
#include "core/rng.h"
#include "ops/elementwise.h"
#include "ops/reduce.h"

namespace resona {

GradcheckResult gradcheck(const std::function<Tensor(const std::vector<Tensor>&)>& f,
                          const std::vector<Tensor>& inputs, const GradcheckOptions& opt) {
  std::vector<Tensor> diff_inputs;
  for (const Tensor& x : inputs) {
    if (!x.requires_grad()) continue;
    RESONA_CHECK(x.dtype() == DType::kFloat64 && x.device().is_cpu() && x.is_leaf())
        << "gradcheck needs float64 CPU leaves, got " << x.describe();
    diff_inputs.push_back(x);
  }
  RESONA_CHECK(!diff_inputs.empty()) << "gradcheck: no input requires grad";

  Tensor out = f(inputs);
  RESONA_CHECK(out.dtype() == DType::kFloat64)
      << "gradcheck: output " << out.describe() << " is not float64";
  Generator gen(opt.seed);
  Tensor d_out = gen.normal(out.shape(), 0.0, 1.0, DType::kFloat64);
  std::vector<Tensor> analytic = autograd::grad({out}, diff_inputs, {d_out});

  auto loss = [&]() {
    NoGradGuard no_grad;
    return sum(mul(f(inputs), d_out)).item();
  };

  GradcheckResult res;
  std::ostringstream report;
  for (size_t k = 0; k < diff_inputs.size(); ++k) {
    Tensor x = diff_inputs[k];
    RESONA_CHECK(x.is_contiguous()) << "gradcheck: input " << x.describe()
                                    << " must be contiguous";
    double* p = x.data<double>();
    Tensor a = analytic[k].defined() ? analytic[k].contiguous() : zeros(x.shape(), DType::kFloat64);
    RESONA_CHECK(a.shape() == x.shape()) << "gradcheck: gradient " << a.describe()
                                         << " for input " << x.describe();
    std::vector<double> av = a.to_vector<double>();
    double worst = 0, worst_a = 0, worst_n = 0;
    int64_t worst_i = -1;
    for (int64_t i = 0; i < x.numel(); ++i) {
      const double orig = p[i];
      p[i] = orig + opt.eps;
      const double lp = loss();
      p[i] = orig - opt.eps;
      const double lm = loss();
      p[i] = orig;
      const double num = (lp - lm) / (2 * opt.eps);
      const double err = std::abs(av[i] - num);
      if (!(err <= opt.atol + opt.rtol * std::abs(num))) res.ok = false;
      res.max_abs_error = std::max(res.max_abs_error, err);
      const double rel = err / std::max(1.0, std::abs(num));
      if (rel > res.max_rel_error) res.max_rel_error = rel;
      if (worst_i < 0 || rel > worst || std::isnan(err)) {
        worst = rel;
        worst_i = i;
        worst_a = av[i];
        worst_n = num;
      }
    }
    report << "input " << k << " " << x.describe() << ": worst element " << worst_i
           << " analytic " << worst_a << " numeric " << worst_n << " rel.err " << worst << "\n";
  }
  res.report = report.str();
  return res;
}

}  // namespace resona
