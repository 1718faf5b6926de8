// CPU kernels of the restorekit ops: one task per (n, c) plane, spread over threads with
// at::parallel_for; inner loops are contiguous and written so the compiler vectorises them
// (-O3, `omp simd`). Each plane is small enough to stay in L2 between the passes over it.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#if defined(__F16C__)
#include <immintrin.h>
#endif

#include <algorithm>
#include <cstdint>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <initializer_list>
#include <string>
#include <tuple>
#include <vector>

#include "../common.h"

namespace restorekit {
namespace cpu {
namespace {

// Partial sums run in T over chunks of this many elements, and chunks are added in double:
// accurate for large planes while the hot loop stays in vector registers.
constexpr int64_t kChunk = 2048;

// Reductions use four independent 32-byte vector accumulators (GCC/Clang vector extensions),
// so that they are bound by load throughput rather than by the latency of one add chain.
// The chunk reductions are kept out of line: inlined into the OpenMP-outlined plane loops,
// GCC spilled one accumulator to the stack on every iteration (one call per chunk is free).
template <typename T>
struct Vec {
  typedef T type __attribute__((vector_size(32)));
  static constexpr int kWidth = static_cast<int>(32 / sizeof(T));
};

template <typename T>
using vec_t = typename Vec<T>::type;

template <typename T>
inline vec_t<T> vload(const T* p) {
  vec_t<T> v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

template <typename T>
inline vec_t<T> vsplat(T a) {
  return vec_t<T>{} + a;
}

template <typename T>
inline T vtotal(vec_t<T> a0, vec_t<T> a1, vec_t<T> a2, vec_t<T> a3) {
  const vec_t<T> t = (a0 + a1) + (a2 + a3);
  T s = 0;
  for (int j = 0; j < Vec<T>::kWidth; ++j) s += t[j];
  return s;
}

// (xh > 0 ? g : slope * g) lane-wise: the gradient through act (false for NaN, like the
// scalar form, so a NaN xhat passes slope * g).
template <typename T>
inline vec_t<T> vact_grad(vec_t<T> xh, vec_t<T> g, vec_t<T> slope) {
  return xh > vec_t<T>{} ? g : g * slope;
}

// sum(p[i] - shift).
template <typename T>
[[gnu::noinline]] T chunk_sum(const T* __restrict p, int64_t n, T shift) {
  constexpr int V = Vec<T>::kWidth;
  const vec_t<T> sv = vsplat(shift);
  vec_t<T> a0{}, a1{}, a2{}, a3{};
  int64_t i = 0;
  for (; i + 4 * V <= n; i += 4 * V) {
    a0 += vload(p + i) - sv;
    a1 += vload(p + i + V) - sv;
    a2 += vload(p + i + 2 * V) - sv;
    a3 += vload(p + i + 3 * V) - sv;
  }
  for (; i + V <= n; i += V) a0 += vload(p + i) - sv;
  T s = vtotal<T>(a0, a1, a2, a3);
  for (; i < n; ++i) s += p[i] - shift;
  return s;
}

template <typename T>
[[gnu::noinline]] T chunk_sqdev(const T* __restrict p, int64_t n, T m) {
  constexpr int V = Vec<T>::kWidth;
  const vec_t<T> mv = vsplat(m);
  vec_t<T> a0{}, a1{}, a2{}, a3{};
  int64_t i = 0;
  for (; i + 4 * V <= n; i += 4 * V) {
    const vec_t<T> d0 = vload(p + i) - mv, d1 = vload(p + i + V) - mv;
    const vec_t<T> d2 = vload(p + i + 2 * V) - mv, d3 = vload(p + i + 3 * V) - mv;
    a0 += d0 * d0;
    a1 += d1 * d1;
    a2 += d2 * d2;
    a3 += d3 * d3;
  }
  for (; i + V <= n; i += V) {
    const vec_t<T> d = vload(p + i) - mv;
    a0 += d * d;
  }
  T s = vtotal<T>(a0, a1, a2, a3);
  for (; i < n; ++i) {
    const T d = p[i] - m;
    s += d * d;
  }
  return s;
}

// a = sum(ga), b = sum(ga * xhat) with ga = (xhat > 0 ? g : slope * g), xhat = (x - m) * s.
template <typename T>
[[gnu::noinline]] void chunk_act_sums(const T* __restrict g, const T* __restrict x, int64_t n,
                                      T m, T s, T slope, T& a, T& b) {
  constexpr int V = Vec<T>::kWidth;
  const vec_t<T> mv = vsplat(m), sv = vsplat(s), kv = vsplat(slope);
  vec_t<T> a0{}, a1{}, b0{}, b1{};
  int64_t i = 0;
  for (; i + 2 * V <= n; i += 2 * V) {
    const vec_t<T> x0 = (vload(x + i) - mv) * sv, x1 = (vload(x + i + V) - mv) * sv;
    const vec_t<T> g0 = vact_grad<T>(x0, vload(g + i), kv);
    const vec_t<T> g1 = vact_grad<T>(x1, vload(g + i + V), kv);
    a0 += g0;
    a1 += g1;
    b0 += g0 * x0;
    b1 += g1 * x1;
  }
  T sa = vtotal<T>(a0, a1, vec_t<T>{}, vec_t<T>{});
  T sb = vtotal<T>(b0, b1, vec_t<T>{}, vec_t<T>{});
  for (; i < n; ++i) {
    const T xh = (x[i] - m) * s;
    const T ga = g[i] * (xh > T(0) ? T(1) : slope);
    sa += ga;
    sb += ga * xh;
  }
  a = sa;
  b = sb;
}

// Two-pass mean and biased variance of one contiguous plane, shifted by its first element:
// a constant plane (any value) then gets exactly its value as mean and 0 as variance.
template <typename T>
inline void plane_stats(const T* __restrict x, int64_t n, double eps, T& mean, T& rstd) {
  const T shift = x[0];
  double s = 0;
  for (int64_t i = 0; i < n; i += kChunk) s += chunk_sum(x + i, std::min(kChunk, n - i), shift);
  const T m = shift + static_cast<T>(s / static_cast<double>(n));
  double q = 0;
  for (int64_t i = 0; i < n; i += kChunk) q += chunk_sqdev(x + i, std::min(kChunk, n - i), m);
  mean = m;
  // Like PyTorch's InvStd: a constant plane with eps = 0 normalises to 0, not to NaN.
  rstd = (q == 0 && eps == 0) ? T(0)
                              : static_cast<T>(1.0 / std::sqrt(q / static_cast<double>(n) + eps));
}

// dst[c] += reflection-gathered padded row `src` (length W + 2p) for c in [0, W): the
// interior column c + p, plus the left border column p - c for 1 <= c <= p, plus the right
// border column p + W + (W - 2 - c) for W - 1 - p <= c <= W - 2.
template <typename T>
inline void add_gathered_row(T* __restrict dst, const T* __restrict src, int64_t W, int64_t p) {
#pragma omp simd
  for (int64_t c = 0; c < W; ++c) dst[c] += src[c + p];
  for (int64_t c = 1; c <= p; ++c) dst[c] += src[p - c];
  for (int64_t c = W - 1 - p; c <= W - 2; ++c) dst[c] += src[p + W + (W - 2 - c)];
}

// Interior row r of the gradient of reflection padding by p (a gather, no atomics): padded
// row r + p, plus the top border row p - r for 1 <= r <= p, plus the bottom border row
// p + H + (H - 2 - r) for H - 1 - p <= r <= H - 2.
template <typename T>
inline void gather_row(T* __restrict dst, const T* __restrict g, int64_t r, int64_t H,
                       int64_t W, int64_t p = 1) {
  const int64_t Wp = W + 2 * p;
  const T* __restrict src = g + (r + p) * Wp;
#pragma omp simd
  for (int64_t c = 0; c < W; ++c) dst[c] = src[c + p];
  for (int64_t c = 1; c <= p; ++c) dst[c] += src[p - c];
  for (int64_t c = W - 1 - p; c <= W - 2; ++c) dst[c] += src[p + W + (W - 2 - c)];
  if (r >= 1 && r <= p) add_gathered_row(dst, g + (p - r) * Wp, W, p);
  if (r >= H - 1 - p && r <= H - 2) add_gathered_row(dst, g + (p + H + (H - 2 - r)) * Wp, W, p);
}

// Fill the reflected border (width p) of a padded plane whose interior is already written.
template <typename T>
inline void fill_border(T* __restrict out, int64_t H, int64_t W, int64_t p = 1) {
  if (p == 0) return;
  const int64_t Wp = W + 2 * p;
  for (int64_t r = p; r < p + H; ++r) {
    T* row = out + r * Wp;
    for (int64_t j = 1; j <= p; ++j) {
      row[p - j] = row[p + j];
      row[p + W - 1 + j] = row[p + W - 1 - j];
    }
  }
  for (int64_t j = 1; j <= p; ++j) {
    std::memcpy(out + (p - j) * Wp, out + (p + j) * Wp, sizeof(T) * Wp);
    std::memcpy(out + (p + H - 1 + j) * Wp, out + (p + H - 1 - j) * Wp, sizeof(T) * Wp);
  }
}

// Run fn(plane) for every plane, a contiguous run of planes per thread.
template <typename F>
inline void for_each_plane(int64_t planes, int64_t plane_numel, const F& fn) {
  const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(1, plane_numel));
  at::parallel_for(0, planes, grain, [&](int64_t begin, int64_t end) {
    for (int64_t p = begin; p < end; ++p) fn(p);
  });
}


// ------------------------------------------------------------ float16 / bfloat16 planes ---
// Reduced-precision tensors are computed plane by plane in float: each thread widens the
// plane(s) it works on into its own float scratch, runs the float kernel, and narrows the
// result back (statistics stay float). No whole-tensor casts, float accumulation.

// The conversions are written on the bits so that they vectorise (c10's scalar conversions
// do not, and cost more than the kernels themselves); they round as c10 does: to nearest,
// ties to even, NaN stays NaN.
inline void widen(const c10::BFloat16* __restrict src, float* __restrict dst, int64_t n) {
  const uint16_t* __restrict s = reinterpret_cast<const uint16_t*>(src);
  uint32_t* __restrict d = reinterpret_cast<uint32_t*>(dst);
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) d[i] = static_cast<uint32_t>(s[i]) << 16;
}

inline void narrow(const float* __restrict src, c10::BFloat16* __restrict dst, int64_t n) {
  const uint32_t* __restrict s = reinterpret_cast<const uint32_t*>(src);
  uint16_t* __restrict d = reinterpret_cast<uint16_t*>(dst);
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) {
    const uint32_t u = s[i];
    const uint32_t rounded = (u + 0x7FFFu + ((u >> 16) & 1u)) >> 16;
    d[i] = static_cast<uint16_t>((u & 0x7FFFFFFFu) > 0x7F800000u ? 0x7FC0u : rounded);
  }
}

inline void widen(const c10::Half* __restrict src, float* __restrict dst, int64_t n) {
  int64_t i = 0;
#if defined(__F16C__)
  const uint16_t* s = reinterpret_cast<const uint16_t*>(src);
  for (; i + 8 <= n; i += 8) {
    const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(s + i));
    _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(h));
  }
