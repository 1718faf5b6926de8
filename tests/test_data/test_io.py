"""Image reading/writing, tensor conversion and folder listing (restorekit.data.io)."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image as PILImage

from restorekit.data import io, list_images, read_image, to_image, to_tensor, write_image
from restorekit.errors import DataError, ImageReadError, UsageError
from restorekit.testing import deadline


def _random_image(h: int = 24, w: int = 36, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((h, w, 3), dtype=np.float32)


# -- round trips ---------------------------------------------------------------------------------
@pytest.mark.parametrize(("suffix", "bits", "tol"), [
    (".png", 8, 0.5 / 255 + 1e-6),
    (".PNG", 8, 0.5 / 255 + 1e-6),
    (".png", 16, 0.5 / 65535 + 1e-7),
    (".bmp", 8, 0.5 / 255 + 1e-6),
    (".tif", 8, 0.5 / 255 + 1e-6),
    (".tiff", 16, 0.5 / 65535 + 1e-7),
])
def test_lossless_round_trip(tmp_path, suffix, bits, tol):
    image = _random_image()
    path = tmp_path / f"img{suffix}"
    write_image(path, image, bits=bits)
    back = read_image(path)
    assert back.dtype == np.float32 and back.shape == image.shape
    assert np.abs(back - image).max() <= tol


def test_png16_is_really_16_bit(tmp_path):
    # Values one 16-bit step apart must survive (an 8-bit file would merge them).
    image = np.zeros((4, 4, 3), np.float32)
    image[..., 0] = 1000 / 65535
    image[..., 1] = 1001 / 65535
    image[..., 2] = 65535 / 65535
    path = tmp_path / "deep.png"
    write_image(path, image, bits=16)
    header = path.read_bytes()[:32]
    assert header[24] == 16 and header[25] == 2  # IHDR bit depth and colour type RGB
    back = read_image(path)
    assert np.round(back[0, 0] * 65535).tolist() == [1000, 1001, 65535]


def test_png16_gray_read(tmp_path):
    values = np.array([[0, 1, 257, 65535]], dtype=np.uint16)
    path = tmp_path / "gray16.png"
    PILImage.fromarray(values).save(path)
    back = read_image(path)
    assert back.shape == (1, 4, 3)
    assert np.round(back[0, :, 1] * 65535).tolist() == [0, 1, 257, 65535]


@pytest.mark.parametrize("suffix", [".jpg", ".jpeg", ".JPG"])
def test_jpeg_round_trip(tmp_path, suffix):
    yy, xx = np.mgrid[0:32, 0:48] / 48.0
    image = np.stack([xx, yy, 0.5 * np.ones_like(xx)], axis=-1).astype(np.float32)
    path = tmp_path / f"smooth{suffix}"
    write_image(path, image)
    back = read_image(path)
    assert back.shape == image.shape
    assert np.abs(back - image).mean() < 0.01


def test_write_clips_creates_parents_and_leaves_no_temp(tmp_path):
    image = np.full((5, 6, 3), 2.0, np.float32)
    image[0, 0] = -1.0
    path = tmp_path / "a" / "b" / "out.png"
    write_image(path, image)
    back = read_image(path)
    assert back[0, 0].tolist() == [0, 0, 0] and back[1, 1].tolist() == [1, 1, 1]
    assert [p.name for p in path.parent.iterdir()] == ["out.png"]


def test_write_overwrites_existing_file(tmp_path):
    path = tmp_path / "x.png"
    write_image(path, np.zeros((3, 3, 3), np.float32))
    write_image(path, np.ones((3, 3, 3), np.float32))
    assert read_image(path).min() == 1.0


def test_write_unknown_suffix(tmp_path):
    with pytest.raises(UsageError, match="out.gif"):
        write_image(tmp_path / "out.gif", _random_image())


def test_write_bad_bits(tmp_path):
    with pytest.raises(UsageError, match="x.jpg"):
        write_image(tmp_path / "x.jpg", _random_image(), bits=16)
    with pytest.raises(UsageError, match="bits"):
        write_image(tmp_path / "x.png", _random_image(), bits=12)


def test_write_bad_shape(tmp_path):
    with pytest.raises(UsageError, match="shape"):
        write_image(tmp_path / "x.png", np.zeros((4, 4, 4), np.float32))


# -- conversions on read ------------------------------------------------------------------------
def test_exif_orientation_is_applied(tmp_path):
    # 20x40 (HxW): left half red, right half blue; orientation 6 = rotate 90 clockwise.
    arr = np.zeros((20, 40, 3), np.uint8)
    arr[:, :20, 0] = 255
    arr[:, 20:, 2] = 255
    im = PILImage.fromarray(arr)
    exif = im.getexif()
    exif[0x0112] = 6
    path = tmp_path / "rotated.jpg"
    im.save(path, exif=exif.tobytes(), quality=95)
    back = read_image(path)
    assert back.shape == (40, 20, 3)
    top, bottom = back[:15].mean(axis=(0, 1)), back[25:].mean(axis=(0, 1))
    assert top[0] > 0.8 and top[2] < 0.2  # the left (red) half is now on top
    assert bottom[2] > 0.8 and bottom[0] < 0.2


def test_grayscale_becomes_rgb(tmp_path):
    values = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    path = tmp_path / "gray.png"
    PILImage.fromarray(values, "L").save(path)
    back = read_image(path)
    assert back.shape == (3, 4, 3)
    assert np.array_equal(back[..., 0], back[..., 2])
    assert np.allclose(back[..., 1], values / 255)


def test_float_mode_tiff_via_pillow_and_tifffile(tmp_path):
    values = np.linspace(0, 1, 12, dtype=np.float32).reshape(3, 4)
    path = tmp_path / "float.tif"
    PILImage.fromarray(values, "F").save(path)
    back = read_image(path)
    assert back.shape == (3, 4, 3) and np.allclose(back[..., 0], values)


def test_palette_becomes_rgb(tmp_path):
    arr = np.zeros((4, 6, 3), np.uint8)
    arr[:2] = (255, 0, 0)
    arr[2:] = (0, 128, 255)
    path = tmp_path / "palette.png"
    PILImage.fromarray(arr).convert("P", palette=PILImage.Palette.ADAPTIVE, colors=4).save(path)
    assert PILImage.open(path).mode == "P"
    back = read_image(path)
    assert np.allclose(back, arr / 255, atol=1e-6)


def test_alpha_dropped_with_one_warning(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(io, "_alpha_warned", False)
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., 1] = 200
    rgba[..., 3] = 50
    for name in ("a.png", "b.png"):
        PILImage.fromarray(rgba, "RGBA").save(tmp_path / name)
    PILImage.fromarray(rgba[..., 1:3], "LA").save(tmp_path / "c.png")
    images = [read_image(tmp_path / n) for n in ("a.png", "b.png", "c.png")]
    assert all(im.shape == (4, 4, 3) for im in images)
    assert np.allclose(images[0][..., 1], 200 / 255)  # colour kept, alpha not blended
    assert capsys.readouterr().err.splitlines() == [
        f"restorekit: warning: {tmp_path / 'a.png'}: image has an alpha channel; it is dropped "
        "(RGB is used). This warning is shown once."]


# -- bad inputs ---------------------------------------------------------------------------------
def _assert_read_error(path, *extra):
    with pytest.raises(ImageReadError) as info:
        read_image(path)
    message = str(info.value)
    assert path.name in message and "cannot read image" in message
    assert "\n" not in message
    for text in extra:
        assert text in message
    return message


def test_missing_file(tmp_path):
    _assert_read_error(tmp_path / "nope.png", "no such file")


def test_folder_is_not_an_image(tmp_path):
    (tmp_path / "dir.png").mkdir()
    _assert_read_error(tmp_path / "dir.png")


def test_non_image(tmp_path):
    path = tmp_path / "notes.png"
    path.write_text("this is not an image\n" * 20)
    _assert_read_error(path)


def test_corrupt_bytes(tmp_path):
    path = tmp_path / "corrupt.jpg"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 4000, np.uint8).tobytes())
    _assert_read_error(path)


def test_corrupt_png_data(tmp_path):
    path = tmp_path / "flipped.png"
    write_image(path, _random_image(32, 32))
    data = bytearray(path.read_bytes())
    for k in range(60, 90):
        data[k] ^= 0xFF  # inside IDAT: checksum and zlib stream are broken
    path.write_bytes(bytes(data))
    _assert_read_error(path)


@pytest.mark.parametrize(("suffix", "bits"), [(".png", 8), (".png", 16), (".jpg", 8)])
def test_truncated_file(tmp_path, suffix, bits):
    path = tmp_path / f"cut{suffix}"
    write_image(path, _random_image(64, 64), bits=bits)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    _assert_read_error(path)


def test_unknown_format(tmp_path):
    path = tmp_path / "anim.gif"
    # A valid but unsupported-by-suffix file still reads if Pillow knows it; a file of
    # an unknown format does not.
    path.write_bytes(b"RIFF0000WXYZ" + bytes(100))
    _assert_read_error(path)


# -- tensors ------------------------------------------------------------------------------------
def test_to_tensor_and_back():
    image = _random_image(5, 7)
    t = to_tensor(image)
    assert t.shape == (3, 5, 7) and t.dtype == torch.float32 and t.is_contiguous()
    assert np.array_equal(to_image(t), image)
    t[0, 0, 0] = 99.0  # the tensor does not share memory with the image
    assert image[0, 0, 0] != 99.0


def test_to_image_clamps_detaches_and_accepts_batch_of_one():
    t = torch.linspace(-1, 2, 3 * 4 * 5).reshape(1, 3, 4, 5).requires_grad_()
    image = to_image(t * 1.0)
    assert image.shape == (4, 5, 3) and image.dtype == np.float32
    assert image.min() == 0.0 and image.max() == 1.0
    with pytest.raises(ValueError, match="shape"):
        to_image(torch.zeros(3, 4))


# -- listing ------------------------------------------------------------------------------------
def test_list_images(tmp_path):
    for name in ("b.PNG", "a.jpg", "c.tiff", "d.txt", ".hidden.png", "e.Jpeg"):
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "sub.png").mkdir()
    names = [p.name for p in list_images(tmp_path)]
    assert names == ["a.jpg", "b.PNG", "c.tiff", "e.Jpeg"]
    with pytest.raises(DataError, match="missing"):
        list_images(tmp_path / "missing")


def test_one_pixel_limit_for_every_format(tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 11: TIFF had no limit (a small file declaring 20000x20000 tried to allocate
    4.5 GiB); every format now has RESTOREKIT_MAX_PIXELS, checked before decoding."""
    import tifffile

    from restorekit.data import max_pixels
    from restorekit.data.io import MAX_PIXELS

    image = np.full((40, 50, 3), 0.5, np.float32)
    for name in ("a.png", "a.jpg", "a.bmp", "a.tif"):
        write_image(tmp_path / name, image)
    write_image(tmp_path / "b.png", image, bits=16)
    tifffile.imwrite(tmp_path / "planar.tif", np.zeros((3, 40, 50), np.uint8),
                     photometric="rgb", planarconfig="separate")
    assert max_pixels() == MAX_PIXELS
    monkeypatch.setenv("RESTOREKIT_MAX_PIXELS", "2000")
    for name in ("a.png", "a.jpg", "a.bmp", "a.tif", "b.png", "planar.tif"):
        assert read_image(tmp_path / name).shape == (40, 50, 3)
    monkeypatch.setenv("RESTOREKIT_MAX_PIXELS", "1999")
    for name in ("a.png", "a.jpg", "a.bmp", "a.tif", "b.png", "planar.tif"):
        with pytest.raises(ImageReadError, match="50x40 is 2000 pixels, over the limit of 1999"):
            read_image(tmp_path / name)
    monkeypatch.setenv("RESTOREKIT_MAX_PIXELS", "lots")
    with pytest.raises(UsageError, match="RESTOREKIT_MAX_PIXELS='lots'"):
        read_image(tmp_path / "a.png")


