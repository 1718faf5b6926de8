// The one place where the restorekit op schemas live.
//
// Public ops (what restorekit.ext calls):
//   reflection_pad, instance_norm_relu_pad, instance_norm_add
// The two normalising ops are thin composites over "*_with_stats" ops that also return the
// per-plane mean and 1/std, so that autograd can save them instead of recomputing them.
// Device kernels: cpu/ops_cpu.cpp and cuda/ops_cuda.cpp. Fake kernels and autograd formulas
// are registered from Python (restorekit/ext/_ops.py), except the autograd of the public
// instance_norm_relu_pad, a C++ autograd::Function here (no Python round trip per call; its
// CompositeExplicitAutograd kernel serves the fake/meta path through the with_stats op).
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include <tuple>

#include "common.h"

namespace restorekit {
namespace {

using Stats3 = std::tuple<at::Tensor, at::Tensor, at::Tensor>;

const c10::TypedOperatorHandle<Stats3(const at::Tensor&, double)>& inrp_with_stats_op() {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("restorekit::instance_norm_relu_pad_with_stats", "")
                       .typed<Stats3(const at::Tensor&, double)>();
  return op;
}

// Below autograd (and for the fake/meta path): the with_stats op, its first output.
at::Tensor instance_norm_relu_pad(const at::Tensor& x, double eps) {
  check_input(x, "instance_norm_relu_pad");
  check_eps(eps, "instance_norm_relu_pad");
  return std::get<0>(inrp_with_stats_op().call(x, eps));
}

// The public op's autograd in C++: saves x, mean and rstd and calls the backward op, without
// the Python autograd.Function round trip (and without materialising zero gradients for the
// statistics, which the public op does not return).
class InstanceNormReluPadFunction
    : public torch::autograd::Function<InstanceNormReluPadFunction> {
 public:
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x,
                            double eps) {
    at::AutoDispatchBelowADInplaceOrView guard;
    auto [out, mean, rstd] = inrp_with_stats_op().call(x, eps);
    ctx->save_for_backward({x, mean, rstd});
    return out;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    static auto op =
        c10::Dispatcher::singleton()
            .findSchemaOrThrow("restorekit::instance_norm_relu_pad_backward", "")
            .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                              const at::Tensor&)>();
    const auto saved = ctx->get_saved_variables();
    return {op.call(grads[0], saved[0], saved[1], saved[2]), at::Tensor()};
  }
};

at::Tensor instance_norm_relu_pad_autograd(const at::Tensor& x, double eps) {
  // Checked before the autograd Function sees x: a bad input raises here (under torch 2.11 a
  // 3-D input reaching Function::apply crashed the process).
  check_input(x, "instance_norm_relu_pad");
  check_eps(eps, "instance_norm_relu_pad");
  return InstanceNormReluPadFunction::apply(x, eps);
}

using BackwardFn = at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                               const at::Tensor&);

// The two normalising backward ops are not differentiated again: their autograd records a
// node whose own backward raises one clear error (a double backward, e.g. a gradient penalty
// through the generator, would otherwise silently treat them as constants).
template <const char* kName>
class OnceDifferentiable : public torch::autograd::Function<OnceDifferentiable<kName>> {
 public:
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& g,
                            const at::Tensor& x, const at::Tensor& mean,
                            const at::Tensor& rstd) {
    at::AutoDispatchBelowADInplaceOrView guard;
    static auto op = c10::Dispatcher::singleton()
                         .findSchemaOrThrow(kName, "")
                         .typed<BackwardFn>();
    return op.call(g, x, mean, rstd);
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    fail(kName,
                ": double backward through restorekit's fused instance-norm ops is not "
                "supported (create_graph=True, e.g. a gradient penalty); use plain PyTorch "
                "(RESTOREKIT_EXT=off, or --no-fused for pix2pixhd)");
    return {};
  }
};

constexpr char kInrpBackward[] = "restorekit::instance_norm_relu_pad_backward";
constexpr char kInaBackward[] = "restorekit::instance_norm_add_backward";

template <const char* kName>
at::Tensor once_differentiable(const at::Tensor& g, const at::Tensor& x, const at::Tensor& mean,
                               const at::Tensor& rstd) {
  return OnceDifferentiable<kName>::apply(g, x, mean, rstd);
}

at::Tensor instance_norm_add(const at::Tensor& x, const at::Tensor& residual, double eps) {
  check_input(x, "instance_norm_add");
  check_same(x, residual, "instance_norm_add", "residual");
  check_eps(eps, "instance_norm_add");
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

  // relu(instance_norm(x)), written reflection-padded by 1.
  m.def("instance_norm_relu_pad(Tensor x, float eps=1e-05) -> Tensor");
  // Same, plus per-plane mean and rstd, each (N, C).
  m.def(
      "instance_norm_relu_pad_with_stats(Tensor x, float eps=1e-05) -> "
      "(Tensor out, Tensor mean, Tensor rstd)");
  m.def(
      "instance_norm_relu_pad_backward(Tensor grad_out, Tensor x, Tensor mean, Tensor rstd) "
      "-> Tensor");

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
  m.impl("instance_norm_relu_pad", &instance_norm_relu_pad);
}

TORCH_LIBRARY_IMPL(restorekit, Autograd, m) {
  m.impl("instance_norm_relu_pad", &instance_norm_relu_pad_autograd);
  m.impl("instance_norm_relu_pad_backward", &once_differentiable<kInrpBackward>);
  m.impl("instance_norm_add_backward", &once_differentiable<kInaBackward>);
}

}  // namespace restorekit
