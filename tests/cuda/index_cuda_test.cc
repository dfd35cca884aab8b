// CUDA against CPU for embedding, index_select and gather: forward and the backward run
// by the autograd engine on the GPU, float32 and bfloat16, both backward modes (float32
// atomics; deterministic sort-and-segment), repeated indices, a 32000-row vocabulary,
// strided inputs, index tensors on the CPU (int64) and on the GPU (int32), odd sizes.
// Bad ids: on the CPU they throw at once; on the GPU at the next synchronisation (a copy
// to the host, a device, stream or event synchronize), with the op, the tensors, the
// value and its flat position, once, leaving valid rows exact (embedding: bad rows zero).
// Embedding with GPU ids in any layout (int32/int64, strided), misaligned weight views,
// ids of shape [0], and the dim-0 backward's long runs of equal ids.
//
// The CPU reference runs in float32 on the same inputs (bf16-rounded for the bfloat16
// cases). Tolerances, per element:
//   forward: a gather copies values: exact.
//   deterministic backward: the GPU sums each target's terms in index order in float32,
//     as the CPU does: float32 is bit-identical; bfloat16 is the CPU's float32 sum
//     rounded once to bfloat16, also exact.
//   atomic backward: the same k terms summed in another order. Each recursive float32
//     sum is within (k - 1) u S of the exact one (u = 2^-24, S = sum of |terms|, from
//     the CPU backward of |d_y|; k from the backward of ones), so the two sums differ
//     by at most 2 (k - 1) u S; bfloat16 adds the final rounding, at most 2^-8 of the
//     value.
#include <cmath>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include "cuda/backend.h"
#include "ops/determinism.h"
#include "ops/elementwise.h"
#include "ops/index.h"
#include "tests/cuda/cuda_check.h"
#include "tests/test_util.h"

