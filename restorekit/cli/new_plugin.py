"""``restorekit new-plugin NAME``: write a ready-to-install plugin package.

The package holds a ``pyproject.toml`` that declares the entry point in the ``restorekit``
group, a module with one hook implementation for the chosen kind (preprocessor, metric,
``--no-reference`` metric or model), a passing pytest file beside it that uses
``restorekit.testing.isolated`` and a README. ``pip install -e DIR`` makes it show in
``restorekit plugins`` at once. This is the layout of every plugin in the repository
(``plugins/*/``).

The name may be a plugin name (``sharpen``) or a distribution name
(``restorekit-sharpen``); the module name is derived from it (``sharpen_plugin``).
"""

from __future__ import annotations

import argparse
import keyword
import re
from pathlib import Path

from restorekit.api import Command
from restorekit.errors import UsageError
from restorekit.plugins import Registry

KINDS = ("preprocessor", "model", "metric")
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
description = "A restorekit plugin that adds the {kind} {name!r}."
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
'''

_INIT_PREPROCESSOR = '''\
"""restorekit plugin {dist}: the preprocessor {name!r}."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from restorekit import Image, Preprocessor, hookimpl

RESTOREKIT_API = 1


def {name}(image: Image, strength: float = 0.5) -> Image:
    """Brighten the shadows: blend the image with its square root by ``strength``."""
    if not 0.0 <= strength <= 1.0:
        raise ValueError(f"strength must be in [0, 1] (got {{strength}})")
    lifted = np.sqrt(np.clip(image, 0.0, 1.0))
    return ((1.0 - strength) * image + strength * lifted).astype(np.float32)


@hookimpl
def register_preprocessors(register: Callable[..., Any]) -> None:
    """Register {name!r}."""
    register(Preprocessor("{name}", {name}, params={{"strength": 0.5}},
                          description="blend with the square root (shadow lift)"))
'''

_INIT_METRIC = '''\
"""restorekit plugin {dist}: the metric {name!r}."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from restorekit import Image, Metric, hookimpl

RESTOREKIT_API = 1


def {name}(prediction: Image, target: Image) -> float:
    """Absolute difference of the mean brightness of two images (0 = same exposure)."""
    return float(abs(np.mean(prediction) - np.mean(target)))


@hookimpl
def register_metrics(register: Callable[..., Any]) -> None:
    """Register {name!r}."""
    register(Metric("{name}", {name}, higher_is_better=False,
                    description="difference of mean brightness"))
'''

_INIT_NR_METRIC = '''\
"""restorekit plugin {dist}: the no-reference metric {name!r}."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from restorekit import Image, NoReferenceMetric, hookimpl

RESTOREKIT_API = 1


def {name}(prediction: Image) -> float:
    """Share of clipped (over-exposed) pixels: any channel at 254/255 or above."""
    return float(np.mean(np.max(prediction, axis=-1) >= 254 / 255))


@hookimpl
def register_metrics(register: Callable[..., Any]) -> None:
    """Register {name!r}: it scores one image, with no ground truth (``needs_source=True``
    would pass the input image too, as ``fn(prediction, source=...)``)."""
    register(NoReferenceMetric("{name}", {name}, higher_is_better=False,
                               description="share of over-exposed pixels"))
'''

_INIT_MODEL = '''\
"""restorekit plugin {dist}: the trainable model {name!r}."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from restorekit import hookimpl

RESTOREKIT_API = 1


@hookimpl
def register_models(register: Callable[..., Any]) -> None:
    """Register {name!r} (torch is imported only when the hook runs)."""
    from {pkg}.model import {cls}

    register({cls})
'''

_MODEL = '''\
"""The {name!r} model: a small residual CNN trained with an L1 loss on paired data."""

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
    """Options of {name!r}; every field is a --option of 'restorekit run {name}'."""

    width: int = field(default=16, metadata={{"help": "channels of the hidden layers",
                                             "range": (1, 1024)}})
    lr: float = field(default=1e-3, metadata={{"help": "Adam learning rate",
                                              "range": (0.0, 1.0, "(]")}})