def test_write_failures_are_one_line_and_leave_nothing(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from restorekit.errors import OutputError

    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputError, match="file/a.png: cannot write image"):
        write_image(tmp_path / "file" / "a.png", np.zeros((4, 4, 3), np.float32))

    def full(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", full)
    with pytest.raises(OutputError, match=r"out.png: cannot write image \(No space left"):
        write_image(tmp_path / "out.png", np.zeros((4, 4, 3), np.float32))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


# -- CMYK and other TIFF colour spaces (issue 19) -----------------------------------------------
def _dark_rgb_and_cmyk() -> tuple[np.ndarray, np.ndarray]:
    """A dark photo-like RGB image (mean about 0.07) and its CMYK with full black
    generation (K = 1 - max(R, G, B)), both 8-bit, so K carries most of the image."""
    yy, xx = np.mgrid[0:32, 0:48]
    rgb = np.stack([0.04 + 0.1 * xx / 48, 0.02 + 0.08 * yy / 32,
                    0.06 + 0.04 * (xx + yy) / 80], axis=-1)
    rgb = np.round(rgb * 255) / 255
    k = 1 - rgb.max(axis=2, keepdims=True)
    cmy = (1 - rgb - k) / (1 - k)
    cmyk = np.round(np.concatenate([cmy, k], axis=2) * 255).astype(np.uint8)
    return rgb.astype(np.float32), cmyk


def test_cmyk_tiff_and_jpeg_read_as_rgb(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """Was: a CMYK TIFF read as RGBA (K taken for alpha): mean 0.93 for a 0.07 image and
    "image has an alpha channel; it is dropped". A CMYK JPEG was right."""
    import tifffile

    monkeypatch.setattr(io, "_alpha_warned", False)
    rgb, cmyk = _dark_rgb_and_cmyk()
    assert rgb.mean() == pytest.approx(0.07, abs=0.01)
    PILImage.fromarray(cmyk, "CMYK").save(tmp_path / "pillow.tif")
    tifffile.imwrite(tmp_path / "tifffile.tif", cmyk, photometric="separated")
    tifffile.imwrite(tmp_path / "deep.tif", cmyk.astype(np.uint16) * 257,
                     photometric="separated")
    tifffile.imwrite(tmp_path / "planar.tif", np.moveaxis(cmyk, -1, 0),
                     photometric="separated", planarconfig="separate")
    PILImage.fromarray(cmyk, "CMYK").save(tmp_path / "photo.jpg", quality=95)
    for name in ("pillow.tif", "tifffile.tif", "deep.tif", "planar.tif"):
        back = read_image(tmp_path / name)
        assert back.shape == rgb.shape
        assert np.abs(back - rgb).max() < 2.5 / 255, name
        assert back.mean() == pytest.approx(rgb.mean(), abs=1e-3), name
    jpeg = read_image(tmp_path / "photo.jpg")
    assert np.abs(jpeg - rgb).mean() < 0.01 and jpeg.mean() == pytest.approx(rgb.mean(),
                                                                             abs=0.01)
    assert "alpha" not in capsys.readouterr().err


def test_cmyk_tiff_with_alpha_warns_and_keeps_colours(tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str],
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    import tifffile

    monkeypatch.setattr(io, "_alpha_warned", False)
    rgb, cmyk = _dark_rgb_and_cmyk()
    alpha = np.full((*cmyk.shape[:2], 1), 128, np.uint8)
    tifffile.imwrite(tmp_path / "a.tif", np.concatenate([cmyk, alpha], axis=2),
                     photometric="separated", extrasamples=["unassalpha"])
    back = read_image(tmp_path / "a.tif")
    assert np.abs(back - rgb).max() < 2.5 / 255
    assert capsys.readouterr().err.splitlines() == [
        f"restorekit: warning: {tmp_path / 'a.tif'}: image has an alpha channel; it is dropped "
        "(RGB is used). This warning is shown once."]


def test_tiff_colour_spaces(tmp_path: Path) -> None:
    """Was: min-is-white grey read inverted, a palette image read as its grey indices, and
    any other colour space (CIELab, inks other than CMYK) read as if it were RGB."""
    import tifffile

    grey = np.array([[0, 64, 255]], np.uint8)
    tifffile.imwrite(tmp_path / "white.tif", grey, photometric="miniswhite")
    assert np.allclose(read_image(tmp_path / "white.tif")[0, :, 0], 1 - grey[0] / 255)
    colormap = np.zeros((3, 256), np.uint16)
    colormap[:, 1] = (65535, 0, 32768)
    colormap[:, 2] = (0, 65535, 0)
    tifffile.imwrite(tmp_path / "palette.tif", np.array([[1, 2, 0]], np.uint8),
                     photometric="palette", colormap=colormap)
    assert np.allclose(read_image(tmp_path / "palette.tif")[0],
                       [[1, 0, 32768 / 65535], [0, 1, 0], [0, 0, 0]], atol=1e-6)
    tifffile.imwrite(tmp_path / "lab.tif", np.zeros((4, 4, 3), np.uint8), photometric="cielab")
    _assert_read_error(tmp_path / "lab.tif", "unsupported TIFF colour space (CIELAB; RGB, "
                                             "grey, palette, CMYK and JPEG YCbCr are read)")
    tifffile.imwrite(tmp_path / "inks.tif", np.zeros((4, 4, 4), np.uint8),
                     photometric="separated", extratags=[(332, 3, 1, 2, True)])  # InkSet 2
    _assert_read_error(tmp_path / "inks.tif", "unsupported TIFF colour space (inks other "
                                              "than CMYK")


# -- only regular files are opened (issue 19) ---------------------------------------------------
def special_files(folder: Path) -> dict[str, str]:
    """A FIFO, a socket and a link to /dev/null named like images in ``folder``: the name
    -> the kind the error line names."""
    if not hasattr(os, "mkfifo"):
        pytest.skip("POSIX special files")
    folder.mkdir(parents=True, exist_ok=True)
    os.mkfifo(folder / "fifo.png")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    cwd = Path.cwd()
    try:  # a relative path: AF_UNIX paths are limited to about 100 bytes
        os.chdir(folder)
        sock.bind("socket.png")
    finally:
        os.chdir(cwd)
        sock.close()
    (folder / "null.png").symlink_to(os.devnull)
    return {"fifo.png": "a FIFO (named pipe)", "socket.png": "a socket",
            "null.png": "a character device"}


def test_special_files_are_refused_without_opening(tmp_path: Path) -> None:
    """Was: read_image (and image_size) on a FIFO named like an image blocked forever in
    open(); a socket was "corrupt", /dev/null "not an image"."""
    kinds = special_files(tmp_path)
    write_image(tmp_path / "real.png", _random_image(4, 4))
    with deadline(20):
        for name, kind in kinds.items():
            for read in (read_image, io.image_size):
                with pytest.raises(ImageReadError) as info:
                    read(tmp_path / name)
                assert str(info.value) == (f"{tmp_path / name}: cannot read image: it is "
                                           f"{kind}, not a regular file")
        with pytest.raises(ImageReadError, match="it is a character device"):
            read_image(os.devnull)
        assert [p.name for p in list_images(tmp_path)] == ["real.png"]


# -- atomic writes (issue 20) -------------------------------------------------------------------
def test_write_image_is_synced_and_atomic(tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Was: write_image renamed without fsync (a crash could leave an empty file)."""
    from restorekit.atomic import atomic_path

    synced = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        synced.append(os.path.realpath(f"/proc/self/fd/{fd}") if os.path.isdir("/proc")
                      else fd)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    path = tmp_path / "a.png"
    write_image(path, _random_image(4, 4))
    assert len(synced) == 2  # the file (before its rename), then the folder
    if os.path.isdir("/proc"):
        assert Path(synced[0]).name.startswith(".a.png.") and synced[1] == str(tmp_path)
    before = path.read_bytes()
    with pytest.raises(RuntimeError), atomic_path(path) as tmp:
        tmp.write_bytes(b"half an image")
        raise RuntimeError("crash while writing")
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["a.png"]
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask
