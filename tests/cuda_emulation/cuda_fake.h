// CPU emulation of the CUDA subset used by kernels.cu: every block's threads are std::threads
// that meet at std::barrier for __syncthreads and per-warp barriers for shuffles.
#pragma once
#include <barrier>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <thread>
#include <vector>
#include <algorithm>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __restrict__ __restrict
#define __shared__ static
#define __align__(n) __attribute__((aligned(n)))

struct dim3v { unsigned x = 0, y = 0, z = 0; };
inline thread_local dim3v threadIdx, blockIdx;
inline dim3v blockDim, gridDim;

typedef int cudaError_t;
constexpr int cudaSuccess = 0;
constexpr int cudaErrorInvalidValue = 1;
typedef void* cudaStream_t;
enum cudaDeviceAttr { cudaDevAttrMultiProcessorCount };
inline int g_fake_device = 0;
inline int g_fake_sms[8] = {132, 2, 1, 7, 16, 3, 5, 64};
inline cudaError_t cudaGetDevice(int* d) { *d = g_fake_device; return 0; }
inline cudaError_t cudaDeviceGetAttribute(int* v, cudaDeviceAttr, int d) { *v = g_fake_sms[d]; return 0; }
inline cudaError_t cudaGetLastError() { return 0; }

struct uint2 { unsigned x, y; };
struct alignas(16) uint4 { unsigned x, y, z, w; };

struct __half { _Float16 v; };
struct __nv_bfloat16 { uint16_t bits; };
inline float __half2float(__half h) { return float(h.v); }
inline __half __float2half(float f) { return __half{(_Float16)f}; }
inline float __bfloat162float(__nv_bfloat16 b) { uint32_t u = uint32_t(b.bits) << 16; float f; memcpy(&f, &u, 4); return f; }
inline __nv_bfloat16 __float2bfloat16(float f) {
  uint32_t u; memcpy(&u, &f, 4);
  if (std::isnan(f)) return {uint16_t((u >> 16) | 0x40)};
  u += 0x7fff + ((u >> 16) & 1);
  return {uint16_t(u >> 16)};
}
using std::min;
using std::max;

struct BlockSync {
  std::barrier<> block;
  std::vector<std::unique_ptr<std::barrier<>>> warps;
  std::vector<double> buf;  // 8 bytes per lane
  BlockSync(int threads) : block(threads), buf(threads) {
    for (int w = 0; w < threads / 32; ++w) warps.push_back(std::make_unique<std::barrier<>>(32));
  }
};
inline BlockSync* g_sync = nullptr;
inline void __syncthreads() { g_sync->block.arrive_and_wait(); }

template <typename V>
inline V shfl_impl(V v, int src_lane_or_minus1) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  auto& bar = *g_sync->warps[warp];
  double slot; memcpy(&slot, &v, sizeof(V));
  g_sync->buf[threadIdx.x] = slot;
  bar.arrive_and_wait();
  V r = v;
  if (src_lane_or_minus1 >= 0) { double s = g_sync->buf[warp * 32 + src_lane_or_minus1]; memcpy(&r, &s, sizeof(V)); }
  bar.arrive_and_wait();
  return r;
}
template <typename V>
inline V __shfl_down_sync(unsigned, V v, int off) {
  const int lane = threadIdx.x & 31;
  return shfl_impl(v, lane + off < 32 ? lane + off : -1);
}
template <typename V>
inline V __shfl_sync(unsigned, V v, int src) { return shfl_impl(v, src); }

inline long g_launches = 0;
template <typename... P, typename... Args>
void launch_emu(unsigned grid, int threads, void (*kernel)(P...), Args... args) {
  ++g_launches;
  if (threads % 32 != 0 || threads > 1024 || threads <= 0 || grid == 0) { fprintf(stderr, "bad launch config %u %d\n", grid, threads); std::abort(); }
  BlockSync sync(threads);
  g_sync = &sync;
  blockDim = {unsigned(threads), 1, 1};
  gridDim = {grid, 1, 1};
  std::vector<std::thread> pool;
  for (int t = 0; t < threads; ++t) {
    pool.emplace_back([&, t] {
      threadIdx = {unsigned(t), 0, 0};
      for (unsigned b = 0; b < grid; ++b) {
        blockIdx = {b, 0, 0};
        kernel(P(args)...);
        sync.block.arrive_and_wait();
      }
    });
  }
  for (auto& th : pool) th.join();
  g_sync = nullptr;
}