class {cls}(TrainableModel):
    """Three convolutions that predict a correction added to the input."""

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
        with ctx.autocast():
            loss = F.l1_loss(self.enhance_tensor(low), high)
        ctx.backward_step(loss, "net")
        return {{"l1": loss.detach()}}

    def enhance_tensor(self, low: torch.Tensor) -> torch.Tensor:
        return (low + self.net(low)).float().clamp(0, 1)
'''

_TEST_HEAD = '''\
"""Tests of the {name!r} plugin: it registers through restorekit's hooks."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
from restorekit import plugins, testing

import {pkg}


@pytest.fixture
def registry() -> Iterator[plugins.Registry]:
    """The built-ins and this plugin only: no installed plugin can interfere."""
    with testing.isolated({name}={pkg}) as registry:
        yield registry


def test_the_hook_registers_{name}(registry: plugins.Registry) -> None:
    assert registry.owners["{items}"]["{name}"] == "{name}"
    assert registry.plugins["{name}"].error is None
'''

_TEST_PREPROCESSOR = '''

def test_{name}_brightens_and_keeps_the_range(registry: plugins.Registry) -> None:
    pre = registry.preprocessor("{name}")
    image = np.random.default_rng(0).uniform(0, 0.3, (16, 16, 3)).astype(np.float32)
    out = pre.fn(image, **pre.params)
    assert out.shape == image.shape and out.dtype == np.float32
    assert out.min() >= 0.0 and out.max() <= 1.0
    assert out.mean() > image.mean()
'''

_TEST_METRIC = '''

def test_{name}_is_zero_for_equal_images(registry: plugins.Registry) -> None:
    metric = registry.metric("{name}")
    image = np.full((8, 8, 3), 0.4, np.float32)
    assert metric.fn(image, image) == 0.0
    assert metric.fn(image * 0.5, image) == pytest.approx(0.2)
'''

_TEST_NR_METRIC = '''

def test_{name}_counts_clipped_pixels(registry: plugins.Registry) -> None:
    metric = registry.metric("{name}")
    image = np.full((8, 8, 3), 0.4, np.float32)
    assert metric.score(image) == 0.0
    image[:4, :, 1] = 1.0
    assert metric.score(image) == pytest.approx(0.5)
'''

_TEST_MODEL = '''

def test_{name}_trains_one_step_and_enhances(registry: plugins.Registry) -> None:
    import contextlib

    import torch

    model_cls = registry.model("{name}")
    model = model_cls(model_cls.make_options(), preprocess=lambda image: image)
    model.build(torch.device("cpu"))

    class Ctx:  # the part of the engine's StepContext a train_step uses
        device, epoch, step = torch.device("cpu"), 0, 0

        def autocast(self) -> contextlib.AbstractContextManager:
            return contextlib.nullcontext()

        def backward_step(self, loss: torch.Tensor, optimizer: str) -> None:
            opt = model.optimizers()[optimizer]
            opt.zero_grad()
            loss.backward()
            opt.step()

    low, high = torch.rand(2, 3, 32, 32) * 0.2, torch.rand(2, 3, 32, 32)
    losses = model.train_step(low, high, Ctx())
    assert set(losses) == {{"l1"}} and torch.isfinite(losses["l1"])
    out = model.enhance(np.full((20, 24, 3), 0.1, np.float32))
    assert out.shape == (20, 24, 3) and out.min() >= 0.0 and out.max() <= 1.0
'''

_README = '''\
# {dist}

A [restorekit](https://github.com/) plugin that adds the {kind} `{name}`.

```console
$ pip install -e .
$ restorekit plugins          # lists "{name}"
$ pytest tests                # the plugin's own tests
```

{usage}

Generated by `restorekit new-plugin {name} --kind {kind}`; see restorekit's
`docs/plugins.md` for the hooks, testing and debugging.
'''

_USAGE = {
    "preprocessor": "Use it in a pipeline: `restorekit preprocess IMAGES -o OUT "
                    "--preprocess {name}:strength=0.7`.",
    "metric": "Use it: `restorekit metrics PRED_DIR GT_DIR --metrics psnr,{name}`.",
    "no-reference metric": "Use it on images without ground truth: `restorekit metrics "
                           "PRED_DIR --metrics {name}`, or `restorekit run MODEL --enhance "
                           "IMAGES -o OUT --score`.",
    "model": "Train and evaluate it on the embedded data: `restorekit run {name} --train` "
             "then `restorekit run {name} --eval`.",
}

_GITIGNORE = "__pycache__/\n*.egg-info/\nbuild/\ndist/\nruns/\n"


def _files(name: str, kind: str, no_reference: bool = False) -> dict[str, str]:
    pkg = f"{name}_plugin" if not name.endswith("_plugin") else name
    flavour = "no-reference metric" if no_reference else kind
    values = {
        "name": name,
        "kind": flavour,
        "pkg": pkg,
        "dist": "restorekit-" + name.replace("_", "-"),
        "cls": "".join(part.capitalize() for part in name.split("_") if part) or "Model",
        "items": kind + "s",
    }
    init = {"preprocessor": _INIT_PREPROCESSOR, "metric": _INIT_METRIC,
            "no-reference metric": _INIT_NR_METRIC, "model": _INIT_MODEL}[flavour]
    test = _TEST_HEAD + {"preprocessor": _TEST_PREPROCESSOR, "metric": _TEST_METRIC,
                         "no-reference metric": _TEST_NR_METRIC,
                         "model": _TEST_MODEL}[flavour]
    readme = _README.replace("{usage}", _USAGE[flavour])
    if no_reference:
        readme = readme.replace("--kind {kind}", "--kind metric --no-reference")
    files = {
        "pyproject.toml": _PYPROJECT,
        "README.md": readme,
        ".gitignore": _GITIGNORE,
        f"{pkg}/__init__.py": init,
        f"tests/test_{name}.py": test,
    }
    if kind == "model":
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


def create_plugin(name: str, kind: str, output: Path, no_reference: bool = False) -> Path:
    """Write a plugin package for ``name`` of ``kind`` into the folder ``output``
    (``no_reference``: a metric of images without ground truth).

    ``output`` must not exist or be empty. Returns ``output``. Raises ``UsageError``
    for a bad name or kind, or a non-empty target folder.
    """
    name = validate_name(name)
    if kind not in KINDS:
        raise UsageError(f"new-plugin: --kind must be one of {', '.join(KINDS)} (got {kind!r})")
    if no_reference and kind != "metric":
        raise UsageError(f"new-plugin: --no-reference goes with --kind metric (got --kind "
                         f"{kind})")
    output = Path(output)
    if output.exists() and not output.is_dir():
        raise UsageError(f"new-plugin: {output} exists and is not a folder")
    if output.is_dir() and any(output.iterdir()):
        raise UsageError(f"new-plugin: {output} is not empty; choose another folder with -o")
    for rel, text in _files(name, kind, no_reference).items():
        path = output / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return output


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", help="plugin name, e.g. 'sharpen' or 'restorekit-sharpen' "
                                     "(module: sharpen_plugin)")
    parser.add_argument("--kind", choices=KINDS, default="preprocessor",
                        help="what the plugin registers (default: preprocessor)")
    parser.add_argument("--no-reference", action="store_true",
                        help="with --kind metric: a no-reference metric, which scores an "
                             "image without ground truth")
    parser.add_argument("-o", "--output", type=Path, default=None, metavar="DIR",
                        help="folder to create (default: ./restorekit-NAME); must be empty")


def run(args: argparse.Namespace, registry: Registry) -> int:
    """Create the package and say what to do next."""
    name = validate_name(args.name)
    dist = "restorekit-" + name.replace("_", "-")
    output = args.output if args.output is not None else Path(dist)
    folder = create_plugin(name, args.kind, output, args.no_reference)
    kind = "no-reference metric" if args.no_reference else args.kind
    print(f"created the {kind} plugin {name!r} ({dist}) in {folder}\n"
          f"next: pip install -e {folder} && restorekit plugins && pytest {folder}")
    return 0


COMMAND = Command("new-plugin", "create a plugin package to start from", configure, run)
