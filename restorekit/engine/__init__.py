"""The reusable training engine: loop, checkpoints, resume, evaluation, reports, tiling.

``train(model, ...)`` drives any :class:`restorekit.api.TrainableModel` whose ``Options``
subclass :class:`TrainConfig`; ``load_trained`` rebuilds a trained model from a run folder
or a checkpoint file; ``enhance_tiled`` runs a network over large images tile by tile;
``keep_freed_memory`` stops glibc from returning freed activations to the OS every step.
"""

from restorekit.engine.allocator import keep_freed_memory
from restorekit.engine.checkpoint import find_checkpoint, load_trained, read_checkpoint
from restorekit.engine.config import TrainConfig, resolve_device
from restorekit.engine.report import write_report
from restorekit.engine.tiling import enhance_tiled
from restorekit.engine.trainer import StepContextImpl, Trainer, TrainResult, train

__all__ = [
    "StepContextImpl",
    "TrainConfig",
    "TrainResult",
    "Trainer",
    "enhance_tiled",
    "find_checkpoint",
    "keep_freed_memory",
    "load_trained",
    "read_checkpoint",
    "resolve_device",
    "train",
    "write_report",
]
