"""Reading and writing images, and converting them to and from tensors.

An image is a ``numpy`` array of shape ``(H, W, 3)``, dtype ``float32``, RGB, with
values in ``[0, 1]``. ``read_image`` produces one from PNG (8/16 bit), JPEG, BMP and
TIFF files; ``write_image`` stores one by the file suffix.

Notes on formats:
    * PNG and JPEG/BMP go through Pillow. Pillow decodes 16-bit RGB(A) PNGs to 8 bits,
      so those are decoded twice (high and low bytes) and recombined; 16-bit RGB PNGs
      are written by a small built-in encoder (zlib) because Pillow cannot write them.
    * TIFF goes through ``tifffile`` (8/16-bit integer and float samples; first page;
      grey, RGB, palette, CMYK and JPEG-compressed YCbCr colour spaces, others refused).
    * CMYK (TIFF, JPEG) becomes RGB as ``(1 - C)(1 - K)`` (no colour management).
    * Only regular files are opened: a FIFO, device or socket is refused after ``stat``
      (opening a FIFO would wait forever for a writer).
    * The EXIF orientation of JPEG/PNG files is applied; alpha is dropped (warned once).
    * Every format has the same pixel limit, checked from the header before decoding:
      :data:`MAX_PIXELS` (width x height), overridden by ``RESTOREKIT_MAX_PIXELS``.
"""

from __future__ import annotations

import contextlib
import os
import stat
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from PIL import Image as PILImage
from PIL import ImageFile, ImageOps

from restorekit.atomic import atomic_path
from restorekit.errors import (
    DataError,
    ImageReadError,
    OutputError,
    UsageError,
    one_line,
    os_reason,
    warn,
)
from restorekit.types import Image

__all__ = [
    "IMAGE_SUFFIXES",
    "MAX_PIXELS",
    "check_image_file",
    "image_size",
    "max_pixels",
    "list_images",
    "read_image",
    "to_image",
    "to_tensor",
    "write_image",
]


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
"""File suffixes ``list_images`` picks up (compared case-insensitively)."""

# Truncated files must fail, not decode into a half-grey image.
ImageFile.LOAD_TRUNCATED_IMAGES = False

MAX_PIXELS = 178_956_970
"""Default limit on width x height for every format (Pillow's decompression-bomb limit,
about 13400 x 13400): larger files are refused before they are decoded."""
ENV_MAX_PIXELS = "RESTOREKIT_MAX_PIXELS"

_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_TIFF_MAGICS = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
_alpha_warned = False
_TIFF_COLOUR_SPACES = (0, 1, 2, 3, 5)
"""TIFF photometric interpretations read: min-is-white, min-is-black, RGB, palette, separated
(CMYK). Others (uncompressed YCbCr, CIELab, ...) need a conversion tifffile does not do."""


def _warn_alpha(path: Path) -> None:
    global _alpha_warned
    if not _alpha_warned:
        _alpha_warned = True
        warn(f"{path}: image has an alpha channel; it is dropped (RGB is used). "
             "This warning is shown once.")


# -- reading ---------------------------------------------------------------------------------
def max_pixels() -> int:
    """The pixel limit: ``RESTOREKIT_MAX_PIXELS`` (a positive integer), else :data:`MAX_PIXELS`."""
    raw = os.environ.get(ENV_MAX_PIXELS, "").strip().replace("_", "")
    if not raw:
        return MAX_PIXELS
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value <= 0:
        raise UsageError(f"{ENV_MAX_PIXELS}={raw!r} is not a positive whole number of pixels")
    return value


def _check_pixels(path: Path, width: int, height: int) -> None:
    limit = max_pixels()
    if width * height > limit:
        raise ImageReadError(f"{path}: cannot read image: {width}x{height} is "
                             f"{width * height} pixels, over the limit of {limit} "
                             f"({ENV_MAX_PIXELS} raises it)")


@contextlib.contextmanager
def _pillow_limit() -> Iterator[None]:
    """Pillow's own bomb check follows ours (so ``RESTOREKIT_MAX_PIXELS`` can raise it)."""
    old = PILImage.MAX_IMAGE_PIXELS
    PILImage.MAX_IMAGE_PIXELS = max(max_pixels(), old or 0)
    try:
        yield
    finally:
        PILImage.MAX_IMAGE_PIXELS = old


