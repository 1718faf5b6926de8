// Shared argument checks and shape helpers for the restorekit ops (CPU and CUDA glue).
#pragma once

#include <ATen/ATen.h>

#include <cmath>
#include <cstdint>
#include <stdexcept>

namespace restorekit {

// Argument errors are thrown as std::runtime_error (a Python RuntimeError), never through
// TORCH_CHECK: under torch 2.11+cu130 a c10::Error thrown from an extension's frames crashed
// the process (seen with a three-line TORCH_LIBRARY op built by g++ 13), while a standard
// exception thrown from the same place is translated to Python normally.
template <typename... Args>
[[noreturn]] inline void fail(const Args&... args) {
  throw std::runtime_error(c10::str(args...));
}

}  // namespace restorekit

#define RK_CHECK(cond, ...)                 \
  do {                                      \
    if (C10_UNLIKELY(!(cond))) {            \
      ::restorekit::fail(__VA_ARGS__);      \
    }                                       \
  } while (0)

namespace restorekit {

// Reflection padding by 1 needs NCHW planes with H >= 2 and W >= 2.
inline void check_planes(const at::Tensor& x, const char* op) {
  RK_CHECK(x.dim() == 4, "restorekit::", op, ": expected an NCHW tensor, got ", x.dim(),
           " dimensions");
  RK_CHECK(x.size(2) >= 2 && x.size(3) >= 2, "restorekit::", op,
           ": reflection padding by 1 needs H >= 2 and W >= 2, got ", x.size(2), "x",
           x.size(3));
}

// eps is added to the variance: it must be finite and not negative.
inline void check_eps(double eps, const char* op) {
  RK_CHECK(std::isfinite(eps) && eps >= 0, "restorekit::", op,
           ": eps must be finite and >= 0, got ", eps);
}

// The activation's slope for negative inputs (0: ReLU, 1: none, else LeakyReLU).
inline void check_slope(double slope, const char* op) {
  RK_CHECK(std::isfinite(slope), "restorekit::", op,
           ": negative_slope must be finite, got ", slope);
}

// The public ops check their arguments here, before autograd or dispatch touches them (a bad
// tensor must raise, never crash, under every supported torch).
inline void check_input(const at::Tensor& x, const char* op) {
  RK_CHECK(x.defined(), "restorekit::", op, ": expected a tensor, got an undefined one");
  RK_CHECK(x.dim() == 4, "restorekit::", op, ": expected an NCHW tensor, got ", x.dim(),
           " dimensions");
  RK_CHECK(x.size(2) >= 1 && x.size(3) >= 1, "restorekit::", op,
           ": expected planes of at least 1x1, got ", x.size(2), "x", x.size(3));
  const auto st = x.scalar_type();
  RK_CHECK(st == at::kFloat || st == at::kDouble || st == at::kHalf || st == at::kBFloat16,
           "restorekit::", op, ": unsupported dtype ", st,
           " (float32, float64, float16 or bfloat16)");
}

// Size limits, the same on every device (both are documented in csrc/README.md, and mirrored
// by restorekit/ext/_ops.py for the Python entry points): the CUDA kernels index within a
// (padded) plane with int, and a thread's index may pass the plane's end by up to one tile
// (4096 elements); they run one block per plane on grid.x. The CPU kernels index with int64_t
// but keep the same limits, so that an input accepted on one device is accepted on the other.
constexpr int64_t kMaxPlaneNumel = int64_t(INT32_MAX) - 65536;  // 2147418111
constexpr int64_t kMaxPlanes = INT32_MAX;

// x's planes, reflection-padded by `pad` (pad = 0: as they are), and their count N * C must
// be within the limits above. Shapes only: checked before anything is allocated.
inline void check_sizes(const at::Tensor& x, int64_t pad, const char* op) {
  const int64_t hp = x.size(2) + 2 * pad, wp = x.size(3) + 2 * pad;
  // hp * wp, compared without overflow (an expanded tensor can have any H and W).
  RK_CHECK(hp <= 0 || wp <= kMaxPlaneNumel / hp, "restorekit::", op, ": a plane of ",
           x.size(2), "x", x.size(3), " padded by ", pad, " (", hp, "x", wp,
           ") is too large: at most ", kMaxPlaneNumel, " elements per padded plane");
  const int64_t planes = x.size(0) * x.size(1);
  RK_CHECK(planes <= kMaxPlanes, "restorekit::", op, ": ", planes,
           " planes (N*C) are too many: at most ", kMaxPlanes);
}

// Reflection padding by `pad` needs 0 <= pad < H and pad < W (as torch's ReflectionPad2d).
inline void check_pad(const at::Tensor& x, int64_t pad, const char* op) {
  RK_CHECK(pad >= 0 && pad < x.size(2) && pad < x.size(3), "restorekit::", op,
           ": reflection padding by ", pad, " needs 0 <= pad < H and pad < W, got ", x.size(2),
           "x", x.size(3));
}

inline void check_padded(const at::Tensor& g, const char* op) {
  RK_CHECK(g.dim() == 4, "restorekit::", op, ": expected an NCHW tensor, got ", g.dim(),
              " dimensions");
  RK_CHECK(g.size(2) >= 4 && g.size(3) >= 4, "restorekit::", op,
              ": expected a reflection-padded gradient (H+2, W+2 with H, W >= 2), got ",
              g.size(2), "x", g.size(3));
}

inline void check_same(const at::Tensor& a, const at::Tensor& b, const char* op,
                       const char* what) {
  RK_CHECK(a.sizes() == b.sizes(), "restorekit::", op, ": ", what, " has shape ", b.sizes(),
              ", expected ", a.sizes());
  RK_CHECK(a.scalar_type() == b.scalar_type(), "restorekit::", op, ": ", what,
              " has dtype ", b.scalar_type(), ", expected ", a.scalar_type());
  RK_CHECK(a.device() == b.device(), "restorekit::", op, ": ", what, " is on ", b.device(),
              ", expected ", a.device());
}

// Per-plane statistics are kept in float32, or float64 for float64 inputs.
inline at::ScalarType stats_dtype(at::ScalarType t) {
  return t == at::kDouble ? at::kDouble : at::kFloat;
}

inline void check_stats(const at::Tensor& x, const at::Tensor& mean, const at::Tensor& rstd,
                        const char* op) {
  const auto st = stats_dtype(x.scalar_type());
  for (const at::Tensor* s : {&mean, &rstd}) {
    RK_CHECK(s->dim() == 2 && s->size(0) == x.size(0) && s->size(1) == x.size(1),
                "restorekit::", op, ": per-plane statistics must have shape (N, C)");
    RK_CHECK(s->scalar_type() == st, "restorekit::", op, ": statistics must be ", st);
    RK_CHECK(s->device() == x.device(), "restorekit::", op,
                ": statistics are on another device");
  }
}

inline std::vector<int64_t> padded_shape(const at::Tensor& x, int64_t pad = 1) {
  return {x.size(0), x.size(1), x.size(2) + 2 * pad, x.size(3) + 2 * pad};
}

inline std::vector<int64_t> unpadded_shape(const at::Tensor& g, int64_t pad = 1) {
  return {g.size(0), g.size(1), g.size(2) - 2 * pad, g.size(3) - 2 * pad};
}

// grad_out of an op whose output is x reflection-padded by `pad`.
inline void check_grad_padded(const at::Tensor& g, const at::Tensor& x, int64_t pad,
                              const char* op) {
  RK_CHECK(g.defined() && g.sizes() == at::IntArrayRef(padded_shape(x, pad)), "restorekit::",
           op, ": grad_out has shape ", g.defined() ? g.sizes() : at::IntArrayRef{},
           ", expected ", at::IntArrayRef(padded_shape(x, pad)));
  RK_CHECK(g.scalar_type() == x.scalar_type(), "restorekit::", op, ": grad_out has dtype ",
           g.scalar_type(), ", expected ", x.scalar_type());
  RK_CHECK(g.device() == x.device(), "restorekit::", op, ": grad_out is on ", g.device(),
           ", expected ", x.device());
}

}  // namespace restorekit
