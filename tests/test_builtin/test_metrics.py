"""Built-in metrics against scikit-image and hand computations: the full-reference ones
(restorekit.builtin.metrics, GT-mean included), the no-reference ones
(restorekit.builtin.noreference: LOE, statistics, NIQE) and LPIPS (restorekit.builtin.lpips),
on weights and parameters the tests make."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from skimage.color import deltaE_ciede2000, rgb2lab
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

import restorekit.builtin.metrics as met
import restorekit.builtin.noreference as nr
from restorekit.api import Metric, NoReferenceMetric
from restorekit.builtin import lpips as lp
from restorekit.errors import DataError


@pytest.fixture(scope="module")
def metrics() -> dict[str, Metric]:
    items: list[Metric] = []
    met.register_metrics(register=items.append)
    return {m.name: m for m in items}


@pytest.fixture
def images():
    rng = np.random.default_rng(0)
    target = rng.random((40, 50, 3)).astype(np.float32)
    prediction = np.clip(target + rng.normal(0, 0.1, target.shape), 0, 1).astype(np.float32)
    return prediction, target


def test_registered(metrics):
    assert sorted(metrics) == ["ciede2000", "mae", "psnr", "psnr_gtmean", "ssim", "ssim_gtmean"]
    assert metrics["psnr"].higher_is_better and metrics["ssim"].higher_is_better
    assert metrics["psnr_gtmean"].higher_is_better and metrics["ssim_gtmean"].higher_is_better
    assert not metrics["ciede2000"].higher_is_better and not metrics["mae"].higher_is_better
    assert all(m.description for m in metrics.values())


def test_against_scikit_image(metrics, images):
    pred, target = images
    p64, t64 = pred.astype(np.float64), target.astype(np.float64)
    assert metrics["psnr"].fn(pred, target) == pytest.approx(
        peak_signal_noise_ratio(t64, p64, data_range=1))
    assert metrics["ssim"].fn(pred, target) == pytest.approx(
        structural_similarity(t64, p64, channel_axis=2, data_range=1))
    assert metrics["ciede2000"].fn(pred, target) == pytest.approx(
        np.mean(deltaE_ciede2000(rgb2lab(t64), rgb2lab(p64))))
    assert metrics["mae"].fn(pred, target) == pytest.approx(np.mean(np.abs(p64 - t64)))


def test_identical_images(metrics, images):
    _, target = images
    assert metrics["psnr"].fn(target, target) == float("inf")
    assert metrics["ssim"].fn(target, target) == pytest.approx(1.0)
    assert metrics["ciede2000"].fn(target, target) == pytest.approx(0.0, abs=1e-9)
    assert metrics["mae"].fn(target, target) == 0.0


def test_known_values(metrics):
    a = np.full((16, 16, 3), 0.5, np.float32)
    b = a + np.float32(0.1)
    assert metrics["psnr"].fn(b, a) == pytest.approx(20.0, abs=1e-4)  # MSE 0.01
    assert metrics["mae"].fn(b, a) == pytest.approx(0.1, abs=1e-6)
    black, white = np.zeros_like(a), np.ones_like(a)
    assert metrics["ciede2000"].fn(black, white) == pytest.approx(100.0, abs=0.1)


def test_better_prediction_scores_better(metrics, images):
    pred, target = images
    closer = (0.5 * pred + 0.5 * target).astype(np.float32)
    for m in metrics.values():
        worse, better = m.fn(pred, target), m.fn(closer, target)
        assert (better > worse) if m.higher_is_better else (better < worse)


@pytest.mark.parametrize("name", ["psnr", "ssim", "ciede2000", "mae"])
def test_shape_mismatch(metrics, name):
    with pytest.raises(ValueError) as info:
        metrics[name].fn(np.zeros((8, 8, 3)), np.zeros((8, 9, 3)))
    assert "(8, 8, 3)" in str(info.value) and "(8, 9, 3)" in str(info.value)


# -- the GT-mean protocol --------------------------------------------------------------------
def test_gt_mean_by_hand(metrics) -> None:
    """HVI-CIDNet's measure.py --use_GT_mean: scale by mean grey (Rec. 601) of the ground
    truth over that of the output, clip to [0, 1]; then PSNR and SSIM as usual."""
    a, b = (0.2, 0.4, 0.1), (0.6, 0.9, 0.3)
    grey_a = 0.299 * 0.2 + 0.587 * 0.4 + 0.114 * 0.1  # 0.306
    grey_b = 0.299 * 0.6 + 0.587 * 0.9 + 0.114 * 0.3  # 0.7419
    ratio = 0.7 / ((grey_a + grey_b) / 2)  # the target is grey 0.7 everywhere
    prediction = np.array([[a, b] * 4] * 8, dtype=np.float32)  # 8x8, columns a b a b ...
    target = np.full((8, 8, 3), 0.7, dtype=np.float32)
    expected_a = [0.2 * ratio, 0.4 * ratio, 0.1 * ratio]
    expected_b = [0.6 * ratio, 1.0, 0.3 * ratio]  # 0.9 * 1.336 is clipped to 1
    scaled = met.gt_mean(prediction, target)
    np.testing.assert_allclose(scaled[0, 0], expected_a, rtol=1e-6)
    np.testing.assert_allclose(scaled[0, 1], expected_b, rtol=1e-6)
    mse = (sum((x - 0.7) ** 2 for x in expected_a) + sum((x - 0.7) ** 2 for x in expected_b)) / 6
    assert metrics["psnr_gtmean"].fn(prediction, target) == pytest.approx(
        10 * np.log10(1 / mse), rel=1e-5)
    assert metrics["ssim_gtmean"].fn(prediction, target) == pytest.approx(
        metrics["ssim"].fn(scaled.astype(np.float32), target), rel=1e-6)


def test_gt_mean_forgives_a_global_brightness_error(metrics, images) -> None:
    _, target = images
    dark = target * 0.5  # right up to brightness: the GT-mean protocol does not see it
    assert metrics["psnr_gtmean"].fn(dark, target) > 60
    assert metrics["psnr"].fn(dark, target) < 15
    black = np.zeros_like(target)  # nothing to scale: scored as it is
    assert metrics["psnr_gtmean"].fn(black, target) == metrics["psnr"].fn(black, target)


# -- no-reference metrics ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def no_reference() -> dict[str, NoReferenceMetric]:
    items: list[NoReferenceMetric] = []
    nr.register_metrics(register=items.append)
    return {m.name: m for m in items}


def test_no_reference_registered(no_reference) -> None:
    assert sorted(no_reference) == ["brightness", "colourfulness", "loe", "noise_sigma"]
    assert no_reference["loe"].needs_source and not no_reference["loe"].higher_is_better
    assert no_reference["brightness"].higher_is_better is None
    assert all(m.description for m in no_reference.values())


def test_loe_by_hand(no_reference) -> None:
    loe = no_reference["loe"]
    source = np.full((50, 50, 3), 10 / 255, dtype=np.float32)
    source[7, 9, 1] = 200 / 255  # lightness is the largest channel
    output = source.copy()
    output[7, 9] = 5 / 255  # the brightest pixel made the darkest
    # (7, 9) now loses its order with each of the 2499 others, and each of them with it
    assert loe.score(output, source) == pytest.approx(2 * 2499 / 2500)
    output[7, 9] = 10 / 255  # now as bright as the others: they, not it, flip their order
    assert loe.score(output, source) == pytest.approx(2499 / 2500)
    assert loe.score(source, source) == 0.0
    brighter = np.clip(source * 2, 0, 1)  # an increasing curve keeps every order
    assert loe.score(brighter, source) == 0.0


def test_loe_subsamples_to_a_short_side_of_50(no_reference) -> None:
    source = np.full((100, 120, 3), 10 / 255, dtype=np.float32)
    output = source.copy()
    output[0, 0] = 0.0  # not on the grid (every 2nd pixel from the 2nd): not seen
    assert no_reference["loe"].score(output, source) == 0.0
    output[1, 1] = 0.0  # on it (a 50x60 grid of 3000 pixels): no longer >= the others
    assert no_reference["loe"].score(output, source) == pytest.approx(2999 / 3000)


def test_simple_statistics_by_hand(no_reference) -> None:
    flat = np.empty((16, 16, 3), dtype=np.float32)
    flat[:] = (0.2, 0.4, 0.6)
    assert no_reference["brightness"].score(flat) == pytest.approx(
        0.299 * 0.2 + 0.587 * 0.4 + 0.114 * 0.6)
    assert no_reference["noise_sigma"].score(flat) == pytest.approx(0, abs=1e-6)
    grey = np.full((16, 16, 3), 0.5, dtype=np.float32)
    assert no_reference["colourfulness"].score(grey) == pytest.approx(0, abs=1e-9)
    halves = np.zeros((16, 16, 3), dtype=np.float32)
    halves[:8, :, 0] = 1  # red
    halves[8:, :, 2] = 1  # blue
    # rg = R - G: 255 and 0; yb = (R + G) / 2 - B: 127.5 and -255 (Hasler-Suesstrunk, 0-255)
    spread = np.sqrt(127.5 ** 2 + 191.25 ** 2)  # the standard deviations of rg and yb
    centre = np.sqrt(127.5 ** 2 + 63.75 ** 2)  # their means
    assert no_reference["colourfulness"].score(halves) == pytest.approx(spread + 0.3 * centre)


def test_noise_sigma_finds_added_noise(no_reference) -> None:
    rng = np.random.default_rng(1)
    noisy = 0.5 + rng.normal(0, 0.05, (128, 128, 3))
    assert no_reference["noise_sigma"].score(noisy) == pytest.approx(0.05, rel=0.1)


def _texture(seed: int, size: int = 192) -> np.ndarray:
    """A smooth natural-ish image: a few random sinusoids per channel."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size] / size
    image = np.zeros((size, size, 3))
    for _ in range(6):
        fy, fx, phase = rng.uniform(1, 12), rng.uniform(1, 12), rng.uniform(0, 6)
        image += rng.uniform(0.2, 1, 3) * np.sin(2 * np.pi * (fy * y + fx * x) + phase)[..., None]
    image = (image - image.min()) / (image.max() - image.min())
    return (image + rng.normal(0, 0.01, image.shape)).clip(0, 1).astype(np.float32)


