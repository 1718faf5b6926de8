"""pix2pixHD networks (Wang et al., "High-Resolution Image Synthesis and Semantic
Manipulation with Conditional GANs", CVPR 2018).

The structure and the ``state_dict`` layout follow NVIDIA's reference implementation
(``models/networks.py`` of NVIDIA/pix2pixHD, BSD licence), with instance normalisation
(``--norm instance``) and reflection padding; this is an independent rewrite.

- :class:`GlobalGenerator` is G1 (Sec. 3.2, "Coarse-to-fine generator").
- :class:`LocalEnhancer` is G2 wrapped around G1's front end and bottleneck (Sec. 3.2).
- :class:`NLayerDiscriminator` / :class:`MultiscaleDiscriminator` are the PatchGAN
  discriminators D1..Dk at several scales (Sec. 3.2, "Multi-scale discriminators").

Generators map ``(N, C, H, W)`` tensors in ``[-1, 1]`` to ``[-1, 1]`` (final Tanh).
Sides must be multiples of :attr:`GlobalGenerator.size_multiple`; :func:`run_generator`
reflect-pads any other size up and crops the output back (never resizes).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from restorekit import ext

__all__ = [
    "GlobalGenerator",
    "LocalEnhancer",
    "MultiscaleDiscriminator",
    "NLayerDiscriminator",
    "ResizeConv",
    "ResnetBlock",
    "UPSAMPLE_MODES",
    "crop_to",
    "upsample_layer",
    "init_weights",
    "pad_to_multiple",
    "run_generator",
    "set_fused",
]


def _norm(channels: int) -> nn.InstanceNorm2d:
    """The normalisation layer used throughout: InstanceNorm without affine parameters."""
    return nn.InstanceNorm2d(channels, affine=False, eps=1e-5)


def _downsample_input() -> nn.AvgPool2d:
    """Input downsampling between scales (used by G2 and by the multi-scale D)."""
    return nn.AvgPool2d(3, stride=2, padding=1, count_include_pad=False)


class ResnetBlock(nn.Module):
    """Residual block of the generator bottleneck (Sec. 3.2; Johnson et al. 2016).

    ``x + [pad, conv3x3, IN, ReLU, pad, conv3x3, IN](x)``. With ``fused = True`` the
    block runs through the compiled kernels of ``restorekit.ext.resnet_block`` instead
    (same weights, same result, one hand-written backward); see :func:`set_fused`.
    """

    fused: bool = False

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.conv_block = nn.Sequential(
            nn.ReflectionPad2d(1),
            nn.Conv2d(dim, dim, 3),
            _norm(dim),
            nn.ReLU(True),
            nn.ReflectionPad2d(1),
            nn.Conv2d(dim, dim, 3),
            _norm(dim),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fused:
            return ext.resnet_block(x, self.conv_block[1], self.conv_block[5])
        return x + self.conv_block(x)


def set_fused(module: nn.Module, enabled: bool) -> int:
    """Switch ``module`` (a generator or discriminator) to the fused kernels or back.

    Every :class:`ResnetBlock` runs ``restorekit.ext.resnet_block``, and every other
    ``InstanceNorm -> ReLU/LeakyReLU [-> ReflectionPad]`` run becomes one
    ``restorekit.ext.InstanceNormAct`` (:func:`restorekit.ext.fuse_instance_norms`; the
    ``state_dict`` does not change). Returns how many blocks and runs were switched.
    """
    count = 0
    for m in module.modules():
        if isinstance(m, ResnetBlock):
            m.fused = bool(enabled)
            count += 1
    return count + ext.fuse_instance_norms(module, enabled, skip=(ResnetBlock,))


UPSAMPLE_MODES = ("transpose", "resize", "bilinear")
"""How the generator upsamples: NVIDIA's transposed convolution, or resizing (nearest or
bilinear) followed by a 3x3 convolution."""


class ResizeConv(nn.Module):
    """Upsample by 2 (nearest or bilinear), then a reflection-padded 3x3 convolution.

    Odena et al., "Deconvolution and Checkerboard Artifacts" (Distill, 2016): unlike a
    stride-2 transposed convolution with a 3x3 kernel, every output pixel gets the same
    number of kernel taps, so no grid texture is built into the upsampling.
    """

    def __init__(self, in_ch: int, out_ch: int, mode: str = "nearest") -> None:
        super().__init__()
        self.mode = mode
        self.conv = nn.Conv2d(in_ch, out_ch, 3, padding=1, padding_mode="reflect")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        align = False if self.mode == "bilinear" else None
        return self.conv(F.interpolate(x, scale_factor=2, mode=self.mode, align_corners=align))


def upsample_layer(in_ch: int, out_ch: int, upsample: str = "transpose") -> nn.Module:
    """The generator's x2 upsampling layer for ``upsample`` (one of :data:`UPSAMPLE_MODES`)."""
    if upsample == "transpose":
        return nn.ConvTranspose2d(in_ch, out_ch, 3, stride=2, padding=1, output_padding=1)
    if upsample in ("resize", "bilinear"):
        return ResizeConv(in_ch, out_ch, "nearest" if upsample == "resize" else "bilinear")
    raise ValueError(f"upsample must be one of {', '.join(UPSAMPLE_MODES)} (got {upsample!r})")


