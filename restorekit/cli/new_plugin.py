"""``restorekit new-plugin NAME``: write a ready-to-install plugin package.

The package holds a ``pyproject.toml`` that declares the entry point in the ``restorekit``
group (and the ruff settings its code passes), a module with one hook implementation per
chosen kind (``--kind preprocessor,metric,model,command``; a ``--no-reference`` metric), a
passing pytest file beside it that uses ``restorekit.testing`` (``isolated``,
``check_plugin``, ``step_context``) and a README. ``pip install -e DIR`` makes it show in
``restorekit plugins`` at once. This is the layout of every plugin in the repository
(``plugins/*/``).

The name may be a plugin name (``sharpen``) or a distribution name
(``restorekit-sharpen``); the module name is derived from it (``sharpen_plugin``).
"""

from __future__ import annotations

import argparse
import keyword
import re
from collections.abc import Sequence
from pathlib import Path

from restorekit.api import Command
from restorekit.errors import UsageError
from restorekit.plugins import Registry

KINDS = ("preprocessor", "metric", "model", "command")
_NAME = re.compile(r"^[a-z][a-z0-9_]*$")

# -- templates -------------------------------------------------------------------------------
# ``{name}`` is the plugin (and item) name, ``{pkg}`` the importable package, ``{dist}`` the
# distribution name, ``{cls}`` a CamelCase class name. Literal braces are doubled.

_PYPROJECT = '''\
[build-system]
requires = ["setuptools>=68"]
build-backend = "setuptools.build_meta"

[project]
name = "{dist}"
version = "0.1.0"
description = "A restorekit plugin that adds {what} {name!r}."
readme = "README.md"
requires-python = ">=3.10"
dependencies = ["restorekit"]

[project.optional-dependencies]
test = ["pytest"]

# restorekit finds plugins through this entry-point group.
[project.entry-points.restorekit]
{name} = "{pkg}"

[tool.setuptools]
packages = ["{pkg}"]

[tool.ruff]
line-length = 100

[tool.ruff.lint]
select = ["E", "F", "W", "I", "UP", "B", "SIM"]

[tool.ruff.lint.isort]
known-first-party = ["{pkg}"]
'''

# The package's __init__.py is put together from one part per kind: the imports each part
# needs (sorted into one block as ruff's isort wants them), its functions and its hook.
_IMPORTS = {
    "preprocessor": ({"from collections.abc import Callable", "from typing import Any"},
                     {"import numpy as np"}, {"Image", "Preprocessor", "hookimpl"}),
    "metric": ({"from collections.abc import Callable", "from typing import Any"},
               {"import numpy as np"}, {"Image", "Metric", "hookimpl"}),
    "no-reference metric": ({"from collections.abc import Callable", "from typing import Any"},
                            {"import numpy as np"}, {"Image", "NoReferenceMetric", "hookimpl"}),
    "model": ({"from collections.abc import Callable", "from typing import Any"}, set(),
              {"hookimpl"}),
    "command": ({"import argparse", "from collections.abc import Callable",
                 "from pathlib import Path", "from typing import Any"}, {"import numpy as np"},
                {"Command", "hookimpl"}),
}

_PART_PREPROCESSOR = """

def lift_shadows(image: Image, strength: float = 0.5) -> Image:
    \"""Brighten the shadows: blend the image with its square root by ``strength``.\"""
    if not 0.0 <= strength <= 1.0:
        raise ValueError(f"strength must be in [0, 1] (got {{strength}})")
    lifted = np.sqrt(np.clip(image, 0.0, 1.0))
    return ((1.0 - strength) * image + strength * lifted).astype(np.float32)


@hookimpl
def register_preprocessors(register: Callable[..., Any]) -> None:
    \"""Register the preprocessor {name!r}.\"""
    register(Preprocessor("{name}", lift_shadows, params={{"strength": 0.5}},
                          ranges={{"strength": (0.0, 1.0)}},
                          description="blend with the square root (shadow lift)"))
"""

