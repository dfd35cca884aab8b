// Helpers shared by the tests: random inputs, closeness checks, gradcheck assertions,
// op-case registration and GPU skipping.
#pragma once

#include <doctest/doctest.h>

#include <functional>
#include <string>
#include <vector>

#include "autograd/gradcheck.h"
#include "core/check.h"  // Error
#include "core/rng.h"
#include "core/tensor.h"
#include "ops/scan.h"  // RecurrentOutput

namespace resona::testing {

// True when a CUDA device is present (and the CUDA backend is linked).
bool cuda_available();

// A float64 CPU leaf with values uniform in [lo, hi), requiring grad.
Tensor leaf(Generator& gen, const Shape& shape, double lo = -1.0, double hi = 1.0);
// A float64 CPU tensor from explicit values (requiring grad when `grad`).
Tensor values(const std::vector<double>& v, const Shape& shape, bool grad = false);

// CHECKs that every element of `t` is within atol + rtol*|e| of `expected` (row-major),
// reporting the first offending index.
void check_close(const Tensor& t, const std::vector<double>& expected, double atol = 1e-9,
                 double rtol = 1e-9);
void check_close(const Tensor& t, const Tensor& expected, double atol = 1e-9, double rtol = 1e-9);

// A result against a float64 reference in FLA's measure (fla/utils/_testing.py):
// ||got - ref||_2 <= rms_tol ||ref||_2, and the largest single error <= max_tol RMS(ref),
// so one bad element cannot hide in the norm; every element finite.
void check_rel(const Tensor& got, const std::vector<double>& ref, double rms_tol, double max_tol);

// The message of the resona::Error that `f` throws; a failed check (and "") when `f`
// throws something else or nothing.
template <class F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  } catch (const std::exception& e) {
    FAIL("threw a non-resona exception: " << e.what());
    return "";
  }
  FAIL("no error was thrown");
  return "";
}

// Checks that msg contains needle (both shown on failure).
void check_contains(const std::string& msg, const std::string& needle);

// A recurrent op's output and final state, flattened and joined (output first), so one
// gradcheck covers both.
Tensor out_and_state(const RecurrentOutput& r);
// A recurrent op run over [0, T) against the same op run over [0, t) and then [t, T) from
// the first piece's final state, for each t in `splits`: outputs, final state and the
// gradients of every leaf (a loss of sum(out * d_out) + sum(final_state * d_state)), each
// within atol + rtol |expected| (float64: both sides are the same sums, cut elsewhere).
// run(t0, t1, h) runs the op over the time steps [t0, t1) of the leaves (dimension 1 of
// the time-indexed ones) from initial state h; the whole run starts from `h0`, one of the
// leaves, which come with no .grad and are left with none.
void check_split_sequence(
    std::vector<Tensor> leaves, const Tensor& h0, int64_t T,
    const std::function<RecurrentOutput(int64_t, int64_t, const Tensor&)>& run, const Tensor& d_out,
    const Tensor& d_state, const std::vector<int64_t>& splits, double atol = 1e-12,
    double rtol = 1e-12);

// Braced lists (`check_close(t, {0})`) pick this one rather than the Tensor overload.
inline void check_close(const Tensor& t, std::initializer_list<double> expected, double atol = 1e-9,
                        double rtol = 1e-9) {
  check_close(t, std::vector<double>(expected), atol, rtol);
}

// CHECKs that gradcheck passes, printing its report when it does not.
void check_gradients(const std::function<Tensor(const std::vector<Tensor>&)>& f,
                     const std::vector<Tensor>& inputs, const GradcheckOptions& opt = {});

// Registry behind RESONA_OP_TEST: which ops have which kinds of tests (read by the
// coverage test). Registration fails loudly for a name that is not in RESONA_OPS.
enum class OpTestKind { kgradcheck, kvalues };
bool register_op_test(const char* op, OpTestKind kind, const char* title);
struct OpTestRecord {
  std::string op;
  OpTestKind kind;
  std::string title;
};
const std::vector<OpTestRecord>& op_tests();

}  // namespace resona::testing

#define RESONA_TEST_CAT2_(a, b) a##b
#define RESONA_TEST_CAT_(a, b) RESONA_TEST_CAT2_(a, b)

// RESONA_OP_TEST(add, gradcheck, "add(a=[2,3],b=[3])") { ...body... }
// A doctest test case named "<op> <kind>: <title>", recorded for the coverage test.
#define RESONA_OP_TEST(op, kind, title)                                                        \
  static const bool RESONA_TEST_CAT_(resona_op_test_reg_, __LINE__) =                          \
      ::resona::testing::register_op_test(#op, ::resona::testing::OpTestKind::k##kind, title); \
  TEST_CASE(#op " " #kind ": " title)

// Test cases that need a GPU are reported as skipped (never passed) without one.
#define RESONA_GPU_TEST(title) TEST_CASE(title* doctest::skip(!::resona::testing::cuda_available()))

// An op test that needs a GPU (reported as skipped without one).
#define RESONA_OP_GPU_TEST(op, kind, title)                                                    \
  static const bool RESONA_TEST_CAT_(resona_op_test_reg_, __LINE__) =                          \
      ::resona::testing::register_op_test(#op, ::resona::testing::OpTestKind::k##kind, title); \
  TEST_CASE(#op " " #kind ": " title* doctest::skip(!::resona::testing::cuda_available()))
