"""Paired (low-light, normal-light) data sets and training crops.

``open_pairs(data, split)`` is the entry point: ``data=None`` gives the embedded
default (scikit-image photos with synthesized low-light twins, see
``restorekit.data.lowlight``); a folder gives ``FolderPairs`` in one of these layouts:

* LOL: ``our485/{low,high}`` (split "train") and ``eval15/{low,high}`` (split "test");
* ``train/{low,high}`` and ``test/{low,high}``;
* ``low/`` and ``high/`` (the same pairs for both splits).

Folder names are matched case-insensitively. Pairs are matched by file stem.

The split ``"val"`` is carved from the training pairs by a :class:`Holdout` (by default
20 %, at least one pair, chosen with seed 0); ``open_pairs(data, "train", holdout=...)``
gives the training pairs without them. Hyperparameter studies (``restorekit tune``) select
on ``val`` and keep ``test`` for the final evaluation.
"""

from __future__ import annotations

import abc
import os
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from restorekit.data.cache import ImageCache, PreprocessedLows
from restorekit.data.io import image_size, list_images, read_image, to_tensor
from restorekit.data.lowlight import DEFAULT_MODEL, LowLightModel
from restorekit.errors import DataError, UsageError, brief, warn
from restorekit.types import Image

__all__ = [
    "EMBEDDED_PHOTOS",
    "EmbeddedPairs",
    "FolderPairs",
    "Holdout",
    "PairSet",
    "SubsetPairs",
    "TrainCrops",
    "check_min_size",
    "open_pairs",
]


SPLITS = ("train", "val", "test")
LAYOUTS = ("low/ and high/ folders, train/{low,high} and test/{low,high}, "
           "or the LOL layout our485/{low,high} and eval15/{low,high}")


def check_min_size(image: Image, min_size: int, name: str) -> None:
    """Raise ``DataError`` naming ``name`` when ``image`` is smaller than min_size x min_size."""
    h, w = image.shape[:2]
    if h < min_size or w < min_size:
        raise DataError(f"{name}: image is {h}x{w} (HxW), smaller than the "
                        f"{min_size}x{min_size} needed")


def _check_split(split: str, allowed: Sequence[str] = SPLITS) -> None:
    if split not in allowed:
        raise UsageError(f"split must be {' or '.join(repr(a) for a in allowed)} "
                         f"(got {split!r})")


def _short_list(items: list[str], limit: int = 5) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")


class PairSet(abc.ABC):
    """An indexable set of (low, high) image pairs."""

    names: list[str]

    def __len__(self) -> int:
        return len(self.names)

    @abc.abstractmethod
    def pair(self, i: int, rng: np.random.Generator | None = None) -> tuple[Image, Image]:
        """The pair ``i`` as (low, high). ``rng`` may drive augmentation (synthetic data)."""

    @abc.abstractmethod
    def describe(self) -> str:
        """One line for humans, e.g. "LOL eval15: 15 pairs in /x/eval15"."""

    def label(self, i: int) -> str:
        """What error messages call pair ``i`` (a file path, a photo name)."""
        return self.names[i]

    def crop(self, i: int, size: int, rng: np.random.Generator) -> tuple[Image, Image]:
        """A random aligned ``size`` x ``size`` crop of pair ``i`` (position from ``rng``)."""
        low, high = self.pair(i, rng)
        return _random_crop(low, high, size, rng, self.label(i))

    def preprocessed_pair(self, i: int, preprocess: Callable[[Image], Image],
                          rng: np.random.Generator | None = None) -> tuple[Image, Image]:
        """Pair ``i`` with ``preprocess`` applied to its whole low image: here at every
        call (a synthesized low image differs each time); folder data keeps it."""
        low, high = self.pair(i, rng)
        return preprocess(low), high