_PART_METRIC = """

def brightness_difference(prediction: Image, target: Image) -> float:
    \"""Absolute difference of the mean brightness of two images (0 = same exposure).\"""
    return float(abs(np.mean(prediction) - np.mean(target)))


@hookimpl
def register_metrics(register: Callable[..., Any]) -> None:
    \"""Register the metric {name!r}.\"""
    register(Metric("{name}", brightness_difference, higher_is_better=False,
                    description="difference of mean brightness"))
"""

_PART_NR_METRIC = """

def clipped_share(prediction: Image) -> float:
    \"""Share of clipped (over-exposed) pixels: any channel at 254/255 or above.\"""
    return float(np.mean(np.max(prediction, axis=-1) >= 254 / 255))


@hookimpl
def register_metrics(register: Callable[..., Any]) -> None:
    \"""Register the metric {name!r}: it scores one image, with no ground truth
    (``needs_source=True`` would pass the input image too, as ``fn(prediction, source=...)``).\"""
    register(NoReferenceMetric("{name}", clipped_share, higher_is_better=False,
                               description="share of over-exposed pixels"))
"""

_PART_MODEL = """

@hookimpl
def register_models(register: Callable[..., Any]) -> None:
    \"""Register the model {name!r} (torch is imported only when the hook runs).\"""
    from {pkg}.model import {cls}

    register({cls})
"""

_PART_COMMAND = """

def configure_command(parser: argparse.ArgumentParser) -> None:
    \"""The arguments of 'restorekit {name}'.\"""
    parser.add_argument("images", nargs="+", type=Path, help="image files")


def run_command(args: argparse.Namespace, registry: Any) -> int:
    \"""Print the mean brightness of each image; an unreadable one is one error line.\"""
    from restorekit.data import read_image

    for path in args.images:
        print(f"{{path}}: mean brightness {{float(np.mean(read_image(path))):.3f}}")
    return 0


@hookimpl
def register_commands(register: Callable[..., Any]) -> None:
    \"""Register the command 'restorekit {name}'.\"""
    register(Command("{name}", "print the mean brightness of images", configure_command,
                     run_command))
"""

_PARTS = {"preprocessor": _PART_PREPROCESSOR, "metric": _PART_METRIC,
          "no-reference metric": _PART_NR_METRIC, "model": _PART_MODEL,
          "command": _PART_COMMAND}


def _import_block(flavours: list[str]) -> str:
    """The imports of the parts of ``flavours``, sorted and grouped as isort does."""
    stdlib: set[str] = set()
    third: set[str] = set()
    names: set[str] = set()
    for flavour in flavours:
        s, t, n = _IMPORTS[flavour]
        stdlib |= s
        third |= t
        names |= n

    def order(line: str) -> tuple[bool, str]:  # plain imports first, then from-imports
        return (line.startswith("from "), line.split()[1])

    restorekit = "from restorekit import " + ", ".join(
        sorted(names, key=lambda n: (n[0].islower(), n)))
    return "\n".join([*sorted(stdlib, key=order), "", *sorted(third, key=order), restorekit])


def _init(flavours: list[str]) -> str:
    what = _what(flavours)
    head = (f'"""restorekit plugin {{dist}}.\n\nIt registers {what} {{name!r}}.\n"""\n\n'
            "from __future__ import annotations\n\n" + _import_block(flavours)
            + "\n\nRESTOREKIT_API = 1\n")
    return head + "".join(_PARTS[f] for f in flavours)


def _what(flavours: list[str]) -> str:
    """``the preprocessor``, ``the preprocessor, metric and command``..."""
    if len(flavours) == 1:
        return f"the {flavours[0]}"
    return f"the {', '.join(flavours[:-1])} and {flavours[-1]}"


