// CUDA implementations of the restorekit ops: argument checks, allocation and the current
// stream here; the kernels themselves are in kernels.cu (behind launchers.h).
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <climits>
#include <tuple>

#include "../common.h"
#include "launchers.h"

namespace restorekit {
namespace cuda {
namespace {

DType dtype_of(const at::Tensor& t, const char* op) {
  switch (t.scalar_type()) {
    case at::kFloat:
      return DType::Float;
    case at::kDouble:
      return DType::Double;
    case at::kHalf:
      return DType::Half;
    case at::kBFloat16:
      return DType::BFloat16;
    default:
      fail("restorekit::", op, ": unsupported dtype ", t.scalar_type(),
                  " (float32, float64, float16 or bfloat16)");
  }
}

void check_launch(cudaError_t err, const char* op) {
  RK_CHECK(err == cudaSuccess, "restorekit::", op, ": CUDA kernel launch failed: ",
              cudaGetErrorString(err));
}

// Kernels index within a plane with int; a strided loop's index may pass the plane's end by
// one block (1024 threads), which must not overflow.
void check_plane_size(int64_t H, int64_t W, const char* op) {
  RK_CHECK((H + 2) * (W + 2) <= INT_MAX - 1024, "restorekit::", op, ": plane too large (",
              H, "x", W, ")");
}

// The normalising kernels run one block per (n, c) plane of x on a 1-D grid.
void check_plane_grid(const at::Tensor& x, const char* op) {
  check_plane_size(x.size(2), x.size(3), op);
  const int64_t planes = x.size(0) * x.size(1);
  RK_CHECK(planes <= INT_MAX, "restorekit::", op, ": too many planes (N*C = ", planes,
              ", at most ", INT_MAX, ")");
}

cudaStream_t stream() { return c10::cuda::getCurrentCUDAStream().stream(); }

at::Tensor reflection_pad(const at::Tensor& x_) {
  check_input(x_, "reflection_pad");
  check_plane_size(x_.size(2), x_.size(3), "reflection_pad");
  const c10::cuda::CUDAGuard guard(x_.device());
  const at::Tensor x = x_.contiguous();
  at::Tensor out = at::empty(padded_shape(x), x.options());
  check_launch(launch_reflection_pad(dtype_of(x, "reflection_pad"), x.const_data_ptr(),
                                     out.mutable_data_ptr(), x.size(0) * x.size(1), x.size(2),
                                     x.size(3), stream()),
               "reflection_pad");
  return out;
}

at::Tensor reflection_pad_backward(const at::Tensor& g_) {
  check_padded(g_, "reflection_pad_backward");
  check_plane_size(g_.size(2), g_.size(3), "reflection_pad_backward");
  const c10::cuda::CUDAGuard guard(g_.device());
  const at::Tensor g = g_.contiguous();
  at::Tensor dx = at::empty(unpadded_shape(g), g.options());
  check_launch(launch_reflection_pad_backward(dtype_of(g, "reflection_pad_backward"),
                                              g.const_data_ptr(), dx.mutable_data_ptr(),
                                              g.size(0) * g.size(1), dx.size(2), dx.size(3),
                                              stream()),
               "reflection_pad_backward");
  return dx;
}

at::Tensor reflection_pad_backward_add(const at::Tensor& g_, const at::Tensor& other_) {
  const char* op = "reflection_pad_backward_add";
  check_padded(g_, op);
  check_plane_size(g_.size(2), g_.size(3), op);
  RK_CHECK(other_.sizes() == at::IntArrayRef(unpadded_shape(g_)), "restorekit::", op,
              ": other has shape ", other_.sizes(), ", expected ",
              at::IntArrayRef(unpadded_shape(g_)));
  RK_CHECK(other_.scalar_type() == g_.scalar_type() && other_.device() == g_.device(),
              "restorekit::", op, ": other dtype/device differs from grad_out");
  const c10::cuda::CUDAGuard guard(g_.device());
  const at::Tensor g = g_.contiguous(), other = other_.contiguous();
  at::Tensor dx = at::empty(unpadded_shape(g), g.options());
  check_launch(launch_reflection_pad_backward_add(dtype_of(g, op), g.const_data_ptr(),
                                                  other.const_data_ptr(), dx.mutable_data_ptr(),
                                                  g.size(0) * g.size(1), dx.size(2), dx.size(3),
                                                  stream()),
               op);
  return dx;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> instance_norm_relu_pad_with_stats(
    const at::Tensor& x_, double eps) {
  const char* op = "instance_norm_relu_pad";
  check_input(x_, op);
  check_eps(eps, op);
  check_plane_grid(x_, op);
  const c10::cuda::CUDAGuard guard(x_.device());
  const at::Tensor x = x_.contiguous();
  const int64_t N = x.size(0), C = x.size(1);
  at::Tensor out = at::empty(padded_shape(x), x.options());
  auto sopt = x.options().dtype(stats_dtype(x.scalar_type()));
  at::Tensor mean = at::empty({N, C}, sopt), rstd = at::empty({N, C}, sopt);
  check_launch(launch_instance_norm_relu_pad(dtype_of(x, op), x.const_data_ptr(),
                                             out.mutable_data_ptr(), mean.mutable_data_ptr(),
                                             rstd.mutable_data_ptr(), N * C, x.size(2),
                                             x.size(3), eps, stream()),
               op);
  return {out, mean, rstd};
}

at::Tensor instance_norm_relu_pad_backward(const at::Tensor& g_, const at::Tensor& x_,
                                           const at::Tensor& mean_, const at::Tensor& rstd_) {
  const char* op = "instance_norm_relu_pad_backward";
  check_planes(x_, op);
  check_padded(g_, op);
  check_plane_grid(x_, op);
  RK_CHECK(g_.sizes() == at::IntArrayRef(padded_shape(x_)), "restorekit::", op,
              ": grad_out has shape ", g_.sizes(), ", expected ",
              at::IntArrayRef(padded_shape(x_)));
  RK_CHECK(g_.scalar_type() == x_.scalar_type() && g_.device() == x_.device(),
              "restorekit::", op, ": grad_out dtype/device differs from x");
  check_stats(x_, mean_, rstd_, op);
  const c10::cuda::CUDAGuard guard(x_.device());
  const at::Tensor g = g_.contiguous(), x = x_.contiguous();
  const at::Tensor mean = mean_.contiguous(), rstd = rstd_.contiguous();
  at::Tensor dx = at::empty_like(x, at::MemoryFormat::Contiguous);
  check_launch(launch_instance_norm_relu_pad_backward(
                   dtype_of(x, op), g.const_data_ptr(), x.const_data_ptr(),
                   mean.const_data_ptr(), rstd.const_data_ptr(), dx.mutable_data_ptr(),
                   x.size(0) * x.size(1), x.size(2), x.size(3), stream()),
               op);
  return dx;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> instance_norm_add_with_stats(
    const at::Tensor& x_, const at::Tensor& res_, double eps) {
  const char* op = "instance_norm_add";
  check_input(x_, op);
  check_eps(eps, op);
  check_same(x_, res_, op, "residual");
  check_plane_grid(x_, op);
  const c10::cuda::CUDAGuard guard(x_.device());
  const at::Tensor x = x_.contiguous(), res = res_.contiguous();
  const int64_t N = x.size(0), C = x.size(1);
  at::Tensor out = at::empty_like(x, at::MemoryFormat::Contiguous);
  auto sopt = x.options().dtype(stats_dtype(x.scalar_type()));
  at::Tensor mean = at::empty({N, C}, sopt), rstd = at::empty({N, C}, sopt);
  check_launch(launch_instance_norm_add(dtype_of(x, op), x.const_data_ptr(), res.const_data_ptr(),
                                        out.mutable_data_ptr(), mean.mutable_data_ptr(),
                                        rstd.mutable_data_ptr(), N * C, x.size(2), x.size(3), eps,
                                        stream()),
               op);
  return {out, mean, rstd};
}

at::Tensor instance_norm_add_backward(const at::Tensor& g_, const at::Tensor& x_,
                                      const at::Tensor& mean_, const at::Tensor& rstd_) {
  const char* op = "instance_norm_add_backward";
  check_planes(x_, op);
  check_same(x_, g_, op, "grad_out");
  check_plane_grid(x_, op);
  check_stats(x_, mean_, rstd_, op);
  const c10::cuda::CUDAGuard guard(x_.device());
  const at::Tensor g = g_.contiguous(), x = x_.contiguous();
  const at::Tensor mean = mean_.contiguous(), rstd = rstd_.contiguous();
  at::Tensor dx = at::empty_like(x, at::MemoryFormat::Contiguous);
  check_launch(launch_instance_norm_add_backward(dtype_of(x, op), g.const_data_ptr(),
                                                 x.const_data_ptr(), mean.const_data_ptr(),
                                                 rstd.const_data_ptr(), dx.mutable_data_ptr(),
                                                 x.size(0) * x.size(1), x.size(2), x.size(3),
                                                 stream()),
               op);
  return dx;
}

}  // namespace
}  // namespace cuda

TORCH_LIBRARY_IMPL(restorekit, CUDA, m) {
  m.impl("reflection_pad", &cuda::reflection_pad);
  m.impl("reflection_pad_backward", &cuda::reflection_pad_backward);
  m.impl("reflection_pad_backward_add", &cuda::reflection_pad_backward_add);
  m.impl("instance_norm_relu_pad_with_stats", &cuda::instance_norm_relu_pad_with_stats);
  m.impl("instance_norm_relu_pad_backward", &cuda::instance_norm_relu_pad_backward);
  m.impl("instance_norm_add_with_stats", &cuda::instance_norm_add_with_stats);
  m.impl("instance_norm_add_backward", &cuda::instance_norm_add_backward);
}

}  // namespace restorekit