#endif
  for (; i < n; ++i) dst[i] = static_cast<float>(src[i]);
}

inline void narrow(const float* __restrict src, c10::Half* __restrict dst, int64_t n) {
  int64_t i = 0;
#if defined(__F16C__)
  uint16_t* d = reinterpret_cast<uint16_t*>(dst);
  for (; i + 8 <= n; i += 8) {
    const __m128i h = _mm256_cvtps_ph(_mm256_loadu_ps(src + i), _MM_FROUND_TO_NEAREST_INT);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(d + i), h);
  }
#endif
  for (; i < n; ++i) dst[i] = static_cast<c10::Half>(src[i]);
}

// Thread-local float buffer number `slot` with room for n elements.
inline float* scratch(int slot, int64_t n) {
  thread_local std::vector<float> buffers[4];
  auto& b = buffers[slot];
  if (static_cast<int64_t>(b.size()) < n) b.resize(static_cast<size_t>(n));
  return b.data();
}

inline bool is_reduced(const at::Tensor& t) {
  return t.scalar_type() == at::kHalf || t.scalar_type() == at::kBFloat16;
}

// Every op accepts float32, float64, float16 and bfloat16.
inline void check_dtype(const at::Tensor& t, const char* op) {
  const auto st = t.scalar_type();
  RK_CHECK(st == at::kFloat || st == at::kDouble || st == at::kHalf || st == at::kBFloat16,
              "restorekit::", op, ": unsupported dtype ", st,
              " (float32, float64, float16 or bfloat16)");
}