_MODEL = """\
\"""The {name!r} model: a small residual CNN trained with an L1 loss on paired data.\"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from restorekit import StepContext, TrainableModel
from restorekit.engine import TrainConfig
from torch import nn


@dataclass
class {cls}Options(TrainConfig):
    \"""Options of {name!r}; every field is a --option of 'restorekit run {name}'.\"""

    width: int = field(default=16, metadata={{"help": "channels of the hidden layers",
                                             "range": (1, 1024)}})
    lr: float = field(default=1e-3, metadata={{"help": "Adam learning rate",
                                              "range": (0.0, 1.0, "(]")}})


class {cls}(TrainableModel):
    \"""Three convolutions that predict a correction added to the input.\"""

    name: ClassVar[str] = "{name}"
    description: ClassVar[str] = "small residual CNN (generated by restorekit new-plugin)"
    Options: ClassVar[type] = {cls}Options
    presets: ClassVar[dict[str, dict[str, Any]]] = {{
        "quick": dict(epochs=2, batch_size=4, crop_size=64, samples_per_epoch=16),
    }}
    default_preset: ClassVar[str | None] = "quick"
    embedded_preset: ClassVar[str | None] = "quick"

    def build(self, device: torch.device) -> None:
        w = self.options.width
        self.net = nn.Sequential(
            nn.Conv2d(3, w, 3, padding=1), nn.ReLU(),
            nn.Conv2d(w, w, 3, padding=1), nn.ReLU(),
            nn.Conv2d(w, 3, 3, padding=1),
        ).to(device)
        self.opt = torch.optim.Adam(self.net.parameters(), lr=self.options.lr)

    def networks(self) -> dict[str, nn.Module]:
        return {{"net": self.net}}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {{"net": self.opt}}

    def train_step(self, low: torch.Tensor, high: torch.Tensor,
                   ctx: StepContext) -> dict[str, torch.Tensor]:
        # The forward pass under ctx.autocast() (--precision) and the optimiser stepped by
        # ctx.backward_step (fp16 loss scaling, gradient averaging across processes).
        with ctx.autocast():
            loss = F.l1_loss(self.enhance_tensor(low), high)
        ctx.backward_step(loss, "net")
        return {{"l1": loss.detach()}}

    def enhance_tensor(self, low: torch.Tensor) -> torch.Tensor:
        return (low + self.net(low)).float().clamp(0, 1)
"""

_TEST_HEAD = """\
\"""Tests of the {name!r} plugin: it registers through restorekit's hooks and keeps
restorekit's contracts.\"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from restorekit import plugins, testing

import {pkg}


@pytest.fixture
def registry() -> Iterator[plugins.Registry]:
    \"""The built-ins and this plugin only: no installed plugin can interfere.\"""
    with testing.isolated({name}={pkg}) as registry:
        yield registry


def test_the_hooks_register_{name}(registry: plugins.Registry) -> None:
    assert registry.plugins["{name}"].error is None
    for kind in {items}:
        assert registry.owners[kind]["{name}"] == "{name}"


def test_every_item_keeps_restorekits_contracts() -> None:
    \"""Each item through restorekit's own code paths (testing.check_plugin): one error
    listing every problem found.\"""
    testing.check_plugin({pkg}, "{name}")
"""

_TEST_PREPROCESSOR = """

def test_{name}_brightens_and_keeps_the_range(registry: plugins.Registry) -> None:
    pre = registry.preprocessor("{name}")
    image = np.random.default_rng(0).uniform(0, 0.3, (16, 16, 3)).astype(np.float32)
    out = pre.fn(image, **pre.params)
    assert out.shape == image.shape and out.dtype == np.float32
    assert out.min() >= 0.0 and out.max() <= 1.0
    assert out.mean() > image.mean()
"""

_TEST_METRIC = """

def test_{name}_is_zero_for_equal_images(registry: plugins.Registry) -> None:
    metric = registry.metric("{name}")
    image = np.full((8, 8, 3), 0.4, np.float32)
    assert metric.fn(image, image) == 0.0
    assert metric.fn(image * 0.5, image) == pytest.approx(0.2)
"""

_TEST_NR_METRIC = """

def test_{name}_counts_clipped_pixels(registry: plugins.Registry) -> None:
    metric = registry.metric("{name}")
    image = np.full((8, 8, 3), 0.4, np.float32)
    assert metric.score(image) == 0.0
    image[:4, :, 1] = 1.0
    assert metric.score(image) == pytest.approx(0.5)
"""

