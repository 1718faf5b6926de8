// CUDA kernels of the restorekit ops. Only CUDA headers here (the torch glue is ops_cuda.cpp),
// so this file compiles with plain `nvcc -c` (scripts/check_nvcc.sh).
//
// Design. A plane (one (n, c) slice, n = H * W elements) is cut into tiles of
// threads * kItems elements. In a tile, thread t owns kItems / V "slots" of V consecutive
// elements, slot k starting at tile_start + (k * threads + t) * V: with V = 16 bytes / sizeof(T)
// (float 4, double 2, half/bfloat16 8) every load and unpadded store is one 16-byte access and
// a warp's accesses are contiguous. V = 1 when a pointer or the plane length is not 16-byte
// aligned (checked at launch; e.g. 25x38 and 50x75 planes), still coalesced. Every load of a
// tile is issued before any is used (no branch between them). half/bfloat16 are loaded and
// stored as such and accumulated in float; double accumulates in double.
//
// The normalising ops run one of two schemes, chosen per call by make_plan:
//  * one block per plane (planes >= 2 x SMs, or a plane of one tile): the block reduces its
//    plane tile by tile, then writes it. A one-tile plane stays in registers (one DRAM read);
//    a longer plane is re-read once, last tile first, from L2.
//  * split (planes < 2 x SMs and planes longer than a tile, e.g. N1 C64 200x300 or N1 C256
//    100x150 with 64 or 256 planes on 132 SMs): one block per plane would leave SMs idle, so
//    a plane is cut into segments of whole tiles, about 4 blocks per SM in all. Kernel 1 writes
//    one partial per (plane, segment); kernel 2, on the same grid in reverse order (the
//    segments kernel 1 read last are the likeliest still in L2), merges its plane's partials in
//    one warp in a fixed order (every block of a plane gets the same bits) and writes its
//    segment of the output; the block of segment 0 also writes mean and rstd.
// Forward statistics: each thread keeps (count, mean, M2) of x - shift over its elements (a
// tile's slots two-pass in registers, tiles merged with Chan et al.'s parallel update), blocks
// merge them the same way, and segments with the k-group form
// M2 = sum(M2_i) + sum(n_i (mean_i - mean)^2). shift = the plane's first element: a constant
// plane then has M2 exactly 0 (the eps == 0 rule below holds for any constant), and a large
// offset costs no precision.
// Padded outputs: a tile is staged in shared memory and then written one element per thread
// at a time (coalesced), each element to its padded position, then, for the few elements near
// a border, to the border positions that mirror it. Padded gradients are gathered the same way
// (no atomics): every element's own position, then the mirrored ones of border elements.
//
// Bytes moved per call, s = sizeof(T), n = H * W, np = (H + 2 pad) * (W + 2 pad), P planes
// (the minimum DRAM traffic, what a benchmark should divide by; a = sizeof(stats) = 4, or 8
// for double):
//   reflection_pad                 P * s * (n + np)           read x, write the padded plane
//   reflection_pad_backward        P * s * (np + n)           read grad_out, write grad_in
//   reflection_pad_backward_add    P * s * (np + 2 n)         also read other
//   instance_norm_act_with_stats   P * (s * (n + np) + 2 a)   read x, write out, mean, rstd
//   instance_norm_act_backward     P * (s * (np + 2 n) + 2 a) read grad_out, x, stats; write dx
//   instance_norm_add_with_stats   P * (3 s n + 2 a)          read x, residual; write out, stats
//   (instance_norm_add's backward is instance_norm_act_backward with slope 1, pad 0)
// (pad = 1 for the reflection_pad ops; per element of x that is s * (1 + np / n) etc.) On the
// split path (and one-block-per-plane planes longer than a tile) the second pass re-reads x
// (and grad_out) once more: from L2 for the benchmarked shapes (<= 16 MB per tensor), but
// above L2's size that is up to s * n (forward) or s * (np + n) (backward) more DRAM reads.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <initializer_list>
#include <type_traits>

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
template <typename T>
using Acc_t = typename Acc<T>::type;

__device__ __forceinline__ float to_acc(float v) { return v; }
__device__ __forceinline__ double to_acc(double v) { return v; }
__device__ __forceinline__ float to_acc(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_acc(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T>
__device__ __forceinline__ T from_acc(Acc_t<T> v);
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

// 1 / sqrt(v), correctly rounded steps (as the CPU's 1.0 / std::sqrt); once per plane.
__device__ __forceinline__ float inv_sqrt(float v) { return 1.0f / sqrtf(v); }
__device__ __forceinline__ double inv_sqrt(double v) { return 1.0 / sqrt(v); }

constexpr unsigned kFullMask = 0xffffffffu;

// Threads of a block that walks planes tile by tile (fewer for planes under one tile).
constexpr int kBlock = 256;
// The split scheme aims at this many blocks per SM, 256 threads each: one wave or a little
// more (2-3 resident per SM, kMinBlocks below), short blocks, 32-64 KB of loads in flight.
constexpr int kBlocksPerSM = 4;
// Blocks per SM the kernels are compiled for (__launch_bounds__): 3 (<= 85 registers) in
// general; 2 (<= 128) for the backward kernels, which hold a tile of x and one of the
// gathered gradient (2 x 16 values per thread) with all loads in flight: at 3 they spilled.
constexpr int kMinBlocks = 3;
constexpr int kMinBlocksBackward = 2;

template <typename T>
struct Tiling {
  static constexpr int kVec = 16 / static_cast<int>(sizeof(T));  // elements per 16 bytes
  // Elements per thread per tile (64 bytes of float/double, 32 of half): 16 registers.
  static constexpr int kItems = sizeof(T) == 8 ? 8 : 16;
};

// V elements of T, loaded and stored as one access (16 bytes for V = kVec).
template <typename T, int V>
struct alignas(sizeof(T) * V) Pack {
  T v[V];
};

template <typename T, int V>
__device__ __forceinline__ Pack<T, V> load_pack(const T* __restrict__ src) {
  return *reinterpret_cast<const Pack<T, V>*>(src);
}

template <typename T, int V>
__device__ __forceinline__ void store_pack(T* __restrict__ dst, const Pack<T, V>& pk) {
  *reinterpret_cast<Pack<T, V>*>(dst) = pk;
}

// An unpadded plane of H x W reflection-padded by pad (0 <= pad < H, W) on each side.
struct Geometry {
  int H, W, pad;
};

__host__ __device__ __forceinline__ int padded_numel(const Geometry& g) {
  return (g.H + 2 * g.pad) * (g.W + 2 * g.pad);
}

// A thread's slots in one tile: slot k holds the V in-plane elements from at(k). n % V == 0
// (checked at launch for V > 1) and tiles start at multiples of V, so a slot is either wholly
// in the plane or wholly past its end. Indices stay below n + one tile (check_plane_size).
struct Slots {
  int first;   // in-plane index of slot 0
  int stride;  // between slots: blockDim.x * V
  __device__ __forceinline__ int at(int k) const { return first + k * stride; }
  __device__ __forceinline__ bool in(int k, int n) const { return at(k) < n; }
};

template <int V>
__device__ __forceinline__ Slots tile_slots(int tile_start) {
  return {tile_start + static_cast<int>(threadIdx.x) * V, static_cast<int>(blockDim.x) * V};
}

// ------------------------------------------------------------------ reductions -------------

template <typename A>
__device__ __forceinline__ A warp_sum(A v) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_down_sync(kFullMask, v, offset);
  return v;  // in lane 0
}

// Sums a and b over the block (blockDim.x a multiple of 32); every thread gets the totals.
// At most once per kernel (no barrier guards its shared slots for reuse).
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
}

