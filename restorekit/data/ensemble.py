"""Self-ensemble (``--tta``): the mean of a model's outputs over the 8 flips and rotations."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from restorekit.types import Image

TRANSFORMS = tuple((turns, flip) for flip in (False, True) for turns in range(4))
"""The 8 symmetries of the square: ``turns`` quarter turns after an optional left-right flip."""


def transform(image: np.ndarray, turns: int, flip: bool) -> np.ndarray:
    """``image`` (H, W, ...) flipped left-right if ``flip``, then turned ``turns`` x 90 deg."""
    return np.rot90(image[:, ::-1] if flip else image, turns, axes=(0, 1))


def untransform(image: np.ndarray, turns: int, flip: bool) -> np.ndarray:
    """The inverse of :func:`transform`."""
    back = np.rot90(image, -turns, axes=(0, 1))
    return back[:, ::-1] if flip else back


def self_ensemble(enhance: Callable[[Image], Image], image: Image) -> Image:
    """The mean of ``untransform(enhance(transform(image)))`` over the 8 :data:`TRANSFORMS`.

    ``enhance`` takes any size (a turned image swaps height and width); it may be tiled
    (``functools.partial(model.enhance, tile=...)``), so memory stays bounded by the tile.
    For a model that commutes with flips and rotations (a pointwise tone curve) the result
    is its plain output.
    """
    total = np.zeros(image.shape, dtype=np.float64)
    for turns, flip in TRANSFORMS:
        seen = np.ascontiguousarray(transform(image, turns, flip))
        out = np.asarray(enhance(seen))
        if out.shape != seen.shape:
            raise ValueError(f"self-ensemble: the model turned a {seen.shape[1]}x"
                             f"{seen.shape[0]} image into {out.shape[1]}x{out.shape[0]}")
        total += untransform(out, turns, flip)
    return (total / len(TRANSFORMS)).astype(image.dtype)
