// Always-on checks. They stay in optimised builds (unlike assert under NDEBUG) and throw
// resona::Error with the file, line, failed condition and a message naming what is wrong.
//
//   RESONA_CHECK(a.dim() == 2) << "matmul: a must be 2-D, got " << a.shape_str();
//   RESONA_CHECK_SHAPE(x, B, T, D);   // x.shape() == {B, T, D}
//   RESONA_DCHECK(i < n);             // hot loops only; compiled out with NDEBUG
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>

namespace resona {

class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

namespace detail {

// Collects the streamed message; throws from its destructor at the end of the full
// expression. Only ever created as a temporary by RESONA_CHECK on the failure path.
class CheckFailure {
 public:
  CheckFailure(const char* file, int line, const char* cond) {
    os_ << file << ":" << line << ": check failed: " << cond << ": ";
  }
  CheckFailure(const CheckFailure&) = delete;
  CheckFailure& operator=(const CheckFailure&) = delete;
  ~CheckFailure() noexcept(false) { throw Error(os_.str()); }
  template <class T>
  CheckFailure& operator<<(const T& v) {
    os_ << v;
    return *this;
  }

 private:
  std::ostringstream os_;
};

std::string shape_mismatch_message(const char* name, const std::string& got,
                                   const std::string& expected);

}  // namespace detail
}  // namespace resona

// `if (c) {} else` keeps the macro a single statement that still accepts `<<`, and
// cannot capture a following `else`.
#define RESONA_CHECK(cond) \
  if (cond) {              \
  } else                   \
    ::resona::detail::CheckFailure(__FILE__, __LINE__, #cond)

#define RESONA_FAIL() ::resona::detail::CheckFailure(__FILE__, __LINE__, "unreachable")

#ifdef NDEBUG
#define RESONA_DCHECK(cond) \
  if (true) {               \
  } else                    \
    ::resona::detail::CheckFailure(__FILE__, __LINE__, #cond)
#else
#define RESONA_DCHECK(cond) RESONA_CHECK(cond)
#endif

// Checks that tensor `t` has exactly the given sizes, naming the tensor in the error.
#define RESONA_CHECK_SHAPE(t, ...)                                                        \
  do {                                                                                    \
    const ::resona::Shape resona_expected_shape_{__VA_ARGS__};                            \
    RESONA_CHECK((t).shape() == resona_expected_shape_)                                   \
        << ::resona::detail::shape_mismatch_message(#t, ::resona::shape_str((t).shape()), \
                                                    ::resona::shape_str(resona_expected_shape_)); \
  } while (0)
