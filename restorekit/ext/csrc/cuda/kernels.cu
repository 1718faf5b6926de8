// CUDA kernels of the restorekit ops. Only CUDA headers here (the torch glue is ops_cuda.cpp),
// so this file compiles with plain `nvcc -c` (csrc/check_nvcc.sh).
//
// Per-plane ops run one thread block per (n, c) plane: a two-pass mean / variance (the plane
// is re-read from L2), warp-shuffle block reductions, then a coalesced write pass. half and
// bfloat16 load/store in their own type and accumulate in float; double accumulates in double.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "launchers.h"

namespace restorekit {
namespace cuda {
namespace {

template <typename T>
struct Acc {
  using type = float;
};
template <>
struct Acc<double> {
  using type = double;
};

__device__ __forceinline__ float to_acc(float v) { return v; }
__device__ __forceinline__ double to_acc(double v) { return v; }
__device__ __forceinline__ float to_acc(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_acc(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T>
__device__ __forceinline__ T from_acc(typename Acc<T>::type v);
template <>
__device__ __forceinline__ float from_acc<float>(float v) { return v; }
template <>
__device__ __forceinline__ double from_acc<double>(double v) { return v; }
template <>
__device__ __forceinline__ __half from_acc<__half>(float v) { return __float2half(v); }
template <>
__device__ __forceinline__ __nv_bfloat16 from_acc<__nv_bfloat16>(float v) {
  return __float2bfloat16(v);
}

__device__ __forceinline__ float rsqrt_acc(float v) { return rsqrtf(v); }
__device__ __forceinline__ double rsqrt_acc(double v) { return rsqrt(v); }

template <typename A>
__device__ __forceinline__ A warp_sum(A v) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_down_sync(0xffffffffu, v, offset);
  return v;
}

// Sums a and b over the block (blockDim.x a multiple of 32); every thread gets the totals.
template <typename A>
__device__ __forceinline__ void block_sum2(A& a, A& b) {
  __shared__ A sa[32];
  __shared__ A sb[32];
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  const int nwarps = blockDim.x >> 5;
  a = warp_sum(a);
  b = warp_sum(b);
  if (lane == 0) {
    sa[warp] = a;
    sb[warp] = b;
  }
  __syncthreads();
  if (warp == 0) {
    a = lane < nwarps ? sa[lane] : A(0);
    b = lane < nwarps ? sb[lane] : A(0);
    a = warp_sum(a);
    b = warp_sum(b);
    if (lane == 0) {
      sa[0] = a;
      sb[0] = b;
    }
  }
  __syncthreads();
  a = sa[0];
  b = sb[0];
  __syncthreads();  // the buffers may be reused by the next reduction
}

// Two-pass mean and biased variance of one plane (the second pass hits L2).
template <typename T, typename A>
__device__ __forceinline__ void plane_stats(const T* __restrict__ x, int n, double eps, A& mean,
                                            A& rstd) {
  A s = 0, unused = 0;
  for (int i = threadIdx.x; i < n; i += blockDim.x) s += to_acc(x[i]);
  block_sum2(s, unused);
  const A m = s / A(n);
  A q = 0;
  unused = 0;
  for (int i = threadIdx.x; i < n; i += blockDim.x) {
    const A d = to_acc(x[i]) - m;
    q += d * d;
  }
  block_sum2(q, unused);
  mean = m;
  // Like PyTorch's InvStd: a constant plane with eps = 0 normalises to 0, not to NaN.
  rstd = (q == A(0) && eps == 0.0) ? A(0) : rsqrt_acc(q / A(n) + A(eps));
}

// Index into an unpadded axis of size n for padded index i in [0, n + 2).
__device__ __forceinline__ int reflect(int i, int n) {
  return i < 1 ? 1 - i : (i > n ? 2 * n - i - 1 : i - 1);
}

// Gradient of reflection padding by 1 at interior (r, c): gathers every padded position that
// mirrors onto it (no atomics).
template <typename T, typename A>
__device__ __forceinline__ A gather(const T* __restrict__ gp, int r, int c, int H, int W) {
  const int Wp = W + 2;
  const int rows[3] = {r + 1, r == 1 ? 0 : -1, r == H - 2 ? H + 1 : -1};
  const int cols[3] = {c + 1, c == 1 ? 0 : -1, c == W - 2 ? W + 1 : -1};
  A acc = to_acc(gp[rows[0] * Wp + cols[0]]);
#pragma unroll
  for (int i = 0; i < 3; ++i) {
#pragma unroll
    for (int j = 0; j < 3; ++j) {
      if ((i | j) != 0 && rows[i] >= 0 && cols[j] >= 0) acc += to_acc(gp[rows[i] * Wp + cols[j]]);
    }
  }
  return acc;
}

// ------------------------------------------------------------------------- kernels ----------

template <typename T>
__global__ void reflection_pad_kernel(const T* __restrict__ x, T* __restrict__ out,
                                      int64_t total, int H, int W) {
  const int Wp = W + 2, Hp = H + 2;
  const int64_t stride = static_cast<int64_t>(blockDim.x) * gridDim.x;
  for (int64_t o = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; o < total;
       o += stride) {
    const int64_t p = o / (static_cast<int64_t>(Hp) * Wp);
    const int rem = static_cast<int>(o - p * Hp * Wp);
    const int pr = rem / Wp, pc = rem - pr * Wp;
    out[o] = x[p * H * W + reflect(pr, H) * W + reflect(pc, W)];
  }
}

// other == nullptr: plain gather; else the gather plus other[i].
template <typename T>
__global__ void reflection_pad_backward_kernel(const T* __restrict__ g,
                                               const T* __restrict__ other, T* __restrict__ dx,
                                               int64_t total, int H, int W) {
  using A = typename Acc<T>::type;
  const int n = H * W;
  const int64_t stride = static_cast<int64_t>(blockDim.x) * gridDim.x;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += stride) {
    const int64_t p = i / n;
    const int rem = static_cast<int>(i - p * n);
    const int r = rem / W, c = rem - r * W;
    A v = gather<T, A>(g + p * (H + 2) * (W + 2), r, c, H, W);
    if (other != nullptr) v += to_acc(other[i]);
    dx[i] = from_acc<T>(v);
  }
}

template <typename T, typename A>
__global__ void instance_norm_relu_pad_kernel(const T* __restrict__ x, T* __restrict__ out,
                                              A* __restrict__ mean, A* __restrict__ rstd, int H,
                                              int W, double eps) {
  const int64_t p = blockIdx.x;
  const int n = H * W, Wp = W + 2, np = (H + 2) * Wp;
  const T* __restrict__ xp = x + p * n;
  T* __restrict__ op = out + p * np;
  A m, s;
  plane_stats(xp, n, eps, m, s);
  if (threadIdx.x == 0) {
    mean[p] = m;
    rstd[p] = s;
  }
  for (int o = threadIdx.x; o < np; o += blockDim.x) {
    const int pr = o / Wp, pc = o - pr * Wp;
    const A v = (to_acc(xp[reflect(pr, H) * W + reflect(pc, W)]) - m) * s;
    op[o] = from_acc<T>(v < A(0) ? A(0) : v);
  }
}

template <typename T, typename A>
__global__ void instance_norm_relu_pad_backward_kernel(const T* __restrict__ g,
                                                       const T* __restrict__ x,
                                                       const A* __restrict__ mean,
                                                       const A* __restrict__ rstd,
                                                       T* __restrict__ dx, int H, int W) {
  const int64_t p = blockIdx.x;
  const int n = H * W;
  const T* __restrict__ gp = g + p * (H + 2) * (W + 2);
  const T* __restrict__ xp = x + p * n;
  T* __restrict__ dp = dx + p * n;
  const A m = mean[p], s = rstd[p];
  A s1 = 0, s2 = 0;
  for (int i = threadIdx.x; i < n; i += blockDim.x) {
    const int r = i / W, c = i - r * W;
    const A xh = (to_acc(xp[i]) - m) * s;
    if (xh > A(0)) {
      const A gv = gather<T, A>(gp, r, c, H, W);
      s1 += gv;
      s2 += gv * xh;
    }
  }
  block_sum2(s1, s2);
  const A k1 = s1 / A(n), k2 = s2 / A(n);
  for (int i = threadIdx.x; i < n; i += blockDim.x) {
    const int r = i / W, c = i - r * W;
    const A xh = (to_acc(xp[i]) - m) * s;
    const A gv = xh > A(0) ? gather<T, A>(gp, r, c, H, W) : A(0);
    dp[i] = from_acc<T>(s * (gv - k1 - xh * k2));
  }
}

template <typename T, typename A>
__global__ void instance_norm_add_kernel(const T* __restrict__ x, const T* __restrict__ res,
                                         T* __restrict__ out, A* __restrict__ mean,
                                         A* __restrict__ rstd, int n, double eps) {
  const int64_t p = blockIdx.x;
  const T* __restrict__ xp = x + p * n;
  const T* __restrict__ rp = res + p * n;
  T* __restrict__ op = out + p * n;
  A m, s;
  plane_stats(xp, n, eps, m, s);
  if (threadIdx.x == 0) {
    mean[p] = m;
    rstd[p] = s;
  }
  for (int i = threadIdx.x; i < n; i += blockDim.x) {
    op[i] = from_acc<T>((to_acc(xp[i]) - m) * s + to_acc(rp[i]));
  }
}

template <typename T, typename A>
__global__ void instance_norm_add_backward_kernel(const T* __restrict__ g,
                                                  const T* __restrict__ x,
                                                  const A* __restrict__ mean,
                                                  const A* __restrict__ rstd,
                                                  T* __restrict__ dx, int n) {
  const int64_t p = blockIdx.x;
  const T* __restrict__ gp = g + p * n;
  const T* __restrict__ xp = x + p * n;
  T* __restrict__ dp = dx + p * n;
  const A m = mean[p], s = rstd[p];
  A s1 = 0, s2 = 0;
  for (int i = threadIdx.x; i < n; i += blockDim.x) {
    const A gv = to_acc(gp[i]);
    s1 += gv;
    s2 += gv * ((to_acc(xp[i]) - m) * s);
  }
  block_sum2(s1, s2);
  const A k1 = s1 / A(n), k2 = s2 / A(n);
  for (int i = threadIdx.x; i < n; i += blockDim.x) {
    const A xh = (to_acc(xp[i]) - m) * s;
    dp[i] = from_acc<T>(s * (to_acc(gp[i]) - k1 - xh * k2));
  }
}

// ---------------------------------------------------------------------- launch helpers -------

// Threads for a one-block-per-plane kernel: enough to cover the plane, a multiple of 32.
inline int plane_threads(int64_t n) {
  if (n >= 16384) return 1024;
  if (n >= 4096) return 512;
  if (n >= 256) return 256;
  return static_cast<int>(((n + 31) / 32) * 32);
}

inline unsigned int elementwise_blocks(int64_t total, int threads) {
  const int64_t blocks = (total + threads - 1) / threads;
  return static_cast<unsigned int>(blocks < (1 << 20) ? blocks : (1 << 20));
}

// Calls f(T{}) with the element type that dtype names.
template <typename F>
cudaError_t dispatch(DType dtype, F&& f) {
  switch (dtype) {
    case DType::Float:
      f(float{});
      break;
    case DType::Double:
      f(double{});
      break;
    case DType::Half:
      f(__half{});
      break;
    case DType::BFloat16:
      f(__nv_bfloat16{});
      break;
    default:
      return cudaErrorInvalidValue;
  }
  return cudaGetLastError();
}

}  // namespace

cudaError_t launch_reflection_pad(DType dtype, const void* x, void* out, int64_t planes,
                                  int64_t H, int64_t W, cudaStream_t stream) {
  const int64_t total = planes * (H + 2) * (W + 2);
  if (total == 0) return cudaSuccess;
  return dispatch(dtype, [&](auto tag) {
    using T = decltype(tag);
    reflection_pad_kernel<T><<<elementwise_blocks(total, 256), 256, 0, stream>>>(
        static_cast<const T*>(x), static_cast<T*>(out), total, static_cast<int>(H),
        static_cast<int>(W));
  });
}

cudaError_t launch_reflection_pad_backward(DType dtype, const void* grad_out, void* grad_in,
                                           int64_t planes, int64_t H, int64_t W,
                                           cudaStream_t stream) {
  const int64_t total = planes * H * W;
  if (total == 0) return cudaSuccess;
  return dispatch(dtype, [&](auto tag) {
    using T = decltype(tag);
    reflection_pad_backward_kernel<T><<<elementwise_blocks(total, 256), 256, 0, stream>>>(
        static_cast<const T*>(grad_out), nullptr, static_cast<T*>(grad_in), total,
        static_cast<int>(H), static_cast<int>(W));
  });
}

cudaError_t launch_reflection_pad_backward_add(DType dtype, const void* grad_out,
                                               const void* other, void* grad_in,
                                               int64_t planes, int64_t H, int64_t W,
                                               cudaStream_t stream) {
  const int64_t total = planes * H * W;
  if (total == 0) return cudaSuccess;
  return dispatch(dtype, [&](auto tag) {
    using T = decltype(tag);
    reflection_pad_backward_kernel<T><<<elementwise_blocks(total, 256), 256, 0, stream>>>(
        static_cast<const T*>(grad_out), static_cast<const T*>(other), static_cast<T*>(grad_in),
        total, static_cast<int>(H), static_cast<int>(W));
  });
}

cudaError_t launch_instance_norm_relu_pad(DType dtype, const void* x, void* out, void* mean,
                                          void* rstd, int64_t planes, int64_t H, int64_t W,
                                          double eps, cudaStream_t stream) {
  if (planes == 0) return cudaSuccess;
  const int threads = plane_threads(H * W);
  return dispatch(dtype, [&](auto tag) {
    using T = decltype(tag);
    using A = typename Acc<T>::type;
    instance_norm_relu_pad_kernel<T, A><<<static_cast<unsigned int>(planes), threads, 0,
                                          stream>>>(
        static_cast<const T*>(x), static_cast<T*>(out), static_cast<A*>(mean),
        static_cast<A*>(rstd), static_cast<int>(H), static_cast<int>(W), eps);
  });
}

cudaError_t launch_instance_norm_relu_pad_backward(DType dtype, const void* grad_out,
                                                   const void* x, const void* mean,
                                                   const void* rstd, void* grad_in,
                                                   int64_t planes, int64_t H, int64_t W,
                                                   cudaStream_t stream) {
  if (planes == 0) return cudaSuccess;
  const int threads = plane_threads(H * W);
  return dispatch(dtype, [&](auto tag) {
    using T = decltype(tag);
    using A = typename Acc<T>::type;
    instance_norm_relu_pad_backward_kernel<T, A><<<static_cast<unsigned int>(planes), threads,
                                                   0, stream>>>(
        static_cast<const T*>(grad_out), static_cast<const T*>(x), static_cast<const A*>(mean),
        static_cast<const A*>(rstd), static_cast<T*>(grad_in), static_cast<int>(H),
        static_cast<int>(W));
  });
}

cudaError_t launch_instance_norm_add(DType dtype, const void* x, const void* residual, void* out,
                                     void* mean, void* rstd, int64_t planes, int64_t H,
                                     int64_t W, double eps, cudaStream_t stream) {
  if (planes == 0) return cudaSuccess;
  const int threads = plane_threads(H * W);
  return dispatch(dtype, [&](auto tag) {
    using T = decltype(tag);
    using A = typename Acc<T>::type;
    instance_norm_add_kernel<T, A><<<static_cast<unsigned int>(planes), threads, 0, stream>>>(
        static_cast<const T*>(x), static_cast<const T*>(residual), static_cast<T*>(out),
        static_cast<A*>(mean), static_cast<A*>(rstd), static_cast<int>(H * W), eps);
  });
}

cudaError_t launch_instance_norm_add_backward(DType dtype, const void* grad_out, const void* x,
                                              const void* mean, const void* rstd, void* grad_in,
                                              int64_t planes, int64_t H, int64_t W,
                                              cudaStream_t stream) {
  if (planes == 0) return cudaSuccess;
  const int threads = plane_threads(H * W);
  return dispatch(dtype, [&](auto tag) {
    using T = decltype(tag);
    using A = typename Acc<T>::type;
    instance_norm_add_backward_kernel<T, A><<<static_cast<unsigned int>(planes), threads, 0,
                                              stream>>>(
        static_cast<const T*>(grad_out), static_cast<const T*>(x), static_cast<const A*>(mean),
        static_cast<const A*>(rstd), static_cast<T*>(grad_in), static_cast<int>(H * W));
  });
}

}  // namespace cuda
}  // namespace restorekit
