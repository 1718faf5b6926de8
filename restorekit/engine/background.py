"""The next batches prepared on a thread while the current one trains on a GPU.

With ``num_workers`` 0 a DataLoader reads, crops and collates each batch on the main thread,
between two steps, while a GPU waits. :class:`BackgroundLoader` iterates the loader on a
thread of its own (which also pins the batches when the DataLoader has ``pin_memory``, so
that the main thread's ``.to(device, non_blocking=True)`` does not wait for the copy) and
hands the batches over in order, at most :data:`PREFETCH` ahead: the batches, their order
and their contents are exactly the DataLoader's.

On a CPU device the batches are prepared inline, as before: the main thread computes the
step itself, and a loader thread only competes with it for the GIL and the cores (a
``quick`` Pix2PixHD loop step measured 10-20 % slower with the thread on a 2-core machine,
``benchmarks/loop_interleaved.py``).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterable, Iterator
from types import TracebackType
from typing import Any

import torch

PREFETCH = 2
"""Batches the thread prepares ahead of the one being trained on."""

_END = object()


class _Failed:
    """An exception raised on the thread, re-raised on the main thread."""

    def __init__(self, error: BaseException) -> None:
        self.error = error


class BackgroundLoader:
    """Iterate ``loader`` on a thread, started by iterating this; :meth:`close` (or leaving
    ``with``) stops it.

    An exception raised while preparing a batch is raised again, the same object (its
    one-line message intact), where the main thread asks for that batch. ``device``: a CUDA
    device is made the thread's current one (where pinned memory is allocated).
    ``threaded``: use the thread (default: on a CUDA device only; else iterate inline).
    """

    def __init__(self, loader: Iterable[Any], device: torch.device,
                 prefetch: int = PREFETCH, threaded: bool | None = None) -> None:
        # Created here, on the calling thread: a DataLoader with workers starts (forks)
        # them when iterated, which must not happen on a thread beside a running step.
        self._iterator = iter(loader)
        self._device = device
        self._threaded = device.type == "cuda" if threaded is None else threaded
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=max(1, prefetch))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="restorekit-loader",
                                        daemon=True)

    def __iter__(self) -> Iterator[Any]:
        if not self._threaded:
            yield from self._iterator
            return
        self._thread.start()
        while True:
            item = self._queue.get()
            if item is _END:
                return
            if isinstance(item, _Failed):
                raise item.error
            yield item

    def __enter__(self) -> BackgroundLoader:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()

    def close(self, timeout: float = 30.0) -> None:
        """Stop the thread after the batch it is preparing and wait (at most ``timeout``
        seconds: a read that hangs is left to the daemon thread) for it to end."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)
        self._iterator = iter(())  # a DataLoader's workers end with their iterator

    def _run(self) -> None:
        if self._device.type == "cuda":
            torch.cuda.set_device(self._device)
        try:
            for batch in self._iterator:
                if not self._put(batch):
                    return
            self._put(_END)
        except BaseException as exc:  # noqa: BLE001 (handed to the main thread)
            self._put(_Failed(exc))

    def _put(self, item: Any) -> bool:
        """Queue ``item`` unless asked to stop; False when stopped."""
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False
