// Runs the CUDA kernels of csrc/cuda/kernels.cu, emulated on the CPU
// (emulate.py, cuda_fake.h), against a float64 reference: every launcher, every dtype, pads
// up to H - 1, one-block and split paths (fake SM counts), misaligned pointers, constant and
// NaN planes. Usage: check_kernels [which]: 0 all, 1 float, 2 double, 3 half, 4 bfloat16,
// 5 constant and NaN planes, 6 [seed] 400 random cases. Exit status 1 on any failure.
#include "kernels_emu.cpp"
#include <cstdio>
#include <random>
#include <string>

using namespace restorekit::cuda;

template <typename T> double to_d(T v) { return double(v); }
template <> double to_d(__half v) { return __half2float(v); }
template <> double to_d(__nv_bfloat16 v) { return __bfloat162float(v); }
template <typename T> T from_d(double v) { return T(v); }
template <> __half from_d(double v) { return __float2half(float(v)); }
template <> __nv_bfloat16 from_d(double v) { return __float2bfloat16(float(v)); }
template <typename T> constexpr DType dt();
template <> constexpr DType dt<float>() { return DType::Float; }
template <> constexpr DType dt<double>() { return DType::Double; }
template <> constexpr DType dt<__half>() { return DType::Half; }
template <> constexpr DType dt<__nv_bfloat16>() { return DType::BFloat16; }
template <typename T> double tol() { return sizeof(T) == 8 ? 1e-10 : sizeof(T) == 4 ? 2e-4 : 3e-2; }

int refl(int j, int n, int p) { int q = j - p; return q < 0 ? -q : (q >= n ? 2 * (n - 1) - q : q); }

// Buffer with an element offset from a 256-aligned base (offset 1 breaks 16-byte alignment).
template <typename T> struct Buf {
  void* raw; T* p;
  Buf(size_t n, int off = 0) {
    if (posix_memalign(&raw, 256, (n + off) * sizeof(T))) abort();
    p = reinterpret_cast<T*>(raw) + off;
    memset(p, 0xcd, n * sizeof(T));  // garbage
  }
  ~Buf() { free(raw); }
  Buf(const Buf&) = delete;
};

static int failures = 0;
bool report(const std::string& what, double err, double tolv) {
  if (!(err <= tolv)) { printf("FAIL %-70s err %.3g tol %.3g\n", what.c_str(), err, tolv); ++failures; return false; }
  return true;
}

template <typename A> struct RefStats { std::vector<double> mean, rstd; };