@pytest.fixture(scope="module")
def niqe_params(tmp_path_factory) -> Path:
    mu, cov = nr.fit_niqe([_texture(seed) for seed in range(4)])
    path = tmp_path_factory.mktemp("niqe") / "pristine.npz"
    nr.write_niqe_params(path, mu, cov)
    return path


def test_niqe_on_parameters_fitted_here(niqe_params: Path) -> None:
    niqe = nr.niqe_metric(niqe_params)
    assert isinstance(niqe, NoReferenceMetric) and not niqe.higher_is_better
    clean = _texture(10)
    noisy = np.clip(clean + np.random.default_rng(2).normal(0, 0.08, clean.shape), 0, 1)
    scores = [niqe.score(x) for x in (clean, noisy)]
    assert all(np.isfinite(scores)) and scores[0] < scores[1]
    assert niqe.score(clean) == scores[0]  # deterministic


def test_niqe_reads_the_matlab_parameter_file(niqe_params: Path, tmp_path: Path) -> None:
    from scipy.io import savemat

    mu, cov = nr.read_niqe_params(niqe_params)
    mat = tmp_path / "modelparameters.mat"
    savemat(mat, {"mu_prisparam": mu[None, :], "cov_prisparam": cov})
    again = nr.read_niqe_params(mat)
    np.testing.assert_array_equal(again[0], mu)
    np.testing.assert_array_equal(again[1], cov)


