"""Pix2PixHD as a trainable restorekit model: options, presets and one training step.

The training step follows NVIDIA's ``Pix2PixHDModel``: the conditional discriminator
sees ``concat(low, image)``; the generator minimises LSGAN + feature matching
(+ VGG perceptual if weights are given, + optional L1); the discriminator minimises
``0.5 * (fake + real)`` on detached fakes; G is stepped, then D. Images are mapped
from [0, 1] to the generator's [-1, 1] range and back.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from restorekit import Choice, FloatRange, IntRange, SearchRange, StepContext, TrainableModel
from restorekit.engine import TrainConfig, WeightEMA
from restorekit.errors import UsageError
from restorekit_pix2pixhd.losses import GANLoss, VGGLoss, feature_matching_loss
from restorekit_pix2pixhd.networks import (
    UPSAMPLE_MODES,
    GlobalGenerator,
    LocalEnhancer,
    MultiscaleDiscriminator,
    init_weights,
    run_generator,
    set_fused,
)


@dataclass
class Pix2PixHDOptions(TrainConfig):
    """Pix2PixHD options; names follow NVIDIA's ``options/*.py`` where they exist."""

    netG: str = field(default="global", metadata={
        "help": "generator: global (G1) or local (G1 + local enhancer G2)",
        "choices": ("global", "local")})
    ngf: int = field(default=64, metadata={
        "help": "filters of the first generator layer (of the local enhancer for netG=local)",
        "range": (1, 1024)})
    n_downsample_global: int = field(default=4, metadata={
        "help": "downsamplings in G1", "range": (0, 8)})
    n_blocks_global: int = field(default=9, metadata={
        "help": "residual blocks in G1", "range": (0, 64)})
    n_local_enhancers: int = field(default=1, metadata={
        "help": "local enhancers (netG=local)", "range": (1, 4)})
    n_blocks_local: int = field(default=3, metadata={
        "help": "residual blocks per enhancer", "range": (0, 64)})
    upsample: str = field(default="transpose", metadata={
        "help": "generator upsampling: transpose (NVIDIA's transposed convolution), resize "
                "(nearest + 3x3 conv) or bilinear (bilinear + 3x3 conv)",
        "choices": UPSAMPLE_MODES})
    ndf: int = field(default=64, metadata={
        "help": "filters of the first discriminator layer", "range": (1, 1024)})
    n_layers_D: int = field(default=3, metadata={
        "help": "layers of each discriminator", "range": (1, 8)})
    num_D: int = field(default=2, metadata={"help": "discriminator scales", "range": (1, 8)})
    lambda_feat: float = field(default=10.0, metadata={
        "help": "weight of feature matching and VGG losses", "range": (0.0, 1e6)})
    feat_loss: bool = field(default=True, metadata={"help": "discriminator feature matching"})
    vgg_weights: str = field(default="", metadata={"help": "local VGG19 weights file "
                                                          "(.safetensors/.pth); empty = off"})
    lambda_l1: float = field(default=0.0, metadata={
        "help": "weight of an L1 reconstruction term (0 in the paper)", "range": (0.0, 1e6)})
    lr: float = field(default=2e-4, metadata={
        "help": "Adam learning rate", "range": (0.0, 1.0, "(]")})
    beta1: float = field(default=0.5, metadata={
        "help": "Adam beta1", "range": (0.0, 1.0, "[)")})
    niter: int = field(default=100, metadata={
        "help": "epochs at the initial learning rate", "range": (0, 50_000)})
    niter_decay: int = field(default=100, metadata={
        "help": "epochs of linear decay to 0", "range": (0, 50_000)})
    epochs: int = field(default=0, metadata={
        "help": "training epochs: 0 = niter + niter_decay; N > 0 scales niter and niter_decay "
                "to N epochs, keeping the share of decay", "range": (0, 100_000)})
    ema: float = field(default=0.0, metadata={
        "help": "decay of an exponential moving average of G's weights, updated after each "
                "G step, saved in the checkpoints and used for evaluation and --enhance "
                "('run --raw-weights': G itself); 0 = off", "range": (0.0, 1.0, "[)")})
    fused: bool = field(default=True, metadata={
        "help": "fused C++/CUDA residual blocks and instance norms in G and D "
                "(restorekit.ext; RESTOREKIT_EXT)"})

    def __post_init__(self) -> None:
        super().__post_init__()
        total = self.niter + self.niter_decay
        if self.epochs and self.epochs != total:
            # --epochs N: the same schedule (share of decay kept) stretched or shrunk to N.
            self.niter_decay = round(self.epochs * self.niter_decay / total) if total else 0
            self.niter = self.epochs - self.niter_decay
        self.epochs = self.niter + self.niter_decay
        if self.netG not in ("global", "local"):
            raise UsageError(f"--netG: expected one of global, local, got {self.netG!r}")
        side = self.min_image_size()
        if isinstance(self.crop_size, int) and 0 < self.crop_size < side:
            raise UsageError(f"--crop-size: {self.crop_size} is smaller than the {side} pixels "
                             f"this generator needs (2^downsamplings + 1)")

    def min_image_size(self) -> int:
        """The smallest image side the generator takes: after padding to a multiple of
        ``2^downsamplings`` its bottleneck needs 2 pixels (instance norm, reflection pad)."""
        n = self.n_downsample_global + (self.n_local_enhancers if self.netG == "local" else 0)
        return max(2 ** max(n, 0) + 1, 4)


