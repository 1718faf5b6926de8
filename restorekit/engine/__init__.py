"""The reusable training engine: loop, run folders, checkpoints, resume, evaluation, reports.

``train(model, ...)`` drives any :class:`restorekit.api.TrainableModel` whose ``Options``
subclass :class:`TrainConfig`; ``resume(run_dir, registry)`` continues a run;
``load_trained`` rebuilds a trained model from a run folder or a checkpoint file;
:class:`RunDir` is the run-folder layout; ``enhance_tiled`` runs a network over large
images tile by tile; ``keep_freed_memory`` stops glibc from returning freed activations
to the OS every step.
"""

from restorekit.data.tiling import enhance_tiled
from restorekit.engine.allocator import keep_freed_memory
from restorekit.engine.checkpoint import read_checkpoint
from restorekit.engine.config import TrainConfig, resolve_device
from restorekit.engine.loading import (
    RESUME_OVERRIDABLE,
    build_model,
    import_weights,
    load_trained,
    resume,
)
from restorekit.engine.report import write_report
from restorekit.engine.rundir import RunDir
from restorekit.engine.trainer import StepContextImpl, Trainer, TrainResult, train

find_checkpoint = RunDir.find_checkpoint

__all__ = [
    "RESUME_OVERRIDABLE",
    "RunDir",
    "StepContextImpl",
    "TrainConfig",
    "TrainResult",
    "Trainer",
    "build_model",
    "enhance_tiled",
    "find_checkpoint",
    "import_weights",
    "keep_freed_memory",
    "load_trained",
    "read_checkpoint",
    "resolve_device",
    "resume",
    "train",
    "write_report",
]