def test_niqe_refuses_an_image_without_a_patch(niqe_params: Path) -> None:
    with pytest.raises(ValueError, match="smaller than NIQE's 96x96 patch"):
        nr.niqe_metric(niqe_params).fn(np.zeros((50, 200, 3), np.float32))
    with pytest.raises(ValueError, match="no textured 96x96 patch"):
        nr.niqe_metric(niqe_params).fn(np.zeros((100, 100, 3), np.float32))


@pytest.mark.parametrize("case", ["missing", "suffix", "truncated", "keys", "shape", "nan"])
def test_bad_niqe_parameter_file_is_one_line(case: str, niqe_params: Path,
                                             tmp_path: Path) -> None:
    mu, cov = nr.read_niqe_params(niqe_params)
    path = tmp_path / "p.npz"
    if case == "suffix":
        path = tmp_path / "p.txt"
        path.write_text("1 2 3")
    elif case == "truncated":
        path.write_bytes(niqe_params.read_bytes()[:100])
    elif case == "keys":
        np.savez(path, mu=mu, cov=cov)
    elif case == "shape":
        nr.write_niqe_params(path, mu[:18], cov[:18, :18])
    elif case == "nan":
        nr.write_niqe_params(path, mu * np.nan, cov)
    expected = {"missing": "no such NIQE parameter file", "suffix": "must be a .npz",
                "truncated": "not a readable NIQE parameter file",
                "keys": "lacks mu_pris_param, cov_pris_param (has: cov, mu)",
                "shape": "must be 36 means and a 36x36 covariance, got mu_pris_param (18,)",
                "nan": "hold inf or NaN"}[case]
    with pytest.raises(DataError) as info:
        nr.read_niqe_params(path)
    assert str(info.value).startswith(f"{path}: ") and expected in str(info.value)
    assert "\n" not in str(info.value)