// Count, mean and sum of squared deviations from the mean (M2) of some values of x - shift.
template <typename A>
struct Moments {
  int count;
  A mean;
  A m2;
};

// a <- a and b together (Chan, Golub and LeVeque's pairwise update).
template <typename A>
__device__ __forceinline__ void merge(Moments<A>& a, const Moments<A>& b) {
  if (b.count == 0) return;
  if (a.count == 0) {
    a = b;
    return;
  }
  const int count = a.count + b.count;
  const A delta = b.mean - a.mean;
  const A wb = A(b.count) / A(count);
  a.mean += delta * wb;
  a.m2 += b.m2 + delta * delta * A(a.count) * wb;
  a.count = count;
}

template <typename A>
__device__ __forceinline__ Moments<A> warp_merge(Moments<A> m) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) {
    const Moments<A> other{__shfl_down_sync(kFullMask, m.count, offset),
                           __shfl_down_sync(kFullMask, m.mean, offset),
                           __shfl_down_sync(kFullMask, m.m2, offset)};
    merge(m, other);
  }
  return m;  // in lane 0
}

// The block's moments, merged in a fixed order; every thread gets them. At most once per
// kernel (no barrier guards its shared slots for reuse).
template <typename A>
__device__ __forceinline__ Moments<A> block_merge(Moments<A> m) {
  __shared__ int s_count[32];
  __shared__ A s_mean[32];
  __shared__ A s_m2[32];
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  const int nwarps = blockDim.x >> 5;
  m = warp_merge(m);
  if (lane == 0) {
    s_count[warp] = m.count;
    s_mean[warp] = m.mean;
    s_m2[warp] = m.m2;
  }
  __syncthreads();
  if (warp == 0) {
    Moments<A> w{0, A(0), A(0)};
    if (lane < nwarps) w = Moments<A>{s_count[lane], s_mean[lane], s_m2[lane]};
    w = warp_merge(w);
    if (lane == 0) {
      s_count[0] = w.count;
      s_mean[0] = w.mean;
      s_m2[0] = w.m2;
    }
  }
  __syncthreads();
  return Moments<A>{s_count[0], s_mean[0], s_m2[0]};
}

// Adds the thread's valid slots of a tile (x - shift) to acc: the tile's own mean and M2 are
// exact two-pass sums over the registers, then merged.
template <int V, typename A, int E>
__device__ __forceinline__ void accumulate(Moments<A>& acc, const A (&v)[E], Slots s, int n,
                                           A shift) {
  int count = 0;
  A sum = A(0);
#pragma unroll
  for (int k = 0; k < E / V; ++k) {
    if (s.in(k, n)) {
      count += V;
#pragma unroll
      for (int j = 0; j < V; ++j) sum += v[k * V + j] - shift;
    }
  }
  if (count == 0) return;
  const A mean = sum / A(count);
  A m2 = A(0);
#pragma unroll
  for (int k = 0; k < E / V; ++k) {
    if (s.in(k, n)) {
#pragma unroll
      for (int j = 0; j < V; ++j) {
        const A d = (v[k * V + j] - shift) - mean;
        m2 += d * d;
      }
    }
  }
  merge(acc, Moments<A>{count, mean, m2});
}

template <typename A>
struct PlaneStats {
  A mean;
  A rstd;
};

// m: the whole plane's moments of x - shift.
template <typename A>
__device__ __forceinline__ PlaneStats<A> finish(const Moments<A>& m, A shift, int n,
                                                double eps) {
  // Like PyTorch's InvStd: a constant plane with eps = 0 normalises to 0, not to NaN.
  const A rstd = (m.m2 == A(0) && eps == 0.0) ? A(0) : inv_sqrt(m.m2 / A(n) + A(eps));
  return {shift + m.mean, rstd};
}

// The split scheme's segments: tiles [seg * tiles_per_segment, min(.. + tiles_per_segment,
// tiles)) of a plane; every segment holds at least one tile.
struct Split {
  int tiles;
  int tiles_per_segment;
  int segments;
};

__device__ __forceinline__ int segment_count(int seg, int n, int64_t seg_len) {
  const int64_t begin = seg * seg_len, end = begin + seg_len;
  return static_cast<int>((end < n ? end : n) - begin);
}

// A plane's moments from its segments' (mean, M2), all of x - shift: the k-group form of
// Chan's update, mean = sum(n_i mean_i) / n, M2 = sum(M2_i + n_i (mean_i - mean)^2). One warp,
// fixed order; every thread gets the result.
template <typename A>
__device__ __forceinline__ Moments<A> merge_segments(const A* __restrict__ seg_mean,
                                                     const A* __restrict__ seg_m2, int n,
                                                     const Split& split, int64_t seg_len) {
  __shared__ A merged[2];
  if (threadIdx.x < 32) {
    const int lane = threadIdx.x;
    A total = A(0);
    for (int i = lane; i < split.segments; i += 32) {
      total += A(segment_count(i, n, seg_len)) * seg_mean[i];
    }
    const A mean = __shfl_sync(kFullMask, warp_sum(total), 0) / A(n);
    A m2 = A(0);
    for (int i = lane; i < split.segments; i += 32) {
      const A d = seg_mean[i] - mean;
      m2 += seg_m2[i] + A(segment_count(i, n, seg_len)) * d * d;
    }
    m2 = warp_sum(m2);
    if (lane == 0) {
      merged[0] = mean;
      merged[1] = m2;
    }
  }
  __syncthreads();
  return Moments<A>{n, merged[0], merged[1]};
}