_TEST_MODEL = """

def test_{name}_trains_one_step_and_enhances(registry: plugins.Registry) -> None:
    import torch

    model_cls = registry.model("{name}")
    model = model_cls(model_cls.make_options(), preprocess=lambda image: image)
    model.build(torch.device("cpu"))
    ctx = testing.step_context(model)  # what the engine hands train_step
    losses = model.train_step(*testing.tiny_batch(2, 32), ctx)
    assert set(losses) == {{"l1"}} and torch.isfinite(losses["l1"])
    assert ctx.autocasts == 1 and ctx.updates == 1
    out = model.enhance(np.full((20, 24, 3), 0.1, np.float32))
    assert out.shape == (20, 24, 3) and out.min() >= 0.0 and out.max() <= 1.0
"""

_TEST_COMMAND = """

def test_the_{name}_command(registry: plugins.Registry, tmp_path: Path,
                            capsys: pytest.CaptureFixture[str]) -> None:
    from restorekit.cli import main
    from restorekit.data import write_image

    write_image(tmp_path / "grey.png", np.full((4, 4, 3), 0.5, np.float32))
    assert main(["{name}", str(tmp_path / "grey.png")]) == 0
    assert "mean brightness 0.50" in capsys.readouterr().out
    assert main(["{name}"]) == 2  # a usage error: one line, exit status 2
"""

_TESTS = {"preprocessor": _TEST_PREPROCESSOR, "metric": _TEST_METRIC,
          "no-reference metric": _TEST_NR_METRIC, "model": _TEST_MODEL,
          "command": _TEST_COMMAND}

_README = """\
# {dist}

A [restorekit](https://github.com/) plugin that adds {what} `{name}`.

```console
$ pip install -e .
$ restorekit plugins          # lists "{name}"
$ pytest tests                # the plugin's own tests
```

{usage}

Generated by `restorekit new-plugin {name} {options}`; see restorekit's
`docs/plugins.md` for the hooks, testing (`restorekit.testing.check_plugin`) and
debugging.
"""

_USAGE = {
    "preprocessor": "Use it in a pipeline: `restorekit preprocess IMAGES -o OUT "
                    "--preprocess {name}:strength=0.7`.",
    "metric": "Use it: `restorekit metrics PRED_DIR GT_DIR --metrics psnr,{name}`.",
    "no-reference metric": "Use it on images without ground truth: `restorekit metrics "
                           "PRED_DIR --metrics {name}`, or `restorekit run MODEL --enhance "
                           "IMAGES -o OUT --score`.",
    "model": "Train and evaluate it on the embedded data: `restorekit run {name} --train` "
             "then `restorekit run {name} --eval`.",
    "command": "Run it: `restorekit {name} IMAGES...`.",
}

_GITIGNORE = "__pycache__/\n*.egg-info/\nbuild/\ndist/\nruns/\n"


def parse_kinds(kinds: str | Sequence[str]) -> list[str]:
    """The kinds of ``kinds`` (``"model,metric"`` or a list of such), in :data:`KINDS` order
    without repeats; a one-line ``UsageError`` for an unknown or missing kind."""
    given = [kinds] if isinstance(kinds, str) else list(kinds)
    names = [k.strip() for text in given for k in text.split(",") if k.strip()]
    unknown = [k for k in names if k not in KINDS]
    if unknown or not names:
        raise UsageError(f"new-plugin: --kind must be one or more of {', '.join(KINDS)} "
                         f"(got {', '.join(map(repr, unknown or given))})")
    return [k for k in KINDS if k in names]


def _files(name: str, kinds: str | Sequence[str], no_reference: bool = False) -> dict[str, str]:
    kinds = parse_kinds(kinds)
    pkg = f"{name}_plugin" if not name.endswith("_plugin") else name
    flavours = ["no-reference metric" if k == "metric" and no_reference else k for k in kinds]
    options = "--kind " + ",".join(kinds) + (" --no-reference" if no_reference else "")
    values = {
        "name": name,
        "what": _what(flavours),
        "pkg": pkg,
        "dist": "restorekit-" + name.replace("_", "-"),
        "cls": "".join(part.capitalize() for part in name.split("_") if part) or "Model",
        "items": repr(tuple(k + "s" for k in kinds)).replace("'", '"'),
        "options": options,
        "usage": "\n\n".join(_USAGE[f].format(name=name) for f in flavours),
    }
    files = {
        "pyproject.toml": _PYPROJECT,
        "README.md": _README,
        ".gitignore": _GITIGNORE,
        f"{pkg}/__init__.py": _init(flavours),
        f"tests/test_{name}.py": (_TEST_HEAD if "command" in kinds else _TEST_HEAD.replace(
            "from pathlib import Path\n", "")) + "".join(_TESTS[f] for f in flavours),
    }
    if "model" in kinds:
        files[f"{pkg}/model.py"] = _MODEL
    return {path: text.format(**values) for path, text in files.items()}