def _random_crop(low: Image, high: Image, size: int, rng: np.random.Generator,
                 label: str) -> tuple[Image, Image]:
    check_min_size(high, size, label)
    h, w = high.shape[:2]
    y = int(rng.integers(0, h - size + 1))
    x = int(rng.integers(0, w - size + 1))
    return low[y:y + size, x:x + size], high[y:y + size, x:x + size]


# -- folders ---------------------------------------------------------------------------------
class FolderPairs(PairSet):
    """Pairs of images in two folders, matched by file stem, loaded lazily and cached.

    ``skip_bad=True`` skips (with one warning line each) files without a twin and
    pairs whose files are unreadable or differ in size (checked up front from the
    file headers); otherwise those raise ``DataError``/``ImageReadError``.

    A deterministic preprocessing pipeline runs once per low image
    (:meth:`preprocessed_pair`): its output is kept in memory (``cache_mb`` more) and,
    with ``cache_dir``, on disk for other processes (see
    :class:`restorekit.data.cache.PreprocessedLows`).
    """

    def __init__(self, root_low: str | os.PathLike[str], root_high: str | os.PathLike[str],
                 *, skip_bad: bool = False, title: str | None = None,
                 cache_mb: int = 2048, cache_dir: str | os.PathLike[str] | None = None) -> None:
        self.root_low = Path(root_low)
        self.root_high = Path(root_high)
        self.title = title or str(self.root_low.parent.name or self.root_low)
        self.skipped = 0
        self._cache = ImageCache(cache_mb * 2**20)
        self._stamps: dict[int, tuple[int, int]] = {}
        self._preprocessed = PreprocessedLows(cache_mb * 2**20, cache_dir)
        low = self._by_stem(self.root_low)
        high = self._by_stem(self.root_high)
        if not low:
            raise DataError(f"{self.root_low}: no images in this folder")
        if not high:
            raise DataError(f"{self.root_high}: no images in this folder")
        lonely_low = sorted(low[s].name for s in set(low) - set(high))
        lonely_high = sorted(high[s].name for s in set(high) - set(low))
        if (lonely_low or lonely_high) and not skip_bad:
            parts = []
            if lonely_low:
                parts.append(f"{_short_list(lonely_low)} in {self.root_low} without a twin "
                             f"in {self.root_high}")
            if lonely_high:
                parts.append(f"{_short_list(lonely_high)} in {self.root_high} without a twin "
                             f"in {self.root_low}")
            raise DataError("unpaired image(s): " + "; ".join(parts)
                            + " (use skip_bad to skip them)")
        for name in lonely_low:
            self._skip(f"{self.root_low / name}: no twin in {self.root_high}")
        for name in lonely_high:
            self._skip(f"{self.root_high / name}: no twin in {self.root_low}")
        stems = sorted(set(low) & set(high))
        self.low_paths: list[Path] = []
        self.high_paths: list[Path] = []
        for stem in stems:
            if skip_bad:
                problem = self._problem(low[stem], high[stem])
                if problem:
                    self._skip(problem)
                    continue
            self.low_paths.append(low[stem])
            self.high_paths.append(high[stem])
        if not self.low_paths:
            raise DataError(f"{self.root_low}: no usable pairs with {self.root_high} "
                            f"({self.skipped} skipped)")
        self.names = [p.stem for p in self.low_paths]

    @staticmethod
    def _by_stem(folder: Path) -> dict[str, Path]:
        if not folder.is_dir():
            raise DataError(f"{folder}: no such folder")
        found: dict[str, Path] = {}
        for path in list_images(folder):
            if path.stem in found:
                raise DataError(f"{folder}: two images with the same name: "
                                f"{found[path.stem].name} and {path.name}")
            found[path.stem] = path
        return found

    def _skip(self, message: str) -> None:
        self.skipped += 1
        warn(f"skipping {message}")

    @staticmethod
    def _problem(low: Path, high: Path) -> str | None:
        try:
            size_low = image_size(low)
            size_high = image_size(high)
        except DataError as exc:
            return str(exc)
        except Exception as exc:  # ImageReadError and friends
            return str(exc)
        if size_low != size_high:
            return _size_message(low, size_low, high, size_high)
        return None

    def pair(self, i: int, rng: np.random.Generator | None = None) -> tuple[Image, Image]:
        """Load (or take from the cache) pair ``i``; ``rng`` is not used."""
        cached = self._cache.get(i)
        if cached is not None:
            low, high = cached
            return low, high
        stat = os.stat(self.low_paths[i])  # what the low image's cache entries are keyed by
        low = read_image(self.low_paths[i])
        high = read_image(self.high_paths[i])
        if low.shape != high.shape:
            raise DataError(_size_message(self.low_paths[i], low.shape[:2],
                                          self.high_paths[i], high.shape[:2]))
        self._stamps[i] = (stat.st_size, stat.st_mtime_ns)
        self._cache.put(i, low, high)
        return low, high

    def preprocessed_pair(self, i: int, preprocess: Callable[[Image], Image],
                          rng: np.random.Generator | None = None) -> tuple[Image, Image]:
        """Pair ``i`` with ``preprocess`` applied to its whole low image once per file and
        pipeline (a deterministic :class:`restorekit.pipeline.Pipeline`; anything else at
        every call); ``rng`` is not used."""
        low, high = self.pair(i)
        low = self._preprocessed.get(preprocess, self.low_paths[i], self._stamps[i], low)
        return low, high

    def label(self, i: int) -> str:
        return str(self.low_paths[i])

    def describe(self) -> str:
        root = Path(os.path.commonpath([self.root_low, self.root_high]))
        text = f"{self.title}: {len(self)} pairs in {root}"
        return text + (f" ({self.skipped} skipped)" if self.skipped else "")