class Pix2PixHD(TrainableModel):
    """Pix2PixHD (Wang et al., CVPR 2018): coarse-to-fine generator, multi-scale PatchGAN."""

    name: ClassVar[str] = "pix2pixhd"
    description: ClassVar[str] = ("Pix2PixHD: global generator + local enhancer, multi-scale "
                                  "discriminators, LSGAN + feature matching")
    Options: ClassVar[type] = Pix2PixHDOptions
    presets: ClassVar[dict[str, dict[str, Any]]] = {
        # NVIDIA's defaults: G1 (ngf 64) + one local enhancer (ngf 32), 100 + 100 epochs.
        "paper": dict(netG="local", ngf=32, n_downsample_global=4, n_blocks_global=9,
                      n_local_enhancers=1, n_blocks_local=3, batch_size=1, crop_size=384,
                      niter=100, niter_decay=100, lambda_l1=0.0),
        # 400x600 LOL pairs on a GPU: G1 at full width, 256 crops, an L1 anchor.
        "lol": dict(netG="global", ngf=64, n_downsample_global=3, n_blocks_global=9,
                    batch_size=4, crop_size=256, samples_per_epoch=485 * 2,
                    niter=50, niter_decay=50, lambda_l1=10.0),
        # The embedded set on 2 CPU cores in under 10 minutes.
        "quick": dict(netG="global", ngf=24, n_downsample_global=2, n_blocks_global=4,
                      ndf=16, n_layers_D=2, num_D=2, batch_size=4, crop_size=96,
                      samples_per_epoch=64, niter=50, niter_decay=50, lr=2e-4,
                      lambda_l1=50.0, eval_every=10, log_every=8),
    }
    default_preset: ClassVar[str | None] = "lol"
    embedded_preset: ClassVar[str | None] = "quick"

    # -- tuning ------------------------------------------------------------------------------
    @classmethod
    def search_space(cls, preset: str | None = None) -> dict[str, SearchRange]:
        """What ``restorekit tune pix2pixhd`` searches; capacities scale with the preset.

        ``decay_fraction`` is the share of the epochs (``niter + niter_decay``, kept) spent
        in the linear learning-rate decay.
        """
        small = preset == "quick"
        return {
            "lr": FloatRange(5e-5, 1e-3, log=True),
            "beta1": FloatRange(0.0, 0.9),
            "lambda_feat": FloatRange(1.0, 30.0, log=True),
            "lambda_l1": FloatRange(1.0, 100.0, log=True),
            "ngf": Choice(16, 24, 32) if small else Choice(32, 48, 64),
            "n_blocks_global": IntRange(2, 6) if small else IntRange(4, 9),
            "crop_size": Choice(64, 96, 128) if small else Choice(192, 256, 320),
            "decay_fraction": FloatRange(0.0, 1.0),
            "upsample": Choice(*UPSAMPLE_MODES),
        }

    @classmethod
    def options_from_search(cls, base: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
        """``decay_fraction`` splits the epochs of ``base`` into ``niter`` + ``niter_decay``."""
        params = dict(params)
        values = {**base, **params}
        fraction = values.pop("decay_fraction", None)
        if fraction is not None:
            total = int(values.get("niter", Pix2PixHDOptions.niter)) + int(
                values.get("niter_decay", Pix2PixHDOptions.niter_decay))
            values["niter_decay"] = round(total * float(fraction))
            values["niter"] = total - values["niter_decay"]
        return values

    # -- building --------------------------------------------------------------------------
    def build(self, device: torch.device) -> None:
        o = self.options
        if o.netG == "global":
            self.netG: nn.Module = GlobalGenerator(3, 3, o.ngf, o.n_downsample_global,
                                                   o.n_blocks_global, o.upsample)
        else:
            self.netG = LocalEnhancer(3, 3, o.ngf, o.n_downsample_global, o.n_blocks_global,
                                      o.n_local_enhancers, o.n_blocks_local, o.upsample)
        self.netD = MultiscaleDiscriminator(6, o.ndf, o.n_layers_D, o.num_D)
        init_weights(self.netG)
        init_weights(self.netD)
        self.netG.to(device)
        self.netD.to(device)
        if o.fused:
            set_fused(self.netG, True)
            set_fused(self.netD, True)
        # After set_fused: the average is a copy of G as it runs.
        self.ema = WeightEMA(self.netG, o.ema) if o.ema > 0 else None
        self.raw_weights = False
        betas = (o.beta1, 0.999)
        self.optG = torch.optim.Adam(self.netG.parameters(), lr=o.lr, betas=betas)
        self.optD = torch.optim.Adam(self.netD.parameters(), lr=o.lr, betas=betas)
        self.gan_loss = GANLoss()
        self.vgg_loss: nn.Module | None = None
        if o.vgg_weights:
            self.vgg_loss = VGGLoss(o.vgg_weights).to(device)
        self._said_vgg = False

    def min_image_size(self) -> int:
        return self.options.min_image_size()

    def networks(self) -> dict[str, nn.Module]:
        return {"G": self.netG, "D": self.netD}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"G": self.optG, "D": self.optD}

    def stateful(self) -> dict[str, Any]:
        return {"ema_G": self.ema} if self.ema is not None else {}

    def use_raw_weights(self) -> bool:
        self.raw_weights = self.ema is not None
        return self.raw_weights

    # -- schedule ----------------------------------------------------------------------------
    def learning_rate(self, epoch: int) -> float:
        """Constant for ``niter`` epochs, then linear decay towards 0 over ``niter_decay``."""
        o = self.options
        if epoch < o.niter or o.niter_decay == 0:
            return o.lr
        return o.lr * (o.niter + o.niter_decay - epoch) / (o.niter_decay + 1)

    def on_epoch_start(self, epoch: int) -> None:
        if self.vgg_loss is None and not self._said_vgg:  # once, when training starts
            self._said_vgg = True
            print("pix2pixhd: VGG perceptual loss off (no --vgg-weights given; nothing is "
                  "downloaded)")
        lr = self.learning_rate(epoch)
        for opt in (self.optG, self.optD):
            for group in opt.param_groups:
                group["lr"] = lr

    # -- one step ----------------------------------------------------------------------------
    def train_step(self, low: torch.Tensor, high: torch.Tensor,
                   ctx: StepContext) -> dict[str, torch.Tensor]:
        o = self.options
        real_a, real_b = low * 2 - 1, high * 2 - 1
        with ctx.autocast():
            fake_b = run_generator(self.netG, real_a)
            pred_real = self.netD(torch.cat([real_a, real_b], dim=1))
            # The generator's adversarial terms: gradients flow to G only.
            self.netD.requires_grad_(False)
            pred_fake = self.netD(torch.cat([real_a, fake_b], dim=1))
            losses = {"G_GAN": self.gan_loss(pred_fake, True)}
            if o.feat_loss:
                losses["G_feat"] = feature_matching_loss(pred_fake, pred_real, o.n_layers_D,
                                                         o.num_D, o.lambda_feat)
            if self.vgg_loss is not None:
                losses["G_VGG"] = self.vgg_loss(fake_b, real_b) * o.lambda_feat
            if o.lambda_l1 > 0:
                losses["G_L1"] = F.l1_loss(fake_b, real_b) * o.lambda_l1
            loss_g = sum(losses.values())
        ctx.backward_step(loss_g, "G")
        if self.ema is not None:
            self.ema.update()
        self.netD.requires_grad_(True)

        with ctx.autocast():
            pred_fake_d = self.netD(torch.cat([real_a, fake_b.detach()], dim=1))
            losses["D_fake"] = self.gan_loss(pred_fake_d, False)
            losses["D_real"] = self.gan_loss(pred_real, True)
            loss_d = (losses["D_fake"] + losses["D_real"]) * 0.5
        ctx.backward_step(loss_d, "D")
        return {k: v.detach().float() for k, v in losses.items()}

    # -- inference ---------------------------------------------------------------------------
    def enhance_tensor(self, low: torch.Tensor) -> torch.Tensor:
        """G's output, or its weight average's (``--ema``) unless :meth:`use_raw_weights`."""
        net = self.netG if self.ema is None or self.raw_weights else self.ema.module
        out = run_generator(net, low * 2 - 1)
        return ((out.float() + 1) / 2).clamp(0, 1)