// Sums of the segments' partial sums, in one warp in a fixed order; every thread gets them.
template <typename A>
__device__ __forceinline__ void sum_segments(const A* __restrict__ seg_a,
                                             const A* __restrict__ seg_b, int segments, A& a,
                                             A& b) {
  __shared__ A sums[2];
  if (threadIdx.x < 32) {
    A sa = A(0), sb = A(0);
    for (int i = threadIdx.x; i < segments; i += 32) {
      sa += seg_a[i];
      sb += seg_b[i];
    }
    sa = warp_sum(sa);
    sb = warp_sum(sb);
    if (threadIdx.x == 0) {
      sums[0] = sa;
      sums[1] = sb;
    }
  }
  __syncthreads();
  a = sums[0];
  b = sums[1];
}

// ------------------------------------------------------------------ tiles -------------------

// Loads are issued unconditionally, an empty slot reading the plane's first element (in bounds)
// and yielding 0: a branch around each load made the compiler consume every loaded value
// inside its branch, so that each load waited for the one before.
template <int V, typename T, typename A, int E>
__device__ __forceinline__ void load_tile(const T* __restrict__ plane, Slots s, int n,
                                          A (&v)[E]) {
#pragma unroll
  for (int k = 0; k < E / V; ++k) {
    const bool in = s.in(k, n);
    const Pack<T, V> pk = load_pack<T, V>(plane + (in ? s.at(k) : 0));
#pragma unroll
    for (int j = 0; j < V; ++j) v[k * V + j] = in ? to_acc(pk.v[j]) : A(0);
  }
}

template <int V, typename T, typename A, int E>
__device__ __forceinline__ void store_tile(T* __restrict__ plane, Slots s, int n,
                                           const A (&v)[E]) {
#pragma unroll
  for (int k = 0; k < E / V; ++k) {
    if (s.in(k, n)) {
      Pack<T, V> pk;
#pragma unroll
      for (int j = 0; j < V; ++j) pk.v[j] = from_acc<T>(v[k * V + j]);
      store_pack(plane + s.at(k), pk);
    }
  }
}

// (row, column) of an in-plane index: divided once, then moved forward without dividing.
struct Cursor {
  int r, c;
  __device__ __forceinline__ Cursor(int index, int W) : r(index / W), c(index - r * W) {}
  __device__ __forceinline__ void step(int W) {
    if (++c == W) {
      c = 0;
      ++r;
    }
  }
  // Forward by rows * W + cols elements, cols < W.
  __device__ __forceinline__ void jump(int rows, int cols, int W) {
    r += rows;
    c += cols;
    if (c >= W) {
      c -= W;
      ++r;
    }
  }
};

// The padded indices along one axis (n interior, padding p < n) that reflect onto interior
// index i; -1 where there is none. A padded index j maps to q = j - p, mirrored without
// repeating the edge: -q if q < 0, 2 (n - 1) - q if q >= n. Inverted:
//   i + p                always;
//   p - i                when 1 <= i <= p           (the leading border, j < p);
//   2 n - 2 + p - i      when n - 1 - p <= i <= n - 2 (the trailing border, j >= n + p).
// Both borders may mirror onto the same i (when 2 p >= n - 1).
__device__ __forceinline__ void reflections(int i, int n, int p, int (&m)[3]) {
  m[0] = i + p;
  m[1] = (i >= 1 && i <= p) ? p - i : -1;
  m[2] = (i >= n - 1 - p && i <= n - 2) ? 2 * n - 2 + p - i : -1;
}

// Whether interior index i has a border mirror (m[1] or m[2] above): one unsigned compare per
// range, [1, p] and [n - 1 - p, n - 2]; never for p = 0.
__device__ __forceinline__ bool mirrored(int i, int n, int p) {
  return static_cast<unsigned>(i - 1) < static_cast<unsigned>(p) ||
         static_cast<unsigned>(i - (n - 1 - p)) < static_cast<unsigned>(p);
}

// acc += the border positions of the padded gradient gp that mirror onto interior (r, c),
// in (row, column) order after the position itself, as the CPU sums them.
template <typename T, typename A>
__device__ __forceinline__ void add_mirrored(A& acc, const T* __restrict__ gp, int r, int c,
                                             const Geometry& geo) {
  int rows[3], cols[3];
  reflections(r, geo.H, geo.pad, rows);
  reflections(c, geo.W, geo.pad, cols);
  const int Wp = geo.W + 2 * geo.pad;
#pragma unroll
  for (int a = 0; a < 3; ++a) {
    if (rows[a] < 0) continue;
#pragma unroll
    for (int b = 0; b < 3; ++b) {
      if ((a | b) != 0 && cols[b] >= 0) acc += to_acc(gp[rows[a] * Wp + cols[b]]);
    }
  }
}

// Writes v to the border positions of the padded plane op that mirror onto interior (r, c).
template <typename T>
__device__ __forceinline__ void store_mirrored(T* __restrict__ op, T v, int r, int c,
                                               const Geometry& geo) {
  int rows[3], cols[3];
  reflections(r, geo.H, geo.pad, rows);
  reflections(c, geo.W, geo.pad, cols);
  const int Wp = geo.W + 2 * geo.pad;
#pragma unroll
  for (int a = 0; a < 3; ++a) {
    if (rows[a] < 0) continue;
#pragma unroll
    for (int b = 0; b < 3; ++b) {
      if ((a | b) != 0 && cols[b] >= 0) op[rows[a] * Wp + cols[b]] = v;
    }
  }
}

