// Dtype dispatch: calls `f(TypeTag<T>{})` with the C++ type matching a runtime DType.
// Each dispatcher ends in an error naming the op and the unsupported dtype.
//
//   dispatch_floating("exp", x.dtype(), [&](auto tag) {
//     using T = typename decltype(tag)::type;
//     ...
//   });
#pragma once

#include <type_traits>

#include "core/check.h"
#include "core/dtype.h"

namespace resona {

template <class T>
struct TypeTag {
  using type = T;
};

// float32 and float64: the CPU compute types.
template <class F>
decltype(auto) dispatch_floating(const char* op, DType t, F&& f) {
  switch (t) {
    case DType::kFloat32:
      return f(TypeTag<float>{});
    case DType::kFloat64:
      return f(TypeTag<double>{});
    default:
      break;
  }
  RESONA_FAIL() << op << ": dtype " << dtype_name(t)
                << " is not supported on the CPU (float32 and float64 are; convert with .to())";
  return f(TypeTag<float>{});  // not reached
}

template <class F>
decltype(auto) dispatch_index(const char* op, DType t, F&& f) {
  switch (t) {
    case DType::kInt32:
      return f(TypeTag<int32_t>{});
    case DType::kInt64:
      return f(TypeTag<int64_t>{});
    default:
      break;
  }
  RESONA_FAIL() << op << ": index tensors must be int32 or int64, got " << dtype_name(t);
  return f(TypeTag<int64_t>{});
}

template <class F>
decltype(auto) dispatch_all(const char* op, DType t, F&& f) {
  switch (t) {
    case DType::kFloat32:
      return f(TypeTag<float>{});
    case DType::kFloat64:
      return f(TypeTag<double>{});
    case DType::kBFloat16:
      return f(TypeTag<bfloat16>{});
    case DType::kInt32:
      return f(TypeTag<int32_t>{});
    case DType::kInt64:
      return f(TypeTag<int64_t>{});
  }
  RESONA_FAIL() << op << ": unknown dtype " << static_cast<int>(t);
  return f(TypeTag<float>{});
}

// Value conversions between element types (bfloat16 goes through float).
template <class To, class From>
inline To convert(From v) {
  if constexpr (std::is_same_v<To, From>) {
    return v;  // bit-exact (keeps bf16 signalling NaNs)
  } else if constexpr (std::is_same_v<To, bfloat16>) {
    return bfloat16(static_cast<float>(v));
  } else if constexpr (std::is_same_v<From, bfloat16>) {
    return static_cast<To>(static_cast<float>(v));
  } else {
    return static_cast<To>(v);
  }
}

}  // namespace resona
