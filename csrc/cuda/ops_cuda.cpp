// CUDA implementations of the restorekit ops: argument checks, allocation and the current
// stream here; the kernels themselves are in kernels.cu (behind launchers.h). Outputs and
// workspaces come from torch's caching allocator and launches go on the current stream with
// no host synchronisation, so every op can be captured in a CUDA graph.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <tuple>

#include "../common.h"
#include "launchers.h"

namespace restorekit {
namespace cuda {
namespace {

using Stats3 = std::tuple<at::Tensor, at::Tensor, at::Tensor>;

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

cudaStream_t stream() { return c10::cuda::getCurrentCUDAStream().stream(); }

at::Tensor empty_stats(const at::Tensor& x) {
  return at::empty({x.size(0), x.size(1)}, x.options().dtype(stats_dtype(x.scalar_type())));
}

// The launchers' scratch (the split scheme's per-segment partials), from the caching allocator.
struct Workspace {
  at::Tensor tensor;  // undefined when the launch needs none
  void* data() const { return tensor.defined() ? tensor.mutable_data_ptr() : nullptr; }
  int64_t size() const { return tensor.defined() ? tensor.numel() : 0; }
};

// Sized for the current device (set by the caller's guard).
Workspace norm_workspace(const at::Tensor& x, const char* op) {
  const int64_t n = instance_norm_workspace(dtype_of(x, op), x.size(0) * x.size(1), x.size(2),
                                            x.size(3));
  if (n == 0) return {};
  return {at::empty({n}, x.options().dtype(stats_dtype(x.scalar_type())))};
}

at::Tensor reflection_pad(const at::Tensor& x_) {
  const char* op = "reflection_pad";
  check_input(x_, op);
  check_planes(x_, op);
  check_sizes(x_, 1, op);
  const c10::cuda::CUDAGuard guard(x_.device());
  const at::Tensor x = x_.contiguous();
  at::Tensor out = at::empty(padded_shape(x), x.options());
  const int64_t planes = x.size(0) * x.size(1);
  if (planes == 0) return out;
  check_launch(launch_reflection_pad(dtype_of(x, op), x.const_data_ptr(), out.mutable_data_ptr(),
                                     planes, x.size(2), x.size(3), stream()),
               op);
  return out;
}

at::Tensor reflection_pad_backward(const at::Tensor& g_) {
  const char* op = "reflection_pad_backward";
  check_padded(g_, op);
  check_sizes(g_, 0, op);  // the padded plane as it is
  const DType dtype = dtype_of(g_, op);
  const c10::cuda::CUDAGuard guard(g_.device());
  const at::Tensor g = g_.contiguous();
  at::Tensor dx = at::empty(unpadded_shape(g), g.options());
  const int64_t planes = g.size(0) * g.size(1);
  if (planes == 0) return dx;
  check_launch(launch_reflection_pad_backward(dtype, g.const_data_ptr(), dx.mutable_data_ptr(),
                                              planes, dx.size(2), dx.size(3), stream()),
               op);
  return dx;
}

at::Tensor reflection_pad_backward_add(const at::Tensor& g_, const at::Tensor& other_) {
  const char* op = "reflection_pad_backward_add";
  check_padded(g_, op);
  check_sizes(g_, 0, op);  // the padded plane as it is
  const DType dtype = dtype_of(g_, op);
  RK_CHECK(other_.sizes() == at::IntArrayRef(unpadded_shape(g_)), "restorekit::", op,
           ": other has shape ", other_.sizes(), ", expected ",
           at::IntArrayRef(unpadded_shape(g_)));
  RK_CHECK(other_.scalar_type() == g_.scalar_type() && other_.device() == g_.device(),
           "restorekit::", op, ": other dtype/device differs from grad_out");
  const c10::cuda::CUDAGuard guard(g_.device());
  const at::Tensor g = g_.contiguous(), other = other_.contiguous();
  at::Tensor dx = at::empty(unpadded_shape(g), g.options());
  const int64_t planes = g.size(0) * g.size(1);
  if (planes == 0) return dx;
  check_launch(launch_reflection_pad_backward_add(dtype, g.const_data_ptr(),
                                                  other.const_data_ptr(), dx.mutable_data_ptr(),
                                                  planes, dx.size(2), dx.size(3), stream()),
               op);
  return dx;
}

Stats3 instance_norm_act_with_stats(const at::Tensor& x_, double eps, double negative_slope,
                                    int64_t pad) {
  const char* op = "instance_norm_act";
  check_input(x_, op);
  check_eps(eps, op);
  check_slope(negative_slope, op);
  check_pad(x_, pad, op);
  check_sizes(x_, pad, op);
  const c10::cuda::CUDAGuard guard(x_.device());
  const at::Tensor x = x_.contiguous();
  at::Tensor out = at::empty(padded_shape(x, pad), x.options());
  at::Tensor mean = empty_stats(x), rstd = empty_stats(x);
  const int64_t planes = x.size(0) * x.size(1);
  if (planes == 0) return {out, mean, rstd};
  const Workspace ws = norm_workspace(x, op);
  check_launch(launch_instance_norm_act(dtype_of(x, op), x.const_data_ptr(),
                                        out.mutable_data_ptr(), mean.mutable_data_ptr(),
                                        rstd.mutable_data_ptr(), ws.data(), ws.size(), planes,
                                        x.size(2), x.size(3), eps, negative_slope, pad,
                                        stream()),
               op);
  return {out, mean, rstd};
}

// dx of act(instance_norm(x)) padded by pad, for grad_out g (arguments already checked).
at::Tensor norm_act_backward(const at::Tensor& g_, const at::Tensor& x_, const at::Tensor& mean_,
                             const at::Tensor& rstd_, double negative_slope, int64_t pad,
                             const char* op) {
  const c10::cuda::CUDAGuard guard(x_.device());
  const at::Tensor g = g_.contiguous(), x = x_.contiguous();
  const at::Tensor mean = mean_.contiguous(), rstd = rstd_.contiguous();
  at::Tensor dx = at::empty_like(x, at::MemoryFormat::Contiguous);
  const int64_t planes = x.size(0) * x.size(1);
  if (planes == 0) return dx;
  const Workspace ws = norm_workspace(x, op);
  check_launch(launch_instance_norm_act_backward(
                   dtype_of(x, op), g.const_data_ptr(), x.const_data_ptr(),
                   mean.const_data_ptr(), rstd.const_data_ptr(), dx.mutable_data_ptr(),
                   ws.data(), ws.size(), planes, x.size(2), x.size(3), negative_slope, pad,
                   stream()),
               op);
  return dx;
}

at::Tensor instance_norm_act_backward(const at::Tensor& g, const at::Tensor& x,
                                      const at::Tensor& mean, const at::Tensor& rstd,
                                      double negative_slope, int64_t pad) {
  const char* op = "instance_norm_act_backward";
  check_input(x, op);
  check_slope(negative_slope, op);
  check_pad(x, pad, op);
  check_grad_padded(g, x, pad, op);
  check_stats(x, mean, rstd, op);
  check_sizes(x, pad, op);
  return norm_act_backward(g, x, mean, rstd, negative_slope, pad, op);
}

Stats3 instance_norm_add_with_stats(const at::Tensor& x_, const at::Tensor& res_, double eps) {
  const char* op = "instance_norm_add";
  check_input(x_, op);
  check_same(x_, res_, op, "residual");
  check_eps(eps, op);
  check_sizes(x_, 0, op);
  const c10::cuda::CUDAGuard guard(x_.device());
  const at::Tensor x = x_.contiguous(), res = res_.contiguous();
  at::Tensor out = at::empty_like(x, at::MemoryFormat::Contiguous);
  at::Tensor mean = empty_stats(x), rstd = empty_stats(x);
  const int64_t planes = x.size(0) * x.size(1);
  if (planes == 0) return {out, mean, rstd};
  const Workspace ws = norm_workspace(x, op);
  check_launch(launch_instance_norm_add(dtype_of(x, op), x.const_data_ptr(), res.const_data_ptr(),
                                        out.mutable_data_ptr(), mean.mutable_data_ptr(),
                                        rstd.mutable_data_ptr(), ws.data(), ws.size(), planes,
                                        x.size(2), x.size(3), eps, stream()),
               op);
  return {out, mean, rstd};
}

// The residual's gradient is grad_out itself; x's is the act backward's with no activation
// (slope 1: ga = g) and no padding.
at::Tensor instance_norm_add_backward(const at::Tensor& g, const at::Tensor& x,
                                      const at::Tensor& mean, const at::Tensor& rstd) {
  const char* op = "instance_norm_add_backward";
  check_input(x, op);
  check_same(x, g, op, "grad_out");
  check_stats(x, mean, rstd, op);
  check_sizes(x, 0, op);
  return norm_act_backward(g, x, mean, rstd, 1.0, 0, op);
}

}  // namespace
}  // namespace cuda

TORCH_LIBRARY_IMPL(restorekit, CUDA, m) {
  m.impl("reflection_pad", &cuda::reflection_pad);
  m.impl("reflection_pad_backward", &cuda::reflection_pad_backward);
  m.impl("reflection_pad_backward_add", &cuda::reflection_pad_backward_add);
  m.impl("instance_norm_act_with_stats", &cuda::instance_norm_act_with_stats);
  m.impl("instance_norm_act_backward", &cuda::instance_norm_act_backward);
  m.impl("instance_norm_add_with_stats", &cuda::instance_norm_add_with_stats);
  m.impl("instance_norm_add_backward", &cuda::instance_norm_add_backward);
}

}  // namespace restorekit
