"""Plugin contracts checked at the boundary (issue 23, problems 1 and 2): every result of a
metric and of a preprocessor is checked where restorekit receives it, and a violation is one
line naming the item and its plugin."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from restorekit import Metric, NoReferenceMetric, Preprocessor, hookimpl, testing
from restorekit.cli import main
from restorekit.data import write_image
from restorekit.engine import RunDir
from restorekit.errors import PluginError, forget_warnings
from restorekit.evaluate import Evaluation, format_table, score

SIZE = (24, 16)


def _nan_pixel(image: np.ndarray) -> np.ndarray:
    out = image.copy()
    out[0, 0, 0] = np.nan
    return out


def _crash(*_: object, **__: object) -> None:
    raise RuntimeError("boom")


METRICS = {  # name -> fn, and the line each one's result gives
    "arr": (lambda p, t: np.abs(p - t).mean(axis=(0, 1)),
            "metric 'arr' of plugin 'nightowl' returned an array of shape (3,) "
            "(expected a finite float)"),
    "nan": (lambda p, t: float("nan"),
            "metric 'nan' of plugin 'nightowl' returned NaN (expected a finite float)"),
    "text": (lambda p, t: "0.5",
             "metric 'text' of plugin 'nightowl' returned '0.5', a str (expected a finite "
             "float)"),
    "none": (lambda p, t: None,
             "metric 'none' of plugin 'nightowl' returned None (expected a finite float)"),
    "crash": (_crash,
              "metric 'crash' of plugin 'nightowl' raised RuntimeError: boom "
              "(RESTOREKIT_TRACE_PLUGINS=1 shows the traceback)"),
}

PREPROCESSORS = {  # name -> fn, and the line each one's result gives for a 24x16 image
    "half": (lambda image: image[::2, ::2],
             "preprocessor 'half' of plugin 'nightowl' returned (12, 8, 3) for a (24, 16, 3) "
             "image"),
    "grey": (lambda image: image.mean(axis=2),
             "preprocessor 'grey' of plugin 'nightowl' returned (24, 16) for a (24, 16, 3) "
             "image"),
    "bytes": (lambda image: (image * 255).astype(np.uint8),
              "preprocessor 'bytes' of plugin 'nightowl' returned uint8 values (expected "
              "float32 in [0, 1])"),
    "nanpix": (_nan_pixel,
               "preprocessor 'nanpix' of plugin 'nightowl' returned 1 non-finite value"),
    "nothing": (lambda image: None,
                "preprocessor 'nothing' of plugin 'nightowl' returned None (expected a float32 "
                "array of shape (24, 16, 3))"),
    "crash": (_crash,
              "preprocessor 'crash' of plugin 'nightowl' raised RuntimeError: boom "
              "(RESTOREKIT_TRACE_PLUGINS=1 shows the traceback)"),
    "loud": (lambda image: np.broadcast_to(np.float32([-0.5, 1.5, 0.5]), image.shape).copy(),
             "preprocessor 'loud' of plugin 'nightowl' returned values in [-0.5, 1.5] "
             "(expected float32 in [0, 1])"),
}


class NightOwl:
    """A plugin with every mistake a metric or a preprocessor can make."""

    @hookimpl
    def register_metrics(self, register):
        for name, (fn, _) in METRICS.items():
            register(Metric(name, fn, higher_is_better=True))

        register(NoReferenceMetric("glow", lambda p: np.ones(2), higher_is_better=None))

    @hookimpl
    def register_preprocessors(self, register):
        for name, (fn, _) in PREPROCESSORS.items():
            register(Preprocessor(name, fn))


@pytest.fixture
def owl(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """The plugin beside the built-ins and Pix2PixHD; a tiny LOL-layout folder ``LOL``."""
    import restorekit_pix2pixhd

    rng = np.random.default_rng(0)
    for split, count in (("our485", 5), ("eval15", 2)):
        for i in range(count):
            high = rng.uniform(0.2, 0.9, (40, 48, 3)).astype(np.float32)
            write_image(tmp_path / "LOL" / split / "high" / f"{i}.png", high)
            write_image(tmp_path / "LOL" / split / "low" / f"{i}.png", high * 0.15)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RESTOREKIT_EXT", "off")
    with testing.isolated(nightowl=NightOwl(), pix2pixhd=restorekit_pix2pixhd) as registry:
        yield registry


def image(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.uniform(0.05, 0.95, (*SIZE, 3)).astype(np.float32)


@pytest.fixture
def folders(tmp_path: Path) -> Path:
    for i in range(2):
        write_image(tmp_path / "gt" / f"{i}.png", image(i))
        write_image(tmp_path / "pred" / f"{i}.png", image(i) * 0.9)
    return tmp_path


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, list[str]]:
    """The exit status, stdout and restorekit's lines on stderr (no progress bars)."""
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, [line for line in err.splitlines() if line.startswith("restorekit:")
                       or "Traceback" in line]