class GlobalGenerator(nn.Module):
    """G1, the global generator (Sec. 3.2): front end, residual bottleneck, back end.

    ``c7s1-ngf, d(2 ngf), ..., R(ngf 2^n) x n_blocks, u(...), ..., c7s1-output_nc``,
    all layers in one ``self.model`` sequence so keys match NVIDIA's checkpoints.
    ``upsample`` picks the ``u(...)`` layers (:func:`upsample_layer`; ``transpose`` is
    NVIDIA's).
    """

    def __init__(
        self,
        input_nc: int = 3,
        output_nc: int = 3,
        ngf: int = 64,
        n_downsampling: int = 3,
        n_blocks: int = 9,
        upsample: str = "transpose",
    ) -> None:
        super().__init__()
        self.n_downsampling = n_downsampling
        layers: list[nn.Module] = [
            nn.ReflectionPad2d(3),
            nn.Conv2d(input_nc, ngf, 7),
            _norm(ngf),
            nn.ReLU(True),
        ]
        for i in range(n_downsampling):
            ch = ngf * 2**i
            layers += [
                nn.Conv2d(ch, ch * 2, 3, stride=2, padding=1),
                _norm(ch * 2),
                nn.ReLU(True),
            ]
        bottleneck = ngf * 2**n_downsampling
        layers += [ResnetBlock(bottleneck) for _ in range(n_blocks)]
        for i in range(n_downsampling):
            ch = ngf * 2 ** (n_downsampling - i)
            layers += [
                upsample_layer(ch, ch // 2, upsample),
                _norm(ch // 2),
                nn.ReLU(True),
            ]
        layers += [nn.ReflectionPad2d(3), nn.Conv2d(ngf, output_nc, 7), nn.Tanh()]
        self.model = nn.Sequential(*layers)

    @property
    def size_multiple(self) -> int:
        """Input sides must be multiples of this (``2 ** n_downsampling``)."""
        return 2**self.n_downsampling

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class LocalEnhancer(nn.Module):
    """G = {G1, G2}: local enhancer network(s) around the global generator (Sec. 3.2).

    G1 (``self.model``, with ``ngf * 2**n_local_enhancers`` filters and without its last
    pad/conv/tanh) sees the input average-pooled ``n_local_enhancers`` times. Enhancer
    ``n`` has a front end ``model{n}_1`` whose output is summed with the coarser
    features, and a back end ``model{n}_2`` (residual blocks, upsampling, and for the
    last enhancer the output layer).
    """

    def __init__(
        self,
        input_nc: int,
        output_nc: int,
        ngf: int = 32,
        n_downsample_global: int = 3,
        n_blocks_global: int = 9,
        n_local_enhancers: int = 1,
        n_blocks_local: int = 3,
        upsample: str = "transpose",
    ) -> None:
        super().__init__()
        self.n_local_enhancers = n_local_enhancers
        self.n_downsample_global = n_downsample_global

        ngf_global = ngf * 2**n_local_enhancers
        global_layers = GlobalGenerator(
            input_nc, output_nc, ngf_global, n_downsample_global, n_blocks_global, upsample
        ).model
        self.model = nn.Sequential(*list(global_layers)[:-3])  # drop pad, conv7x7, tanh

        for n in range(1, n_local_enhancers + 1):
            ngf_n = ngf * 2 ** (n_local_enhancers - n)
            front = [
                nn.ReflectionPad2d(3),
                nn.Conv2d(input_nc, ngf_n, 7),
                _norm(ngf_n),
                nn.ReLU(True),
                nn.Conv2d(ngf_n, ngf_n * 2, 3, stride=2, padding=1),
                _norm(ngf_n * 2),
                nn.ReLU(True),
            ]
            back: list[nn.Module] = [ResnetBlock(ngf_n * 2) for _ in range(n_blocks_local)]
            back += [
                upsample_layer(ngf_n * 2, ngf_n, upsample),
                _norm(ngf_n),
                nn.ReLU(True),
            ]
            if n == n_local_enhancers:
                back += [nn.ReflectionPad2d(3), nn.Conv2d(ngf, output_nc, 7), nn.Tanh()]
            setattr(self, f"model{n}_1", nn.Sequential(*front))
            setattr(self, f"model{n}_2", nn.Sequential(*back))

        self.downsample = _downsample_input()

    @property
    def size_multiple(self) -> int:
        """Input sides must be multiples of this (``2 ** (n_downsample_global + n_local)``)."""
        return 2 ** (self.n_downsample_global + self.n_local_enhancers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pyramid = [x]  # finest first
        for _ in range(self.n_local_enhancers):
            pyramid.append(self.downsample(pyramid[-1]))
        features = self.model(pyramid[-1])
        for n in range(1, self.n_local_enhancers + 1):
            front = getattr(self, f"model{n}_1")
            back = getattr(self, f"model{n}_2")
            features = back(front(pyramid[self.n_local_enhancers - n]) + features)
        return features


class NLayerDiscriminator(nn.Module):
    """One PatchGAN discriminator D_k (Sec. 3.2; 70x70 PatchGAN of pix2pix for n_layers=3).

    Layers ``model0 .. model{n_layers+1}``: C64 (no norm), n_layers-1 stride-2 C(2x, <=512),
    one stride-1 C(2x, <=512), then a 1-channel stride-1 conv; kernel 4, padding 2,
    LeakyReLU 0.2. With ``getIntermFeat`` the forward returns every layer's output
    (``n_layers + 2`` tensors, the last being the patch scores), for the feature-matching
    loss (Sec. 3.2, Eq. 4); otherwise only the scores.
    """

    def __init__(
        self, input_nc: int, ndf: int = 64, n_layers: int = 3, getIntermFeat: bool = True
    ) -> None:
        super().__init__()
        self.n_layers = n_layers
        self.getIntermFeat = getIntermFeat
        kw, padw = 4, 2  # padw = ceil((kw - 1) / 2)

        sequence: list[list[nn.Module]] = [
            [nn.Conv2d(input_nc, ndf, kw, stride=2, padding=padw), nn.LeakyReLU(0.2, True)]
        ]
        nf = ndf
        for _ in range(1, n_layers):
            nf_prev, nf = nf, min(nf * 2, 512)
            sequence.append(
                [
                    nn.Conv2d(nf_prev, nf, kw, stride=2, padding=padw),
                    _norm(nf),
                    nn.LeakyReLU(0.2, True),
                ]
            )
        nf_prev, nf = nf, min(nf * 2, 512)
        sequence.append(
            [nn.Conv2d(nf_prev, nf, kw, stride=1, padding=padw), _norm(nf), nn.LeakyReLU(0.2, True)]
        )
        sequence.append([nn.Conv2d(nf, 1, kw, stride=1, padding=padw)])

        if getIntermFeat:
            for i, layer in enumerate(sequence):
                setattr(self, f"model{i}", nn.Sequential(*layer))
        else:
            self.model = nn.Sequential(*[m for layer in sequence for m in layer])

    def layers(self) -> list[nn.Module]:
        """The ``n_layers + 2`` feature layers (only with ``getIntermFeat``)."""
        return [getattr(self, f"model{i}") for i in range(self.n_layers + 2)]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor] | torch.Tensor:
        if not self.getIntermFeat:
            return self.model(x)
        features = []
        for layer in self.layers():
            x = layer(x)
            features.append(x)
        return features


class MultiscaleDiscriminator(nn.Module):
    """D1..Dk: ``num_D`` identical PatchGANs on an image pyramid (Sec. 3.2).

    The input (for the conditional D, ``concat(low, image)``: ``input_nc = 6`` for RGB)
    is average-pooled by 2 between scales. Returns one list of features per scale,
    finest first (each list as :class:`NLayerDiscriminator` returns it; without
    ``getIntermFeat`` a one-element list holding the scores).

    Parameter names follow NVIDIA's (``scale{i}_layer{j}`` / ``layer{i}``), including
    its convention that the finest scale uses index ``num_D - 1``.
    """

    def __init__(
        self,
        input_nc: int,
        ndf: int = 64,
        n_layers: int = 3,
        num_D: int = 2,
        getIntermFeat: bool = True,
    ) -> None:
        super().__init__()
        self.num_D = num_D
        self.n_layers = n_layers
        self.getIntermFeat = getIntermFeat
        for i in range(num_D):
            net = NLayerDiscriminator(input_nc, ndf, n_layers, getIntermFeat)
            if getIntermFeat:
                for j, layer in enumerate(net.layers()):
                    setattr(self, f"scale{i}_layer{j}", layer)
            else:
                setattr(self, f"layer{i}", net.model)
        self.downsample = _downsample_input()

    def _scale(self, i: int) -> list[nn.Module]:
        """The layers of discriminator ``i`` (NVIDIA numbering: ``num_D - 1`` is finest)."""
        if self.getIntermFeat:
            return [getattr(self, f"scale{i}_layer{j}") for j in range(self.n_layers + 2)]
        return [getattr(self, f"layer{i}")]

    def forward(self, x: torch.Tensor) -> list[list[torch.Tensor]]:
        result = []
        for k in range(self.num_D):
            h, features = x, []
            for layer in self._scale(self.num_D - 1 - k):
                h = layer(h)
                features.append(h)
            result.append(features)
            if k != self.num_D - 1:
                x = self.downsample(x)
        return result


def init_weights(module: nn.Module) -> nn.Module:
    """NVIDIA's ``weights_init``: conv weights ~ N(0, 0.02); affine norm weights
    ~ N(1, 0.02) with bias 0. Conv biases keep PyTorch's default init, as in NVIDIA's.

    Applied recursively; returns ``module``.
    """

    def _init(m: nn.Module) -> None:
        if isinstance(m, nn.modules.conv._ConvNd):
            nn.init.normal_(m.weight, 0.0, 0.02)
        elif isinstance(m, nn.modules.batchnorm._NormBase | nn.GroupNorm | nn.LayerNorm):
            if getattr(m, "weight", None) is not None:
                nn.init.normal_(m.weight, 1.0, 0.02)
            if getattr(m, "bias", None) is not None:
                nn.init.zeros_(m.bias)

    module.apply(_init)
    return module


def pad_to_multiple(x: torch.Tensor, multiple: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """Pad ``x`` (``N, C, H, W``) on the right and bottom so both sides are multiples
    of ``multiple``. Reflect padding; replicate where the image is too small to reflect.

    Returns the padded tensor and the original ``(H, W)`` for :func:`crop_to`.
    """
    h, w = x.shape[-2:]
    pad_h = -h % multiple
    pad_w = -w % multiple
    if pad_h or pad_w:
        mode = "reflect" if pad_h < h and pad_w < w else "replicate"
        x = F.pad(x, (0, pad_w, 0, pad_h), mode=mode)
    return x, (h, w)


def crop_to(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Crop ``x`` back to ``size = (H, W)`` (top-left corner), undoing :func:`pad_to_multiple`."""
    h, w = size
    return x[..., :h, :w]


def run_generator(netG: nn.Module, x: torch.Tensor, multiple: int | None = None) -> torch.Tensor:
    """Run a generator on any image size: pad to ``multiple`` -> ``netG`` -> crop back.

    ``multiple`` defaults to ``netG.size_multiple`` (``2 ** n_downsampling`` for G1,
    ``2 ** (n_downsample_global + n_local_enhancers)`` for the local enhancer).
    """
    if multiple is None:
        multiple = int(getattr(netG, "size_multiple", 1))
    padded, size = pad_to_multiple(x, multiple)
    return crop_to(netG(padded), size)