// ------------------------------------------------------------------ memory ---------------
// Linux lets an allocation larger than the free memory succeed and kills the process (SIGKILL)
// once its pages are touched: a float16 plane of 2^31 elements (4 GiB) needs 20 GiB more, its
// output (4) and two planes of float scratch (16). So each op adds up what it is about to
// allocate and refuses, before allocating, what the available memory cannot hold.

// Smaller requests are not checked (the check reads /proc/meminfo).
constexpr double kCheckMemoryAbove = double(int64_t(1) << 30);

// MemAvailable of /proc/meminfo, in bytes; -1 where it is unknown (then nothing is refused).
double available_memory() {
  std::ifstream meminfo("/proc/meminfo");
  std::string key, rest;
  double kib = 0;
  while (meminfo >> key >> kib) {
    if (key == "MemAvailable:") return kib * 1024;
    std::getline(meminfo, rest);
  }
  return -1;
}

std::string gib(double bytes) {
  char text[32];
  std::snprintf(text, sizeof(text), "%.1f GiB", bytes / double(int64_t(1) << 30));
  return text;
}

// The op's allocations for t's N * C planes: outputs of `out` elements of t's dtype and two
// statistics per plane, a contiguous copy of each non-contiguous input, and for float16 and
// bfloat16 `floats` floats of scratch for every thread that runs a plane.
void check_memory(const char* op, const at::Tensor& t, int64_t out, int64_t floats,
                  std::initializer_list<const at::Tensor*> inputs) {
  const double planes = static_cast<double>(t.size(0)) * static_cast<double>(t.size(1));
  double bytes = planes * (static_cast<double>(out) * t.element_size() + 2 * sizeof(double));
  for (const at::Tensor* in : inputs) {
    if (!in->is_contiguous()) bytes += static_cast<double>(in->numel()) * in->element_size();
  }
  if (is_reduced(t)) {
    bytes += std::min<double>(planes, at::get_num_threads()) * static_cast<double>(floats) *
             sizeof(float);
  }
  if (bytes < kCheckMemoryAbove) return;
  const double available = available_memory();
  RK_CHECK(available < 0 || bytes <= available, "restorekit::", op, ": needs ", gib(bytes),
           " of memory (outputs, copies and scratch), only ", gib(available),
           " available");
}