_SPECIAL_FILES = ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"),
                  (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


def check_image_file(path: str | os.PathLike[str]) -> None:
    """Refuse, from ``stat`` alone, a path that is not a regular file (links are followed).

    Opening a FIFO blocks until a writer comes, and a device or socket is no image, so
    nothing opens them: ``ImageReadError("<path>: cannot read image: it is a FIFO (named
    pipe), not a regular file")`` (and likewise for a folder, a missing file).
    """
    path = Path(path)
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise ImageReadError(f"{path}: cannot read image: no such file") from None
    except OSError as exc:
        raise ImageReadError(f"{path}: cannot read image: {os_reason(exc)}") from None
    if stat.S_ISREG(mode):
        return
    if stat.S_ISDIR(mode):
        raise ImageReadError(f"{path}: cannot read image: it is a folder")
    kind = next((name for test, name in _SPECIAL_FILES if test(mode)), "a special file")
    raise ImageReadError(f"{path}: cannot read image: it is {kind}, not a regular file")


def read_image(path: str | os.PathLike[str]) -> Image:
    """Read an image file as float32 RGB ``(H, W, 3)`` in [0, 1].

    Raises ``ImageReadError("<path>: cannot read image: <reason>")`` for a missing,
    unreadable, corrupt, truncated or unsupported file, and for anything but a regular
    file (:func:`check_image_file`).
    """
    path = Path(path)
    check_image_file(path)
    try:
        with open(path, "rb") as fh:
            head = fh.read(32)
        if head[:4] in _TIFF_MAGICS:
            image = _read_tiff(path)
        else:
            with _pillow_limit():
                if head.startswith(_PNG_MAGIC) and _is_png16_color(head):
                    image = _read_png16_color(path)
                else:
                    image = _read_pillow(path)
    except (ImageReadError, UsageError):
        raise
    except FileNotFoundError:
        raise ImageReadError(f"{path}: cannot read image: no such file") from None
    except IsADirectoryError:
        raise ImageReadError(f"{path}: cannot read image: it is a folder") from None
    except PermissionError:
        raise ImageReadError(f"{path}: cannot read image: permission denied") from None
    except PILImage.UnidentifiedImageError:
        raise ImageReadError(f"{path}: cannot read image: not an image or an unsupported "
                             f"format") from None
    except (OSError, SyntaxError, ValueError, EOFError, struct.error, zlib.error) as exc:
        raise ImageReadError(f"{path}: cannot read image: corrupt or truncated file "
                             f"({one_line(exc, with_type=False)})") from None
    except Exception as exc:  # any decoder failure is a read error for the user
        raise ImageReadError(f"{path}: cannot read image: {one_line(exc)}") from None
    if image.ndim != 3 or image.shape[2] != 3 or image.shape[0] == 0 or image.shape[1] == 0:
        raise ImageReadError(f"{path}: cannot read image: unsupported shape {image.shape}")
    return image


def image_size(path: str | os.PathLike[str]) -> tuple[int, int]:
    """(H, W) of an image file from its header where possible (EXIF rotation applied);
    an ``ImageReadError`` when it cannot be read."""
    path = Path(path)
    check_image_file(path)
    try:
        with PILImage.open(path) as im:
            w, h = im.size
            if im.getexif().get(0x0112, 1) in (5, 6, 7, 8):
                w, h = h, w
            return h, w
    except Exception:
        return read_image(path).shape[:2]


def _read_pillow(path: Path) -> Image:
    with PILImage.open(path) as im:
        _check_pixels(path, *im.size)
        im.load()  # force the full decode so corrupt/truncated data fails here
        im = ImageOps.exif_transpose(im)
        return _pil_to_array(im, path)


def _pil_to_array(im: PILImage.Image, path: Path) -> Image:
    mode = im.mode
    if mode.startswith("I;16"):
        gray = np.asarray(im).astype(np.float32) / np.float32(65535)
        return _gray_to_rgb(gray)
    if mode == "I":
        gray = np.asarray(im).astype(np.float32) / np.float32(65535)
        return _gray_to_rgb(np.clip(gray, 0, 1))
    if mode == "F":
        gray = np.nan_to_num(np.asarray(im).astype(np.float32))
        return _gray_to_rgb(np.clip(gray, 0, 1))
    has_alpha = mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
        mode == "P" and "transparency" in im.info)
    if has_alpha:
        _warn_alpha(path)
        im = im.convert("RGBA").convert("RGB")
    elif mode != "RGB":
        im = im.convert("RGB")
    return np.asarray(im).astype(np.float32) / np.float32(255)


def _gray_to_rgb(gray: np.ndarray) -> Image:
    return np.ascontiguousarray(np.repeat(gray[:, :, None], 3, axis=2), dtype=np.float32)


def _is_png16_color(head: bytes) -> bool:
    """True for a 16-bit RGB or RGBA PNG (IHDR: bit depth 16, colour type 2 or 6)."""
    if len(head) < 26 or head[12:16] != b"IHDR":
        return False
    return head[24] == 16 and head[25] in (2, 6)


