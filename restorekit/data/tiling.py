"""Tiled inference: run a network over overlapping tiles with feathered blending."""

from __future__ import annotations

from collections.abc import Callable

import torch


def _starts(size: int, tile: int, stride: int) -> list[int]:
    """Tile start offsets covering ``[0, size)``; the last tile ends exactly at ``size``."""
    if size <= tile:
        return [0]
    starts = list(range(0, size - tile, stride))
    starts.append(size - tile)
    return starts


def _ramp(length: int, overlap: int, device: torch.device) -> torch.Tensor:
    """1-D weights rising linearly over ``overlap`` pixels at both ends, 1 in between."""
    i = torch.arange(length, device=device, dtype=torch.float32)
    edge = torch.minimum(i + 1, length - i) / float(overlap + 1)
    return edge.clamp(max=1.0)


def enhance_tiled(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, tile: int,
                  overlap: int = 32) -> torch.Tensor:
    """Apply ``fn`` (NCHW -> NCHW of the same height and width) tile by tile.

    Tiles of ``tile`` x ``tile`` pixels overlap by at least ``overlap`` pixels and are
    blended with linear weights, so seams do not show and memory stays bounded by the
    tile size. When ``x`` fits in one tile, ``fn(x)`` is returned as is.
    """
    if x.dim() != 4:
        raise ValueError(f"enhance_tiled expects an NCHW tensor, got shape {tuple(x.shape)}")
    height, width = x.shape[-2:]
    if height <= tile and width <= tile:
        return fn(x)
    if tile <= 0 or overlap < 0 or overlap >= tile:
        raise ValueError(f"enhance_tiled needs tile > overlap >= 0 (tile={tile}, "
                         f"overlap={overlap})")
    stride = tile - overlap
    out: torch.Tensor | None = None
    dtype = x.dtype
    weight = torch.zeros(1, 1, height, width, device=x.device, dtype=torch.float32)
    for top in _starts(height, tile, stride):
        for left in _starts(width, tile, stride):
            th, tw = min(tile, height), min(tile, width)
            piece = fn(x[:, :, top:top + th, left:left + tw])
            if piece.shape[-2:] != (th, tw):
                raise ValueError(f"enhance_tiled: fn changed the tile size from {(th, tw)} "
                                 f"to {tuple(piece.shape[-2:])}")
            if out is None:
                dtype = piece.dtype
                out = torch.zeros(piece.shape[0], piece.shape[1], height, width,
                                  device=x.device, dtype=torch.float32)
            w = (_ramp(th, overlap, x.device)[:, None] * _ramp(tw, overlap, x.device)[None, :])
            out[:, :, top:top + th, left:left + tw] += piece.float() * w
            weight[:, :, top:top + th, left:left + tw] += w
    assert out is not None
    return (out / weight).to(dtype)