def _size_message(low: Path, size_low: tuple[int, ...], high: Path,
                  size_high: tuple[int, ...]) -> str:
    return (f"size mismatch: {low} is {size_low[0]}x{size_low[1]} but {high} is "
            f"{size_high[0]}x{size_high[1]} (HxW)")


# -- the embedded default --------------------------------------------------------------------
EMBEDDED_PHOTOS: dict[str, tuple[str, ...]] = {
    "train": ("astronaut", "rocket", "immunohistochemistry", "motorcycle_left",
              "motorcycle_right"),
    "test": ("coffee", "chelsea"),
}
"""The scikit-image photos of each split; the test photos are never used for training."""

EMBEDDED_MAX_SIDE = 600  # keeps coffee at 400x600, the LOL size
_TEST_SEED = 20240415  # the test split's low images never change
_clean_cache: dict[str, Image] = {}


def _load_photo(name: str) -> Image:
    """A bundled scikit-image photo as an 8-bit-valued image, longer side <= EMBEDDED_MAX_SIDE."""
    if name in _clean_cache:
        return _clean_cache[name]
    import skimage.data
    import skimage.transform

    if name.startswith("motorcycle_"):
        path = Path(skimage.data.__file__).parent / f"{name}.png"
        rgb = read_image(path)
    else:
        rgb = np.asarray(getattr(skimage.data, name)(), dtype=np.float32) / np.float32(255)
    h, w = rgb.shape[:2]
    if max(h, w) > EMBEDDED_MAX_SIDE:
        scale = EMBEDDED_MAX_SIDE / max(h, w)
        shape = (round(h * scale), round(w * scale))
        rgb = skimage.transform.resize(rgb, shape, order=1, anti_aliasing=True)
    rgb = (np.round(np.clip(rgb, 0, 1) * 255) / 255).astype(np.float32)
    rgb.setflags(write=False)
    _clean_cache[name] = rgb
    return rgb


def _photo_seed(name: str) -> int:
    return zlib.crc32(name.encode())