// ------------------------------------------------------------------ one plane each --------

template <typename T>
void pad_plane(const T* __restrict xp, T* __restrict op, int64_t H, int64_t W) {
  const int64_t Wp = W + 2;
  for (int64_t r = 0; r < H; ++r) std::memcpy(op + (r + 1) * Wp + 1, xp + r * W, sizeof(T) * W);
  fill_border(op, H, W);
}

template <typename T>
void pad_backward_plane(const T* __restrict gp, T* __restrict dp, int64_t H, int64_t W) {
  for (int64_t r = 0; r < H; ++r) gather_row(dp + r * W, gp, r, H, W);
}

template <typename T>
void pad_backward_add_plane(const T* __restrict gp, const T* __restrict op,
                            T* __restrict dp, int64_t H, int64_t W) {
  for (int64_t r = 0; r < H; ++r) {
    T* __restrict dr = dp + r * W;
    const T* __restrict orow = op + r * W;
    gather_row(dr, gp, r, H, W);
#pragma omp simd
    for (int64_t c = 0; c < W; ++c) dr[c] += orow[c];
  }
}

// act(v) = v < 0 ? slope * v : v (keeps NaN, like torch.relu and leaky_relu).
template <typename T>
void norm_act_plane(const T* __restrict xp, T* __restrict op, T* mean, T* rstd, int64_t H,
                    int64_t W, int64_t p, double eps, T slope) {
  const int64_t Wp = W + 2 * p;
  T m, s;
  plane_stats(xp, H * W, eps, m, s);
  *mean = m;
  *rstd = s;
  for (int64_t r = 0; r < H; ++r) {
    const T* __restrict xr = xp + r * W;
    T* __restrict orow = op + (r + p) * Wp + p;
#pragma omp simd
    for (int64_t c = 0; c < W; ++c) {
      const T v = (xr[c] - m) * s;
      // Branch-free (a branch on the sign mispredicts in the loop's scalar tail): exactly
      // v for v >= 0 and slope * v below, NaN stays NaN.
      orow[c] = std::max(v, T(0)) + slope * std::min(v, T(0));
    }
  }
  fill_border(op, H, W, p);
}

