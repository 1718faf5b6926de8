"""The fused instance-norm op as a layer, and the pass that puts it into a network.

:func:`fuse_instance_norms` finds every ``InstanceNorm2d(affine=False) -> ReLU | LeakyReLU
[-> ReflectionPad2d]`` run (or a lone norm) inside a network's ``nn.Sequential`` containers
and puts one :class:`InstanceNormAct` in the norm's place and ``nn.Identity`` in the places of
the activation and the padding. Indices do not move and none of these layers holds a
parameter or buffer, so the network's ``state_dict`` keys and values stay the same (a
checkpoint of the plain network loads into the fused one and back).
"""

from __future__ import annotations

import torch
from torch import nn

from restorekit import ext


class InstanceNormAct(nn.Module):
    """``InstanceNorm2d(affine=False) -> activation -> ReflectionPad2d(pad)`` in one op.

    The activation is ``v if v >= 0 else negative_slope * v`` (0: ReLU, 1: none, else
    LeakyReLU). ``replaced`` keeps the plain layers it stands for (not as submodules), so
    that :func:`fuse_instance_norms` can put them back.
    """

    def __init__(
        self,
        eps: float = 1e-5,
        negative_slope: float = 0.0,
        pad: int = 0,
        replaced: tuple[nn.Module, ...] = (),
    ) -> None:
        super().__init__()
        self.eps = float(eps)
        self.negative_slope = float(negative_slope)
        self.pad = int(pad)
        self._replaced = tuple(replaced)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ext.instance_norm_act(x, self.eps, self.negative_slope, self.pad)

    def extra_repr(self) -> str:
        return f"eps={self.eps}, negative_slope={self.negative_slope}, pad={self.pad}"


def _is_plain_instance_norm(m: nn.Module) -> bool:
    return (
        type(m) is nn.InstanceNorm2d
        and not m.affine
        and not m.track_running_stats
    )


def _slope(m: nn.Module) -> float | None:
    """The negative slope of an activation the fused op covers, else None."""
    if type(m) is nn.ReLU:
        return 0.0
    if type(m) is nn.LeakyReLU:
        return float(m.negative_slope)
    return None


def _reflection_pad(m: nn.Module) -> int | None:
    """The padding of a ReflectionPad2d that pads all four sides equally, else None."""
    if type(m) is nn.ReflectionPad2d and len(set(m.padding)) == 1:
        return int(m.padding[0])
    return None


def _fuse(seq: nn.Sequential) -> int:
    count, i, n = 0, 0, len(seq)
    while i < n:
        norm = seq[i]
        if not _is_plain_instance_norm(norm):
            i += 1
            continue
        run = [norm]
        slope = _slope(seq[i + 1]) if i + 1 < n else None
        if slope is None:
            slope = 1.0
        else:
            run.append(seq[i + 1])
        j = i + len(run)
        pad = _reflection_pad(seq[j]) if j < n else None
        if pad is not None:
            run.append(seq[j])
        seq[i] = InstanceNormAct(norm.eps, slope, pad or 0, replaced=tuple(run))
        for k in range(1, len(run)):
            seq[i + k] = nn.Identity()
        count += 1
        i += len(run)
    return count


def _unfuse(seq: nn.Sequential) -> int:
    count = 0
    for i in range(len(seq)):
        m = seq[i]
        if isinstance(m, InstanceNormAct) and m._replaced:
            for k, original in enumerate(m._replaced):
                seq[i + k] = original
            count += 1
    return count


def _sequentials(module: nn.Module, skip: tuple[type, ...]) -> list[nn.Sequential]:
    if isinstance(module, skip):
        return []
    found = [module] if isinstance(module, nn.Sequential) else []
    for child in module.children():
        found += _sequentials(child, skip)
    return found


def fuse_instance_norms(
    module: nn.Module, enabled: bool = True, skip: tuple[type, ...] = ()
) -> int:
    """Swap every ``InstanceNorm2d -> activation [-> ReflectionPad2d]`` run in ``module``'s
    ``nn.Sequential`` containers for :class:`InstanceNormAct` (``enabled``), or back.

    Returns how many runs were swapped. Only ``InstanceNorm2d(affine=False,
    track_running_stats=False)``, ``ReLU``, ``LeakyReLU`` and square ``ReflectionPad2d`` are
    taken; anything else stays as it is, and so do modules of the ``skip`` types (e.g. blocks
    that run fused kernels of their own).
    """
    swap = _fuse if enabled else _unfuse
    return sum(swap(seq) for seq in _sequentials(module, skip))