class EmbeddedPairs(PairSet):
    """Pairs synthesized from colour photos bundled with scikit-image (no download).

    The high image is the photo (longer side scaled to at most 600); the low image
    comes from the low-light model. Test split: one fixed low image per photo,
    the same in every run (independent of ``seed`` and ``rng``). Train split: a fresh
    low image for every call with an ``rng`` (augmentation), else a fixed one per
    ``seed``.
    """

    def __init__(self, split: str = "train", seed: int = 0,
                 model: LowLightModel = DEFAULT_MODEL) -> None:
        _check_split(split, ("train", "test"))
        self.split = split
        self.seed = seed
        self.model = model
        self.names = list(EMBEDDED_PHOTOS[split])
        self._fixed_low: dict[int, Image] = {}

    def pair(self, i: int, rng: np.random.Generator | None = None) -> tuple[Image, Image]:
        """(low, high) for photo ``i``; see the class docstring for the randomness."""
        name = self.names[i]
        high = _load_photo(name)
        if self.split == "train" and rng is not None:
            return self.model.synthesize(high, rng), high.copy()
        if i not in self._fixed_low:
            base = _TEST_SEED if self.split == "test" else self.seed
            fixed = np.random.default_rng([base, _photo_seed(name)])
            self._fixed_low[i] = self.model.synthesize(high, fixed)
        return self._fixed_low[i].copy(), high.copy()

    def label(self, i: int) -> str:
        return f"embedded photo {self.names[i]!r}"

    def crop(self, i: int, size: int, rng: np.random.Generator) -> tuple[Image, Image]:
        """Crop the clean photo first, then darken only the crop.

        The low-light model is per pixel (global exposure and cast, independent noise),
        so this has the same distribution as darkening the whole photo and cropping,
        at a fraction of the cost.
        """
        if self.split != "train":
            return super().crop(i, size, rng)
        _, high = _random_crop(_load_photo(self.names[i]), _load_photo(self.names[i]), size,
                               rng, self.label(i))
        return self.model.synthesize(high, rng), high.copy()

    def describe(self) -> str:
        return (f"embedded default ({self.split}): {len(self)} pairs synthesized from "
                f"scikit-image photos ({', '.join(self.names)})")


# -- the validation split ----------------------------------------------------------------------
_VAL_SEED = 20240416  # the embedded validation photos are darkened once, like the test split


