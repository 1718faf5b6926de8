"""Pix2PixHD (Wang et al., CVPR 2018) as a restorekit model plugin.

It uses only restorekit's public API (and the fused ops of ``restorekit.ext``), exactly
as a third-party plugin would, and is found through the ``restorekit`` entry-point group.
It also adds a command, ``restorekit convert pix2pixhd`` (NVIDIA's checkpoints as a run
folder), through ``register_commands``. Its folder has the layout ``restorekit new-plugin``
makes; the main pyproject packages it, so ``pip install -e .`` of restorekit installs it
and its entry point.
"""

from restorekit import hookimpl

RESTOREKIT_API = 1


@hookimpl
def register_models(register) -> None:  # noqa: ANN001 - pluggy passes the callback
    from restorekit_pix2pixhd.model import Pix2PixHD

    register(Pix2PixHD)


@hookimpl
def register_commands(register) -> None:  # noqa: ANN001 - pluggy passes the callback
    from restorekit_pix2pixhd.convert import COMMAND

    register(COMMAND)
