"""The Pix2PixHD model plugin end to end: training step, schedule, CLI train/resume/eval/enhance."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from restorekit.cli import main
from restorekit.data import read_image, write_image
from restorekit.errors import UsageError
from restorekit.pipeline import Pipeline
from restorekit_pix2pixhd.model import Pix2PixHD, Pix2PixHDOptions

TINY = ["--ngf", "4", "--n-downsample-global", "2", "--n-blocks-global", "1", "--ndf", "4",
        "--n-layers-D", "2", "--num-D", "2", "--crop-size", "32", "--batch-size", "2",
        "--samples-per-epoch", "4", "--niter", "2", "--niter-decay", "1", "--lambda-l1", "10",
        "--no-fused", "--log-every", "1", "--num-samples", "1"]


def tiny_options(**kw) -> Pix2PixHDOptions:
    base = dict(ngf=4, n_downsample_global=2, n_blocks_global=1, ndf=4, n_layers_D=2,
                num_D=2, crop_size=32, batch_size=2, niter=2, niter_decay=2, fused=False)
    return Pix2PixHD.make_options(None, **{**base, **kw})


@pytest.fixture
def lol(tmp_path: Path) -> Path:
    """A LOL-layout folder with tiny 40x48 pairs (3 train, 2 test)."""
    rng = np.random.default_rng(0)
    for split, count in (("our485", 3), ("eval15", 2)):
        for i in range(count):
            high = rng.uniform(0.2, 0.9, (40, 48, 3)).astype(np.float32)
            write_image(tmp_path / "LOL" / split / "high" / f"{i}.png", high)
            write_image(tmp_path / "LOL" / split / "low" / f"{i}.png", high * 0.15)
    return tmp_path / "LOL"


def test_train_step_updates_both_networks_in_order() -> None:
    model = Pix2PixHD(tiny_options(lambda_l1=1.0), Pipeline())
    model.build(torch.device("cpu"))
    before_g = [p.clone() for p in model.netG.parameters()]
    before_d = [p.clone() for p in model.netD.parameters()]

    class Ctx:
        device, epoch, step = torch.device("cpu"), 0, 0

        def autocast(self):
            return torch.autocast("cpu", enabled=False)

        def backward_step(self, loss, name):
            opt = model.optimizers()[name]
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

    low, high = torch.rand(2, 3, 32, 32) * 0.2, torch.rand(2, 3, 32, 32)
    losses = model.train_step(low, high, Ctx())
    assert set(losses) == {"G_GAN", "G_feat", "G_L1", "D_fake", "D_real"}
    assert all(torch.isfinite(v) for v in losses.values())
    after_g, after_d = list(model.netG.parameters()), list(model.netD.parameters())
    assert all(not torch.equal(a, b) for a, b in zip(before_g, after_g, strict=True))
    assert any(not torch.equal(a, b) for a, b in zip(before_d, after_d, strict=True))
    assert all(p.requires_grad for p in model.netD.parameters())


def test_learning_rate_is_constant_then_decays_linearly_to_zero() -> None:
    model = Pix2PixHD(tiny_options(lr=1.0, niter=3, niter_decay=4), Pipeline())
    rates = [model.learning_rate(e) for e in range(7)]
    assert rates[:3] == [1.0, 1.0, 1.0]
    assert rates[3:] == pytest.approx([4 / 5, 3 / 5, 2 / 5, 1 / 5])
    assert model.num_epochs() == 7


def test_epochs_is_derived_from_niter() -> None:
    assert tiny_options(niter=5, niter_decay=2).epochs == 7
    assert tiny_options(niter=5, niter_decay=2, epochs=7).niter == 5  # a config read back


@pytest.mark.parametrize("epochs", [10, 3])  # 10: the engine's default, once overwritten
def test_explicit_epochs_are_honoured(epochs: int) -> None:
    from restorekit.cli.run import model_parser

    args = model_parser(Pix2PixHD).parse_args(["--epochs", str(epochs)])
    overrides = {k: v for k, v in vars(args).items() if k in Pix2PixHDOptions.__dataclass_fields__}
    options = Pix2PixHD.make_options("quick", **overrides)  # niter 50 + niter_decay 50
    assert options.epochs == epochs
    assert Pix2PixHD(options, Pipeline()).num_epochs() == epochs
    assert (options.niter, options.niter_decay) == (epochs - round(epochs / 2), round(epochs / 2))


def test_enhance_keeps_odd_sizes() -> None:
    model = Pix2PixHD(tiny_options(), Pipeline())
    model.build(torch.device("cpu"))
    image = np.random.default_rng(1).uniform(0, 0.2, (41, 59, 3)).astype(np.float32)
    out = model.enhance(image)
    assert out.shape == (41, 59, 3) and out.dtype == np.float32
    assert out.min() >= 0 and out.max() <= 1


def weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run / "checkpoints" / "last.safetensors"))


def test_cli_train_interrupt_resume_eval_enhance(lol: Path, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    runs = tmp_path / "runs"
    # Resume is bit-exact on CPU (GPU kernels need not be deterministic): name the device.
    common = ["run", "pix2pixhd", "--train", "--data", str(lol), "--runs-dir", str(runs),
              "--preprocess", "gamma", "--device", "cpu", *TINY]
    assert main([*common, "--name", "full"]) == 0
    assert main([*common, "--name", "cut", "--max-steps", "3"]) == 0
    assert main(["run", "pix2pixhd", "--train", "--resume", "--name", "cut",
                 "--runs-dir", str(runs)]) == 0
    capsys.readouterr()

    full, cut = weights(runs / "full"), weights(runs / "cut")
    assert full.keys() == cut.keys()
    assert all(torch.equal(full[k], cut[k]) for k in full if not k.startswith("rng."))

    config = json.loads((runs / "full" / "config.json").read_text())
    assert config["model"] == "pix2pixhd" and config["preprocess"] == "gamma"
    assert config["options"]["ngf"] == 4
    for name in ("report.html", "metrics.jsonl", "losses.jsonl", "baselines.json"):
        assert (runs / "full" / name).exists(), name
    assert list((runs / "full" / "samples").glob("*.png"))

    assert main(["run", "pix2pixhd", "--eval", "--checkpoint", str(runs / "full"),
                 "--data", str(lol), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["rows"]
    assert set(rows) == {"identity", "pix2pixhd (gamma)"}

    big = np.random.default_rng(2).uniform(0, 0.2, (101, 133, 3)).astype(np.float32)
    write_image(tmp_path / "in" / "dark.png", big)
    for tile in ("0", "64"):
        out_dir = tmp_path / f"out{tile}"
        assert main(["run", "pix2pixhd", "--enhance", str(tmp_path / "in"), "-o", str(out_dir),
                     "--checkpoint", str(runs / "full" / "checkpoints" / "last.safetensors"),
                     "--tile", tile]) == 0
        assert read_image(out_dir / "dark.png").shape == (101, 133, 3)


def test_existing_run_is_never_overwritten_silently(lol: Path, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    runs = tmp_path / "runs"
    args = ["run", "pix2pixhd", "--train", "--data", str(lol), "--runs-dir", str(runs),
            *TINY, "--max-steps", "1"]
    assert main(args) == 0
    assert main(args) == 0  # no --name: a new numbered run
    assert sorted(p.name for p in runs.iterdir()) == ["pix2pixhd", "pix2pixhd-2"]
    capsys.readouterr()
    assert main([*args, "--name", "pix2pixhd"]) == 2
    assert "use --resume to continue it or --overwrite" in capsys.readouterr().err


def test_pickle_checkpoint_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    evil = tmp_path / "model.pth"
    evil.write_bytes(pickle.dumps({"G": 1}))
    code = main(["run", "pix2pixhd", "--eval", "--checkpoint", str(evil)])
    err = capsys.readouterr().err
    assert code == 1 and "model.pth" in err and err.count("\n") == 1


def test_search_space_is_declared_and_maps_the_decay_fraction() -> None:
    from restorekit import Choice, FloatRange

    space = Pix2PixHD.search_space("quick")
    assert space["lr"] == FloatRange(5e-5, 1e-3, log=True)
    assert space["upsample"] == Choice("transpose", "resize", "bilinear")
    fields = set(Pix2PixHDOptions.__dataclass_fields__)
    assert set(space) - fields == {"decay_fraction"}  # the only derived parameter
    assert Pix2PixHD.search_space("lol")["ngf"] != space["ngf"]
    base = dict(Pix2PixHD.presets["quick"])
    values = Pix2PixHD.options_from_search(base, {"decay_fraction": 0.25, "lr": 1e-4})
    assert (values["niter"], values["niter_decay"], values["lr"]) == (75, 25, 1e-4)
    options = Pix2PixHD.make_options(None, **values)
    assert options.epochs == 100


def test_resize_upsampling_trains() -> None:
    model = Pix2PixHD(tiny_options(upsample="resize"), Pipeline())
    model.build(torch.device("cpu"))
    assert "model.11.conv.weight" in model.netG.state_dict()
    with pytest.raises(UsageError, match="--upsample"):
        tiny_options(upsample="deconv")


def test_ema_resumes_exactly_and_is_what_eval_and_enhance_use(
        lol: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--ema: the average of G is saved in every checkpoint, resumed bit-exactly, and used
    by --eval/--enhance unless --raw-weights."""
    runs = tmp_path / "runs"
    common = ["run", "pix2pixhd", "--train", "--data", str(lol), "--runs-dir", str(runs),
              "--device", "cpu", *TINY, "--ema", "0.5"]
    assert main([*common, "--name", "full"]) == 0
    assert main([*common, "--name", "cut", "--max-steps", "3"]) == 0
    assert main(["run", "pix2pixhd", "--train", "--resume", "--name", "cut",
                 "--runs-dir", str(runs)]) == 0
    full, cut = weights(runs / "full"), weights(runs / "cut")
    averaged = [k for k in full if k.startswith("part.ema_G.")]
    assert averaged and full.keys() == cut.keys()
    assert all(torch.equal(full[k], cut[k]) for k in full if not k.startswith("rng."))
    assert any(not torch.equal(full[k], full["net.G." + k.removeprefix("part.ema_G.")])
               for k in averaged)

    from restorekit.engine import load_trained
    from restorekit.plugins import get_registry

    model = load_trained(runs / "full", get_registry(), device="cpu")
    low = torch.rand(1, 3, 32, 32) * 0.2
    with torch.no_grad():
        ema_out = model.enhance_tensor(low)
        assert torch.equal(ema_out, ((model.ema.module(low * 2 - 1) + 1) / 2).clamp(0, 1))
        assert model.use_raw_weights()
        assert not torch.equal(model.enhance_tensor(low), ema_out)

    scores = {}
    for extra in ([], ["--raw-weights"]):
        capsys.readouterr()
        assert main(["run", "pix2pixhd", "--eval", "--checkpoint", str(runs / "full"),
                     "--data", str(lol), "--json", *extra]) == 0
        scores[len(extra)] = json.loads(capsys.readouterr().out)["rows"]["pix2pixhd"]["psnr"]
    assert scores[0] != scores[1]

    assert main([*common[:-2], "--name", "plain", "--max-steps", "1"]) == 0
    capsys.readouterr()
    assert main(["run", "pix2pixhd", "--eval", "--checkpoint", str(runs / "plain"),
                 "--data", str(lol), "--raw-weights"]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"restorekit: error: --raw-weights: {runs / 'plain'} keeps no moving average of its "
        f"weights (trained without --ema); its weights are the raw ones")
