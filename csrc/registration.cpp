// The one place where the restorekit op schemas live.
//
// Public ops (what restorekit.ext calls):
//   reflection_pad, instance_norm_act, instance_norm_add
// The two normalising ops are thin composites over "*_with_stats" ops that also return the
// per-plane mean and 1/std, so that autograd can save them instead of recomputing them.
// Device kernels: cpu/ops_cpu.cpp and cuda/ops_cuda.cpp. Fake kernels and autograd formulas
// are registered from Python (restorekit/ext/_ops.py), except the autograd of the public
// instance_norm_act, a C++ autograd::Function here (no Python round trip per call; its
// CompositeExplicitAutograd kernel serves the fake/meta path through the with_stats op).
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include <tuple>

#include "common.h"

namespace restorekit {
namespace {

using Stats3 = std::tuple<at::Tensor, at::Tensor, at::Tensor>;

const c10::TypedOperatorHandle<Stats3(const at::Tensor&, double, double, int64_t)>&
ina_with_stats_op() {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("restorekit::instance_norm_act_with_stats", "")
                       .typed<Stats3(const at::Tensor&, double, double, int64_t)>();
  return op;
}

void check_act_args(const at::Tensor& x, double eps, double slope, int64_t pad) {
  check_input(x, "instance_norm_act");
  check_eps(eps, "instance_norm_act");
  check_slope(slope, "instance_norm_act");
  check_pad(x, pad, "instance_norm_act");
  check_sizes(x, pad, "instance_norm_act");
}

// Below autograd (and for the fake/meta path): the with_stats op, its first output.
at::Tensor instance_norm_act(const at::Tensor& x, double eps, double slope, int64_t pad) {
  check_act_args(x, eps, slope, pad);
  return std::get<0>(ina_with_stats_op().call(x, eps, slope, pad));
}

// The public op's autograd in C++: saves x, mean and rstd and calls the backward op, without
// the Python autograd.Function round trip (and without materialising zero gradients for the
// statistics, which the public op does not return).
class InstanceNormActFunction : public torch::autograd::Function<InstanceNormActFunction> {
 public:
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x,
                            double eps, double slope, int64_t pad) {
    at::AutoDispatchBelowADInplaceOrView guard;
    auto [out, mean, rstd] = ina_with_stats_op().call(x, eps, slope, pad);
    ctx->save_for_backward({x, mean, rstd});
    ctx->saved_data["slope"] = slope;
    ctx->saved_data["pad"] = pad;
    return out;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    static auto op = c10::Dispatcher::singleton()
                         .findSchemaOrThrow("restorekit::instance_norm_act_backward", "")
                         .typed<at::Tensor(const at::Tensor&, const at::Tensor&,
                                           const at::Tensor&, const at::Tensor&, double,
                                           int64_t)>();
    const auto saved = ctx->get_saved_variables();
    const double slope = ctx->saved_data["slope"].toDouble();
    const int64_t pad = ctx->saved_data["pad"].toInt();
    return {op.call(grads[0], saved[0], saved[1], saved[2], slope, pad), at::Tensor(),
            at::Tensor(), at::Tensor()};
  }
};

at::Tensor instance_norm_act_autograd(const at::Tensor& x, double eps, double slope,
                                      int64_t pad) {
  // Checked before the autograd Function sees x: a bad input raises here (under torch 2.11 a
  // 3-D input reaching Function::apply crashed the process).
  check_act_args(x, eps, slope, pad);
  return InstanceNormActFunction::apply(x, eps, slope, pad);
}

using AddBackwardFn = at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                  const at::Tensor&);
using ActBackwardFn = at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                  const at::Tensor&, double, int64_t);

// The two normalising backward ops are not differentiated again: their autograd records a
// node whose own backward raises one clear error (a double backward, e.g. a gradient penalty
// through the generator, would otherwise silently treat them as constants).
[[noreturn]] void fail_double_backward(const char* name) {
  fail(name,
       ": double backward through restorekit's fused instance-norm ops is not supported "
       "(create_graph=True, e.g. a gradient penalty); use plain PyTorch (RESTOREKIT_EXT=off, "
       "or --no-fused for pix2pixhd)");
}

class InstanceNormAddBackwardOnce
    : public torch::autograd::Function<InstanceNormAddBackwardOnce> {
 public:
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& g,
                            const at::Tensor& x, const at::Tensor& mean,
                            const at::Tensor& rstd) {
    at::AutoDispatchBelowADInplaceOrView guard;
    static auto op = c10::Dispatcher::singleton()
                         .findSchemaOrThrow("restorekit::instance_norm_add_backward", "")
                         .typed<AddBackwardFn>();
    return op.call(g, x, mean, rstd);
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext*,
                                                 torch::autograd::variable_list) {
    fail_double_backward("restorekit::instance_norm_add_backward");
  }
};