// The thread's slots of a tile of the incoming gradient, gathered from its padded plane gp:
// the sum of every padded position that mirrors onto each element (no atomics). When pad = 0
// it is loaded as is, with x's vector width (the launcher checks gp's alignment too).
// Two passes: first every element's own position, the loads issued back to back (no branch
// between them, as in load_tile); then the border positions of the few elements that have
// some (bit i of `border`: element i of the registers).
template <int V, typename T, typename A, int E>
__device__ __forceinline__ void load_grad_tile(const T* __restrict__ gp, Slots s, int n,
                                               const Geometry& geo, A (&g)[E]) {
  static_assert(E <= 32, "one bit per element");
  if (geo.pad == 0) {
    load_tile<V>(gp, s, n, g);
    return;
  }
  const int p = geo.pad, Wp = geo.W + 2 * p;
  const int jump_rows = s.stride / geo.W, jump_cols = s.stride - jump_rows * geo.W;
  unsigned border = 0;
  Cursor slot(s.first, geo.W);
#pragma unroll
  for (int k = 0; k < E / V; ++k) {
    Cursor e = slot;  // a slot's V elements may span rows (W < V)
    const bool in = s.in(k, n);
#pragma unroll
    for (int j = 0; j < V; ++j) {
      const int i = k * V + j;
      const A own = to_acc(gp[in ? (e.r + p) * Wp + e.c + p : 0]);
      g[i] = in ? own : A(0);
      if (in && (mirrored(e.r, geo.H, p) || mirrored(e.c, geo.W, p))) border |= 1u << i;
      e.step(geo.W);
    }
    slot.jump(jump_rows, jump_cols, geo.W);
  }
  // Positions divided afresh: a second cursor walk would be merged with the first by the
  // compiler, keeping every element's (row, column) live across the loads.
#pragma unroll
  for (int i = 0; i < E; ++i) {
    if (border & (1u << i)) {
      const Cursor e(s.at(i / V) + i % V, geo.W);
      add_mirrored(g[i], gp, e.r, e.c, geo);
    }
  }
}

// Writes the thread's slots y of the tile at tile_start into the padded plane op: staged in
// shared memory in plane order, then read back one element per thread at a time (element
// m * threads + t of the tile to thread t), so that consecutive threads write consecutive
// padded addresses (the padded rows are not 16-byte aligned). As in load_grad_tile, the
// border positions come in a second pass, after every element's own position. Contains
// __syncthreads: call from all threads of the block.
template <int V, typename T, typename A, int E>
__device__ __forceinline__ void write_padded_tile(T* __restrict__ op, Slots s, int tile_start,
                                                  int n, const Geometry& geo, const A (&y)[E]) {
  static_assert(E == Tiling<T>::kItems && E <= 32, "a tile is blockDim.x * kItems elements");
  __shared__ __align__(16) unsigned char stage_bytes[kBlock * E * sizeof(T)];
  T* stage = reinterpret_cast<T*>(stage_bytes);
#pragma unroll
  for (int k = 0; k < E / V; ++k) {
    if (s.in(k, n)) {
      Pack<T, V> pk;
#pragma unroll
      for (int j = 0; j < V; ++j) pk.v[j] = from_acc<T>(y[k * V + j]);
      store_pack(stage + (s.at(k) - tile_start), pk);
    }
  }
  __syncthreads();
  const int threads = blockDim.x, p = geo.pad, Wp = geo.W + 2 * p;
  const int len = min(n - tile_start, threads * E);
  const int jump_rows = threads / geo.W, jump_cols = threads - jump_rows * geo.W;
  T v[E];  // all shared loads first (unconditional, as in load_tile), then the stores
#pragma unroll
  for (int m = 0; m < E; ++m) {
    const int i = m * threads + static_cast<int>(threadIdx.x);
    v[m] = stage[i < len ? i : 0];
  }
  unsigned border = 0;
  Cursor pos(tile_start + static_cast<int>(threadIdx.x), geo.W);
#pragma unroll
  for (int m = 0; m < E; ++m) {
    if (m * threads + static_cast<int>(threadIdx.x) < len) {
      op[(pos.r + p) * Wp + pos.c + p] = v[m];
      if (mirrored(pos.r, geo.H, p) || mirrored(pos.c, geo.W, p)) border |= 1u << m;
    }
    pos.jump(jump_rows, jump_cols, geo.W);
  }
#pragma unroll
  for (int m = 0; m < E; ++m) {
    if (border & (1u << m)) {
      const Cursor e(tile_start + m * threads + static_cast<int>(threadIdx.x), geo.W);
      store_mirrored(op, v[m], e.r, e.c, geo);
    }
  }
  __syncthreads();  // the stage is refilled by the block's next tile
}

// ------------------------------------------------------------ forward outputs ----------------

// act(instance_norm(x)) reflection-padded by geo.pad; act(v) = v < 0 ? slope * v : v.
template <typename T, typename A>
struct ActOutput {
  T* out;
  A slope;
  Geometry geo;
};

// instance_norm(x) + residual.
template <typename T, typename A>
struct AddOutput {
  const T* residual;
  T* out;
};

// Writes the tile whose x values are v (overwritten) of plane p.
template <int V, typename T, typename A, int E>
__device__ __forceinline__ void write_tile(const ActOutput<T, A>& o, int64_t p, int n,
                                           int tile_start, Slots s, A mean, A rstd, A (&v)[E]) {
#pragma unroll
  for (int i = 0; i < E; ++i) {
    const A xh = (v[i] - mean) * rstd;
    v[i] = xh < A(0) ? o.slope * xh : xh;  // NaN stays NaN
  }
  if (o.geo.pad == 0) {
    store_tile<V>(o.out + p * n, s, n, v);
  } else {
    write_padded_tile<V>(o.out + p * padded_numel(o.geo), s, tile_start, n, o.geo, v);
  }
}

template <int V, typename T, typename A, int E>
__device__ __forceinline__ void write_tile(const AddOutput<T, A>& o, int64_t p, int n, int,
                                           Slots s, A mean, A rstd, A (&v)[E]) {
  A r[E];
  load_tile<V>(o.residual + p * n, s, n, r);
#pragma unroll
  for (int i = 0; i < E; ++i) v[i] = (v[i] - mean) * rstd + r[i];
  store_tile<V>(o.out + p * n, s, n, v);
}

// ------------------------------------------------------------------ kernels ------------------

template <int V, typename T>
__global__ void __launch_bounds__(kBlock, kMinBlocks)
    reflection_pad_kernel(const T* __restrict__ x, T* __restrict__ out, int64_t work, int tiles,
                          Geometry geo) {
  using A = Acc_t<T>;  // exact round trip for every T
  constexpr int E = Tiling<T>::kItems;
  const int n = geo.H * geo.W, tile = blockDim.x * E;
  // work = planes * tiles; the loop bound is the same for the whole block (it syncs).
  for (int64_t w = blockIdx.x; w < work; w += gridDim.x) {
    const int64_t p = w / tiles;
    const int tile_start = static_cast<int>(w - p * tiles) * tile;
    const Slots s = tile_slots<V>(tile_start);
    A v[E];
    load_tile<V>(x + p * n, s, n, v);
    write_padded_tile<V>(out + p * padded_numel(geo), s, tile_start, n, geo, v);
  }
}