# -- LPIPS ------------------------------------------------------------------------------------


def _lpips_tensors(seed: int = 0) -> dict[str, torch.Tensor]:
    """Random weights with the official file's keys and shapes (the heads non-negative, as
    the trained ones are)."""
    torch.manual_seed(seed)
    tensors = {k: v.clone() for k, v in lp.LPIPS().state_dict().items()}
    for key in tensors:
        if key.startswith("lin"):
            tensors[key] = tensors[key].abs()
    return tensors


@pytest.fixture(scope="module")
def lpips_file(tmp_path_factory) -> Path:
    from safetensors.torch import save_file

    path = tmp_path_factory.mktemp("lpips") / "lpips-alex.safetensors"
    save_file(_lpips_tensors(), str(path))
    return path


def test_lpips_keys_are_torchvision_alexnet_and_lpips_heads() -> None:
    keys = set(lp.LPIPS().state_dict())
    assert keys == {f"features.{i}.{p}" for i in (0, 3, 6, 8, 10) for p in ("weight", "bias")} \
        | {f"lin{i}.model.1.weight" for i in range(5)}


def test_lpips_mechanics(lpips_file: Path, images) -> None:
    metric = lp.lpips_metric(lpips_file)
    assert metric.name == "lpips" and not metric.higher_is_better
    rng = np.random.default_rng(3)
    clean = rng.random((64, 80, 3)).astype(np.float32)
    other = rng.random((64, 80, 3)).astype(np.float32)
    assert metric.fn(clean, clean) == 0.0
    assert metric.fn(clean, other) > 0
    assert metric.fn(clean, other) == pytest.approx(metric.fn(other, clean), rel=1e-5)
    noisy = [np.clip(clean + rng.normal(0, s, clean.shape), 0, 1).astype(np.float32)
             for s in (0.02, 0.05, 0.1, 0.2)]
    distances = [metric.fn(n, clean) for n in noisy]
    assert distances == sorted(distances) and distances[0] > 0
    # by hand: the weighted squared differences of unit-normalised features, averaged
    net = lp.load_lpips(lpips_file)
    a = torch.from_numpy(noisy[1]).permute(2, 0, 1)[None]
    b = torch.from_numpy(clean).permute(2, 0, 1)[None]
    shift, scale = torch.tensor(lp.SHIFT).view(1, 3, 1, 1), torch.tensor(lp.SCALE).view(1, 3, 1, 1)
    fa, fb, total = (a * 2 - 1 - shift) / scale, (b * 2 - 1 - shift) / scale, 0.0
    for i, (start, stop) in enumerate(zip((0, 2, 5, 8, 10), (2, 5, 8, 10, 12), strict=True)):
        with torch.no_grad():
            fa, fb = net.features[start:stop](fa), net.features[start:stop](fb)
            na = fa / (fa.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            nb = fb / (fb.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            w = getattr(net, f"lin{i}").model[1].weight.view(1, -1, 1, 1)
            total += float(((na - nb) ** 2 * w).sum(1).mean())
    assert distances[1] == pytest.approx(total, rel=1e-4)


@pytest.mark.parametrize("case", ["missing", "truncated", "keys", "shape", "nan"])
def test_bad_lpips_file_is_one_line(case: str, lpips_file: Path, tmp_path: Path) -> None:
    from safetensors.torch import save_file

    path = tmp_path / "w.safetensors"
    tensors = _lpips_tensors()
    if case == "truncated":
        path.write_bytes(lpips_file.read_bytes()[:5000])
    elif case == "keys":
        del tensors["lin4.model.1.weight"]
        save_file(tensors, str(path))
    elif case == "shape":
        tensors["lin0.model.1.weight"] = torch.zeros(1, 32, 1, 1)
        save_file(tensors, str(path))
    elif case == "nan":
        tensors["features.0.bias"][0] = float("nan")
        save_file(tensors, str(path))
    expected = {"missing": "no such LPIPS weights file",
                "truncated": "not a readable safetensors file",
                "keys": "not LPIPS v0.1 AlexNet weights: it lacks lin4.model.1.weight",
                "shape": "tensor 'lin0.model.1.weight' is (1, 32, 1, 1), LPIPS AlexNet needs "
                         "(1, 64, 1, 1)",
                "nan": "tensor 'features.0.bias' holds inf or NaN"}[case]
    with pytest.raises(DataError) as info:
        lp.load_lpips(path)
    assert str(info.value).startswith(f"{path}: ") and expected in str(info.value)
    assert "\n" not in str(info.value)


def test_the_weights_recipe_writes_a_file_that_loads(tmp_path: Path, monkeypatch) -> None:
    """scripts/make_lpips_weights.py with stand-ins for torchvision and lpips (neither is a
    dependency): the keys it writes are the ones restorekit reads."""
    import runpy
    import sys
    import types

    tensors = _lpips_tensors(seed=5)
    backbone = lp.LPIPS()
    backbone.load_state_dict(tensors)
    models = types.ModuleType("torchvision.models")
    models.AlexNet_Weights = types.SimpleNamespace(IMAGENET1K_V1="IMAGENET1K_V1")
    models.alexnet = lambda weights: types.SimpleNamespace(features=backbone.features)
    package = tmp_path / "lpips"
    (package / "weights" / "v0.1").mkdir(parents=True)
    torch.save({k: v for k, v in tensors.items() if k.startswith("lin")},
               package / "weights" / "v0.1" / "alex.pth")
    fake_lpips = types.ModuleType("lpips")
    fake_lpips.__file__ = str(package / "__init__.py")
    monkeypatch.setitem(sys.modules, "torchvision", types.ModuleType("torchvision"))
    monkeypatch.setitem(sys.modules, "torchvision.models", models)
    monkeypatch.setitem(sys.modules, "lpips", fake_lpips)
    out = tmp_path / "made.safetensors"
    monkeypatch.setattr(sys, "argv", ["make_lpips_weights.py", str(out)])
    script = Path(__file__).resolve().parents[2] / "scripts" / "make_lpips_weights.py"
    runpy.run_path(str(script), run_name="__main__")
    loaded = lp.load_lpips(out).state_dict()
    assert set(loaded) == set(tensors)
    assert all(torch.equal(loaded[k], tensors[k]) for k in tensors)


def test_niqe_half_scale_is_matlab_imresize() -> None:
    """imresize(x, 0.5): bicubic, antialiased, mirrored borders; it keeps a constant and,
    away from the borders, maps a linear ramp to the mean of each pixel pair."""
    ramp = np.tile(np.arange(40.0), (12, 1))
    half = nr._halve(ramp)
    assert half.shape == (6, 20)
    np.testing.assert_allclose(half[:, 3:-3], np.tile(np.arange(40.0).reshape(20, 2)
                                                      .mean(axis=1)[3:-3], (6, 1)), atol=1e-9)
    np.testing.assert_allclose(nr._halve(np.full((9, 7), 3.0)), 3.0)
    assert nr._halve(np.zeros((9, 7))).shape == (5, 4)