def _read_png16_color(path: Path) -> Image:
    """Decode a 16-bit RGB(A) PNG losslessly through Pillow's PNG decoder.

    Pillow only offers 8 bits per channel for these files; decoding once with the
    big-endian and once with the little-endian unpacker yields the high and low bytes.
    """
    planes = []
    for rawmode in ("RGB;16B", "RGB;16L"):
        with PILImage.open(path) as im:
            _check_pixels(path, *im.size)
            mode = im.mode
            if len(im.tile) != 1 or im.tile[0][0] != "zip":
                raise OSError("unexpected PNG layout")
            tile = im.tile[0]
            raw = rawmode if mode == "RGB" else rawmode.replace("RGB", "RGBA")
            im.tile = [tile._replace(args=raw)]
            im.load()
            exif_orientation = im.getexif().get(0x0112, 1)
            planes.append(np.asarray(im))
    high, low = planes
    values = (high.astype(np.uint16) << 8) | low.astype(np.uint16)
    if values.shape[2] == 4:
        _warn_alpha(path)
        values = values[:, :, :3]
    image = values.astype(np.float32) / np.float32(65535)
    return _apply_orientation(image, exif_orientation)


def _apply_orientation(image: Image, orientation: int) -> Image:
    """Apply an EXIF orientation (1-8) to an array."""
    ops = {2: lambda a: a[:, ::-1], 3: lambda a: a[::-1, ::-1], 4: lambda a: a[::-1],
           5: lambda a: a.transpose(1, 0, 2), 6: lambda a: np.rot90(a, -1),
           7: lambda a: a[::-1, ::-1].transpose(1, 0, 2), 8: lambda a: np.rot90(a, 1)}
    op = ops.get(int(orientation))
    return np.ascontiguousarray(op(image)) if op else image


def _read_tiff(path: Path) -> Image:
    """The first page of a TIFF, by its colour space: grey (black or white is zero), RGB,
    palette, or CMYK (``(1 - C)(1 - K)``, as Pillow converts a CMYK JPEG); others refused."""
    import tifffile
    from tifffile import PHOTOMETRIC, PLANARCONFIG

    with tifffile.TiffFile(path) as tif:
        page = tif.pages[0]
        _check_pixels(path, int(page.imagewidth), int(page.imagelength))
        photometric = page.photometric
        inkset = page.tags.valueof("InkSet", 1)  # 1 = CMYK, the default
        if photometric == PHOTOMETRIC.YCBCR and page.compression in (6, 7):
            photometric = PHOTOMETRIC.RGB  # tifffile's JPEG decoder (imagecodecs) gives RGB
        if photometric not in _TIFF_COLOUR_SPACES or (
                photometric == PHOTOMETRIC.SEPARATED and inkset != 1):
            name = getattr(photometric, "name", str(photometric))
            what = "inks other than CMYK" if photometric == PHOTOMETRIC.SEPARATED else name
            raise ImageReadError(f"{path}: cannot read image: unsupported TIFF colour space "
                                 f"({what}; RGB, grey, palette, CMYK and JPEG YCbCr are "
                                 f"read)")
        colormap = page.colormap if photometric == PHOTOMETRIC.PALETTE else None
        arr = page.asarray()
        if arr.ndim == 3 and page.planarconfig == PLANARCONFIG.SEPARATE:
            arr = np.moveaxis(arr, 0, -1)  # planar (C, H, W) storage
    if colormap is not None:  # indices into 16-bit R, G and B tables
        arr = np.moveaxis(np.asarray(colormap)[:, arr], 0, -1)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if arr.dtype == np.uint8:
        image = arr.astype(np.float32) / np.float32(255)
    elif arr.dtype == np.uint16:
        image = arr.astype(np.float32) / np.float32(65535)
    elif arr.dtype == bool:
        image = arr.astype(np.float32)
    elif np.issubdtype(arr.dtype, np.floating):
        image = np.clip(np.nan_to_num(arr.astype(np.float32)), 0, 1)
    else:
        raise OSError(f"unsupported TIFF sample type {arr.dtype}")
    if photometric == PHOTOMETRIC.MINISWHITE:
        image = 1 - image
    colours = 4 if photometric == PHOTOMETRIC.SEPARATED else 3
    if image.ndim == 3 and image.shape[2] == 2 and colours == 3:  # grey + alpha
        _warn_alpha(path)
        image = image[:, :, 0]
    if image.ndim == 2 and colours == 3:
        return _gray_to_rgb(image)
    if image.ndim != 3 or image.shape[2] not in (colours, colours + 1):
        raise OSError(f"unsupported TIFF layout {arr.shape}")
    if image.shape[2] == colours + 1:
        _warn_alpha(path)
    if colours == 4:
        image = (1 - image[:, :, :3]) * (1 - image[:, :, 3:4])
    return np.ascontiguousarray(image[:, :, :3], dtype=np.float32)