// other == nullptr: the gather alone; else the gather plus other.
template <int V, typename T>
__global__ void __launch_bounds__(kBlock, kMinBlocksBackward)
    reflection_pad_backward_kernel(const T* __restrict__ g, const T* __restrict__ other,
                                   T* __restrict__ dx, int64_t work, int tiles, Geometry geo) {
  using A = Acc_t<T>;
  constexpr int E = Tiling<T>::kItems;
  const int n = geo.H * geo.W, tile = blockDim.x * E;
  for (int64_t w = blockIdx.x; w < work; w += gridDim.x) {
    const int64_t p = w / tiles;
    const Slots s = tile_slots<V>(static_cast<int>(w - p * tiles) * tile);
    A d[E];
    load_grad_tile<V>(g + p * padded_numel(geo), s, n, geo, d);
    if (other != nullptr) {
      A o[E];
      load_tile<V>(other + p * n, s, n, o);
#pragma unroll
      for (int i = 0; i < E; ++i) d[i] += o[i];
    }
    store_tile<V>(dx + p * n, s, n, d);
  }
}

// One block per plane: statistics, then the output.
template <int V, typename T, typename Out>
__global__ void __launch_bounds__(kBlock, kMinBlocks)
    norm_plane_kernel(const T* __restrict__ x, Out out, Acc_t<T>* __restrict__ mean,
                      Acc_t<T>* __restrict__ rstd, int n, int tiles, double eps) {
  using A = Acc_t<T>;
  constexpr int E = Tiling<T>::kItems;
  const int64_t p = blockIdx.x;
  const T* __restrict__ xp = x + p * n;
  const int tile = blockDim.x * E;
  const A shift = to_acc(xp[0]);
  A v[E];
  Moments<A> m{0, A(0), A(0)};
  for (int t = 0; t < tiles; ++t) {
    const Slots s = tile_slots<V>(t * tile);
    load_tile<V>(xp, s, n, v);
    accumulate<V>(m, v, s, n, shift);
  }
  const PlaneStats<A> st = finish(block_merge(m), shift, n, eps);
  if (threadIdx.x == 0) {
    mean[p] = st.mean;
    rstd[p] = st.rstd;
  }
  // The last tile is still in registers: write it first, then re-read the others (L2).
  for (int t = tiles - 1; t >= 0; --t) {
    const Slots s = tile_slots<V>(t * tile);
    if (t != tiles - 1) load_tile<V>(xp, s, n, v);
    write_tile<V>(out, p, n, t * tile, s, st.mean, st.rstd, v);
  }
}

// Split kernel 1: block b = p * segments + seg writes segment seg's moments of x - x[p, 0].
template <int V, typename T>
__global__ void __launch_bounds__(kBlock, kMinBlocks)
    norm_partial_kernel(const T* __restrict__ x, Acc_t<T>* __restrict__ seg_mean,
                        Acc_t<T>* __restrict__ seg_m2, int n, Split split) {
  using A = Acc_t<T>;
  constexpr int E = Tiling<T>::kItems;
  const int b = blockIdx.x;
  const int p = b / split.segments, seg = b - p * split.segments;
  const T* __restrict__ xp = x + static_cast<int64_t>(p) * n;
  const int tile = blockDim.x * E;
  const A shift = to_acc(xp[0]);
  const int t_end = min(split.tiles, (seg + 1) * split.tiles_per_segment);
  A v[E];
  Moments<A> m{0, A(0), A(0)};
  for (int t = seg * split.tiles_per_segment; t < t_end; ++t) {
    const Slots s = tile_slots<V>(t * tile);
    load_tile<V>(xp, s, n, v);
    accumulate<V>(m, v, s, n, shift);
  }
  m = block_merge(m);
  if (threadIdx.x == 0) {
    seg_mean[b] = m.mean;
    seg_m2[b] = m.m2;
  }
}

// Split kernel 2: the plane's statistics from its segments, then this segment's output.
template <int V, typename T, typename Out>
__global__ void __launch_bounds__(kBlock, kMinBlocks)
    norm_apply_kernel(const T* __restrict__ x, Out out, const Acc_t<T>* __restrict__ seg_mean,
                      const Acc_t<T>* __restrict__ seg_m2, Acc_t<T>* __restrict__ mean,
                      Acc_t<T>* __restrict__ rstd, int n, Split split, double eps) {
  using A = Acc_t<T>;
  constexpr int E = Tiling<T>::kItems;
  const int b = gridDim.x - 1 - blockIdx.x;  // reversed: kernel 1's last reads are in L2
  const int p = b / split.segments, seg = b - p * split.segments;
  const T* __restrict__ xp = x + static_cast<int64_t>(p) * n;
  const int tile = blockDim.x * E;
  const A shift = to_acc(xp[0]);
  const int64_t seg_len = static_cast<int64_t>(split.tiles_per_segment) * tile;
  const int first_seg = p * split.segments;
  const PlaneStats<A> st = finish(
      merge_segments(seg_mean + first_seg, seg_m2 + first_seg, n, split, seg_len), shift, n,
      eps);
  if (seg == 0 && threadIdx.x == 0) {
    mean[p] = st.mean;
    rstd[p] = st.rstd;
  }
  const int t_end = min(split.tiles, (seg + 1) * split.tiles_per_segment);
  for (int t = seg * split.tiles_per_segment; t < t_end; ++t) {
    const Slots s = tile_slots<V>(t * tile);
    A v[E];
    load_tile<V>(xp, s, n, v);
    write_tile<V>(out, p, n, t * tile, s, st.mean, st.rstd, v);
  }
}

// Backward of act(instance_norm(x)) padded by geo.pad: loads a tile of x and of the gathered
// gradient, the latter replaced by ga = (xhat > 0 ? g : slope * g).
template <int V, typename T, typename A, int E>
__device__ __forceinline__ void load_act_grad_tile(const T* __restrict__ gp,
                                                   const T* __restrict__ xp, Slots s, int n,
                                                   const Geometry& geo, A mean, A rstd, A slope,
                                                   A (&xv)[E], A (&ga)[E]) {
  load_tile<V>(xp, s, n, xv);
  load_grad_tile<V>(gp, s, n, geo, ga);
#pragma unroll
  for (int i = 0; i < E; ++i) {
    const A xh = (xv[i] - mean) * rstd;
    ga[i] = xh > A(0) ? ga[i] : slope * ga[i];
  }
}

