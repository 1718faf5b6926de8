// Host-side launchers of the restorekit CUDA kernels (defined in kernels.cu).
//
// Only CUDA runtime types appear here, so kernels.cu compiles with plain `nvcc -c` on a
// machine without a CUDA build of torch; ops_cuda.cpp does the torch glue. Every launcher
// returns cudaSuccess or the launch error (checked by the caller). planes == 0 launches
// nothing. Launches are asynchronous on `stream`, allocate nothing and never synchronise (CUDA
// graph capture is fine).
//
// Layout: x is (planes, H, W) contiguous, padded tensors are (planes, H + 2 pad, W + 2 pad)
// contiguous, mean/rstd are (planes,) in AccT (float for float/half/bfloat16, double for
// double). The caller guarantees (H + 2 pad) * (W + 2 pad) <= INT_MAX - 65536 (in-plane
// indices are int, and may pass a plane's end by a tile of at most 4096 elements) and, for
// the instance-norm launchers, planes <= INT_MAX (one block per plane on grid.x): the limits
// of check_sizes in ../common.h.
//
// DRAM bytes each launcher moves at the least, with s = sizeof(T), n = H * W,
// np = (H + 2 pad) * (W + 2 pad), a = sizeof(AccT) (the table at the top of kernels.cu):
//   reflection_pad                 planes * s * (n + np)          (pad = 1)
//   reflection_pad_backward        planes * s * (np + n)          (pad = 1)
//   reflection_pad_backward_add    planes * s * (np + 2 n)        (pad = 1)
//   instance_norm_act              planes * (s * (n + np) + 2 a)
//   instance_norm_act_backward     planes * (s * (np + 2 n) + 2 a)
//   instance_norm_add              planes * (3 s n + 2 a)
//   (instance_norm_add's backward: instance_norm_act_backward, slope 1, pad 0)
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

namespace restorekit {
namespace cuda {

enum class DType : int { Float = 0, Double = 1, Half = 2, BFloat16 = 3 };

// Elements of AccT the instance-norm launchers below need as `workspace` for these planes on
// the current device (0: none, pass nullptr). The same for forward and backward; it depends
// on the device's SM count, so ask on the device that will run the launch. The launchers take
// the workspace's size too and fail with cudaErrorInvalidValue when it is too small.
int64_t instance_norm_workspace(DType dtype, int64_t planes, int64_t H, int64_t W);

// Reflection padding by 1: (planes, H, W) -> (planes, H + 2, W + 2); H, W >= 2.
cudaError_t launch_reflection_pad(DType dtype, const void* x, void* out, int64_t planes,
                                  int64_t H, int64_t W, cudaStream_t stream);

// Its gradient: (planes, H + 2, W + 2) -> (planes, H, W), gathered (no atomics).
cudaError_t launch_reflection_pad_backward(DType dtype, const void* grad_out, void* grad_in,
                                           int64_t planes, int64_t H, int64_t W,
                                           cudaStream_t stream);

// grad_in = reflection_pad_backward(grad_out) + other (other has grad_in's shape).
cudaError_t launch_reflection_pad_backward_add(DType dtype, const void* grad_out,
                                               const void* other, void* grad_in,
                                               int64_t planes, int64_t H, int64_t W,
                                               cudaStream_t stream);

// out = act(instance_norm(x)) reflection-padded by pad (0 <= pad < H, W), act(v) =
// v < 0 ? negative_slope * v : v; also writes the per-plane mean and rstd.
cudaError_t launch_instance_norm_act(DType dtype, const void* x, void* out, void* mean,
                                     void* rstd, void* workspace, int64_t workspace_size,
                                     int64_t planes, int64_t H, int64_t W, double eps,
                                     double negative_slope, int64_t pad, cudaStream_t stream);

// grad_in (planes, H, W) from grad_out (planes, H + 2 pad, W + 2 pad) and the saved stats.
cudaError_t launch_instance_norm_act_backward(DType dtype, const void* grad_out, const void* x,
                                              const void* mean, const void* rstd,
                                              void* grad_in, void* workspace,
                                              int64_t workspace_size, int64_t planes, int64_t H,
                                              int64_t W, double negative_slope, int64_t pad,
                                              cudaStream_t stream);

// out = instance_norm(x) + residual; also writes the per-plane mean and rstd.
cudaError_t launch_instance_norm_add(DType dtype, const void* x, const void* residual, void* out,
                                     void* mean, void* rstd, void* workspace,
                                     int64_t workspace_size, int64_t planes, int64_t H, int64_t W,
                                     double eps, cudaStream_t stream);

}  // namespace cuda
}  // namespace restorekit