template <typename T>
void norm_act_backward_plane(const T* __restrict gp, const T* __restrict xp, T* __restrict dp,
                             T m, T s, T slope, int64_t H, int64_t W, int64_t p) {
  const int64_t n = H * W;
  // Unpadded (p == 0): the sums read the gradient where it is. Padded: pass 1, by blocks of
  // whole rows (about kChunk elements, contiguous in dp and x), gathers the padded gradient
  // into dp and sums ga and ga * xhat while the block is in L1 (reading g and x block by
  // block keeps both streams going at once).
  const T* g = p == 0 ? gp : dp;  // based on gp or dp: no __restrict of its own
  const int64_t rows = std::max<int64_t>(1, kChunk / W);
  double s1 = 0, s2 = 0;
  for (int64_t r0 = 0; r0 < H; r0 += rows) {
    const int64_t r1 = std::min(H, r0 + rows);
    if (p != 0) {
      for (int64_t r = r0; r < r1; ++r) gather_row(dp + r * W, gp, r, H, W, p);
    }
    T a, b;
    chunk_act_sums(g + r0 * W, xp + r0 * W, (r1 - r0) * W, m, s, slope, a, b);
    s1 += a;
    s2 += b;
  }
  // Pass 2 (from cache): dx = rstd * (ga - mean(ga) - xhat * mean(ga * xhat)).
  const T k1 = static_cast<T>(s1 / n), k2 = static_cast<T>(s2 / n);
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) {
    const T xh = (xp[i] - m) * s;
    const T ga = g[i] * (xh > T(0) ? T(1) : slope);
    dp[i] = s * (ga - k1 - xh * k2);
  }
}

template <typename T>
void ina_plane(const T* __restrict xp, const T* __restrict rp, T* __restrict op, T* mean,
               T* rstd, int64_t n, double eps) {
  T m, s;
  plane_stats(xp, n, eps, m, s);
  *mean = m;
  *rstd = s;
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) op[i] = (xp[i] - m) * s + rp[i];
}

// ---------------------------------------------------------------------- the ops --------------

at::Tensor reflection_pad(const at::Tensor& x_) {
  check_planes(x_, "reflection_pad");
  check_dtype(x_, "reflection_pad");
  check_sizes(x_, 1, "reflection_pad");
  check_memory("reflection_pad", x_, (x_.size(2) + 2) * (x_.size(3) + 2), 0, {&x_});
  const at::Tensor x = x_.contiguous();
  at::Tensor out = at::empty(padded_shape(x), x.options());
  const int64_t H = x.size(2), W = x.size(3), P = x.size(0) * x.size(1);
  if (P == 0) return out;
  // A copy: every dtype runs the same kernel in its own type.
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(),
                                  "restorekit::reflection_pad", [&] {
    const scalar_t* xs = x.const_data_ptr<scalar_t>();
    scalar_t* os = out.mutable_data_ptr<scalar_t>();
    for_each_plane(P, H * W, [&](int64_t p) {
      pad_plane(xs + p * H * W, os + p * (H + 2) * (W + 2), H, W);
    });
  });
  return out;
}

at::Tensor reflection_pad_backward(const at::Tensor& g_) {
  check_padded(g_, "reflection_pad_backward");
  check_dtype(g_, "reflection_pad_backward");
  check_sizes(g_, 0, "reflection_pad_backward");
  const int64_t n_in = (g_.size(2) - 2) * (g_.size(3) - 2);
  check_memory("reflection_pad_backward", g_, n_in, g_.size(2) * g_.size(3) + n_in, {&g_});
  const at::Tensor g = g_.contiguous();
  at::Tensor dx = at::empty(unpadded_shape(g), g.options());
  const int64_t H = dx.size(2), W = dx.size(3), P = g.size(0) * g.size(1);
  const int64_t gn = (H + 2) * (W + 2), n = H * W;
  if (P == 0) return dx;
  if (is_reduced(g)) {
    AT_DISPATCH_REDUCED_FLOATING_TYPES(g.scalar_type(), "restorekit::reflection_pad_backward", [&] {
      const scalar_t* gs = g.const_data_ptr<scalar_t>();
      scalar_t* ds = dx.mutable_data_ptr<scalar_t>();
      for_each_plane(P, n, [&](int64_t p) {
        float *gf = scratch(0, gn), *df = scratch(1, n);
        widen(gs + p * gn, gf, gn);
        pad_backward_plane(gf, df, H, W);
        narrow(df, ds + p * n, n);
      });
    });
    return dx;
  }
  AT_DISPATCH_FLOATING_TYPES(g.scalar_type(), "restorekit::reflection_pad_backward", [&] {
    const scalar_t* gs = g.const_data_ptr<scalar_t>();
    scalar_t* ds = dx.mutable_data_ptr<scalar_t>();
    for_each_plane(P, n, [&](int64_t p) { pad_backward_plane(gs + p * gn, ds + p * n, H, W); });
  });
  return dx;
}