def plugin_name(name: str) -> str:
    """The plugin name of ``name``: ``restorekit-foo-bar`` and ``foo-bar`` give ``foo_bar``."""
    base = name.strip()
    for prefix in ("restorekit-", "restorekit_"):
        if base.lower().startswith(prefix):
            base = base[len(prefix):]
            break
    return base.replace("-", "_")


def validate_name(name: str) -> str:
    """The plugin name derived from ``name`` if valid, else a one-line ``UsageError``."""
    derived = plugin_name(name)
    if not _NAME.match(derived) or keyword.iskeyword(derived):
        raise UsageError(f"new-plugin: invalid name {name!r}: use a lower-case name of "
                         "letters, digits, '_' or '-', starting with a letter (e.g. 'sharpen' "
                         "or 'restorekit-sharpen')")
    if derived.startswith("restorekit"):
        raise UsageError(f"new-plugin: invalid name {name!r}: names starting with "
                         "'restorekit' are reserved")
    return derived


def create_plugin(name: str, kinds: str | Sequence[str], output: Path,
                  no_reference: bool = False) -> Path:
    """Write a plugin package for ``name`` that registers one item of each of ``kinds``
    (``"model"``, ``"preprocessor,metric"`` or a list; see :data:`KINDS`) into the folder
    ``output`` (``no_reference``: its metric scores images without ground truth).

    ``output`` must not exist or be empty. Returns ``output``. Raises ``UsageError``
    for a bad name or kind, or a non-empty target folder.
    """
    name = validate_name(name)
    kinds = parse_kinds(kinds)
    if no_reference and "metric" not in kinds:
        raise UsageError(f"new-plugin: --no-reference goes with --kind metric (got --kind "
                         f"{','.join(kinds)})")
    output = Path(output)
    if output.exists() and not output.is_dir():
        raise UsageError(f"new-plugin: {output} exists and is not a folder")
    if output.is_dir() and any(output.iterdir()):
        raise UsageError(f"new-plugin: {output} is not empty; choose another folder with -o")
    for rel, text in _files(name, kinds, no_reference).items():
        path = output / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return output


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", help="plugin name, e.g. 'sharpen' or 'restorekit-sharpen' "
                                     "(module: sharpen_plugin)")
    parser.add_argument("--kind", action="append", metavar="KINDS",
                        help=f"what the plugin registers, one item of each: {', '.join(KINDS)}"
                             " (comma-separated or repeated; default: preprocessor)")
    parser.add_argument("--no-reference", action="store_true",
                        help="with --kind metric: a no-reference metric, which scores an "
                             "image without ground truth")
    parser.add_argument("-o", "--output", type=Path, default=None, metavar="DIR",
                        help="folder to create (default: ./restorekit-NAME); must be empty")


def run(args: argparse.Namespace, registry: Registry) -> int:
    """Create the package and say what to do next."""
    name = validate_name(args.name)
    kinds = parse_kinds(args.kind or "preprocessor")
    dist = "restorekit-" + name.replace("_", "-")
    output = args.output if args.output is not None else Path(dist)
    folder = create_plugin(name, kinds, output, args.no_reference)
    flavours = ["no-reference metric" if k == "metric" and args.no_reference else k
                for k in kinds]
    print(f"created the plugin {name!r} ({dist}) with {_what(flavours)} in {folder}\n"
          f"next: pip install -e {folder} && restorekit plugins && pytest {folder}")
    return 0


COMMAND = Command("new-plugin", "create a plugin package to start from", configure, run)
