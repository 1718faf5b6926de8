"""Caches of images: decoded pairs, and preprocessed low images of folder data.

A training crop of a pair set with a preprocessing pipeline needs the whole low image
preprocessed (preprocessors see whole images, in training as in inference). On folder
data the low image of a pair never changes, so a deterministic pipeline's output is kept
per (pipeline, image file) by :class:`PreprocessedLows`: in memory, and on disk in a
folder (a study's ``STUDY/cache``) that every trial and worker with the same pipeline
shares. An entry is keyed by the pipeline's ``cache_key()`` (every step's preprocessor,
its code and all its parameters) and the file's path, size and modification time, so a
changed file or parameter is never served an old entry.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Hashable
from pathlib import Path

import numpy as np

from restorekit.atomic import atomic_path, atomic_write_text
from restorekit.errors import one_line, warn
from restorekit.types import Image


class ImageCache:
    """A dict cache of tuples of images bounded by bytes (the least recently used entries
    are evicted).

    Images that are exact 8-bit values are stored as uint8 (4x smaller); others as they
    are. :meth:`get` returns fresh copies.
    """

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.items: dict[Hashable, tuple[np.ndarray, ...]] = {}
        self.nbytes = 0

    @staticmethod
    def _pack(image: Image) -> np.ndarray:
        q = np.round(image * 255).astype(np.uint8)
        if np.array_equal(q.astype(np.float32) / np.float32(255), image):
            return q
        return np.array(image, dtype=np.float32, copy=True)

    @staticmethod
    def _unpack(stored: np.ndarray) -> Image:
        if stored.dtype == np.uint8:
            return stored.astype(np.float32) / np.float32(255)
        return stored.copy()

    def get(self, key: Hashable) -> tuple[Image, ...] | None:
        """Copies of the images stored under ``key``, or None."""
        hit = self.items.pop(key, None)
        if hit is None:
            return None
        self.items[key] = hit  # the most recently used now
        return tuple(self._unpack(image) for image in hit)

    def put(self, key: Hashable, *images: Image) -> None:
        """Store ``images`` under ``key`` unless they alone exceed the budget."""
        entry = tuple(self._pack(image) for image in images)
        size = sum(image.nbytes for image in entry)
        if size > self.max_bytes:
            return
        old = self.items.pop(key, None)
        if old is not None:
            self.nbytes -= sum(image.nbytes for image in old)
        while self.items and self.nbytes + size > self.max_bytes:
            evicted = self.items.pop(next(iter(self.items)))
            self.nbytes -= sum(image.nbytes for image in evicted)
        self.items[key] = entry
        self.nbytes += size


def cache_key(preprocess: Callable[[Image], Image]) -> str | None:
    """``preprocess.cache_key()`` (a :class:`restorekit.pipeline.Pipeline`), or None for a
    callable that has none (never cached)."""
    method = getattr(preprocess, "cache_key", None)
    return method() if callable(method) else None


def _digest(text: str, length: int) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:length]


class PreprocessedLows:
    """Preprocessed low images of image files, once per (pipeline, file).

    Kept in memory (up to ``max_bytes``) and, with ``folder``, as ``.npy`` files in
    ``folder/<pipeline hash>/`` (the pipeline's key in ``pipeline.txt`` beside them),
    written atomically, so concurrent processes share them. A pipeline without a cache key
    (a step that is not deterministic, a plain function) is run at every call.
    """

    def __init__(self, max_bytes: int, folder: str | os.PathLike[str] | None = None) -> None:
        self.memory = ImageCache(max_bytes)
        self.folder = Path(folder) if folder is not None else None
        self.said = False

    def get(self, preprocess: Callable[[Image], Image], source: Path,
            stamp: tuple[int, int], low: Image) -> Image:
        """``preprocess(low)``, where ``low`` was read from ``source`` when it had
        ``stamp`` (size, modification time in ns): from memory, else from disk, else
        computed and stored in both."""
        key = cache_key(preprocess)
        if key is None:
            return preprocess(low)
        entry = f"{Path(source).resolve()}\n{stamp[0]}\n{stamp[1]}"
        found = self.memory.get((key, entry))
        if found is not None:
            return found[0]
        path = None
        if self.folder is not None:
            path = self.folder / _digest(key, 16) / f"{_digest(entry, 32)}.npy"
            out = _load(path, low.shape)
            if out is not None:
                self.memory.put((key, entry), out)
                return out
        out = np.asarray(preprocess(low), dtype=np.float32)
        self.memory.put((key, entry), out)
        if path is not None:
            self._store(path, out, key)
        return out

    def _store(self, path: Path, image: Image, key: str) -> None:
        """Write ``image`` to ``path`` atomically (and the pipeline's key beside it, once).
        A folder that cannot be written (a full disk, no permission) is said once; the
        training goes on with the memory cache."""
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            spec = path.parent / "pipeline.txt"
            if not spec.is_file():
                atomic_write_text(spec, key + "\n")
            with atomic_path(path) as tmp, open(tmp, "wb") as f:
                np.save(f, image, allow_pickle=False)
        except OSError as exc:
            if not self.said:
                self.said = True
                warn(f"cannot cache preprocessed images in {self.folder} ({one_line(exc)}); "
                     f"they are kept in memory only")


def _load(path: Path, shape: tuple[int, ...]) -> Image | None:
    """The array in ``path`` if it is a float32 image of ``shape``; None if it is missing
    or unusable (then it is computed again and replaced)."""
    try:
        out = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError):
        return None
    if out.dtype != np.float32 or out.shape != tuple(shape):
        return None
    return out


__all__ = ["ImageCache", "PreprocessedLows", "cache_key"]
