// Host-side launchers of the restorekit CUDA kernels (defined in kernels.cu).
//
// Only CUDA runtime types appear here, so kernels.cu compiles with plain `nvcc -c` on a
// machine without a CUDA build of torch; ops_cuda.cpp does the torch glue. Every launcher
// returns cudaSuccess or the launch error (checked by the caller).
//
// Layout: x is (planes, H, W) contiguous, padded tensors are (planes, H+2, W+2) contiguous,
// mean/rstd are (planes,) in AccT (float for float/half/bfloat16, double for double).
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

namespace restorekit {
namespace cuda {

enum class DType : int { Float = 0, Double = 1, Half = 2, BFloat16 = 3 };

cudaError_t launch_reflection_pad(DType dtype, const void* x, void* out, int64_t planes,
                                  int64_t H, int64_t W, cudaStream_t stream);

cudaError_t launch_reflection_pad_backward(DType dtype, const void* grad_out, void* grad_in,
                                           int64_t planes, int64_t H, int64_t W,
                                           cudaStream_t stream);

// grad_in = reflection_pad_backward(grad_out) + other (other has grad_in's shape).
cudaError_t launch_reflection_pad_backward_add(DType dtype, const void* grad_out,
                                               const void* other, void* grad_in,
                                               int64_t planes, int64_t H, int64_t W,
                                               cudaStream_t stream);

cudaError_t launch_instance_norm_relu_pad(DType dtype, const void* x, void* out, void* mean,
                                          void* rstd, int64_t planes, int64_t H, int64_t W,
                                          double eps, cudaStream_t stream);

cudaError_t launch_instance_norm_relu_pad_backward(DType dtype, const void* grad_out,
                                                   const void* x, const void* mean,
                                                   const void* rstd, void* grad_in,
                                                   int64_t planes, int64_t H, int64_t W,
                                                   cudaStream_t stream);

cudaError_t launch_instance_norm_add(DType dtype, const void* x, const void* residual, void* out,
                                     void* mean, void* rstd, int64_t planes, int64_t H,
                                     int64_t W, double eps, cudaStream_t stream);

cudaError_t launch_instance_norm_add_backward(DType dtype, const void* grad_out, const void* x,
                                              const void* mean, const void* rstd, void* grad_in,
                                              int64_t planes, int64_t H, int64_t W,
                                              cudaStream_t stream);

}  // namespace cuda
}  // namespace restorekit