// s1 += sum(ga), s2 += sum(ga * xhat) over the thread's valid slots.
template <int V, typename A, int E>
__device__ __forceinline__ void add_act_grad_sums(const A (&xv)[E], const A (&ga)[E], Slots s,
                                                  int n, A mean, A rstd, A& s1, A& s2) {
#pragma unroll
  for (int k = 0; k < E / V; ++k) {
    if (s.in(k, n)) {
#pragma unroll
      for (int j = 0; j < V; ++j) {
        const int i = k * V + j;
        s1 += ga[i];
        s2 += ga[i] * ((xv[i] - mean) * rstd);
      }
    }
  }
}

// dx = rstd * (ga - mean(ga) - xhat * mean(ga * xhat)), k1 and k2 those two means.
template <int V, typename T, typename A, int E>
__device__ __forceinline__ void store_dx_tile(T* __restrict__ dp, Slots s, int n, A mean,
                                              A rstd, A k1, A k2, const A (&xv)[E],
                                              A (&ga)[E]) {
#pragma unroll
  for (int i = 0; i < E; ++i) {
    const A xh = (xv[i] - mean) * rstd;
    ga[i] = rstd * (ga[i] - k1 - xh * k2);
  }
  store_tile<V>(dp, s, n, ga);
}

template <int V, typename T>
__global__ void __launch_bounds__(kBlock, kMinBlocksBackward)
    act_backward_plane_kernel(const T* __restrict__ g, const T* __restrict__ x,
                              const Acc_t<T>* __restrict__ mean,
                              const Acc_t<T>* __restrict__ rstd, T* __restrict__ dx,
                              Geometry geo, Acc_t<T> slope, int tiles) {
  using A = Acc_t<T>;
  constexpr int E = Tiling<T>::kItems;
  const int64_t p = blockIdx.x;
  const int n = geo.H * geo.W, tile = blockDim.x * E;
  const T* __restrict__ gp = g + p * padded_numel(geo);
  const T* __restrict__ xp = x + p * n;
  const A m = mean[p], r = rstd[p];
  A xv[E], ga[E];
  A s1 = A(0), s2 = A(0);
  for (int t = 0; t < tiles; ++t) {
    const Slots s = tile_slots<V>(t * tile);
    load_act_grad_tile<V>(gp, xp, s, n, geo, m, r, slope, xv, ga);
    add_act_grad_sums<V>(xv, ga, s, n, m, r, s1, s2);
  }
  block_sum2(s1, s2);
  const A k1 = s1 / A(n), k2 = s2 / A(n);
  // The last tile is still in registers: write it first, then re-read the others (L2).
  for (int t = tiles - 1; t >= 0; --t) {
    const Slots s = tile_slots<V>(t * tile);
    if (t != tiles - 1) load_act_grad_tile<V>(gp, xp, s, n, geo, m, r, slope, xv, ga);
    store_dx_tile<V>(dx + p * n, s, n, m, r, k1, k2, xv, ga);
  }
}

// Split kernel 1 of the backward: segment sums of ga and ga * xhat.
template <int V, typename T>
__global__ void __launch_bounds__(kBlock, kMinBlocksBackward)
    act_backward_partial_kernel(const T* __restrict__ g, const T* __restrict__ x,
                                const Acc_t<T>* __restrict__ mean,
                                const Acc_t<T>* __restrict__ rstd, Acc_t<T>* __restrict__ seg_s1,
                                Acc_t<T>* __restrict__ seg_s2, Geometry geo, Acc_t<T> slope,
                                Split split) {
  using A = Acc_t<T>;
  constexpr int E = Tiling<T>::kItems;
  const int b = blockIdx.x;
  const int p = b / split.segments, seg = b - p * split.segments;
  const int n = geo.H * geo.W, tile = blockDim.x * E;
  const T* __restrict__ gp = g + static_cast<int64_t>(p) * padded_numel(geo);
  const T* __restrict__ xp = x + static_cast<int64_t>(p) * n;
  const A m = mean[p], r = rstd[p];
  const int t_end = min(split.tiles, (seg + 1) * split.tiles_per_segment);
  A s1 = A(0), s2 = A(0);
  for (int t = seg * split.tiles_per_segment; t < t_end; ++t) {
    const Slots s = tile_slots<V>(t * tile);
    A xv[E], ga[E];
    load_act_grad_tile<V>(gp, xp, s, n, geo, m, r, slope, xv, ga);
    add_act_grad_sums<V>(xv, ga, s, n, m, r, s1, s2);
  }
  block_sum2(s1, s2);
  if (threadIdx.x == 0) {
    seg_s1[b] = s1;
    seg_s2[b] = s2;
  }
}

// Split kernel 2 of the backward: the plane's sums from its segments, then this segment's dx.
template <int V, typename T>
__global__ void __launch_bounds__(kBlock, kMinBlocksBackward)
    act_backward_apply_kernel(const T* __restrict__ g, const T* __restrict__ x,
                              const Acc_t<T>* __restrict__ mean,
                              const Acc_t<T>* __restrict__ rstd,
                              const Acc_t<T>* __restrict__ seg_s1,
                              const Acc_t<T>* __restrict__ seg_s2, T* __restrict__ dx,
                              Geometry geo, Acc_t<T> slope, Split split) {
  using A = Acc_t<T>;
  constexpr int E = Tiling<T>::kItems;
  const int b = gridDim.x - 1 - blockIdx.x;  // reversed: kernel 1's last reads are in L2
  const int p = b / split.segments, seg = b - p * split.segments;
  const int n = geo.H * geo.W, tile = blockDim.x * E;
  const T* __restrict__ gp = g + static_cast<int64_t>(p) * padded_numel(geo);
  const T* __restrict__ xp = x + static_cast<int64_t>(p) * n;
  T* __restrict__ dp = dx + static_cast<int64_t>(p) * n;
  const A m = mean[p], r = rstd[p];
  const int first_seg = p * split.segments;
  A s1, s2;
  sum_segments(seg_s1 + first_seg, seg_s2 + first_seg, split.segments, s1, s2);
  const A k1 = s1 / A(n), k2 = s2 / A(n);
  const int t_end = min(split.tiles, (seg + 1) * split.tiles_per_segment);
  for (int t = seg * split.tiles_per_segment; t < t_end; ++t) {
    const Slots s = tile_slots<V>(t * tile);
    A xv[E], ga[E];
    load_act_grad_tile<V>(gp, xp, s, n, geo, m, r, slope, xv, ga);
    store_dx_tile<V>(dp, s, n, m, r, k1, k2, xv, ga);
  }
}

