"""The command line, driven in-process as a user would drive it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from restorekit import Metric, Model, Preprocessor, hookimpl, plugins
from restorekit.cli import main
from restorekit.data import read_image, write_image


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def ramp(h: int = 24, w: int = 32, scale: float = 1.0) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w]
    image = np.stack([x / w, y / h, (x + y) / (h + w)], axis=-1) * scale
    return image.astype(np.float32)


@pytest.fixture
def folder_pairs(tmp_path: Path) -> Path:
    """A low/high folder data set of three tiny pairs."""
    for i in range(3):
        high = ramp(scale=0.9 - 0.1 * i)
        write_image(tmp_path / "data" / "high" / f"{i}.png", high)
        write_image(tmp_path / "data" / "low" / f"{i}.png", high * 0.2)
    return tmp_path / "data"


class ThirdParty:
    """A third-party plugin using only the public API: one item of each kind."""

    class Brighten(Model):
        name = "brighten"
        description = "multiplies by 4"

        def enhance(self, image):
            return np.clip(self.preprocess(image) * 4.0, 0, 1)

    @hookimpl
    def register_preprocessors(self, register):
        register(Preprocessor("scale", lambda image, factor=2.0: image * factor,
                              params={"factor": 2.0}))

    @hookimpl
    def register_models(self, register):
        register(self.Brighten)

    @hookimpl
    def register_metrics(self, register):
        register(Metric("maxerr", lambda a, b: float(np.abs(a - b).max()),
                        higher_is_better=False))


def test_help_and_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    assert "preprocess" in capsys.readouterr().out


def test_plugins_lists_builtins_and_entry_points(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "plugins", "--hooks")
    assert code == 0
    assert "builtin  " in out and "classic" in out  # restorekit's own modules are "builtin"
    assert "pix2pixhd" in out and "hooks: register_commands, register_models" in out
    code, out, _ = run(capsys, "plugins", "--json")
    names = {p["name"] for p in json.loads(out)}
    assert {"restorekit.builtin.preprocessors", "pix2pixhd"} <= names


def test_third_party_plugin_items_are_used_by_the_cli(
        tmp_path: Path, folder_pairs: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with plugins.registered(ThirdParty(), name="thirdparty"):
        code, out, _ = run(capsys, "plugins")
        assert "thirdparty" in out and "brighten" in out and "maxerr" in out and "scale" in out

        # its preprocessor in a pipeline
        src = tmp_path / "in.png"
        write_image(src, np.full((8, 8, 3), 0.2, np.float32))
        code, _, _ = run(capsys, "preprocess", str(src), "-o", str(tmp_path / "pre"),
                         "--preprocess", "scale:factor=3")
        assert code == 0
        np.testing.assert_allclose(read_image(tmp_path / "pre" / "in.png"), 0.6, atol=1 / 255)

        # its model evaluated and applied
        code, out, _ = run(capsys, "run", "brighten", "--eval", "--data", str(folder_pairs),
                           "--json")
        assert code == 0
        rows = json.loads(out)["rows"]
        assert rows["brighten"]["psnr"] > rows["identity"]["psnr"]
        code, _, _ = run(capsys, "run", "brighten", "--enhance", str(folder_pairs / "low"),
                         "-o", str(tmp_path / "out"))
        assert code == 0
        assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["0.png", "1.png",
                                                                         "2.png"]

        # its metric in the metrics command
        code, out, _ = run(capsys, "metrics", str(tmp_path / "out"), str(folder_pairs / "high"),
                           "--metrics", "maxerr,psnr", "--json")
        assert code == 0
        result = json.loads(out)
        assert result["count"] == 3 and set(result["mean"]) == {"maxerr", "psnr"}


def test_metrics_command_matches_scikit_image(
        folder_pairs: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from skimage.metrics import peak_signal_noise_ratio

    code, out, _ = run(capsys, "metrics", str(folder_pairs / "low"), str(folder_pairs / "high"),
                       "--json")
    assert code == 0
    result = json.loads(out)
    low = read_image(folder_pairs / "low" / "1.png")
    high = read_image(folder_pairs / "high" / "1.png")
    assert result["images"]["1"]["psnr"] == pytest.approx(
        peak_signal_noise_ratio(high, low, data_range=1.0))
    code, out, _ = run(capsys, "metrics", str(folder_pairs / "low"), str(folder_pairs / "high"))
    assert "mean" in out and "psnr ↑" in out


def test_classic_eval_on_a_folder(folder_pairs: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "run", "classic", "--eval", "--data", str(folder_pairs),
                       "--preprocess", "gamma:gamma=2.0")
    assert code == 0
    assert "identity" in out and "classic (gamma:gamma=2.0)" in out


def test_enhance_keeps_stem_and_size(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_image(tmp_path / "in" / "odd.jpg", ramp(37, 53, 0.2))
    code, _, _ = run(capsys, "run", "classic", "--enhance", str(tmp_path / "in" / "odd.jpg"),
                     "-o", str(tmp_path / "out"), "--preprocess", "autogamma")
    assert code == 0
    out = read_image(tmp_path / "out" / "odd.png")
    assert out.shape == (37, 53, 3) and out.mean() > 0.2


@pytest.mark.parametrize(("argv", "code", "message"), [
    (["run", "nosuchmodel", "--eval"], 2, "unknown model 'nosuchmodel'"),
    (["run", "classic", "--train"], 2, "does not train"),
    (["run", "classic"], 2, "exactly one of --train, --eval, --enhance"),
    (["run", "classic", "--enhance", "x.png"], 2, "--enhance needs -o"),
    (["run", "classic", "--eval", "--preprocess", "nope"], 2, "unknown preprocessor 'nope'"),
    (["run", "classic", "--eval", "--preprocess", "gamma:gama=2"], 2,
     "gamma has no parameter 'gama'"),
    (["run", "classic", "--eval", "--preprocess", "gamma:gamma=abc"], 2,
     "gamma:gamma expects float"),
    (["run", "classic", "--eval", "--data", "/no/such/folder"], 1, "/no/such/folder"),
    (["metrics", "/no/a", "/no/b"], 2, "/no/a: not a folder"),
    (["preprocess", "/no/x.png", "-o", "out", "--preprocess", "gamma"], 2, "/no/x.png"),
    (["run", "pix2pixhd", "--eval", "--checkpoint", "/no/ckpt.safetensors"], 1, "/no/ckpt"),
    (["frobnicate"], 2, "invalid choice"),
])
def test_user_mistakes_are_one_line_errors(argv: list[str], code: int, message: str,
                                           capsys: pytest.CaptureFixture[str],
                                           monkeypatch: pytest.MonkeyPatch,
                                           tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    got, _, err = run(capsys, *argv)
    assert got == code
    assert message in err
    assert err.startswith("restorekit: error: ") and err.count("\n") == 1


def test_corrupt_image_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "in" / "broken.png"
    bad.parent.mkdir()
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    code, _, err = run(capsys, "run", "classic", "--enhance", str(bad), "-o", str(tmp_path / "o"))
    last = err.strip().splitlines()[-1]
    assert code == 1 and last.startswith("restorekit: error: ") and "broken.png" in last

    good = tmp_path / "in" / "good.png"
    write_image(good, ramp(8, 8, 0.3))
    code, out, err = run(capsys, "run", "classic", "--enhance", str(tmp_path / "in"),
                         "-o", str(tmp_path / "o"), "--skip-bad")
    assert code == 0 and (tmp_path / "o" / "good.png").exists()
    assert "skipped" in err and "broken.png" in err


def test_run_help_lists_model_options(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["run", "pix2pixhd", "--help"])
    out = capsys.readouterr().out
    assert "--n-blocks-global" in out and "--lambda-feat" in out and "--preset" in out