# -- metrics ----------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(METRICS))
def test_a_bad_metric_result_is_one_line_naming_it(owl, name: str) -> None:
    """Was: an array a TypeError naming neither metric nor plugin; NaN and "0.5" accepted."""
    with pytest.raises(PluginError) as caught:
        owl.metric(name).score(image(0), image(1))
    assert str(caught.value) == METRICS[name][1]


def test_numbers_the_contract_accepts(owl) -> None:
    """numpy scalars and 0-d arrays are converted; +inf is a perfect higher-is-better score
    (the PSNR of identical images), -inf is not."""
    for value in (np.float32(0.25), np.float64(0.25), np.array(0.25), 1):
        metric = Metric("ok", lambda p, t, v=value: v, higher_is_better=True, plugin="p")
        result = metric.score(image(0), image(0))
        assert type(result) is float and result == float(value)
    assert owl.metric("psnr").score(image(0), image(0)) == math.inf
    lower = Metric("low", lambda p, t: math.inf, higher_is_better=False, plugin="p")
    with pytest.raises(PluginError, match="^metric 'low' of plugin 'p' returned inf "):
        lower.score(image(0), image(0))


@pytest.mark.parametrize("name", list(METRICS))
def test_metrics_command_leaves_a_bad_metric_empty(owl, folders: Path, name: str,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """Was: `unexpected TypeError` (an array) or a NaN/0.5 column with exit 0."""
    code, out, err = run(capsys, "metrics", "pred", "gt", "--metrics", f"psnr,{name}")
    assert code == 1
    assert err == [f"restorekit: warning: {METRICS[name][1]}, scoring "
                                f"pred/0.png against gt/0.png; its column is left empty"]
    lines = out.splitlines()
    assert lines[0].split() == ["method", "psnr", "↑", f"{name}", "↑"]
    for row in lines[2:5]:  # 0, 1, mean: psnr is there, the bad metric's cell is empty
        cells = row.split()
        assert len(cells) in (2, 4) and float(cells[1]) > 15, row
    assert "an empty cell: the metric failed" in out
    code, out, _ = run(capsys, "metrics", "pred", "gt", "--metrics", f"psnr,{name}", "--json")
    result = json.loads(out)
    assert code == 1 and set(result["mean"]) == {"psnr"}
    assert result["failed"] == {name: f"{METRICS[name][1]}, scoring pred/0.png against "
                                      f"gt/0.png"}
    assert all(set(row) == {"psnr"} for row in result["images"].values())


def test_enhance_score_leaves_a_bad_no_reference_metric_empty(
        owl, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_image(tmp_path / "in" / "a.png", image(0))
    code, out, err = run(capsys, "run", "classic", "--enhance", "in", "-o", "out", "--score",
                         "--metrics", "brightness,glow")
    assert code == 0 and (tmp_path / "out" / "a.png").is_file()
    assert err == [f"restorekit: warning: metric 'glow' of plugin 'nightowl' returned an array "
                   f"of shape (2,) (expected a finite float), scoring {Path('in/a.png')}; its "
                   f"column is left empty"]
    assert "an empty cell: the metric failed" in out


def test_an_evaluation_never_holds_nan(owl) -> None:
    """A metric that fails on one image is empty for the whole table, not NaN."""
    metrics = [owl.metric("psnr"), owl.metric("nan")]
    failed: dict[str, str] = {}
    rows = {f"{i}": score(image(i) * 0.9, image(i), metrics, what=f"{i}", failed=failed)
            for i in range(3)}
    assert all(set(row) == {"psnr"} for row in rows.values())
    result = Evaluation(rows, metrics, failed)
    assert set(result) == {"psnr"} and set(result.intervals) == {"psnr"}
    assert result.failed == {"nan": f"{METRICS['nan'][1]}, scoring 0"}
    assert json.dumps(result.record(), allow_nan=False)
    table = format_table({"x": result, "stored": result.record()}, metrics)
    assert "nan" not in table.replace("nan ↑", "")


# -- preprocessors ----------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(PREPROCESSORS))
def test_preprocess_command_stops_with_one_line(owl, tmp_path: Path, name: str,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    """Was: half-size, grey, uint8 (white), NaN results written with exit 0; None an
    output-file problem."""
    write_image(tmp_path / "in" / "a.png", image(0))
    code, _, err = run(capsys, "preprocess", "in", "-o", "out", "--preprocess", name)
    assert code == 1
    assert err == [f"restorekit: error: {PREPROCESSORS[name][1]}"]
    assert not (tmp_path / "out" / "a.png").exists()


def test_non_finite_values_are_counted(owl) -> None:
    from restorekit.pipeline import checked_result

    result = image(0)
    result[:3, :4, 1] = np.inf
    with pytest.raises(PluginError, match="^preprocessor 'nanpix' of plugin 'nightowl' "
                                          "returned 12 non-finite values$"):
        checked_result(owl.preprocessor("nanpix"), result, image(0))


class Edge:
    @hookimpl
    def register_preprocessors(self, register):
        def edge(image):
            out = image.astype(np.float64)
            out[0, 0] = [-1e-5, 1 + 1e-5, 0.5]
            return out

        register(Preprocessor("edge", edge))


def test_a_good_result_is_float32_in_range() -> None:
    """float64 results are converted; rounding just outside [0, 1] is clipped."""
    from restorekit.pipeline import Pipeline

    with testing.isolated(edge=Edge()) as registry:
        out = Pipeline.parse("edge", registry)(image(0))
    assert out.dtype == np.float32 and out.min() == 0.0 and out.max() == 1.0


# -- training ---------------------------------------------------------------------------------
TINY = ["--data", "LOL", "--preset", "quick", "--device", "cpu", "--ngf", "4", "--ndf", "4",
        "--n-blocks-global", "1", "--crop-size", "16", "--samples-per-epoch", "2",
        "--num-samples", "1", "--max-steps", "2"]


def test_training_goes_on_past_a_broken_metric(owl, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    """Was: `unexpected TypeError` while computing the baselines, before any training."""
    code, out, err = run(capsys, "run", "pix2pixhd", "--train", *TINY, "--metrics", "psnr,arr")
    assert code == 0, err
    warnings = [line for line in err if "warning" in line]
    assert len(warnings) == 1, err
    assert warnings[0].startswith(f"restorekit: warning: {METRICS['arr'][1]}, scoring ")
    assert warnings[0].endswith("; its column is left empty")
    run_dir = RunDir(tmp_path / "runs" / "pix2pixhd")
    text = run_dir.metrics_log.read_text()
    assert "NaN" not in text and "arr" not in text
    records = [json.loads(line) for line in text.splitlines()]
    assert records and all(math.isfinite(r["psnr"]) for r in records)
    baselines = run_dir.baselines_path.read_text()
    assert "NaN" not in baselines and '"arr"' not in baselines
    forget_warnings()  # a new command: in its own process it would warn again
    code, out, err = run(capsys, "run", "pix2pixhd", "--eval", "--data", "LOL", "--metrics",
                         "psnr,arr")  # the run just trained
    # The same one line, naming the first test image (training named a validation image).
    assert code == 0 and len(err) == 1, err
    assert err[0].split(", scoring ")[0] == warnings[0].split(", scoring ")[0]
    assert "eval15" in err[0]
    assert "an empty cell: the metric failed" in out


def test_choosing_the_best_by_a_broken_metric_says_so(owl,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "run", "pix2pixhd", "--train", *TINY, "--metrics", "psnr,nan",
                       "--select-metric", "nan")
    assert code == 0, err
    best = [line for line in err if "--select-metric" in line]
    assert len(best) == 1 and best[0].startswith(
        "restorekit: warning: no checkpoint is chosen as the best by nan (--select-metric) while "
        f"it is empty: {METRICS['nan'][1]}, scoring "), err


@pytest.mark.parametrize("name", ["half", "nanpix", "crash"])
def test_training_stops_at_a_broken_preprocessor(owl, name: str,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """Was: `unexpected RuntimeError: stack expects each tensor to be equal size`, or a NaN
    pixel trained "successfully" to psnr nan."""
    code, _, err = run(capsys, "run", "pix2pixhd", "--train", *TINY, "--preprocess", name,
                       "--metrics", "psnr")
    assert code == 1
    assert len(err) == 1 and err[0].startswith("restorekit: error: preprocessor "
                                               f"'{name}' of plugin 'nightowl' "), err


TINY_SPACE = """
[model]
only = ["lr"]
ngf = 4
n_downsample_global = 2
n_blocks_global = 1
ndf = 4
n_layers_D = 2
num_D = 1
crop_size = 16
batch_size = 2
samples_per_epoch = 2
niter = 1
niter_decay = 0
fused = false
num_samples = 1
eval_every = 1
"""


@pytest.mark.parametrize(("objective", "candidate", "states", "reason"), [
    ("nan", "gamma", ["FAIL", "FAIL"], METRICS["nan"][1] + ", scoring "),
    # trial 0 is the preset, with its own preprocessing
    ("psnr", "crash", ["COMPLETE", "FAIL"], PREPROCESSORS["crash"][1]),
], ids=["empty objective", "crashing preprocessor"])
def test_tune_fails_the_trial_with_the_reason_and_goes_on(owl, tmp_path: Path, objective: str,
                                                          candidate: str, states: list[str],
                                                          reason: str) -> None:
    """An objective metric that is empty, or a preprocessor that crashes, fails the trial
    with the one line; the study goes on."""
    optuna = pytest.importorskip("optuna")
    space = tmp_path / "space.toml"
    space.write_text(TINY_SPACE + f'[preprocess]\ncandidates = ["{candidate}"]\n')
    studies = tmp_path / "studies"
    assert main(["tune", "pix2pixhd", "--space", str(space), "--studies-dir", str(studies),
                 "--max-steps", "2", "--device", "cpu", "--seed", "0", "--trials", "2",
                 "--metric", objective, "--data", "LOL"]) == 0
    trials = optuna.load_study(study_name="pix2pixhd",
                               storage=f"sqlite:///{studies / 'pix2pixhd' / 'study.db'}").trials
    assert [t.state.name for t in trials] == states
    for trial in trials:
        if trial.state.name == "FAIL":
            assert trial.user_attrs["fail_reason"].startswith(f"PluginError: {reason}")