at::Tensor reflection_pad_backward_add(const at::Tensor& g_, const at::Tensor& other_) {
  check_padded(g_, "reflection_pad_backward_add");
  check_dtype(g_, "reflection_pad_backward_add");
  RK_CHECK(other_.sizes() == at::IntArrayRef(unpadded_shape(g_)),
              "restorekit::reflection_pad_backward_add: other has shape ", other_.sizes(),
              ", expected ", at::IntArrayRef(unpadded_shape(g_)));
  RK_CHECK(other_.scalar_type() == g_.scalar_type(),
              "restorekit::reflection_pad_backward_add: dtype mismatch");
  RK_CHECK(other_.device() == g_.device(),
              "restorekit::reflection_pad_backward_add: other is on another device");
  check_sizes(g_, 0, "reflection_pad_backward_add");
  check_memory("reflection_pad_backward_add", g_, other_.size(2) * other_.size(3),
               g_.size(2) * g_.size(3) + 2 * other_.size(2) * other_.size(3), {&g_, &other_});
  const at::Tensor g = g_.contiguous(), other = other_.contiguous();
  at::Tensor dx = at::empty(unpadded_shape(g), g.options());
  const int64_t H = dx.size(2), W = dx.size(3), P = g.size(0) * g.size(1);
  const int64_t gn = (H + 2) * (W + 2), n = H * W;
  if (P == 0) return dx;
  if (is_reduced(g)) {
    AT_DISPATCH_REDUCED_FLOATING_TYPES(g.scalar_type(), "restorekit::reflection_pad_backward_add",
                                       [&] {
      const scalar_t* gs = g.const_data_ptr<scalar_t>();
      const scalar_t* os = other.const_data_ptr<scalar_t>();
      scalar_t* ds = dx.mutable_data_ptr<scalar_t>();
      for_each_plane(P, n, [&](int64_t p) {
        float *gf = scratch(0, gn), *of = scratch(1, n), *df = scratch(2, n);
        widen(gs + p * gn, gf, gn);
        widen(os + p * n, of, n);
        pad_backward_add_plane(gf, of, df, H, W);
        narrow(df, ds + p * n, n);
      });
    });
    return dx;
  }
  AT_DISPATCH_FLOATING_TYPES(g.scalar_type(), "restorekit::reflection_pad_backward_add", [&] {
    const scalar_t* gs = g.const_data_ptr<scalar_t>();
    const scalar_t* os = other.const_data_ptr<scalar_t>();
    scalar_t* ds = dx.mutable_data_ptr<scalar_t>();
    for_each_plane(P, n, [&](int64_t p) {
      pad_backward_add_plane(gs + p * gn, os + p * n, ds + p * n, H, W);
    });
  });
  return dx;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> instance_norm_act_with_stats(
    const at::Tensor& x_, double eps, double slope, int64_t pad) {
  const char* op = "instance_norm_act";
  check_input(x_, op);
  check_eps(eps, op);
  check_slope(slope, op);
  check_pad(x_, pad, op);
  check_sizes(x_, pad, op);
  const int64_t padded = (x_.size(2) + 2 * pad) * (x_.size(3) + 2 * pad);
  check_memory(op, x_, padded, x_.size(2) * x_.size(3) + padded, {&x_});
  const at::Tensor x = x_.contiguous();
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  const int64_t n = H * W, pn = (H + 2 * pad) * (W + 2 * pad);
  at::Tensor out = at::empty(padded_shape(x, pad), x.options());
  auto sopt = x.options().dtype(stats_dtype(x.scalar_type()));
  at::Tensor mean = at::empty({N, C}, sopt), rstd = at::empty({N, C}, sopt);
  if (N * C == 0) return {out, mean, rstd};
  if (is_reduced(x)) {
    AT_DISPATCH_REDUCED_FLOATING_TYPES(x.scalar_type(), "restorekit::instance_norm_act", [&] {
      const scalar_t* xs = x.const_data_ptr<scalar_t>();
      scalar_t* os = out.mutable_data_ptr<scalar_t>();
      float* ms = mean.mutable_data_ptr<float>();
      float* rs = rstd.mutable_data_ptr<float>();
      for_each_plane(N * C, n, [&](int64_t p) {
        float *xf = scratch(0, n), *of = scratch(1, pn);
        widen(xs + p * n, xf, n);
        norm_act_plane(xf, of, ms + p, rs + p, H, W, pad, eps, static_cast<float>(slope));
        narrow(of, os + p * pn, pn);
      });
    });
    return {out, mean, rstd};
  }
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "restorekit::instance_norm_act", [&] {
    const scalar_t* xs = x.const_data_ptr<scalar_t>();
    scalar_t* os = out.mutable_data_ptr<scalar_t>();
    scalar_t* ms = mean.mutable_data_ptr<scalar_t>();
    scalar_t* rs = rstd.mutable_data_ptr<scalar_t>();
    for_each_plane(N * C, n, [&](int64_t p) {
      norm_act_plane(xs + p * n, os + p * pn, ms + p, rs + p, H, W, pad, eps,
                     static_cast<scalar_t>(slope));
    });
  });
  return {out, mean, rstd};
}

