"""``restorekit convert pix2pixhd``: NVIDIA pix2pixHD checkpoints into a restorekit run folder.

The plugin registers the command through ``register_commands``: NVIDIA's file naming is
this model's business, not the core's. NVIDIA's ``train.py`` saves ``{which}_net_G.pth``
and ``{which}_net_D.pth`` (``torch.save(net.state_dict())``) in its checkpoints folder.
Their state-dict names match the networks of the model (``G`` and ``D``), so the weights
are read with ``torch.load(weights_only=True)`` (no arbitrary unpickling) and written as
safetensors. Give the model options the NVIDIA run used (``--netG local --ngf 32 ...``,
or a preset).
"""

from __future__ import annotations

import argparse
import typing
from pathlib import Path

from restorekit import Command
from restorekit.cli import PROG, Parser
from restorekit.errors import CheckpointError, UsageError, one_line


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="the restorekit model: pix2pixhd")
    parser.add_argument("source", type=Path,
                        help="NVIDIA checkpoints folder holding latest_net_G.pth "
                             "(and latest_net_D.pth)")
    parser.add_argument("options", nargs=argparse.REMAINDER,
                        help="-o RUN [--which latest] [--preset NAME] [--overwrite] and the "
                             "model's options, e.g. --netG local --ngf 32 (convert MODEL "
                             "SOURCE --help lists them)")


def _options_parser(model_cls: type) -> tuple[argparse.ArgumentParser, list[str]]:
    from restorekit.cli.run import add_model_options

    parser = Parser(prog=f"{PROG} convert {model_cls.name} SOURCE")
    parser.add_argument("-o", "--output", type=Path, required=True, metavar="RUN",
                        help="run folder to create, e.g. runs/nvidia")
    parser.add_argument("--which", default="latest",
                        help="checkpoint prefix: latest or an epoch number (default: latest)")
    parser.add_argument("--preset", default=None, choices=sorted(model_cls.presets) or None,
                        help="option preset (default: the model's default preset)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing RUN")
    return parser, add_model_options(parser, model_cls)


def read_state_dict(path: Path) -> dict[str, typing.Any]:
    """A ``torch.save``d state dict, loaded with ``weights_only=True``; one-line errors."""
    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such file") from None
    except Exception as exc:  # pickle refusals, truncated zips, ...
        raise CheckpointError(f"{path}: cannot read it as a weights-only state dict "
                              f"({one_line(exc)})") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor)
                                              for v in state.values()):
        raise CheckpointError(f"{path}: not a state dict of tensors")
    return state


def run(args: argparse.Namespace, registry: typing.Any) -> int:
    from restorekit.engine import build_model, import_weights
    from restorekit_pix2pixhd.model import Pix2PixHD

    if args.model != Pix2PixHD.name:
        raise UsageError(f"convert: NVIDIA pix2pixHD checkpoints convert into model "
                         f"{Pix2PixHD.name!r}, not {args.model!r}")
    model_cls = Pix2PixHD
    parser, names = _options_parser(model_cls)
    opts = parser.parse_args(args.options)
    overrides = {n: getattr(opts, n) for n in names if hasattr(opts, n)}
    if not args.source.is_dir():
        raise UsageError(f"{args.source}: not a folder")
    model = model_cls(model_cls.make_options(opts.preset, **{**overrides, "device": "cpu"}),
                      _pipeline(model_cls, registry))
    import torch

    build_model(model, torch.device("cpu"))
    state_dicts = {}
    for name in model.networks():
        path = args.source / f"{opts.which}_net_{name}.pth"
        if path.is_file():
            state_dicts[name] = read_state_dict(path)
            print(f"read {path}")
    if not state_dicts:
        raise UsageError(f"{args.source}: no {opts.which}_net_*.pth file for the networks "
                         f"{', '.join(model.networks())}")
    path = import_weights(model, state_dicts, opts.output, source=str(args.source),
                          overwrite=opts.overwrite)
    fresh = sorted(set(model.networks()) - set(state_dicts))
    note = f" ({', '.join(fresh)} freshly initialised)" if fresh else ""
    print(f"wrote {path}{note}\nnext: {PROG} run {model_cls.name} --eval --checkpoint "
          f"{opts.output}")
    return 0


def _pipeline(model_cls: type, registry: typing.Any) -> typing.Any:
    from restorekit.pipeline import Pipeline

    return Pipeline.parse(model_cls.default_preprocess, registry)


COMMAND = Command("convert", "import NVIDIA pix2pixHD checkpoints (latest_net_G.pth) as a "
                  "pix2pixhd run folder", configure, run)
