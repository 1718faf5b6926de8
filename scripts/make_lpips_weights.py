"""Write the LPIPS weights file that ``--lpips-weights`` reads, from the official weights.

Run it once on a machine with internet access (restorekit itself never downloads):

    pip install torchvision lpips safetensors
    python scripts/make_lpips_weights.py lpips-alex.safetensors

It stores torchvision's ImageNet AlexNet ``features`` (the backbone the ``lpips`` package
uses: ``features.N.weight``/``bias``) and the ``lpips`` package's v0.1 linear heads
(``lpips/weights/v0.1/alex.pth``: ``lin0.model.1.weight`` ... ``lin4``) in one safetensors
file. Copy the file to the machine that evaluates and pass it with
``restorekit metrics PRED GT --lpips-weights lpips-alex.safetensors``.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def lpips_tensors() -> dict:
    """The AlexNet feature weights and the LPIPS v0.1 heads, by restorekit's key names."""
    import lpips
    import torch
    from torchvision.models import AlexNet_Weights, alexnet

    features = alexnet(weights=AlexNet_Weights.IMAGENET1K_V1).features.state_dict()
    heads = Path(lpips.__file__).parent / "weights" / "v0.1" / "alex.pth"
    lins = torch.load(heads, map_location="cpu", weights_only=True)
    tensors = {f"features.{k}": v for k, v in features.items()}
    tensors.update(lins)
    return {k: v.detach().float().contiguous() for k, v in tensors.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output", type=Path, help="the .safetensors file to write")
    args = parser.parse_args()
    from safetensors.torch import save_file

    tensors = lpips_tensors()
    save_file(tensors, str(args.output), metadata={"format": "lpips-v0.1-alex"})
    print(f"wrote {len(tensors)} tensors to {args.output}")


if __name__ == "__main__":
    main()
