"""``restorekit metrics`` and ``run --eval/--enhance`` with the evaluation layer: both LOL
protocols, intervals, per-image values, no-reference metrics, LPIPS/NIQE files, --tta."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import restorekit.builtin.noreference as nr
from restorekit.cli import main
from restorekit.data import read_image, write_image
from restorekit.evaluate import Evaluation, bootstrap_interval, format_table
from restorekit.plugins import get_registry


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def photo(seed: int, size: tuple[int, int] = (100, 120), scale: float = 1.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size[0], 0:size[1]] / max(size)
    image = np.stack([np.sin(5 * x + seed) ** 2, np.cos(4 * y) ** 2, (x + y) / 2], axis=-1)
    return np.clip(image * scale + rng.normal(0, 0.02, image.shape), 0, 1).astype(np.float32)


@pytest.fixture
def folders(tmp_path: Path) -> Path:
    """low/, high/ and out/ (a brightened low) of three images each."""
    for i in range(3):
        high = photo(i)
        write_image(tmp_path / "high" / f"{i}.png", high)
        write_image(tmp_path / "low" / f"{i}.png", high * 0.15)
        write_image(tmp_path / "out" / f"{i}.png", np.clip(high * 0.15 * 4, 0, 1))
    return tmp_path


def one_error_line(err: str, *parts: str) -> None:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("restorekit: error: "), err
    for part in parts:
        assert part in lines[0], (part, lines[0])


# -- spread -----------------------------------------------------------------------------------
def test_bootstrap_interval_is_seeded_and_brackets_the_mean() -> None:
    values = [20.0, 22.0, 25.0, 30.0, 21.0]
    low, high = bootstrap_interval(values)
    assert min(values) <= low < np.mean(values) < high <= max(values)
    assert bootstrap_interval(values) == (low, high)  # seeded: the same every time
    assert bootstrap_interval([7.0]) is None  # one image: no spread measured, no interval
    assert bootstrap_interval([30.0, float("inf")]) is None  # an identical pair's PSNR


def test_table_shows_interval_and_protocols() -> None:
    registry = get_registry()
    metrics = [registry.metric(n) for n in ("psnr", "psnr_gtmean")]
    evaluation = Evaluation({"a": {"psnr": 20.0, "psnr_gtmean": 25.0},
                             "b": {"psnr": 22.0, "psnr_gtmean": 26.0}}, metrics)
    assert dict(evaluation) == {"psnr": 21.0, "psnr_gtmean": 25.5}
    assert evaluation.images["b"] == {"psnr": 22.0, "psnr_gtmean": 26.0}
    table = format_table({"stored": {"psnr": 1.0, "psnr_gtmean": 2.0}, "model": evaluation},
                         metrics)
    lines = table.splitlines()
    assert lines[0].split() == ["method", "psnr", "↑", "psnr_gtmean", "↑"]
    assert lines[2].split() == ["stored", "1.0000", "2.0000"]  # a plain mean: no interval
    assert lines[3].split() == ["model", "21.0000", "[20.0000,", "22.0000]", "25.5000",
                                "[25.0000,", "26.0000]"]
    assert "95 % bootstrap interval of the mean over the 2 images" in lines[4]
    assert lines[5].startswith("psnr, ssim: plain protocol; psnr_gtmean, ssim_gtmean: GT-mean")


def test_metrics_json_has_both_protocols_intervals_and_images(
        folders: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "metrics", str(folders / "out"), str(folders / "high"), "--json")
    assert code == 0
    result = json.loads(out)
    assert {"psnr", "ssim", "psnr_gtmean", "ssim_gtmean"} <= set(result["mean"])
    assert result["count"] == 3 and set(result["images"]) == {"0", "1", "2"}
    values = [result["images"][k]["psnr_gtmean"] for k in "012"]
    assert result["mean"]["psnr_gtmean"] == pytest.approx(np.mean(values))
    low, high = result["interval"]["psnr_gtmean"]
    assert min(values) <= low <= result["mean"]["psnr_gtmean"] <= high <= max(values)
    code, out, _ = run(capsys, "metrics", str(folders / "out"), str(folders / "high"))
    assert "psnr_gtmean ↑" in out and "GT-mean protocol" in out and "bootstrap" in out


# -- no ground truth --------------------------------------------------------------------------
def test_metrics_without_ground_truth_scores_the_no_reference_metrics(
        folders: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "metrics", str(folders / "low"))
    assert code == 0, out
    assert out.split("\n")[0].split() == ["method", "brightness", "colourfulness",
                                          "noise_sigma", "↓"]
    assert "not scored: loe (compares each output with its input: give the inputs with " \
           "--source DIR)" in out
    code, out, _ = run(capsys, "metrics", str(folders / "out"), "--source", str(folders / "low"),
                       "--json")
    assert code == 0
    result = json.loads(out)
    assert set(result["mean"]) == {"brightness", "colourfulness", "loe", "noise_sigma"}
    pred, low = read_image(folders / "out" / "1.png"), read_image(folders / "low" / "1.png")
    assert result["images"]["1"]["loe"] == pytest.approx(nr.loe(pred, low))
    assert result["images"]["1"]["brightness"] == pytest.approx(nr.brightness(pred))


@pytest.mark.parametrize(("argv", "parts"), [
    (["out", "high", "--metrics", "brightness,niqe"],
     ["'niqe' needs --niqe-params FILE"]),
    (["out", "high", "--metrics", "psnr,brightness"],
     ["--metrics: 'brightness' is a no-reference metric; score the predictions without ground "
      "truth: restorekit metrics"]),
    (["out", "high", "--metrics", "loe"],
     ["--metrics: 'loe' is a no-reference metric; score the predictions without ground truth"]),
    (["out", "--metrics", "psnr"],
     ["--metrics: 'psnr' is a full-reference metric; it needs ground truth, which these "
      "images do not have"]),
    (["out", "--metrics", "loe"],
     ["--metrics: 'loe' compares each output with its input; give the inputs (--source DIR)"]),
    (["out", "high", "--source", "low"], ["--source goes without GT_DIR"]),
    (["out", "--metrics", "lpips"], ["--metrics: 'lpips' needs --lpips-weights FILE"]),
])
def test_wrong_kind_of_metric_is_one_line(argv: list[str], parts: list[str], folders: Path,
                                          capsys: pytest.CaptureFixture[str],
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(folders)
    code, _, err = run(capsys, "metrics", *argv)
    assert code == 2
    one_error_line(err, *parts)


# -- LPIPS and NIQE files ---------------------------------------------------------------------
@pytest.fixture
def lpips_file(tmp_path: Path) -> Path:
    import torch
    from safetensors.torch import save_file

    from restorekit.builtin.lpips import LPIPS

    torch.manual_seed(0)
    tensors = {k: v.abs() if k.startswith("lin") else v for k, v in LPIPS().state_dict().items()}
    path = tmp_path / "lpips.safetensors"
    save_file(tensors, str(path))
    return path


def test_lpips_column_from_a_local_file(folders: Path, lpips_file: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "metrics", str(folders / "high"), str(folders / "high"),
                       "--lpips-weights", str(lpips_file), "--json")
    assert code == 0
    assert json.loads(out)["mean"]["lpips"] == 0.0
    code, out, _ = run(capsys, "metrics", str(folders / "out"), str(folders / "high"),
                       "--lpips-weights", str(lpips_file), "--metrics", "psnr,lpips", "--json")
    assert code == 0
    assert set(json.loads(out)["mean"]) == {"psnr", "lpips"}
    assert json.loads(out)["mean"]["lpips"] > 0


@pytest.mark.parametrize("case", ["missing", "truncated", "mismatched"])
def test_bad_lpips_file_is_one_line(case: str, folders: Path, lpips_file: Path,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    from safetensors.torch import load_file, save_file

    bad = folders / "bad.safetensors"
    if case == "truncated":
        bad.write_bytes(lpips_file.read_bytes()[:1000])
    elif case == "mismatched":
        tensors = load_file(str(lpips_file))
        save_file({k.replace("lin", "lin_"): v for k, v in tensors.items()}, str(bad))
    code, _, err = run(capsys, "metrics", str(folders / "out"), str(folders / "high"),
                       "--lpips-weights", str(bad))
    assert code == 2
    reason = {"missing": "no such LPIPS weights file",
              "truncated": "not a readable safetensors file",
              "mismatched": "not LPIPS v0.1 AlexNet weights: it lacks lin0.model.1.weight"}
    one_error_line(err, f"--lpips-weights: {bad}: {reason[case]}")


def test_niqe_from_a_parameter_file(folders: Path, capsys: pytest.CaptureFixture[str]) -> None:
    params = folders / "pristine.npz"
    nr.write_niqe_params(params, *nr.fit_niqe([photo(s, (192, 192)) for s in range(3)]))
    code, out, _ = run(capsys, "metrics", str(folders / "high"), "--niqe-params", str(params),
                       "--json")
    assert code == 0
    result = json.loads(out)
    assert np.isfinite(result["mean"]["niqe"]) and "brightness" in result["mean"]
    params.write_bytes(params.read_bytes()[:200])
    code, _, err = run(capsys, "metrics", str(folders / "high"), "--niqe-params", str(params))
    assert code == 2
    one_error_line(err, f"--niqe-params: {params}: not a readable NIQE parameter file")


# -- run --eval / --enhance --------------------------------------------------------------------
def test_eval_json_keeps_means_and_adds_intervals_and_images(
        folders: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "run", "classic", "--eval", "--data", str(folders),
                       "--preprocess", "gamma", "--metrics", "psnr,psnr_gtmean,loe", "--json")
    assert code == 0
    table = json.loads(out)
    row = table["rows"]["classic (gamma)"]
    assert set(row) == {"psnr", "psnr_gtmean", "loe"}  # a no-reference metric: the output's
    assert table["rows"]["identity"]["loe"] == 0.0  # the input against itself
    assert len(table["intervals"]["classic (gamma)"]["psnr"]) == 2
    assert set(table["images"]["identity"]) == {str(folders / "low" / f"{i}.png")
                                                for i in range(3)}


def test_tta_of_a_pointwise_pipeline_is_the_plain_output(
        folders: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rows = []
    for extra in ([], ["--tta"]):
        code, out, _ = run(capsys, "run", "classic", "--eval", "--data", str(folders),
                           "--preprocess", "gamma", "--metrics", "psnr", "--json", *extra)
        assert code == 0
        rows.append(json.loads(out)["rows"])
    assert "classic (gamma) x8 self-ensemble" in rows[1]
    assert rows[1]["classic (gamma) x8 self-ensemble"]["psnr"] == pytest.approx(
        rows[0]["classic (gamma)"]["psnr"], abs=1e-4)
    for extra in ([], ["--tta"]):
        code, _, _ = run(capsys, "run", "classic", "--enhance", str(folders / "low"), "-o",
                         str(folders / f"enh{len(extra)}"), "--preprocess", "gamma", *extra)
        assert code == 0
    for i in range(3):
        np.testing.assert_allclose(read_image(folders / "enh1" / f"{i}.png"),
                                   read_image(folders / "enh0" / f"{i}.png"), atol=1.5 / 255)


def test_enhance_score_prints_the_no_reference_metrics(
        folders: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "run", "classic", "--enhance", str(folders / "low"), "-o",
                       str(folders / "enh"), "--preprocess", "gamma", "--score")
    assert code == 0
    assert "wrote 3 image(s)" in out and "loe ↓" in out and "brightness" in out
    code, out, err = run(capsys, "run", "classic", "--enhance", str(folders / "low"), "-o",
                         str(folders / "enh"), "--preprocess", "gamma", "--score", "--json",
                         "--overwrite")
    assert code == 0 and "wrote 3 image(s)" in err
    result = json.loads(out)
    assert result["images"]["2.png"]["loe"] == pytest.approx(
        nr.loe(read_image(folders / "enh" / "2.png"), read_image(folders / "low" / "2.png")))


@pytest.mark.parametrize(("argv", "part"), [
    (["--eval", "--score"], "--score goes with --enhance"),
    (["--enhance", "low", "-o", "x", "--score", "--metrics", "psnr"],
     "--metrics: 'psnr' is a full-reference metric"),
    (["--enhance", "low", "-o", "x", "--score", "--lpips-weights", "w.safetensors"],
     "--lpips-weights: w.safetensors: no such LPIPS weights file"),
    (["--eval", "--niqe-params", "nowhere.npz"],
     "--niqe-params: nowhere.npz: no such NIQE parameter file"),
])
def test_run_options_that_do_not_fit_are_one_line(argv: list[str], part: str, folders: Path,
                                                  capsys: pytest.CaptureFixture[str],
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(folders)
    code, _, err = run(capsys, "run", "classic", *argv)
    assert code == 2
    one_error_line(err, part)


def test_tta_is_for_inference(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "run", "pix2pixhd", "--train", "--tta")
    assert code == 2
    one_error_line(err, "run pix2pixhd: --tta goes with --eval or --enhance")