// ---------------------------------------------------------------------- launch helpers -------

// SM count of the current device, queried once per device (allowed during graph capture);
// 1 if the query fails (a plan for a one-SM device: correct, only slower).
int sm_count() {
  constexpr int kMaxDevices = 64;
  static std::atomic<int> cached[kMaxDevices];  // 0: not queried yet
  int device = 0;
  if (cudaGetDevice(&device) != cudaSuccess) return 1;
  const bool cacheable = device >= 0 && device < kMaxDevices;
  if (cacheable) {
    const int count = cached[device].load(std::memory_order_relaxed);
    if (count > 0) return count;
  }
  int count = 0;
  if (cudaDeviceGetAttribute(&count, cudaDevAttrMultiProcessorCount, device) != cudaSuccess ||
      count < 1) {
    return 1;
  }
  if (cacheable) cached[device].store(count, std::memory_order_relaxed);
  return count;
}

int items_of(DType dtype) {
  static_assert(Tiling<__half>::kItems == Tiling<float>::kItems &&
                    Tiling<__nv_bfloat16>::kItems == Tiling<float>::kItems,
                "the plan of a dtype is made before the dtype's dispatch");
  return dtype == DType::Double ? Tiling<double>::kItems : Tiling<float>::kItems;
}

struct Plan {
  int threads;  // per block: a multiple of 32, at most kBlock
  int tiles;    // per plane, of threads * items elements
  Split split;  // split.segments == 1: one block per plane
};

// blocks_wanted = 0: never split (the reflection_pad ops, whose tiles are independent).
Plan make_plan(int items, int64_t planes, int64_t n, int64_t blocks_wanted) {
  Plan plan{};
  const int64_t threads_needed = (n + items - 1) / items;
  plan.threads = static_cast<int>(std::min<int64_t>(kBlock, (threads_needed + 31) / 32 * 32));
  const int64_t tile = static_cast<int64_t>(plan.threads) * items;
  plan.tiles = static_cast<int>((n + tile - 1) / tile);
  // Split only when one block per plane gives fewer than 2 blocks per SM (half the wanted
  // 4) and a plane is longer than a tile. Otherwise one kernel is better: a one-tile plane is
  // read from DRAM once (registers), a longer one is re-read by the same block soon after (L2),
  // and neither the second launch nor the partials are needed.
  int64_t segments = 1;
  if (plan.tiles > 1 && 2 * planes < blocks_wanted) {
    segments = std::min<int64_t>(plan.tiles, (blocks_wanted + planes - 1) / planes);
  }
  const int tps = static_cast<int>((plan.tiles + segments - 1) / segments);
  // Rounded so that every segment has a tile: ceil(tiles / tps) segments.
  plan.split = Split{plan.tiles, tps, (plan.tiles + tps - 1) / tps};
  return plan;
}

Plan norm_plan(DType dtype, int64_t planes, int64_t n) {
  return make_plan(items_of(dtype), planes, n, static_cast<int64_t>(kBlocksPerSM) * sm_count());
}

// The split scheme's partials: two AccT per (plane, segment).
int64_t workspace_elems(const Plan& plan, int64_t planes) {
  return plan.split.segments > 1 ? 2 * planes * plan.split.segments : 0;
}

// Blocks of a grid-stride launch over work items.
unsigned int grid_for(int64_t work) {
  return static_cast<unsigned int>(std::min<int64_t>(work, int64_t(1) << 20));
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

// Calls f(std::integral_constant<int, V>) with V = T's 16-byte vector width when n % V == 0
// and every pointer is 16-byte aligned (so is then every plane and every slot), else V = 1.
// nullptr counts as aligned.
template <typename T, typename F>
void with_vector_width(int64_t n, std::initializer_list<const void*> ptrs, F&& f) {
  constexpr int kVec = Tiling<T>::kVec;
  bool aligned = n % kVec == 0;
  for (const void* ptr : ptrs) aligned = aligned && reinterpret_cast<uintptr_t>(ptr) % 16 == 0;
  if (aligned) {
    f(std::integral_constant<int, kVec>{});
  } else {
    f(std::integral_constant<int, 1>{});
  }
}

template <int V, typename T, typename Out>
void launch_norm(const T* x, const Out& out, Acc_t<T>* mean, Acc_t<T>* rstd,
                 Acc_t<T>* workspace, int64_t planes, int n, const Plan& plan, double eps,
                 cudaStream_t stream) {
  const Split& split = plan.split;
  if (split.segments == 1) {
    norm_plane_kernel<V, T, Out><<<static_cast<unsigned int>(planes), plan.threads, 0, stream>>>(
        x, out, mean, rstd, n, plan.tiles, eps);
    return;
  }
  const int64_t blocks = planes * split.segments;
  Acc_t<T>* seg_mean = workspace;
  Acc_t<T>* seg_m2 = workspace + blocks;
  norm_partial_kernel<V, T><<<static_cast<unsigned int>(blocks), plan.threads, 0, stream>>>(
      x, seg_mean, seg_m2, n, split);
  norm_apply_kernel<V, T, Out><<<static_cast<unsigned int>(blocks), plan.threads, 0, stream>>>(
      x, out, seg_mean, seg_m2, mean, rstd, n, split, eps);
}


}  // namespace

int64_t instance_norm_workspace(DType dtype, int64_t planes, int64_t H, int64_t W) {
  return planes == 0 ? 0 : workspace_elems(norm_plan(dtype, planes, H * W), planes);
}