// dx of act(instance_norm(x)) padded by pad, for grad_out g (arguments already checked).
at::Tensor norm_act_backward(const at::Tensor& g_, const at::Tensor& x_, const at::Tensor& mean_,
                             const at::Tensor& rstd_, double slope, int64_t pad) {
  const at::Tensor g = g_.contiguous(), x = x_.contiguous();
  const at::Tensor mean = mean_.contiguous(), rstd = rstd_.contiguous();
  const int64_t P = x.size(0) * x.size(1), H = x.size(2), W = x.size(3);
  const int64_t gn = (H + 2 * pad) * (W + 2 * pad), xn = H * W;
  at::Tensor dx = at::empty_like(x, at::MemoryFormat::Contiguous);
  if (P == 0) return dx;
  if (is_reduced(x)) {
    AT_DISPATCH_REDUCED_FLOATING_TYPES(x.scalar_type(), "restorekit::instance_norm_act_backward",
                                       [&] {
      const scalar_t* gs = g.const_data_ptr<scalar_t>();
      const scalar_t* xs = x.const_data_ptr<scalar_t>();
      const float* ms = mean.const_data_ptr<float>();
      const float* rs = rstd.const_data_ptr<float>();
      scalar_t* ds = dx.mutable_data_ptr<scalar_t>();
      for_each_plane(P, xn, [&](int64_t p) {
        float *gf = scratch(0, gn), *xf = scratch(1, xn), *df = scratch(2, xn);
        widen(gs + p * gn, gf, gn);
        widen(xs + p * xn, xf, xn);
        norm_act_backward_plane(gf, xf, df, ms[p], rs[p], static_cast<float>(slope), H, W, pad);
        narrow(df, ds + p * xn, xn);
      });
    });
    return dx;
  }
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "restorekit::instance_norm_act_backward", [&] {
    const scalar_t* gs = g.const_data_ptr<scalar_t>();
    const scalar_t* xs = x.const_data_ptr<scalar_t>();
    const scalar_t* ms = mean.const_data_ptr<scalar_t>();
    const scalar_t* rs = rstd.const_data_ptr<scalar_t>();
    scalar_t* ds = dx.mutable_data_ptr<scalar_t>();
    for_each_plane(P, xn, [&](int64_t p) {
      norm_act_backward_plane(gs + p * gn, xs + p * xn, ds + p * xn, ms[p], rs[p],
                              static_cast<scalar_t>(slope), H, W, pad);
    });
  });
  return dx;
}