template <typename T>
void test_case(int planes, int H, int W, int pad, double slope, double eps, int device, int off, int kind, unsigned seed) {
  using A = typename Acc<T>::type;
  g_fake_device = device;
  std::mt19937 rng(seed);
  std::normal_distribution<double> nd(0.0, 1.0);
  const int n = H * W, Hp = H + 2 * pad, Wp = W + 2 * pad, np = Hp * Wp;
  Buf<T> x(size_t(planes) * n, off), res(size_t(planes) * n, off), gpad(size_t(planes) * np, off),
      gun(size_t(planes) * n, off);
  for (int p = 0; p < planes; ++p) {
    const double offset = (p % 3 == 1) ? 50.0 : 0.0, scale = (p % 4 == 2) ? 0.01 : 1.5;
    for (int i = 0; i < n; ++i) {
      double v = offset + scale * nd(rng);
      if (kind == 1 && p % 2 == 0) v = 0.1;        // constant plane
      if (kind == 2 && p == 0 && i == n / 2) v = NAN;
      x.p[size_t(p) * n + i] = from_d<T>(v);
    }
  }
  for (size_t i = 0; i < size_t(planes) * n; ++i) { res.p[i] = from_d<T>(nd(rng)); gun.p[i] = from_d<T>(nd(rng)); }
  for (size_t i = 0; i < size_t(planes) * np; ++i) gpad.p[i] = from_d<T>(nd(rng));
  const std::string tag = std::string(sizeof(T) == 8 ? "f64" : sizeof(T) == 4 ? "f32" : dt<T>() == DType::Half ? "f16" : "bf16") +
      " P" + std::to_string(planes) + " " + std::to_string(H) + "x" + std::to_string(W) + " pad" + std::to_string(pad) +
      " slope" + std::to_string(slope) + " eps" + std::to_string(eps) + " sms" + std::to_string(g_fake_sms[device]) +
      " off" + std::to_string(off) + " kind" + std::to_string(kind);
  // Reference statistics in double from the stored inputs.
  std::vector<double> rm(planes), rr(planes);
  for (int p = 0; p < planes; ++p) {
    // Shifted by the first element, so that a constant plane has q == 0 exactly.
    const double x0 = to_d(x.p[size_t(p) * n]);
    double s = 0; for (int i = 0; i < n; ++i) s += to_d(x.p[size_t(p) * n + i]) - x0;
    const double m = s / n; double q = 0;
    for (int i = 0; i < n; ++i) { double d = (to_d(x.p[size_t(p) * n + i]) - x0) - m; q += d * d; }
    rm[p] = x0 + m; rr[p] = (q == 0 && eps == 0) ? 0 : 1 / std::sqrt(q / n + eps);
  }
  const int64_t ws_n = instance_norm_workspace(dt<T>(), planes, H, W);
  Buf<A> ws(std::max<int64_t>(ws_n, 1)), mean(planes), rstd(planes);
  long l0 = g_launches;
  // ---- instance_norm_act forward
  {
    Buf<T> out(size_t(planes) * np, off);
    int rc = launch_instance_norm_act(dt<T>(), x.p, out.p, mean.p, rstd.p, ws_n ? ws.p : nullptr, ws_n, planes, H, W, eps, slope, pad, nullptr);
    report(tag + " act rc", rc, 0);
    double err = 0, serr = 0;
    for (int p = 0; p < planes; ++p) {
      const bool nanplane = kind == 2 && p == 0;
      if (nanplane) {
        for (int i = 0; i < np; ++i) if (!std::isnan(to_d(out.p[size_t(p) * np + i]))) err = 1e9;
        continue;
      }
      if (kind == 1 && p % 2 == 0 && eps == 0.0) {
        if (rstd.p[p] != 0) { printf("constant plane rstd %g\n", double(rstd.p[p])); err = 1e9; }
        for (int i = 0; i < np; ++i) if (to_d(out.p[size_t(p) * np + i]) != 0) err = 1e9;
        if (mean.p[p] != A(to_d(x.p[size_t(p) * n]))) err = 1e9;
        continue;
      }
      serr = std::max(serr, std::abs(mean.p[p] - rm[p]) / (1 + std::abs(rm[p])));
      serr = std::max(serr, std::abs(rstd.p[p] - rr[p]) / (1 + std::abs(rr[p])));
      for (int i = 0; i < Hp; ++i) for (int j = 0; j < Wp; ++j) {
        const double xv = to_d(x.p[size_t(p) * n + refl(i, H, pad) * W + refl(j, W, pad)]);
        const double xh = (xv - rm[p]) * rr[p];
        const double y = xh < 0 ? slope * xh : xh;
        err = std::max(err, std::abs(to_d(out.p[size_t(p) * np + i * Wp + j]) - y) / (1 + std::abs(y)));
      }
    }
    report(tag + " act out", err, tol<T>() * (sizeof(T) == 4 ? 5 : 1));
    report(tag + " act stats", serr, tol<T>() * (sizeof(T) < 4 ? 0.01 : 1));
  }
  // ---- instance_norm_act backward (with the reference statistics as saved stats)
  for (int p = 0; p < planes; ++p) { mean.p[p] = A(rm[p]); rstd.p[p] = A(rr[p]); }
  {
    Buf<T> dx(size_t(planes) * n, off);
    const T* g = pad == 0 ? gun.p : gpad.p;
    int rc = launch_instance_norm_act_backward(dt<T>(), g, x.p, mean.p, rstd.p, dx.p, ws_n ? ws.p : nullptr, ws_n, planes, H, W, slope, pad, nullptr);
    report(tag + " actbw rc", rc, 0);
    double err = 0;
    for (int p = 0; p < planes; ++p) {
      if (kind == 2 && p == 0) continue;
      std::vector<double> G(n, 0.0);
      for (int i = 0; i < Hp; ++i) for (int j = 0; j < Wp; ++j)
        G[refl(i, H, pad) * W + refl(j, W, pad)] += to_d(g[size_t(p) * np + i * Wp + j]);
      const double m = mean.p[p], r = rstd.p[p];
      std::vector<double> ga(n), xh(n); double s1 = 0, s2 = 0, gmax = 0;
      for (int i = 0; i < n; ++i) {
        xh[i] = (to_d(x.p[size_t(p) * n + i]) - m) * r;
        ga[i] = xh[i] > 0 ? G[i] : slope * G[i];
        s1 += ga[i]; s2 += ga[i] * xh[i]; gmax = std::max(gmax, std::abs(ga[i]));
      }
      for (int i = 0; i < n; ++i) {
        const double d = r * (ga[i] - s1 / n - xh[i] * s2 / n);
        err = std::max(err, std::abs(to_d(dx.p[size_t(p) * n + i]) - d) / (1 + r * gmax));
      }
    }
    report(tag + " act backward", err, tol<T>() * (sizeof(T) == 4 ? 5 : 1));
  }
  // ---- instance_norm_add forward and backward
  if (pad == 0 && slope == 0.0) {
    Buf<T> out(size_t(planes) * n, off);
    int rc = launch_instance_norm_add(dt<T>(), x.p, res.p, out.p, mean.p, rstd.p, ws_n ? ws.p : nullptr, ws_n, planes, H, W, eps, nullptr);
    report(tag + " add rc", rc, 0);
    double err = 0;
    for (int p = 0; p < planes; ++p) {
      if (kind == 2 && p == 0) continue;
      for (int i = 0; i < n; ++i) {
        const double y = (to_d(x.p[size_t(p) * n + i]) - rm[p]) * rr[p] + to_d(res.p[size_t(p) * n + i]);
        err = std::max(err, std::abs(to_d(out.p[size_t(p) * n + i]) - y) / (1 + std::abs(y)));
      }
    }
    report(tag + " add out", err, tol<T>() * (sizeof(T) == 4 ? 5 : 1));
    for (int p = 0; p < planes; ++p) { mean.p[p] = A(rm[p]); rstd.p[p] = A(rr[p]); }
    Buf<T> dx(size_t(planes) * n, off);
    rc = launch_instance_norm_act_backward(dt<T>(), gun.p, x.p, mean.p, rstd.p, dx.p, ws_n ? ws.p : nullptr, ws_n, planes, H, W, 1.0, 0, nullptr);  // the add op's backward
    report(tag + " addbw rc", rc, 0);
    err = 0;
    for (int p = 0; p < planes; ++p) {
      if (kind == 2 && p == 0) continue;
      const double m = mean.p[p], r = rstd.p[p]; double s1 = 0, s2 = 0, gmax = 0;
      for (int i = 0; i < n; ++i) { double g = to_d(gun.p[size_t(p) * n + i]); s1 += g; s2 += g * (to_d(x.p[size_t(p) * n + i]) - m) * r; gmax = std::max(gmax, std::abs(g)); }
      for (int i = 0; i < n; ++i) {
        double xh = (to_d(x.p[size_t(p) * n + i]) - m) * r;
        double d = r * (to_d(gun.p[size_t(p) * n + i]) - s1 / n - xh * s2 / n);
        err = std::max(err, std::abs(to_d(dx.p[size_t(p) * n + i]) - d) / (1 + r * gmax));
      }
    }
    report(tag + " add backward", err, tol<T>() * (sizeof(T) == 4 ? 5 : 1));
  }
  // ---- reflection_pad ops (pad 1)
  if (pad == 1 && kind == 0) {
    Buf<T> out(size_t(planes) * np, off);
    launch_reflection_pad(dt<T>(), x.p, out.p, planes, H, W, nullptr);
    double err = 0;
    for (int p = 0; p < planes; ++p) for (int i = 0; i < Hp; ++i) for (int j = 0; j < Wp; ++j)
      err = std::max(err, std::abs(to_d(out.p[size_t(p) * np + i * Wp + j]) - to_d(x.p[size_t(p) * n + refl(i, H, 1) * W + refl(j, W, 1)])));
    report(tag + " pad", err, 0);
    for (int with_other = 0; with_other < 2; ++with_other) {
      Buf<T> dx(size_t(planes) * n, off);
      if (with_other) launch_reflection_pad_backward_add(dt<T>(), gpad.p, res.p, dx.p, planes, H, W, nullptr);
      else launch_reflection_pad_backward(dt<T>(), gpad.p, dx.p, planes, H, W, nullptr);
      err = 0;
      for (int p = 0; p < planes; ++p) {
        std::vector<double> G(n, 0.0);
        for (int i = 0; i < Hp; ++i) for (int j = 0; j < Wp; ++j) G[refl(i, H, 1) * W + refl(j, W, 1)] += to_d(gpad.p[size_t(p) * np + i * Wp + j]);
        for (int i = 0; i < n; ++i) {
          double want = G[i] + (with_other ? to_d(res.p[size_t(p) * n + i]) : 0);
          err = std::max(err, std::abs(to_d(dx.p[size_t(p) * n + i]) - want) / (1 + std::abs(want)));
        }
      }
      report(tag + (with_other ? " pad backward add" : " pad backward"), err, tol<T>());
    }
  }
  // Plan summary
  const Plan plan = norm_plan(dt<T>(), planes, int64_t(H) * W);
  printf("ok? %-80s threads %3d tiles %3d segs %3d tps %3d launches %ld\n", tag.c_str(), plan.threads, plan.tiles, plan.split.segments, plan.split.tiles_per_segment, g_launches - l0);
  fflush(stdout);
}