@dataclass(frozen=True)
class Holdout:
    """Which training pairs form the validation split.

    ``round(fraction * n)`` of the ``n`` training pairs (at least one, at most ``n - 1``),
    picked by a permutation seeded with ``seed``; the same pairs every time for the same
    data, fraction and seed.
    """

    fraction: float = 0.2
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0 < self.fraction < 1:
            raise UsageError(f"--val-fraction: must be between 0 and 1 (got {self.fraction})")

    def indices(self, n: int) -> list[int]:
        """The validation pairs among ``n`` training pairs (sorted indices)."""
        if n < 2:
            raise DataError(f"a validation split needs at least 2 training pairs (got {n})")
        count = min(n - 1, max(1, round(self.fraction * n)))
        order = np.random.default_rng([self.seed, n]).permutation(n)
        return sorted(int(i) for i in order[:count])

    def to_dict(self) -> dict[str, Any]:
        """``{"fraction": ..., "seed": ...}`` (stored in run configs and studies)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any] | None) -> Holdout | None:
        """The holdout stored by :meth:`to_dict`; None for None or {}. A ``ValueError`` for
        anything else than ``{"fraction": number in (0, 1), "seed": integer in [0, 2^32)}``."""
        if not values:
            return None
        if not isinstance(values, Mapping):
            raise ValueError(f"expected a table {{fraction, seed}}, got {brief(values)}")
        fraction, seed = values.get("fraction", 0.2), values.get("seed", 0)
        if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) \
                or not 0 < fraction < 1:
            raise ValueError(f"'fraction' must be a number between 0 and 1, got "
                             f"{brief(fraction)}")
        if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**32:
            raise ValueError(f"'seed' must be an integer in [0, {2**32 - 1}], got {brief(seed)}")
        return cls(float(fraction), seed)


class SubsetPairs(PairSet):
    """Some pairs of another set, by index. ``fixed``: one low image per pair (no
    augmentation, as for evaluation), whatever ``rng`` a caller passes."""

    def __init__(self, base: PairSet, indices: Sequence[int], what: str,
                 fixed: bool = False) -> None:
        self.base = base
        self.indices = [int(i) for i in indices]
        self.what = what
        self.fixed = fixed
        self.names = [base.names[i] for i in self.indices]

    def pair(self, i: int, rng: np.random.Generator | None = None) -> tuple[Image, Image]:
        return self.base.pair(self.indices[i], None if self.fixed else rng)

    def crop(self, i: int, size: int, rng: np.random.Generator) -> tuple[Image, Image]:
        if self.fixed:
            return super().crop(i, size, rng)
        return self.base.crop(self.indices[i], size, rng)

    def preprocessed_pair(self, i: int, preprocess: Callable[[Image], Image],
                          rng: np.random.Generator | None = None) -> tuple[Image, Image]:
        return self.base.preprocessed_pair(self.indices[i], preprocess,
                                           None if self.fixed else rng)

    def label(self, i: int) -> str:
        return self.base.label(self.indices[i])

    def describe(self) -> str:
        return f"{self.base.describe()}; {self.what}: {len(self)} pairs ({', '.join(self.names)})"


# -- opening a data set ------------------------------------------------------------------------
def _subdir(folder: Path, name: str) -> Path | None:
    """The child folder called ``name`` (case-insensitively), or None."""
    exact = folder / name
    if exact.is_dir():
        return exact
    try:
        for child in folder.iterdir():
            if child.name.lower() == name and child.is_dir():
                return child
    except OSError:
        return None
    return None


def _low_high(folder: Path | None) -> tuple[Path, Path] | None:
    if folder is None:
        return None
    low, high = _subdir(folder, "low"), _subdir(folder, "high")
    return (low, high) if low is not None and high is not None else None


def open_pairs(data: str | os.PathLike[str] | None, split: str = "train", *, seed: int = 0,
               skip_bad: bool = False, holdout: Holdout | None = None,
               cache_dir: str | os.PathLike[str] | None = None) -> PairSet:
    """The paired data set ``data`` (None: the embedded default) for ``split``.

    ``split`` is ``"train"``, ``"val"`` or ``"test"``. ``"val"`` holds the training pairs
    that ``holdout`` (default :class:`Holdout()`) picks; ``"train"`` with a ``holdout``
    leaves them out. See the module docstring for the accepted folder layouts.
    ``cache_dir``: where folder data keeps preprocessed low images on disk, shared by
    processes (a study's ``STUDY/cache``; None: in memory only).
    """
    _check_split(split)
    if split == "val" or (split == "train" and holdout is not None):
        holdout = holdout or Holdout()
        if data is None:  # validation lows are fixed, independent of the training seed
            base = EmbeddedPairs("train", _VAL_SEED + holdout.seed if split == "val" else seed)
        else:
            base = _open_pairs(data, "train", skip_bad, cache_dir)
        chosen = holdout.indices(len(base))
        if split == "val":
            return SubsetPairs(base, chosen, "validation split", fixed=True)
        rest = [i for i in range(len(base)) if i not in set(chosen)]
        return SubsetPairs(base, rest, "training pairs without the validation split")
    if data is None:
        return EmbeddedPairs(split, seed)
    return _open_pairs(data, split, skip_bad, cache_dir)


def _open_pairs(data: str | os.PathLike[str], split: str, skip_bad: bool,
                cache_dir: str | os.PathLike[str] | None = None) -> PairSet:
    root = Path(data).expanduser()
    if not root.exists():
        raise DataError(f"{root}: no such data folder")
    if not root.is_dir():
        raise DataError(f"{root}: is not a folder (expected {LAYOUTS})")
    lol_train, lol_test = _subdir(root, "our485"), _subdir(root, "eval15")
    if lol_train is not None or lol_test is not None:
        sub = lol_train if split == "train" else lol_test
        wanted = "our485" if split == "train" else "eval15"
        dirs = _low_high(sub)
        if dirs is None:
            raise DataError(f"{root}: LOL layout without {wanted}/low and {wanted}/high "
                            f"(needed for split {split!r})")
        return FolderPairs(*dirs, skip_bad=skip_bad, title=f"LOL {wanted}",
                           cache_dir=cache_dir)
    split_dirs = _low_high(_subdir(root, split))
    if split_dirs is not None:
        return FolderPairs(*split_dirs, skip_bad=skip_bad, title=f"{root.name} {split}",
                           cache_dir=cache_dir)
    if _subdir(root, "train") is not None or _subdir(root, "test") is not None:
        raise DataError(f"{root}: no {split}/low and {split}/high folders "
                        f"(needed for split {split!r})")
    dirs = _low_high(root)
    if dirs is not None:
        return FolderPairs(*dirs, skip_bad=skip_bad, title=root.name or str(root),
                           cache_dir=cache_dir)
    raise DataError(f"{root}: no paired data found; expected {LAYOUTS}")


# -- training crops ----------------------------------------------------------------------------
class TrainCrops(Dataset):
    """Random aligned crops of a ``PairSet`` for training.

    Item ``i`` uses pair ``i % len(pairs)`` and ``rng = default_rng([seed, epoch, i])``
    for synthesis (embedded data), the crop position and flips, so an item depends
    only on (seed, epoch, i), never on the order items are drawn in: resumed training
    sees exactly the data uninterrupted training would. ``preprocess`` is applied to
    the whole low image before cropping: once per image on folder data (a deterministic
    pipeline, cached), for every crop where each crop's low image is synthesized afresh
    (the embedded set). Call ``set_epoch`` before each epoch (in every DataLoader worker
    process, e.g. with non-persistent workers).
    """

    def __init__(self, pairs: PairSet, crop_size: int, *, samples_per_epoch: int = 0,
                 seed: int = 0, preprocess: Callable[[Image], Image] | None = None,
                 hflip: bool = True, vflip: bool = False) -> None:
        if int(crop_size) <= 0:
            raise UsageError(f"crop size must be positive (got {crop_size})")
        if samples_per_epoch < 0:
            raise UsageError(f"samples per epoch must be >= 0 (got {samples_per_epoch})")
        if len(pairs) == 0:
            raise DataError(f"{pairs.describe()}: no pairs")
        self.pairs = pairs
        self.crop_size = int(crop_size)
        self.samples_per_epoch = int(samples_per_epoch)
        self.seed = int(seed)
        self.preprocess = preprocess
        self.hflip = hflip
        self.vflip = vflip
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose random crops/synthesis ``__getitem__`` returns."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.samples_per_epoch or len(self.pairs)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor | str]:
        if not 0 <= i < len(self):
            raise IndexError(f"index {i} out of range for {len(self)} samples")
        rng = np.random.default_rng([self.seed, self.epoch, i])
        j = i % len(self.pairs)
        if not self.preprocess and isinstance(self.pairs, PairSet):
            low, high = self.pairs.crop(j, self.crop_size, rng)
        else:  # preprocessors see whole images, in training as in inference
            if self.preprocess and isinstance(self.pairs, PairSet):
                low, high = self.pairs.preprocessed_pair(j, self.preprocess, rng)
            else:
                low, high = self.pairs.pair(j, rng)
                if self.preprocess:
                    low = self.preprocess(low)
            label = self.pairs.label(j) if hasattr(self.pairs, "label") else self.pairs.names[j]
            low, high = _random_crop(low, high, self.crop_size, rng, label)
        if self.hflip and rng.uniform() < 0.5:
            low, high = low[:, ::-1], high[:, ::-1]
        if self.vflip and rng.uniform() < 0.5:
            low, high = low[::-1], high[::-1]
        return {"low": to_tensor(low), "high": to_tensor(high), "name": self.pairs.names[j]}
