"""Self-ensemble (restorekit.data.ensemble, ``--tta``): the mean over the 8 flips/rotations."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from restorekit.data import to_image, to_tensor
from restorekit.data.ensemble import TRANSFORMS, self_ensemble, transform, untransform
from restorekit.data.tiling import enhance_tiled


@pytest.fixture
def image() -> np.ndarray:
    return np.random.default_rng(0).random((12, 12, 3)).astype(np.float32)


def test_the_eight_transforms_are_distinct_and_undone(image: np.ndarray) -> None:
    seen = [transform(image, t, f) for t, f in TRANSFORMS]
    assert len({x.tobytes() for x in seen}) == 8
    for (turns, flip), x in zip(TRANSFORMS, seen, strict=True):
        np.testing.assert_array_equal(untransform(x, turns, flip), image)


def test_an_equivariant_model_is_unchanged(image: np.ndarray) -> None:
    np.testing.assert_array_equal(self_ensemble(lambda x: x, image), image)

    def tone(x: np.ndarray) -> np.ndarray:  # pointwise, so it commutes with every turn
        return (x ** 0.5).astype(np.float32)

    np.testing.assert_allclose(self_ensemble(tone, image), tone(image), rtol=1e-6)


def test_a_directional_model_is_averaged_over_the_eight(image: np.ndarray) -> None:
    """A model that adds a left-to-right ramp: its 8 views add the ramp in the four
    directions twice each, which average to 0.5 everywhere on a square image."""
    def biased(x: np.ndarray) -> np.ndarray:
        return x + np.linspace(0, 1, x.shape[1], dtype=np.float32)[None, :, None]

    out = self_ensemble(biased, image)
    np.testing.assert_allclose(out, image + 0.5, atol=1e-6)
    assert not np.allclose(out, biased(image))
    # and by hand, each of the 8 views written out with numpy's own flips and turns
    views = []
    for flip in (False, True):
        src = image[:, ::-1] if flip else image
        for k in range(4):
            out_k = np.rot90(biased(np.rot90(src, k)), -k)
            views.append(out_k[:, ::-1] if flip else out_k)
    np.testing.assert_allclose(out, np.mean(views, axis=0), atol=1e-6)


def test_non_square_images_turn_into_their_transpose() -> None:
    wide = np.random.default_rng(1).random((6, 10, 3)).astype(np.float32)
    shapes = []

    def record(x: np.ndarray) -> np.ndarray:
        shapes.append(x.shape[:2])
        return x

    np.testing.assert_array_equal(self_ensemble(record, wide), wide)
    assert sorted(set(shapes)) == [(6, 10), (10, 6)]


def test_a_model_that_changes_the_size_is_refused(image: np.ndarray) -> None:
    with pytest.raises(ValueError, match="self-ensemble: the model turned a 12x12 image into"):
        self_ensemble(lambda x: x[:-1], image)


def test_composes_with_tiled_inference() -> None:
    """Each of the 8 views goes through the tiles (memory bounded by the tile)."""
    big = np.random.default_rng(2).random((150, 170, 3)).astype(np.float32)

    def net(x: torch.Tensor) -> torch.Tensor:
        return x.clamp(0, 1) ** 0.5

    def tiled(img: np.ndarray) -> np.ndarray:
        return to_image(enhance_tiled(net, to_tensor(img)[None], tile=64)[0])

    np.testing.assert_allclose(self_ensemble(tiled, big), big ** 0.5, atol=1e-5)