# -- writing ---------------------------------------------------------------------------------
def write_image(path: str | os.PathLike[str], image: Image, bits: int = 8) -> None:
    """Write ``image`` by the suffix of ``path``: .png (8/16 bit), .jpg/.jpeg, .bmp, .tif/.tiff.

    Values are clipped to [0, 1]; parent folders are created; the file appears
    atomically (written to a temporary file in the same folder, then renamed).
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in IMAGE_SUFFIXES:
        raise UsageError(f"{path}: cannot write image: unknown suffix {path.suffix!r} "
                         f"(use one of {', '.join(IMAGE_SUFFIXES)})")
    if bits not in (8, 16):
        raise UsageError(f"{path}: cannot write image: bits must be 8 or 16 (got {bits!r})")
    if bits == 16 and suffix not in (".png", ".tif", ".tiff"):
        raise UsageError(f"{path}: cannot write image: 16-bit output needs .png or .tif")
    arr = np.asarray(image)
    if arr.ndim == 2:
        arr = np.repeat(arr[:, :, None], 3, axis=2)
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise UsageError(f"{path}: cannot write image: expected shape (H, W, 3), "
                         f"got {arr.shape}")
    arr = np.clip(np.nan_to_num(arr.astype(np.float32)), 0, 1)
    scale = 65535 if bits == 16 else 255
    quant = np.round(arr * scale).astype(np.uint16 if bits == 16 else np.uint8)

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp, open(tmp, "wb") as fh:
            if suffix in (".tif", ".tiff"):
                import tifffile

                tifffile.imwrite(fh, quant, photometric="rgb")
            elif suffix == ".png" and bits == 16:
                fh.write(_encode_png16(quant))
            else:
                pil = PILImage.fromarray(quant, "RGB")
                if suffix == ".png":
                    pil.save(fh, format="PNG")
                elif suffix == ".bmp":
                    pil.save(fh, format="BMP")
                else:
                    pil.save(fh, format="JPEG", quality=95)
    except OSError as exc:
        raise OutputError(f"{path}: cannot write image ({os_reason(exc)})") from None


def _encode_png16(rgb: np.ndarray) -> bytes:
    """A 16-bit RGB PNG (filter type 0 on every row, zlib level 6)."""
    h, w, _ = rgb.shape
    rows = np.zeros((h, 1 + w * 6), dtype=np.uint8)
    rows[:, 1:] = rgb.astype(">u2").reshape(h, w * 3).view(np.uint8)

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0)
    return (_PNG_MAGIC + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(rows.tobytes(), 6)) + chunk(b"IEND", b""))


# -- tensors ---------------------------------------------------------------------------------
def to_tensor(image: Image) -> torch.Tensor:
    """An image ``(H, W, 3)`` as a contiguous float32 tensor ``(3, H, W)``."""
    arr = np.asarray(image)
    if arr.ndim != 3:
        raise ValueError(f"to_tensor expects an image of shape (H, W, C), got {arr.shape}")
    chw = np.ascontiguousarray(arr.transpose(2, 0, 1), dtype=np.float32)
    return torch.from_numpy(chw)


def to_image(tensor: torch.Tensor) -> Image:
    """A tensor ``(3, H, W)`` (or ``(1, 3, H, W)``) as an image, clamped to [0, 1]."""
    t = tensor.detach()
    if t.dim() == 4 and t.shape[0] == 1:
        t = t[0]
    if t.dim() != 3:
        raise ValueError(f"to_image expects a tensor of shape (C, H, W), got {tuple(t.shape)}")
    t = t.to(device="cpu", dtype=torch.float32).clamp(0, 1)
    return np.ascontiguousarray(t.permute(1, 2, 0).numpy(), dtype=np.float32)


# -- folders ---------------------------------------------------------------------------------
def list_images(folder: str | os.PathLike[str]) -> list[Path]:
    """The image files directly in ``folder`` (by suffix, case-insensitive), sorted.

    Hidden files (names starting with ".") and anything but regular files (folders,
    FIFOs, devices, sockets: judged by ``stat``, never opened) are skipped.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: not a folder")
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and not p.name.startswith(".")
                  and p.suffix.lower() in IMAGE_SUFFIXES)