at::Tensor instance_norm_act_backward(const at::Tensor& g, const at::Tensor& x,
                                      const at::Tensor& mean, const at::Tensor& rstd,
                                      double slope, int64_t pad) {
  const char* op = "instance_norm_act_backward";
  check_input(x, op);
  check_slope(slope, op);
  check_pad(x, pad, op);
  check_grad_padded(g, x, pad, op);
  check_stats(x, mean, rstd, op);
  check_sizes(x, pad, op);
  const int64_t n = x.size(2) * x.size(3);
  check_memory(op, x, n, g.size(2) * g.size(3) + 2 * n, {&g, &x, &mean, &rstd});
  return norm_act_backward(g, x, mean, rstd, slope, pad);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> instance_norm_add_with_stats(
    const at::Tensor& x_, const at::Tensor& res_, double eps) {
  check_input(x_, "instance_norm_add");
  check_same(x_, res_, "instance_norm_add", "residual");
  check_eps(eps, "instance_norm_add");
  check_sizes(x_, 0, "instance_norm_add");
  const int64_t plane = x_.size(2) * x_.size(3);
  check_memory("instance_norm_add", x_, plane, 3 * plane, {&x_, &res_});
  const at::Tensor x = x_.contiguous(), res = res_.contiguous();
  const int64_t N = x.size(0), C = x.size(1), n = x.size(2) * x.size(3);
  at::Tensor out = at::empty_like(x, at::MemoryFormat::Contiguous);
  auto sopt = x.options().dtype(stats_dtype(x.scalar_type()));
  at::Tensor mean = at::empty({N, C}, sopt), rstd = at::empty({N, C}, sopt);
  if (N * C == 0) return {out, mean, rstd};
  if (is_reduced(x)) {
    AT_DISPATCH_REDUCED_FLOATING_TYPES(x.scalar_type(), "restorekit::instance_norm_add", [&] {
      const scalar_t* xs = x.const_data_ptr<scalar_t>();
      const scalar_t* rsd = res.const_data_ptr<scalar_t>();
      scalar_t* os = out.mutable_data_ptr<scalar_t>();
      float* ms = mean.mutable_data_ptr<float>();
      float* rs = rstd.mutable_data_ptr<float>();
      for_each_plane(N * C, n, [&](int64_t p) {
        float *xf = scratch(0, n), *rf = scratch(1, n), *of = scratch(2, n);
        widen(xs + p * n, xf, n);
        widen(rsd + p * n, rf, n);
        ina_plane(xf, rf, of, ms + p, rs + p, n, eps);
        narrow(of, os + p * n, n);
      });
    });
    return {out, mean, rstd};
  }
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "restorekit::instance_norm_add", [&] {
    const scalar_t* xs = x.const_data_ptr<scalar_t>();
    const scalar_t* rsd = res.const_data_ptr<scalar_t>();
    scalar_t* os = out.mutable_data_ptr<scalar_t>();
    scalar_t* ms = mean.mutable_data_ptr<scalar_t>();
    scalar_t* rs = rstd.mutable_data_ptr<scalar_t>();
    for_each_plane(N * C, n, [&](int64_t p) {
      ina_plane(xs + p * n, rsd + p * n, os + p * n, ms + p, rs + p, n, eps);
    });
  });
  return {out, mean, rstd};
}

// The residual's gradient is grad_out itself; x's is the act backward's with no activation
// (slope 1: ga = g) and no padding, as on CUDA.
at::Tensor instance_norm_add_backward(const at::Tensor& g, const at::Tensor& x,
                                      const at::Tensor& mean, const at::Tensor& rstd) {
  check_input(x, "instance_norm_add_backward");
  check_same(x, g, "instance_norm_add_backward", "grad_out");
  check_stats(x, mean, rstd, "instance_norm_add_backward");
  check_sizes(x, 0, "instance_norm_add_backward");
  const int64_t n = x.size(2) * x.size(3);
  check_memory("instance_norm_add_backward", x, n, 3 * n, {&g, &x, &mean, &rstd});
  return norm_act_backward(g, x, mean, rstd, 1.0, 0);
}

}  // namespace
}  // namespace cpu

TORCH_LIBRARY_IMPL(restorekit, CPU, m) {
  m.impl("reflection_pad", &cpu::reflection_pad);
  m.impl("reflection_pad_backward", &cpu::reflection_pad_backward);
  m.impl("reflection_pad_backward_add", &cpu::reflection_pad_backward_add);
  m.impl("instance_norm_act_with_stats", &cpu::instance_norm_act_with_stats);
  m.impl("instance_norm_act_backward", &cpu::instance_norm_act_backward);
  m.impl("instance_norm_add_with_stats", &cpu::instance_norm_add_with_stats);
  m.impl("instance_norm_add_backward", &cpu::instance_norm_add_backward);
}

}  // namespace restorekit