int main(int argc, char** argv) {
  const int which = argc > 1 ? atoi(argv[1]) : 0;
  struct S { int planes, H, W, pad; };
  std::vector<S> shapes = {
      {3, 1, 1, 0}, {2, 1, 7, 0}, {2, 5, 1, 0}, {4, 2, 2, 1}, {3, 3, 3, 2}, {2, 3, 5, 2}, {2, 5, 7, 4},
      {3, 8, 8, 3}, {2, 2, 9, 1}, {2, 9, 2, 1}, {5, 25, 38, 1}, {3, 64, 64, 1}, {2, 70, 70, 1},
      {3, 70, 70, 0}, {3, 100, 150, 1}, {2, 67, 93, 5}, {1, 200, 300, 1}, {2, 129, 64, 2}, {2, 3, 2000, 1},
  };
  unsigned seed = 1;
  for (const S& s : shapes) {
    for (int device : {0, 1, 2}) {
      for (int off : {0, 1}) {
        const double slope = (seed % 3 == 0) ? 0.0 : (seed % 3 == 1 ? 0.2 : 1.0);
        const double eps = (seed % 5 == 0) ? 0.0 : 1e-5;
        if (which == 0 || which == 1) test_case<float>(s.planes, s.H, s.W, s.pad, slope, eps, device, off, 0, seed++);
        if (which == 0 || which == 2) test_case<double>(s.planes, s.H, s.W, s.pad, 0.0, 1e-5, device, off, 0, seed++);
        if (which == 0 || which == 3) test_case<__half>(s.planes, s.H, s.W, s.pad, 0.2, 1e-5, device, off, 0, seed++);
        if (which == 0 || which == 4) test_case<__nv_bfloat16>(s.planes, s.H, s.W, s.pad, 0.0, 1e-5, device, off, 0, seed++);
        // constant planes with eps = 0, NaN plane
        if (which == 0 || which == 5) {
          test_case<float>(s.planes, s.H, s.W, s.pad, 0.0, 0.0, device, off, 1, seed++);
          test_case<float>(s.planes, s.H, s.W, s.pad, 0.0, 1e-5, device, off, 2, seed++);
        }
      }
    }
  }
  if (which == 6) {
    std::mt19937 rng(argc > 2 ? atoi(argv[2]) : 12345);
    for (int it = 0; it < 400; ++it) {
      const int H = 1 + rng() % (rng() % 4 == 0 ? 150 : 12), W = 1 + rng() % (rng() % 4 == 0 ? 150 : 12);
      const int pad = rng() % std::min(H, W), planes = 1 + rng() % 5, device = rng() % 8, off = rng() % 3;
      const double slopes[] = {0.0, 1.0, 0.2, -0.5};
      const double slope = slopes[rng() % 4], eps = rng() % 3 == 0 ? 0.0 : 1e-3;
      const int kind = rng() % 3;
      switch (rng() % 4) {
        case 0: test_case<float>(planes, H, W, pad, slope, eps, device, off, kind, it); break;
        case 1: test_case<double>(planes, H, W, pad, slope, eps, device, off, kind, it); break;
        case 2: test_case<__half>(planes, H, W, pad, slope, eps, device, off, kind == 1 ? 0 : kind, it); break;
        case 3: test_case<__nv_bfloat16>(planes, H, W, pad, slope, eps, device, off, kind == 1 ? 0 : kind, it); break;
      }
    }
  }
  printf("failures: %d\n", failures);
  return failures != 0;
}
