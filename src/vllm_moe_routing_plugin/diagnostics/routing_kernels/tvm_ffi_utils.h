// SPDX-License-Identifier: Apache-2.0
// Stand-in for FlashInfer's tvm_ffi_utils.h: the routing .cu files include it
// only for argument checks in run(Data const&, void* stream).
#pragma once
#include <sstream>
#include <stdexcept>
#include <string>

namespace routing_check_stub {
struct Fail {
  std::ostringstream os;
  Fail(const char* kind, const char* file, int line, const char* cond) {
    os << kind << " at " << file << ":" << line << ": " << cond << ": ";
  }
  [[noreturn]] ~Fail() noexcept(false) { throw std::runtime_error(os.str()); }
  template <typename T>
  Fail& operator<<(T const& v) {
    os << v;
    return *this;
  }
};
struct Pass {
  template <typename T>
  Pass& operator<<(T const&) {
    return *this;
  }
};
}  // namespace routing_check_stub

#define TVM_FFI_ICHECK(cond) \
  if (cond) {                \
  } else                     \
    ::routing_check_stub::Fail("check failed", __FILE__, __LINE__, #cond)
#define TVM_FFI_ICHECK_LE(a, b) TVM_FFI_ICHECK((a) <= (b))
#define TVM_FFI_ICHECK_LT(a, b) TVM_FFI_ICHECK((a) < (b))
#define TVM_FFI_ICHECK_GE(a, b) TVM_FFI_ICHECK((a) >= (b))
#define TVM_FFI_ICHECK_GT(a, b) TVM_FFI_ICHECK((a) > (b))
#define TVM_FFI_ICHECK_EQ(a, b) TVM_FFI_ICHECK((a) == (b))
#define TVM_FFI_ICHECK_NE(a, b) TVM_FFI_ICHECK((a) != (b))
#define TVM_FFI_LOG_AND_THROW(kind) ::routing_check_stub::Fail(#kind, __FILE__, __LINE__, "")
