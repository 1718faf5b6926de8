"""The reusable training engine: loop, run folders, checkpoints, resume, evaluation, reports.

``train(model, ...)`` drives any :class:`restorekit.api.TrainableModel` whose ``Options``
subclass :class:`TrainConfig` (:class:`TrainJob` is the same with the data opened for
you); ``resume(run_dir, registry)`` continues a run; :class:`TrainState` is what a
checkpoint holds; :class:`Callback` hooks into the loop;
``load_trained`` rebuilds a trained model from a run folder or a checkpoint file;
:class:`RunDir` is the run-folder layout; ``enhance_tiled`` runs a network over large
images tile by tile; ``keep_freed_memory`` stops glibc from returning freed activations
to the OS every step.
"""

from restorekit.data.tiling import enhance_tiled
from restorekit.engine.allocator import keep_freed_memory
from restorekit.engine.callbacks import Callback
from restorekit.engine.config import TrainConfig, resolve_device
from restorekit.engine.ema import WeightEMA
from restorekit.engine.job import (
    RESUME_OVERRIDABLE,
    TrainJob,
    TrainResult,
    resume,
    run_folder,
    train,
)
from restorekit.engine.loading import build_model, import_weights, load_trained
from restorekit.engine.report import write_report
from restorekit.engine.rundir import RunDir
from restorekit.engine.state import TrainState, read_checkpoint
from restorekit.engine.step import StepContextImpl
from restorekit.engine.trainer import Trainer

find_checkpoint = RunDir.find_checkpoint

__all__ = [
    "RESUME_OVERRIDABLE",
    "Callback",
    "RunDir",
    "StepContextImpl",
    "TrainConfig",
    "TrainJob",
    "TrainState",
    "TrainResult",
    "Trainer",
    "WeightEMA",
    "build_model",
    "enhance_tiled",
    "find_checkpoint",
    "import_weights",
    "keep_freed_memory",
    "load_trained",
    "read_checkpoint",
    "resolve_device",
    "resume",
    "run_folder",
    "train",
    "write_report",
]
