"""The built-in ``classic`` model: a preprocessor pipeline, nothing learned."""

from __future__ import annotations

from typing import ClassVar

from restorekit.api import Image, Model
from restorekit.hookspecs import hookimpl


class ClassicModel(Model):
    """Applies the ``--preprocess`` pipeline (default ``autogamma,denoise``) and nothing else.

    Its ``--eval`` table is the baseline every learned model must beat.
    """

    name: ClassVar[str] = "classic"
    description: ClassVar[str] = "classical enhancement: the --preprocess pipeline alone"
    default_preprocess: ClassVar[str] = "autogamma,denoise"

    def enhance(self, image: Image) -> Image:
        return self.preprocess(image)


@hookimpl
def register_models(register) -> None:  # noqa: ANN001 - pluggy passes the callback
    register(ClassicModel)
