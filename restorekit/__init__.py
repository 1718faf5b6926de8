"""restorekit: image restoration, low-light enhancement with GANs first.

The public API for plugin authors is what this module exports: the ``hookimpl``
marker, the item types a plugin registers, and ``API_VERSION``. Subpackages
``restorekit.data``, ``restorekit.engine`` and ``restorekit.ext`` are public too, and
``restorekit.testing`` helps test plugins.
"""

from restorekit._version import __version__
from restorekit.api import (
    API_VERSION,
    Choice,
    Command,
    FloatRange,
    IntRange,
    Metric,
    Model,
    NoOptions,
    NoReferenceMetric,
    Preprocessor,
    SearchRange,
    StepContext,
    TrainableModel,
)
from restorekit.api import Image as Image  # numpy's ndarray: not in __all__ (help() would print it)
from restorekit.errors import RestorekitError
from restorekit.hookspecs import hookimpl

__all__ = [
    "API_VERSION",
    "Choice",
    "Command",
    "FloatRange",
    "IntRange",
    "Metric",
    "Model",
    "NoOptions",
    "NoReferenceMetric",
    "Preprocessor",
    "RestorekitError",
    "SearchRange",
    "StepContext",
    "TrainableModel",
    "__version__",
    "hookimpl",
]