cudaError_t launch_reflection_pad(DType dtype, const void* x, void* out, int64_t planes,
                                  int64_t H, int64_t W, cudaStream_t stream) {
  if (planes == 0) return cudaSuccess;
  const Plan plan = make_plan(items_of(dtype), planes, H * W, 0);
  const Geometry geo{static_cast<int>(H), static_cast<int>(W), 1};
  const int64_t work = planes * plan.tiles;
  return dispatch(dtype, [&](auto tag) {
    using T = decltype(tag);
    with_vector_width<T>(H * W, {x}, [&](auto vec) {
      reflection_pad_kernel<decltype(vec)::value, T>
          <<<grid_for(work), plan.threads, 0, stream>>>(static_cast<const T*>(x),
                                                       static_cast<T*>(out), work, plan.tiles,
                                                       geo);
    });
  });
}

cudaError_t launch_reflection_pad_backward(DType dtype, const void* grad_out, void* grad_in,
                                           int64_t planes, int64_t H, int64_t W,
                                           cudaStream_t stream) {
  return launch_reflection_pad_backward_add(dtype, grad_out, nullptr, grad_in, planes, H, W,
                                            stream);
}

cudaError_t launch_reflection_pad_backward_add(DType dtype, const void* grad_out,
                                               const void* other, void* grad_in,
                                               int64_t planes, int64_t H, int64_t W,
                                               cudaStream_t stream) {
  if (planes == 0) return cudaSuccess;
  const Plan plan = make_plan(items_of(dtype), planes, H * W, 0);
  const Geometry geo{static_cast<int>(H), static_cast<int>(W), 1};
  const int64_t work = planes * plan.tiles;
  return dispatch(dtype, [&](auto tag) {
    using T = decltype(tag);
    with_vector_width<T>(H * W, {other, grad_in}, [&](auto vec) {
      reflection_pad_backward_kernel<decltype(vec)::value, T>
          <<<grid_for(work), plan.threads, 0, stream>>>(
              static_cast<const T*>(grad_out), static_cast<const T*>(other),
              static_cast<T*>(grad_in), work, plan.tiles, geo);
    });
  });
}

cudaError_t launch_instance_norm_act(DType dtype, const void* x, void* out, void* mean,
                                     void* rstd, void* workspace, int64_t workspace_size,
                                     int64_t planes, int64_t H, int64_t W, double eps,
                                     double negative_slope, int64_t pad, cudaStream_t stream) {
  if (planes == 0) return cudaSuccess;
  const Plan plan = norm_plan(dtype, planes, H * W);
  if (workspace_elems(plan, planes) > workspace_size) return cudaErrorInvalidValue;
  const Geometry geo{static_cast<int>(H), static_cast<int>(W), static_cast<int>(pad)};
  return dispatch(dtype, [&](auto tag) {
    using T = decltype(tag);
    using A = Acc_t<T>;
    const ActOutput<T, A> o{static_cast<T*>(out), static_cast<A>(negative_slope), geo};
    // A padded output is written element by element; an unpadded one like x is read.
    with_vector_width<T>(H * W, {x, pad == 0 ? out : nullptr}, [&](auto vec) {
      launch_norm<decltype(vec)::value>(static_cast<const T*>(x), o, static_cast<A*>(mean),
                                        static_cast<A*>(rstd), static_cast<A*>(workspace),
                                        planes, static_cast<int>(H * W), plan, eps, stream);
    });
  });
}

cudaError_t launch_instance_norm_act_backward(DType dtype, const void* grad_out, const void* x,
                                              const void* mean, const void* rstd,
                                              void* grad_in, void* workspace,
                                              int64_t workspace_size, int64_t planes, int64_t H,
                                              int64_t W, double negative_slope, int64_t pad,
                                              cudaStream_t stream) {
  if (planes == 0) return cudaSuccess;
  const Plan plan = norm_plan(dtype, planes, H * W);
  if (workspace_elems(plan, planes) > workspace_size) return cudaErrorInvalidValue;
  const Geometry geo{static_cast<int>(H), static_cast<int>(W), static_cast<int>(pad)};
  return dispatch(dtype, [&](auto tag) {
    using T = decltype(tag);
    using A = Acc_t<T>;
    const T* g = static_cast<const T*>(grad_out);
    const T* xs = static_cast<const T*>(x);
    const A* ms = static_cast<const A*>(mean);
    const A* rs = static_cast<const A*>(rstd);
    T* dx = static_cast<T*>(grad_in);
    const A slope = static_cast<A>(negative_slope);
    // A padded gradient is gathered element by element; an unpadded one is loaded like x.
    with_vector_width<T>(H * W, {x, grad_in, pad == 0 ? grad_out : nullptr}, [&](auto vec) {
      constexpr int V = decltype(vec)::value;
      const Split& split = plan.split;
      if (split.segments == 1) {
        act_backward_plane_kernel<V, T>
            <<<static_cast<unsigned int>(planes), plan.threads, 0, stream>>>(
                g, xs, ms, rs, dx, geo, slope, plan.tiles);
        return;
      }
      const int64_t blocks = planes * split.segments;
      A* seg_s1 = static_cast<A*>(workspace);
      A* seg_s2 = seg_s1 + blocks;
      act_backward_partial_kernel<V, T>
          <<<static_cast<unsigned int>(blocks), plan.threads, 0, stream>>>(
              g, xs, ms, rs, seg_s1, seg_s2, geo, slope, split);
      act_backward_apply_kernel<V, T>
          <<<static_cast<unsigned int>(blocks), plan.threads, 0, stream>>>(
              g, xs, ms, rs, seg_s1, seg_s2, dx, geo, slope, split);
    });
  });
}

cudaError_t launch_instance_norm_add(DType dtype, const void* x, const void* residual, void* out,
                                     void* mean, void* rstd, void* workspace,
                                     int64_t workspace_size, int64_t planes, int64_t H, int64_t W,
                                     double eps, cudaStream_t stream) {
  if (planes == 0) return cudaSuccess;
  const Plan plan = norm_plan(dtype, planes, H * W);
  if (workspace_elems(plan, planes) > workspace_size) return cudaErrorInvalidValue;
  return dispatch(dtype, [&](auto tag) {
    using T = decltype(tag);
    using A = Acc_t<T>;
    const AddOutput<T, A> o{static_cast<const T*>(residual), static_cast<T*>(out)};
    with_vector_width<T>(H * W, {x, residual, out}, [&](auto vec) {
      launch_norm<decltype(vec)::value>(static_cast<const T*>(x), o, static_cast<A*>(mean),
                                        static_cast<A*>(rstd), static_cast<A*>(workspace),
                                        planes, static_cast<int>(H * W), plan, eps, stream);
    });
  });
}

}  // namespace cuda
}  // namespace restorekit
