"""Hyperparameter and preprocessing studies with Optuna (``restorekit tune``).

A study's trials are ordinary training runs of :mod:`restorekit.engine`; the search space
is declared by plugins (:meth:`restorekit.TrainableModel.search_space`,
``Preprocessor.search``) and narrowed by a ``--space`` file (:mod:`restorekit.tune.space`).
:func:`run_study` runs or continues a study, :func:`final_evaluation` scores the reported
trials on the test split once, :func:`write_study_report` writes ``report.html``;
:func:`best_trials` is the best trial, or a multi-objective study's Pareto front.
"""

from restorekit.tune.pareto import best_trials
from restorekit.tune.report import write_study_report
from restorekit.tune.space import Space, build_space, read_space_file
from restorekit.tune.study import (
    TuneSettings,
    counted,
    export_best,
    final_evaluation,
    is_finished,
    load_study,
    open_storage,
    reported_trials,
    run_study,
    tables,
)

__all__ = [
    "Space",
    "TuneSettings",
    "best_trials",
    "build_space",
    "counted",
    "export_best",
    "final_evaluation",
    "is_finished",
    "load_study",
    "open_storage",
    "read_space_file",
    "reported_trials",
    "run_study",
    "tables",
    "write_study_report",
]