namespace resona::testing {
namespace {

constexpr double kU32 = 1.0 / 16777216.0;  // float32 unit roundoff, 2^-24
constexpr double kBf16Rel = 1.0 / 256;     // bfloat16 rounding, at most 2^-8 relative

// A CUDA leaf holding `x` (CPU float32) as `dtype`, contiguous or with reversed strides
// (a view of the permuted copy: same values, no dim contiguous unless it has size 1).
Tensor cuda_leaf(const Tensor& x, DType dtype, bool strided) {
  Tensor t;
  if (!strided || x.dim() < 2) {
    t = copy_to(x, dtype, Device::cuda());
  } else {
    const int64_t n = x.dim();
    Shape perm(n);
    for (int64_t d = 0; d < n; ++d) perm[d] = n - 1 - d;
    Tensor base = copy_to(x.permute(perm).contiguous(), dtype, Device::cuda());
    Shape strides(n);
    for (int64_t d = 0; d < n; ++d) strides[d] = base.strides()[n - 1 - d];
    t = make_view(base, x.shape(), strides, 0);
    bool any_unit = false;  // a size-1 dim can make the reversed view contiguous
    for (int64_t e : x.shape()) any_unit |= e == 1;
    if (!any_unit) REQUIRE_FALSE(t.is_contiguous());
  }
  t.set_requires_grad(true);
  return t;
}

Tensor cpu_leaf(const Tensor& x) {
  Tensor t = x.clone();
  t.set_requires_grad(true);
  return t;
}

using IndexFn = std::function<Tensor(const Tensor& x, const Tensor& index)>;

struct Result {
  Tensor y, d_x;
};

Result run(const IndexFn& f, const Tensor& x_leaf, const Tensor& index, const Tensor& d_y) {
  Tensor y = f(x_leaf, index);
  y.backward(d_y);
  return {y.detach(), x_leaf.grad()};
}

// Integers in [0, bound) with many repeats: half of the positions take one of four hot
// values (0, 1, bound / 2, bound - 1), the rest are uniform.
Tensor random_index(Generator& gen, const Shape& shape, int64_t bound) {
  const int64_t hot[4] = {0, std::min<int64_t>(1, bound - 1), bound / 2, bound - 1};
  std::vector<int64_t> v(shape_numel(shape));
  for (int64_t& e : v)
    e = gen.next_int(0, 2) == 0 ? hot[gen.next_int(0, 4)] : gen.next_int(0, bound);
  return from_vector(v, shape);
}

void check_exact(const Tensor& got, const Tensor& expected, const std::string& what) {
  INFO(what);
  REQUIRE(got.shape() == expected.shape());
  const std::vector<uint32_t> g = bits(got), e = bits(expected);
  for (size_t i = 0; i < g.size(); ++i) {
    if (g[i] != e[i]) {
      INFO("element " << i << ": got " << host_f32(got).to_vector<double>()[i] << ", expected "
                      << host_f32(expected).to_vector<double>()[i]);
      CHECK(g[i] == e[i]);
      return;
    }
  }
  CHECK(true);
}

void check_bound(const Tensor& got, const Tensor& expected, const std::vector<double>& bound,
                 const std::string& what) {
  INFO(what);
  REQUIRE(got.shape() == expected.shape());
  const std::vector<double> g = host_f32(got).to_vector<double>();
  const std::vector<double> e = expected.to_vector<double>();
  for (size_t i = 0; i < g.size(); ++i) {
    if (!(std::abs(g[i] - e[i]) <= bound[i])) {
      INFO("element " << i << ": got " << g[i] << ", expected " << e[i] << ", bound " << bound[i]);
      CHECK(std::abs(g[i] - e[i]) <= bound[i]);
      return;
    }
  }
  CHECK(true);
}

// One case: CPU reference, then the GPU in both backward modes (the deterministic one
// three times, bit-identical).
void check_case(const std::string& name, const IndexFn& f, const Tensor& x, const Tensor& index,
                const Shape& y_shape, DType dtype, bool strided_x, bool index_on_cuda,
                uint64_t seed) {
  Generator gen(seed);
  Tensor x_in = dtype == DType::kBFloat16 ? round_to_bf16(x) : x;
  Tensor d_y = gen.uniform(y_shape, -1, 1);
  if (dtype == DType::kBFloat16) d_y = round_to_bf16(d_y);

  const Result ref = run(f, cpu_leaf(x_in), index, d_y);
  const Tensor S = run(f, cpu_leaf(x_in), index, abs(d_y)).d_x;       // sum of |terms|
  const Tensor k = run(f, cpu_leaf(x_in), index, ones(y_shape)).d_x;  // terms per target
  const std::vector<double> sv = S.to_vector<double>(), kv = k.to_vector<double>();
  const std::vector<double> rv = ref.d_x.to_vector<double>();
  std::vector<double> atomic_bound(sv.size());
  for (size_t i = 0; i < sv.size(); ++i) {
    const double sum_err = 2 * std::max(kv[i] - 1, 0.0) * kU32 * sv[i];
    atomic_bound[i] =
        dtype == DType::kBFloat16 ? kBf16Rel * (std::abs(rv[i]) + sum_err) + sum_err : sum_err;
  }
  const Tensor expected_det = dtype == DType::kBFloat16 ? round_to_bf16(ref.d_x) : ref.d_x;

  Tensor index_dev = index_on_cuda ? copy_to(index, DType::kInt32, Device::cuda()) : index;
  Tensor d_y_dev = copy_to(d_y, dtype, Device::cuda());
  const std::string label = name + "," + dtype_name(dtype) + (strided_x ? ",strided x" : "") +
                            (index_on_cuda ? ",index int32 cuda" : ",index int64 cpu");
  {
    DeterministicGuard det(false);
    const Result r = run(f, cuda_leaf(x_in, dtype, strided_x), index_dev, d_y_dev);
    CHECK(r.y.device().is_cuda());
    CHECK(r.y.dtype() == dtype);
    CHECK(r.d_x.dtype() == dtype);
    check_exact(r.y, dtype == DType::kBFloat16 ? copy_to(ref.y, dtype, Device::cpu()) : ref.y,
                label + " forward");
    check_bound(r.d_x, ref.d_x, atomic_bound, label + " backward (atomic)");
  }
  {
    DeterministicGuard det(true);
    const Result r = run(f, cuda_leaf(x_in, dtype, strided_x), index_dev, d_y_dev);
    check_exact(r.d_x, copy_to(expected_det, dtype, Device::cpu()),
                label + " backward (deterministic) equals the CPU's float32 sums");
    const std::vector<uint32_t> first = bits(r.d_x);
    for (int rep = 0; rep < 2; ++rep) {
      const Result again = run(f, cuda_leaf(x_in, dtype, strided_x), index_dev, d_y_dev);
      CHECK_MESSAGE(bits(again.d_x) == first, label, " deterministic rerun ", rep);
    }
  }
}

}  // namespace

RESONA_GPU_TEST(
    "embedding CUDA vs CPU (V=7,D=1,ids=[2,5]; V=33,D=67,ids=[3,37]; V=32000,D=64,ids=[4,513]; "
    "V=1000,D=300,ids=[129]; float32, bfloat16; atomic and deterministic; strided weight; "
    "ids int64 cpu / int32 cuda)") {
  struct Case {
    int64_t V, D;
    Shape ids;
  };
  const Case cases[] = {
      {7, 1, {2, 5}}, {33, 67, {3, 37}}, {32000, 64, {4, 513}}, {1000, 300, {129}}};
  uint64_t seed = 300;
  for (const Case& c : cases) {
    for (DType dt : {DType::kFloat32, DType::kBFloat16}) {
      for (int variant = 0; variant < 2; ++variant) {
        Generator gen(seed++);
        Tensor w = gen.normal({c.V, c.D});
        Tensor ids = random_index(gen, c.ids, c.V);
        Shape y_shape = c.ids;
        y_shape.push_back(c.D);
        const std::string name = "embedding(V=" + std::to_string(c.V) +
                                 ",D=" + std::to_string(c.D) + ",ids=" + shape_str(c.ids) + ")";
        check_case(
            name, [](const Tensor& x, const Tensor& i) { return embedding(x, i); }, w, ids, y_shape,
            dt, /*strided_x=*/variant == 1, /*index_on_cuda=*/variant == 1, seed);
      }
    }
  }
}

RESONA_GPU_TEST(
    "index_select CUDA vs CPU (x=[5,7,3] dim=0,1,2 index=[11]; x=[2,1000,9] dim=1 index=[1501]; "
    "float32, bfloat16; atomic and deterministic; strided x)") {
  struct Case {
    Shape x;
    int64_t dim, n;
  };
  const Case cases[] = {{{5, 7, 3}, 0, 11},
                        {{5, 7, 3}, 1, 11},
                        {{5, 7, 3}, 2, 11},
                        {{2, 1000, 9}, 1, 1501},
                        {{1000}, 0, 77}};
  uint64_t seed = 400;
  for (const Case& c : cases) {
    for (DType dt : {DType::kFloat32, DType::kBFloat16}) {
      for (int variant = 0; variant < 2; ++variant) {
        Generator gen(seed++);
        Tensor x = gen.normal(c.x);
        Tensor index = random_index(gen, {c.n}, c.x[c.dim]);
        Shape y_shape = c.x;
        y_shape[c.dim] = c.n;
        const int64_t dim = c.dim;
        const std::string name = "index_select(x=" + shape_str(c.x) +
                                 ",dim=" + std::to_string(dim) + ",index=[" + std::to_string(c.n) +
                                 "])";
        check_case(
            name, [dim](const Tensor& x, const Tensor& i) { return index_select(x, dim, i); }, x,
            index, y_shape, dt, variant == 1, variant == 1, seed);
      }
    }
  }
}

RESONA_GPU_TEST(
    "gather CUDA vs CPU (x=[4,9,5] dim=0,1,2 with smaller and larger index; x=[3,2000] dim=1 "
    "index=[3,4001]; float32, bfloat16; atomic and deterministic; strided x)") {
  struct Case {
    Shape x;
    int64_t dim;
    Shape index;
  };
  const Case cases[] = {{{4, 9, 5}, 0, {6, 8, 5}},
                        {{4, 9, 5}, 1, {3, 13, 4}},
                        {{4, 9, 5}, 2, {4, 9, 7}},
                        {{3, 2000}, 1, {3, 4001}},
                        {{17}, 0, {40}}};
  uint64_t seed = 500;
  for (const Case& c : cases) {
    for (DType dt : {DType::kFloat32, DType::kBFloat16}) {
      for (int variant = 0; variant < 2; ++variant) {
        Generator gen(seed++);
        Tensor x = gen.normal(c.x);
        Tensor index = random_index(gen, c.index, c.x[c.dim]);
        const int64_t dim = c.dim;
        const std::string name = "gather(x=" + shape_str(c.x) + ",dim=" + std::to_string(dim) +
                                 ",index=" + shape_str(c.index) + ")";
        check_case(
            name, [dim](const Tensor& x, const Tensor& i) { return gather(x, dim, i); }, x, index,
            c.index, dt, variant == 1, variant == 1, seed);
      }
    }
  }
}

RESONA_GPU_TEST(
    "embedding and index_select forward as row copies CUDA vs CPU, exact (weight [1000,D] "
    "D=600,75,9,1 ids=[333]; x [40,3,130] dim 0 and 1; each contiguous, as columns 0..D of "
    "a wider buffer (rows off 16-byte boundaries) and columns 1..D+1 (base misaligned too); "
    "float32, bfloat16)") {
  Generator gen(71);
  // variant 0: contiguous; 1: x[..., 0:L] of a buffer one column wider; 2: x[..., 1:L+1].
  auto view_of = [](const Tensor& buf, int variant, int64_t L) {
    if (variant == 0) return buf;
    return buf.slice(-1, variant - 1, variant - 1 + L);
  };
  auto buffer_shape = [](Shape shape, int variant) {
    if (variant > 0) shape.back() += 1;
    return shape;
  };
  for (DType dt : {DType::kFloat32, DType::kBFloat16}) {
    for (int variant = 0; variant < 3; ++variant) {
      for (int64_t D : {600, 75, 9, 1}) {
        const std::string label = "embedding(V=1000,D=" + std::to_string(D) + ",variant " +
                                  std::to_string(variant) + "," + dtype_name(dt) + ")";
        Tensor buf = round_to_bf16(gen.normal(buffer_shape({1000, D}, variant)));
        Tensor ids = random_index(gen, {333}, 1000);
        const Tensor want = embedding(view_of(buf, variant, D), ids);
        const Tensor got = embedding(view_of(copy_to(buf, dt, Device::cuda()), variant, D), ids);
        check_exact(got, copy_to(want, dt, Device::cpu()), label);
      }
      for (int64_t dim : {0, 1}) {
        const std::string label = "index_select(x=[40,3,130],dim=" + std::to_string(dim) +
                                  ",variant " + std::to_string(variant) + "," + dtype_name(dt) +
                                  ")";
        Tensor buf = round_to_bf16(gen.normal(buffer_shape({40, 3, 130}, variant)));
        Tensor index = random_index(gen, {57}, dim == 0 ? 40 : 3);
        const Tensor want = index_select(view_of(buf, variant, 130), dim, index);
        const Tensor got =
            index_select(view_of(copy_to(buf, dt, Device::cuda()), variant, 130), dim, index);
        check_exact(got, copy_to(want, dt, Device::cpu()), label);
      }
    }
  }
}

RESONA_GPU_TEST(
    "indexing ops on CUDA refuse ids on the CPU outside the bound, and float64, at once") {
  Tensor w = zeros({10, 4}, DType::kFloat32, Device::cuda());
  // ids on the CPU are checked on the host, before anything is launched.
  CHECK_THROWS_WITH_AS(embedding(w, from_vector<int64_t>({10}, {1})),
                       doctest::Contains("holds 10 at flat position 0"), Error);
  CHECK_THROWS_WITH_AS(index_select(w, 1, from_vector<int64_t>({0, -2}, {2})),
                       doctest::Contains("holds -2 at flat position 1"), Error);
  Tensor w64 = zeros({10, 4}, DType::kFloat64, Device::cuda());
  CHECK_THROWS_WITH_AS(embedding(w64, from_vector<int64_t>({1}, {1})),
                       doctest::Contains("embedding: CUDA supports float32 and bfloat16"), Error);
  CHECK_THROWS_WITH_AS(gather(w64, 0, from_vector<int64_t>({1}, {1, 1})),
                       doctest::Contains("gather: CUDA supports float32 and bfloat16"), Error);
}

// Ids on the GPU are checked by a kernel without the host waiting: the op returns, and the
// error is thrown at the next synchronisation with the device.

namespace {

// Row r of y (CPU float32 [N, D]) equals row ids[r] of w (CPU float32 [V, D]) for every
// position whose id lies in [0, V).
void check_valid_rows(const Tensor& y, const Tensor& w, const std::vector<int64_t>& ids,
                      const std::string& what) {
  INFO(what);
  const int64_t V = w.shape()[0], D = w.shape()[1];
  REQUIRE(y.shape() == Shape{static_cast<int64_t>(ids.size()), D});
  const std::vector<float> yv = y.to_vector<float>(), wv = w.to_vector<float>();
  for (size_t r = 0; r < ids.size(); ++r) {
    if (ids[r] < 0 || ids[r] >= V) continue;
    for (int64_t j = 0; j < D; ++j) {
      INFO("row " << r << " (id " << ids[r] << "), column " << j);
      REQUIRE(yv[r * D + j] == wv[ids[r] * D + j]);
    }
  }
}

}  // namespace

RESONA_GPU_TEST(
    "embedding with bad CUDA ids (int32 [5] = 1,2,3,40,-1; V=10,D=4) throws at the next "
    "copy to the host with op, tensors, value and position; the record resets; valid rows "
    "are exact") {
  Generator gen(81);
  const Tensor w_cpu = gen.normal({10, 4});
  const Tensor w = copy_to(w_cpu, DType::kFloat32, Device::cuda());
  const std::vector<int64_t> bad = {1, 2, 3, 40, -1};
  const Tensor ids = copy_to(from_vector(bad, {5}), DType::kInt32, Device::cuda());
  Tensor y;
  CHECK_NOTHROW(y = embedding(w, ids));  // no host wait: nothing is known yet
  CHECK_THROWS_WITH_AS(copy_to(y, DType::kFloat32, Device::cpu()),
                       doctest::Contains("embedding: ids [5] int32 cuda:0 holds 40 at flat "
                                         "position 3, outside [0, 10) (size of dim 0 of [10, 4] "
                                         "float32 cuda:0); found by asynchronous index check"),
                       Error);
  // Reported once: the record is clear again, and the bad call's valid rows are exact.
  Tensor y_host;
  CHECK_NOTHROW(y_host = copy_to(y, DType::kFloat32, Device::cpu()));
  check_valid_rows(y_host, w_cpu, bad, "rows of the call with bad ids");
  CHECK_NOTHROW(backend_for(Device::cuda()).synchronize(0));

  // The next valid call works and does not throw.
  const std::vector<int64_t> good = {9, 0, 0, 4, 7, 3};
  const Tensor y2 = embedding(w, copy_to(from_vector(good, {6}), DType::kInt64, Device::cuda()));
  Tensor y2_host;
  CHECK_NOTHROW(y2_host = copy_to(y2, DType::kFloat32, Device::cpu()));
  check_exact(y2_host, embedding(w_cpu, from_vector(good, {6})), "valid ids after the error");

  // Backward from a call with bad ids stays inside d_weight; the error still surfaces,
  // and the rows of the valid ids get their gradient.
  for (bool det : {false, true}) {
    DeterministicGuard guard(det);
    Tensor w_leaf = copy_to(w_cpu, DType::kFloat32, Device::cuda());
    w_leaf.set_requires_grad(true);
    embedding(w_leaf, ids).backward(ones({5, 4}, DType::kFloat32, Device::cuda()));
    CHECK_THROWS_WITH_AS(backend_for(Device::cuda()).synchronize(0),
                         doctest::Contains("holds 40 at flat position 3"), Error);
    CHECK_NOTHROW(backend_for(Device::cuda()).synchronize(0));
    const std::vector<float> g =
        copy_to(w_leaf.grad(), DType::kFloat32, Device::cpu()).to_vector<float>();
    for (int64_t v = 1; v < 10; ++v) {  // row 0 also takes the bad positions' terms
      const float want = v <= 3 ? 1.f : 0.f;
      for (int64_t j = 0; j < 4; ++j) {
        INFO("deterministic " << det << ", d_weight[" << v << ", " << j << "]");
        CHECK(g[v * 4 + j] == want);
      }
    }
  }
}

RESONA_GPU_TEST(
    "index_select and gather with bad CUDA indices throw at DeviceBackend::synchronize, "
    "Stream::synchronize and Event::synchronize (x [10, 4]; index_select dim 1 int64 [2] = "
    "0,4; gather dim 0 int32 [2, 4] with 10 at (1, 2))") {
  const Tensor x = zeros({10, 4}, DType::kFloat32, Device::cuda());
  const Tensor sel = copy_to(from_vector<int64_t>({0, 4}, {2}), DType::kInt64, Device::cuda());
  const std::string sel_msg =
      "index_select: index [2] int64 cuda:0 holds 4 at flat position 1, outside [0, 4) (size of "
      "dim 1 of [10, 4] float32 cuda:0)";
  CHECK_NOTHROW(index_select(x, 1, sel));
  CHECK_THROWS_WITH_AS(backend_for(Device::cuda()).synchronize(0),
                       doctest::Contains(sel_msg.c_str()), Error);

  const Tensor gidx = copy_to(from_vector<int64_t>({0, 1, 2, 3, 4, 5, 10, 6}, {2, 4}),
                              DType::kInt32, Device::cuda());
  const std::string gather_msg =
      "gather: index [2, 4] int32 cuda:0 holds 10 at flat position 6, outside [0, 10) (size of "
      "dim 0 of [10, 4] float32 cuda:0)";
  {
    cuda::Stream stream;
    cuda::StreamGuard guard(stream);
    CHECK_NOTHROW(gather(x, 0, gidx));
    CHECK_THROWS_WITH_AS(stream.synchronize(), doctest::Contains(gather_msg.c_str()), Error);
    CHECK_NOTHROW(stream.synchronize());
  }
  {
    cuda::Stream stream(0, /*non_blocking=*/true);
    cuda::StreamGuard guard(stream);
    cuda::Event done;
    CHECK_NOTHROW(index_select(x, 1, sel));
    done.record(stream);
    CHECK_THROWS_WITH_AS(done.synchronize(), doctest::Contains(sel_msg.c_str()), Error);
    CHECK_NOTHROW(done.synchronize());
  }
  CHECK_NOTHROW(backend_for(Device::cuda()).synchronize(0));
}

RESONA_GPU_TEST(
    "two CUDA index checks with bad ids before one synchronisation report the first one "
    "(embedding ids [4] = 0,1,11,2 then index_select index [3] = 7,0,0 of x [10, 3])") {
  const Tensor w = zeros({10, 3}, DType::kFloat32, Device::cuda());
  const Tensor ids =
      copy_to(from_vector<int64_t>({0, 1, 11, 2}, {4}), DType::kInt64, Device::cuda());
  const Tensor index = copy_to(from_vector<int64_t>({7, 0, 0}, {3}), DType::kInt32, Device::cuda());
  CHECK_NOTHROW(embedding(w, ids));
  CHECK_NOTHROW(index_select(w, 1, index));
  const std::string message = error_of([] { backend_for(Device::cuda()).synchronize(0); });
  INFO(message);
  CHECK(message.find("embedding: ids [4] int64 cuda:0 holds 11 at flat position 2, outside [0, "
                     "10) (size of dim 0 of [10, 3] float32 cuda:0)") != std::string::npos);
  CHECK(message.find("index_select") == std::string::npos);
  // The second launch found the record taken: its error is not reported later either.
  CHECK_NOTHROW(backend_for(Device::cuda()).synchronize(0));
}

RESONA_GPU_TEST(
    "bad CUDA ids in strided views (embedding V=10,D=3: the transpose of int64 [3, 4] with 99 "
    "at (1, 2); every other element of int32 [12] with -5 at view position 4; a 0-stride "
    "broadcast of 12) report the view's flat position") {
  Generator gen(82);
  const Tensor w_cpu = gen.normal({10, 3});
  const Tensor w = copy_to(w_cpu, DType::kFloat32, Device::cuda());
  {
    std::vector<int64_t> base(12);
    for (int64_t i = 0; i < 12; ++i) base[i] = i % 10;
    base[1 * 4 + 2] = 99;
    const Tensor b = copy_to(from_vector(base, {3, 4}), DType::kInt64, Device::cuda());
    const Tensor ids = make_view(b, {4, 3}, {1, 4}, 0);  // the transpose: (i, j) = base[j][i]
    REQUIRE_FALSE(ids.is_contiguous());
    std::vector<int64_t> flat;  // the view's values in row-major order
    for (int64_t i = 0; i < 4; ++i) {
      for (int64_t j = 0; j < 3; ++j) flat.push_back(base[j * 4 + i]);
    }
    const Tensor y = embedding(w, ids);
    CHECK_THROWS_WITH_AS(copy_to(y, DType::kFloat32, Device::cpu()),
                         doctest::Contains("embedding: ids [4, 3] int64 cuda:0 holds 99 at flat "
                                           "position 7, outside [0, 10)"),
                         Error);
    check_valid_rows(copy_to(y, DType::kFloat32, Device::cpu()).reshape({12, 3}), w_cpu, flat,
                     "transposed ids");
  }
  {
    std::vector<int64_t> base(12);
    for (int64_t i = 0; i < 12; ++i) base[i] = (3 * i) % 10;
    base[8] = -5;  // view position 4
    const Tensor b = copy_to(from_vector(base, {12}), DType::kInt32, Device::cuda());
    const Tensor ids = make_view(b, {6}, {2}, 0);
    std::vector<int64_t> flat;
    for (int64_t i = 0; i < 6; ++i) flat.push_back(base[2 * i]);
    const Tensor y = embedding(w, ids);
    CHECK_THROWS_WITH_AS(copy_to(y, DType::kFloat32, Device::cpu()),
                         doctest::Contains("embedding: ids [6] int32 cuda:0 holds -5 at flat "
                                           "position 4, outside [0, 10)"),
                         Error);
    check_valid_rows(copy_to(y, DType::kFloat32, Device::cpu()), w_cpu, flat, "every other id");
  }
  {
    const Tensor one = copy_to(from_vector<int64_t>({12}, {1}), DType::kInt64, Device::cuda());
    const Tensor ids = make_view(one, {2, 3}, {0, 0}, 0);  // every position reads the 12
    const Tensor y = embedding(w, ids);
    CHECK_THROWS_WITH_AS(copy_to(y, DType::kFloat32, Device::cpu()),
                         doctest::Contains("holds 12 at flat position 0, outside [0, 10)"), Error);
  }
}

RESONA_GPU_TEST(
    "a bad CUDA id reported after its launch left the message table (1 bad embedding, then "
    "kIndexCheckTable + 10 valid ones, then a synchronize) still gives value, position and "
    "bound; an empty vocabulary (V=0) reports at the synchronisation too") {
  const Tensor w = zeros({10, 2}, DType::kFloat32, Device::cuda());
  const Tensor bad = copy_to(from_vector<int64_t>({3, 77}, {2}), DType::kInt64, Device::cuda());
  const Tensor good = copy_to(from_vector<int64_t>({3, 4}, {2}), DType::kInt64, Device::cuda());
  embedding(w, bad);
  for (int i = 0; i < cuda::kIndexCheckTable + 10; ++i) embedding(w, good);
  const std::string message = error_of([] { backend_for(Device::cuda()).synchronize(0); });
  INFO(message);
  CHECK(message.find("holds 77 at flat position 1, outside [0, 10)") != std::string::npos);
  CHECK(message.find("no longer among the last 1024 index checks") != std::string::npos);
  CHECK_NOTHROW(backend_for(Device::cuda()).synchronize(0));

  const Tensor empty_w = zeros({0, 2}, DType::kFloat32, Device::cuda());
  Tensor y;
  CHECK_NOTHROW(y = embedding(empty_w, good));
  CHECK(y.shape() == Shape{2, 2});
  CHECK_THROWS_WITH_AS(copy_to(y, DType::kFloat32, Device::cpu()),
                       doctest::Contains("holds 3 at flat position 0, outside [0, 0)"), Error);
  CHECK_NOTHROW(backend_for(Device::cuda()).synchronize(0));
}

// Embedding with ids on the GPU: the forward checks the raw ids, copies the rows (zeros for
// a bad id) and writes the int64 ids for backward in one launch; the backward along dim 0
// sorts the ids and writes each row of d_weight once, in both modes.

namespace {

// ids on the GPU whose row-major values are v (v.size() a multiple of 4): layout 0,
// contiguous int64 [n]; 1, int32 [n / 4, 4] as the transpose of a contiguous [4, n / 4];
// 2, int32 [n] reading every other element of a [2n] buffer whose odd elements are
// 2^30 (outside every bound here: reading them would be reported).
Tensor ids_in_layout(const std::vector<int64_t>& v, int layout) {
  const int64_t n = static_cast<int64_t>(v.size());
  if (layout == 0) return copy_to(from_vector(v, {n}), DType::kInt64, Device::cuda());
  if (layout == 1) {
    const int64_t rows = n / 4;
    std::vector<int64_t> base(n);  // base[j][i] = view[i][j]
    for (int64_t i = 0; i < rows; ++i) {
      for (int64_t j = 0; j < 4; ++j) base[j * rows + i] = v[i * 4 + j];
    }
    const Tensor b = copy_to(from_vector(base, {4, rows}), DType::kInt32, Device::cuda());
    const Tensor t = make_view(b, {rows, 4}, {1, rows}, 0);
    if (rows > 1) REQUIRE_FALSE(t.is_contiguous());
    return t;
  }
  std::vector<int64_t> base(2 * n, int64_t{1} << 30);
  for (int64_t i = 0; i < n; ++i) base[2 * i] = v[i];
  const Tensor b = copy_to(from_vector(base, {2 * n}), DType::kInt32, Device::cuda());
  return make_view(b, {n}, {2}, 0);
}

const char* layout_name(int layout) {
  return layout == 0 ? "int64 contiguous" : layout == 1 ? "int32 transposed" : "int32 stride 2";
}

// Embedding with the ids v on the GPU (ids_in_layout) against the CPU: forward exact;
// deterministic backward equal to the CPU's float32 sums rounded once; atomic backward
// bit-identical to it where no id repeats more than 32 times, else within the
// reordering bound.
void check_embedding_cuda_ids(Generator& gen, int64_t V, int64_t D, const std::vector<int64_t>& v,
                              DType dt, int layout, int misaligned, const std::string& label) {
  INFO(label);
  const int64_t n = static_cast<int64_t>(v.size());
  const Tensor buf = round_to_bf16(gen.normal({V, D + misaligned}));
  const Tensor w_cpu = buf.slice(1, misaligned, misaligned + D).contiguous();
  const Tensor ids_cpu = from_vector(v, {n});
  const Tensor ids = ids_in_layout(v, layout);
  Shape y_shape = ids.shape();
  y_shape.push_back(D);
  const Tensor d_y_cpu = round_to_bf16(gen.uniform({n, D}, -1, 1));
  const Tensor d_y = copy_to(d_y_cpu, dt, Device::cuda()).reshape(y_shape);
  const IndexFn f = [](const Tensor& x, const Tensor& i) { return embedding(x, i); };
  const Result ref = run(f, cpu_leaf(w_cpu), ids_cpu, d_y_cpu);
  // The atomic mode splits rows of more than 32 equal ids over several warps that add
  // with float32 atomics: the bound of check_case's atomic backward.
  const std::vector<double> sv =
      run(f, cpu_leaf(w_cpu), ids_cpu, abs(d_y_cpu)).d_x.to_vector<double>();
  const std::vector<double> kv =
      run(f, cpu_leaf(w_cpu), ids_cpu, ones({n, D})).d_x.to_vector<double>();
  const std::vector<double> rv = ref.d_x.to_vector<double>();
  double max_run = 0;
  std::vector<double> atomic_bound(sv.size());
  for (size_t i = 0; i < sv.size(); ++i) {
    max_run = std::max(max_run, kv[i]);
    const double sum_err = 2 * std::max(kv[i] - 1, 0.0) * kU32 * sv[i];
    atomic_bound[i] =
        dt == DType::kBFloat16 ? kBf16Rel * (std::abs(rv[i]) + sum_err) + sum_err : sum_err;
  }
  std::vector<uint32_t> first;
  for (bool det : {true, false}) {
    DeterministicGuard guard(det);
    for (int rep = 0; rep < (det ? 2 : 1); ++rep) {
      Tensor w = copy_to(buf, dt, Device::cuda()).slice(1, misaligned, misaligned + D);
      w.set_requires_grad(true);
      const Tensor y = embedding(w, ids);
      y.backward(d_y);
      check_exact(y.reshape({n, D}), copy_to(ref.y, dt, Device::cpu()),
                  label + (det ? " forward (deterministic)" : " forward"));
      if (det && rep == 0) {
        check_exact(w.grad(), copy_to(ref.d_x, dt, Device::cpu()),
                    label + " backward (deterministic)");
        first = bits(w.grad());
      } else if (det) {
        CHECK_MESSAGE(bits(w.grad()) == first, label, " deterministic rerun differs");
      } else if (max_run <= 32) {
        CHECK_MESSAGE(bits(w.grad()) == first, label, " atomic and deterministic differ");
      } else {
        check_bound(w.grad(), ref.d_x, atomic_bound, label + " backward (atomic, long runs)");
      }
    }
  }
  CHECK_NOTHROW(backend_for(Device::cuda()).synchronize(0));
}

}  // namespace

RESONA_GPU_TEST(
    "embedding with CUDA ids in one launch vs CPU (V=1,D=5; V=3,D=8 with 5000 ids; V=50,D=13; "
    "V=700,D=64; V=300,D=600; V=40,D=600 with 2000 ids; ids int64 contiguous, int32 "
    "transposed, int32 stride 2; weight contiguous and as columns 1..D+1 of a wider buffer; "
    "float32, bfloat16): forward exact; deterministic backward equal to the CPU's float32 sums "
    "rounded once; atomic backward bit-identical to it where no id repeats more than 32 times, "
    "else within the reordering bound") {
  struct Case {
    int64_t V, D, n;
  };
  const Case cases[] = {{1, 5, 12},      {3, 8, 5000},   {50, 13, 404},
                        {700, 64, 1024}, {300, 600, 96}, {40, 600, 2000}};
  Generator gen(90);
  for (const Case& c : cases) {
    for (DType dt : {DType::kFloat32, DType::kBFloat16}) {
      for (int layout = 0; layout < 3; ++layout) {
        for (int misaligned = 0; misaligned < 2; ++misaligned) {
          const std::string label = "embedding(V=" + std::to_string(c.V) +
                                    ",D=" + std::to_string(c.D) + ",n=" + std::to_string(c.n) +
                                    "," + dtype_name(dt) + ",ids " + layout_name(layout) +
                                    (misaligned ? ",weight columns 1..D+1" : "") + ")";
          const std::vector<int64_t> v = random_index(gen, {c.n}, c.V).to_vector<int64_t>();
          check_embedding_cuda_ids(gen, c.V, c.D, v, dt, layout, misaligned, label);
          CHECK_NOTHROW(backend_for(Device::cuda()).synchronize(0));
        }
      }
    }
  }
}

RESONA_GPU_TEST(
    "embedding dim-0 backward lists (CUDA ids, float32, bfloat16, both modes, deterministic "
    "reruns): every id equal (V=5,D=24,n=3000); rows of exactly 32 and 33 ids beside single "
    "ones (V=64,D=600,n=200); one id repeated in a long run then scattered (V=1000,D=40, "
    "n=4096); V much larger than n (V=100000,D=8,n=64); n much larger than V (V=2,D=600, "
    "n=20000); the benchmark's rows (V=32000,D=600,n=1024); D of 4, 8 and 1032 bfloat16 "
    "elements around the 4-row forward's limit of 128 vectors; V=4003 with about 2 ids a row "
    "linked from different warps (lists of up to 8 put in position order), D of 600, 8 (one "
    "vector a row in bfloat16) and 1 (no vectors)") {
  struct Case {
    int64_t V, D, n;
    const char* kind;
  };
  const Case cases[] = {{5, 24, 3000, "all equal"},   {64, 600, 200, "runs of 32 and 33"},
                        {1000, 40, 4096, "long run"}, {100000, 8, 64, "random"},
                        {2, 600, 20000, "random"},    {32000, 600, 1024, "random"},
                        {50, 4, 300, "random"},       {50, 1024, 100, "random"},
                        {50, 1032, 100, "random"},    {4003, 600, 9000, "random"},
                        {4003, 8, 9000, "random"},    {4003, 1, 9000, "random"}};
  Generator gen(92);
  for (const Case& c : cases) {
    std::vector<int64_t> v = random_index(gen, {c.n}, c.V).to_vector<int64_t>();
    const std::string kind = c.kind;
    if (kind == "all equal") {
      for (int64_t& e : v) e = 2;
    } else if (kind == "runs of 32 and 33") {
      // Row 7 gets 32 ids, row 9 gets 33, spread over the positions; the rest single.
      for (int64_t i = 0; i < c.n; ++i) v[i] = 10 + i % 54;
      for (int64_t k = 0; k < 32; ++k) v[k * 6] = 7;
      for (int64_t k = 0; k < 33; ++k) v[k * 6 + 1] = 9;
    } else if (kind == "long run") {
      for (int64_t i = 1000; i < 3000; ++i) v[i] = 5;  // 2000 equal ids in a row
      for (int64_t i = 3000; i < c.n; i += 7) v[i] = 5;
    }
    for (DType dt : {DType::kFloat32, DType::kBFloat16}) {
      const std::string label = "embedding(V=" + std::to_string(c.V) + ",D=" + std::to_string(c.D) +
                                ",n=" + std::to_string(c.n) + "," + kind + "," + dtype_name(dt) +
                                ")";
      check_embedding_cuda_ids(gen, c.V, c.D, v, dt, 0, 0, label);
    }
  }
}

RESONA_GPU_TEST(
    "embedding with CUDA ids of shape [0] (V=6,D=9): output [0, 9], d_weight zeros in both "
    "backward modes, float32 and bfloat16") {
  for (DType dt : {DType::kFloat32, DType::kBFloat16}) {
    for (bool det : {false, true}) {
      INFO(dtype_name(dt) << (det ? " deterministic" : " atomic"));
      DeterministicGuard guard(det);
      Tensor w = copy_to(ones({6, 9}), dt, Device::cuda());
      w.set_requires_grad(true);
      const Tensor ids =
          copy_to(from_vector(std::vector<int64_t>{}, {0}), DType::kInt32, Device::cuda());
      const Tensor y = embedding(w, ids);
      CHECK(y.shape() == Shape{0, 9});
      y.backward(zeros({0, 9}, dt, Device::cuda()));
      const std::vector<float> g = host_f32(w.grad()).to_vector<float>();
      REQUIRE(g.size() == 54u);
      for (float e : g) CHECK(e == 0.f);
      CHECK_NOTHROW(backend_for(Device::cuda()).synchronize(0));
    }
  }
}

RESONA_GPU_TEST(
    "embedding with bad CUDA ids across blocks (V=50,D=13, 1000 int64 ids: 70 at 500 and -3 at "
    "900, in different blocks; then 81 at 9 and 60 at 13, in one block): one of them is reported "
    "at the next copy to the host; a block reports its smallest; bad rows are zeros, valid rows "
    "exact") {
  Generator gen(91);
  const Tensor w_cpu = gen.normal({50, 13});
  const Tensor w = copy_to(w_cpu, DType::kFloat32, Device::cuda());
  std::vector<int64_t> v = random_index(gen, {1000}, 50).to_vector<int64_t>();
  v[500] = 70;
  v[900] = -3;
  Tensor y = embedding(w, copy_to(from_vector(v, {1000}), DType::kInt64, Device::cuda()));
  const std::string message = error_of([&] { copy_to(y, DType::kFloat32, Device::cpu()); });
  INFO(message);
  CHECK((message.find("embedding: ids [1000] int64 cuda:0 holds 70 at flat position 500, "
                      "outside [0, 50) (size of dim 0 of [50, 13] float32 cuda:0)") !=
             std::string::npos ||
         message.find("embedding: ids [1000] int64 cuda:0 holds -3 at flat position 900, "
                      "outside [0, 50) (size of dim 0 of [50, 13] float32 cuda:0)") !=
             std::string::npos));
  const Tensor y_host = copy_to(y, DType::kFloat32, Device::cpu());  // reported once
  check_valid_rows(y_host, w_cpu, v, "valid rows");
  const std::vector<float> yv = y_host.to_vector<float>();
  for (int64_t r : {500, 900}) {
    for (int64_t j = 0; j < 13; ++j) CHECK(yv[r * 13 + j] == 0.f);
  }

  v[500] = 1;
  v[900] = 2;
  v[13] = 60;
  v[9] = 81;
  y = embedding(w, copy_to(from_vector(v, {1000}), DType::kInt64, Device::cuda()));
  CHECK_THROWS_WITH_AS(backend_for(Device::cuda()).synchronize(0),
                       doctest::Contains("holds 81 at flat position 9, outside [0, 50)"), Error);
  CHECK_NOTHROW(backend_for(Device::cuda()).synchronize(0));
}

}  // namespace resona::testing
