"""restorekit: image restoration, low-light enhancement with GANs first.

The public API for plugin authors is what this module exports: the ``hookimpl``
marker, the item types a plugin registers, and ``API_VERSION``. Subpackages
``restorekit.data``, ``restorekit.engine`` and ``restorekit.ext`` are public too.
"""

from restorekit.api import (
    API_VERSION,
    Image,
    Metric,
    Model,
    NoOptions,
    Preprocessor,
    StepContext,
    TrainableModel,
)
from restorekit.errors import RestorekitError
from restorekit.hookspecs import hookimpl

__version__ = "0.1.0"

__all__ = [
    "API_VERSION",
    "Image",
    "Metric",
    "Model",
    "NoOptions",
    "Preprocessor",
    "RestorekitError",
    "StepContext",
    "TrainableModel",
    "__version__",
    "hookimpl",
]
