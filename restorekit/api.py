"""The types a plugin registers: preprocessors, metrics and models.

Images everywhere in restorekit's public API are ``numpy`` arrays of shape
``(H, W, 3)``, dtype ``float32``, RGB, values in ``[0, 1]`` (see ``restorekit.data``).
Networks see ``torch`` tensors ``(N, 3, H, W)`` in ``[0, 1]``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

import numpy as np

if TYPE_CHECKING:
    import torch

    from restorekit.pipeline import Pipeline

Image = np.ndarray
"""float32 RGB, shape (H, W, 3), values in [0, 1]."""

API_VERSION = 1
"""Bumped when the plugin-facing API changes incompatibly."""


@dataclass(frozen=True)
class Preprocessor:
    """An image -> image transform.

    ``fn(image, **params)`` returns a new image. ``params`` holds every parameter
    with its default value; the default's type (float, int, bool, str) is how a
    value from a pipeline spec such as ``"clahe:clip=0.02"`` is parsed.
    """

    name: str
    fn: Callable[..., Image]
    params: Mapping[str, Any] = field(default_factory=dict)
    description: str = ""


@dataclass(frozen=True)
class Metric:
    """A full-reference metric ``fn(prediction, target) -> float`` on two images."""

    name: str
    fn: Callable[[Image, Image], float]
    higher_is_better: bool
    description: str = ""


@dataclass
class NoOptions:
    """Options of a model that has none."""


class Model:
    """An enhancement model. Subclass it and register the class.

    Class attributes describe the model; ``Options`` is a dataclass whose fields
    become ``--field-name`` command-line options of ``restorekit run NAME``.
    ``presets`` maps a preset name to field overrides; ``default_preset`` is used
    when the user names none.
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    trainable: ClassVar[bool] = False
    Options: ClassVar[type] = NoOptions
    presets: ClassVar[dict[str, dict[str, Any]]] = {}
    default_preset: ClassVar[str | None] = None
    embedded_preset: ClassVar[str | None] = None
    """Preset used when training on the embedded default set (no ``--data``)."""
    default_preprocess: ClassVar[str] = ""
    """Pipeline spec used when the user gives no ``--preprocess``."""

    def __init__(self, options: Any, preprocess: Pipeline) -> None:
        self.options = options
        self.preprocess = preprocess

    def enhance(self, image: Image) -> Image:
        """Enhance one image (any size) and return an image of the same size."""
        raise NotImplementedError

    @classmethod
    def make_options(cls, preset: str | None = None, **overrides: Any) -> Any:
        """Build ``Options`` from a preset (or the default one) and overrides."""
        from restorekit.errors import UsageError

        preset = preset or cls.default_preset
        values: dict[str, Any] = {}
        if preset is not None:
            if preset not in cls.presets:
                known = ", ".join(sorted(cls.presets)) or "none"
                raise UsageError(f"--preset: model {cls.name!r} has no preset {preset!r} "
                                 f"(known: {known})")
            values.update(cls.presets[preset])
        values.update(overrides)
        names = {f.name for f in dataclasses.fields(cls.Options)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise UsageError(f"model {cls.name!r} has no option(s): {', '.join(unknown)}")
        return cls.Options(**values)


class StepContext(Protocol):
    """What the training engine hands a model's ``train_step``."""

    device: torch.device
    epoch: int
    step: int

    def autocast(self) -> AbstractContextManager[Any]:
        """Mixed precision for the forward pass (a no-op off CUDA or with amp off)."""
        ...

    def backward_step(self, loss: torch.Tensor, optimizer: str) -> None:
        """``loss.backward()`` then step the named optimizer (grad scaling under amp)."""
        ...


class TrainableModel(Model):
    """A model the training engine (``restorekit.engine``) can train.

    The engine owns the loop, devices, checkpoints, evaluation and reports; the
    model owns its networks, optimisers and the loss of one step. ``Options`` must
    subclass ``restorekit.engine.TrainConfig``.
    """

    trainable: ClassVar[bool] = True

    def build(self, device: torch.device) -> None:
        """Create networks and optimisers on ``device``."""
        raise NotImplementedError

    def networks(self) -> dict[str, torch.nn.Module]:
        """The networks whose weights a checkpoint holds, by name."""
        raise NotImplementedError

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """The optimisers whose state a checkpoint holds, by name."""
        raise NotImplementedError

    def num_epochs(self) -> int:
        """Total number of training epochs."""
        return int(self.options.epochs)

    def on_epoch_start(self, epoch: int) -> None:
        """Called before each epoch (0-based), e.g. to set learning rates."""

    def train_step(self, low: torch.Tensor, high: torch.Tensor,
                   ctx: StepContext) -> dict[str, torch.Tensor]:
        """One optimisation step on a batch; returns the detached loss terms by name."""
        raise NotImplementedError

    def enhance_tensor(self, low: torch.Tensor) -> torch.Tensor:
        """Enhance a batch ``(N, 3, H, W)`` in [0, 1] (already preprocessed), any H, W."""
        raise NotImplementedError

    def enhance(self, image: Image) -> Image:
        """Preprocess, run ``enhance_tensor`` without gradients, return an image."""
        import torch

        from restorekit.data import to_image, to_tensor

        net = next(iter(self.networks().values()))
        device = next(net.parameters()).device
        low = to_tensor(self.preprocess(image)).unsqueeze(0).to(device)
        with torch.no_grad():
            out = self.enhance_tensor(low)
        return to_image(out[0])