class InstanceNormActBackwardOnce
    : public torch::autograd::Function<InstanceNormActBackwardOnce> {
 public:
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& g,
                            const at::Tensor& x, const at::Tensor& mean, const at::Tensor& rstd,
                            double slope, int64_t pad) {
    at::AutoDispatchBelowADInplaceOrView guard;
    static auto op = c10::Dispatcher::singleton()
                         .findSchemaOrThrow("restorekit::instance_norm_act_backward", "")
                         .typed<ActBackwardFn>();
    return op.call(g, x, mean, rstd, slope, pad);
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext*,
                                                 torch::autograd::variable_list) {
    fail_double_backward("restorekit::instance_norm_act_backward");
  }
};

at::Tensor instance_norm_add_backward_once(const at::Tensor& g, const at::Tensor& x,
                                           const at::Tensor& mean, const at::Tensor& rstd) {
  return InstanceNormAddBackwardOnce::apply(g, x, mean, rstd);
}

at::Tensor instance_norm_act_backward_once(const at::Tensor& g, const at::Tensor& x,
                                           const at::Tensor& mean, const at::Tensor& rstd,
                                           double slope, int64_t pad) {
  return InstanceNormActBackwardOnce::apply(g, x, mean, rstd, slope, pad);
}

at::Tensor instance_norm_add(const at::Tensor& x, const at::Tensor& residual, double eps) {
  check_input(x, "instance_norm_add");
  check_same(x, residual, "instance_norm_add", "residual");
  check_eps(eps, "instance_norm_add");
  check_sizes(x, 0, "instance_norm_add");
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("restorekit::instance_norm_add_with_stats", "")
                       .typed<Stats3(const at::Tensor&, const at::Tensor&, double)>();
  return std::get<0>(op.call(x, residual, eps));
}

}  // namespace

TORCH_LIBRARY(restorekit, m) {
  // Reflection padding by 1 on H and W: (N, C, H, W) -> (N, C, H+2, W+2).
  m.def("reflection_pad(Tensor x) -> Tensor");
  // Gathers the reflected border back into the interior: (N, C, H+2, W+2) -> (N, C, H, W).
  m.def("reflection_pad_backward(Tensor grad_out) -> Tensor");
  // reflection_pad_backward(grad_out) + other in one pass (a residual block's input gradient).
  m.def("reflection_pad_backward_add(Tensor grad_out, Tensor other) -> Tensor");

  // act(instance_norm(x)), written reflection-padded by `pad` on H and W (0 <= pad < H, W),
  // where act(v) = v >= 0 ? v : negative_slope * v: negative_slope 0 is ReLU, 1 is no
  // activation, anything else LeakyReLU.
  m.def(
      "instance_norm_act(Tensor x, float eps=1e-05, float negative_slope=0.0, int pad=0) "
      "-> Tensor");
  // Same, plus per-plane mean and rstd, each (N, C).
  m.def(
      "instance_norm_act_with_stats(Tensor x, float eps=1e-05, float negative_slope=0.0, "
      "int pad=0) -> (Tensor out, Tensor mean, Tensor rstd)");
  m.def(
      "instance_norm_act_backward(Tensor grad_out, Tensor x, Tensor mean, Tensor rstd, "
      "float negative_slope=0.0, int pad=0) -> Tensor");

  // instance_norm(x) + residual.
  m.def("instance_norm_add(Tensor x, Tensor residual, float eps=1e-05) -> Tensor");
  m.def(
      "instance_norm_add_with_stats(Tensor x, Tensor residual, float eps=1e-05) -> "
      "(Tensor out, Tensor mean, Tensor rstd)");
  // Gradient with respect to x (the residual's gradient is grad_out itself).
  m.def(
      "instance_norm_add_backward(Tensor grad_out, Tensor x, Tensor mean, Tensor rstd) "
      "-> Tensor");
}

TORCH_LIBRARY_IMPL(restorekit, CompositeImplicitAutograd, m) {
  m.impl("instance_norm_add", &instance_norm_add);
}

TORCH_LIBRARY_IMPL(restorekit, CompositeExplicitAutograd, m) {
  m.impl("instance_norm_act", &instance_norm_act);
}

TORCH_LIBRARY_IMPL(restorekit, Autograd, m) {
  m.impl("instance_norm_act", &instance_norm_act_autograd);
  m.impl("instance_norm_act_backward", &instance_norm_act_backward_once);
  m.impl("instance_norm_add_backward", &instance_norm_add_backward_once);
}

}  // namespace restorekit
