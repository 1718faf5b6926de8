"""Tests of the pix2pixHD networks and losses (plugins/restorekit_pix2pixhd)."""

from __future__ import annotations

import types
from pathlib import Path

import pytest
import torch
from torch import nn

from restorekit import ext
from restorekit.errors import CheckpointError
from restorekit_pix2pixhd.losses import (
    VGG19,
    GANLoss,
    VGGLoss,
    feature_matching_loss,
    load_vgg19,
)
from restorekit_pix2pixhd.networks import (
    GlobalGenerator,
    LocalEnhancer,
    MultiscaleDiscriminator,
    NLayerDiscriminator,
    ResizeConv,
    ResnetBlock,
    crop_to,
    init_weights,
    pad_to_multiple,
    run_generator,
    set_fused,
)


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# --- hand-computed parameter counts -------------------------------------------------------
# InstanceNorm2d(affine=False), padding, ReLU, Tanh and pooling have no parameters.


def conv(k: int, cin: int, cout: int) -> int:
    """Conv2d / ConvTranspose2d with bias: k*k*cin*cout weights + cout biases."""
    return k * k * cin * cout + cout


def resblock(dim: int) -> int:
    return 2 * conv(3, dim, dim)


def global_count(input_nc: int, output_nc: int, ngf: int, n_down: int, n_blocks: int,
                 with_output_layer: bool = True) -> int:  # fmt: skip
    total = conv(7, input_nc, ngf)
    for i in range(n_down):
        total += conv(3, ngf * 2**i, ngf * 2 ** (i + 1))
    total += n_blocks * resblock(ngf * 2**n_down)
    for i in range(n_down, 0, -1):
        total += conv(3, ngf * 2**i, ngf * 2 ** (i - 1))  # ConvTranspose2d
    if with_output_layer:
        total += conv(7, ngf, output_nc)
    return total


def test_global_generator_param_count_by_hand() -> None:
    # GlobalGenerator(3, 3, ngf=64, n_downsampling=4, n_blocks=9), layer by layer:
    expected = (
        (7 * 7 * 3 * 64 + 64)  # c7s1-64                      9,472
        + (3 * 3 * 64 * 128 + 128)  # d128                    73,856
        + (3 * 3 * 128 * 256 + 256)  # d256                  295,168
        + (3 * 3 * 256 * 512 + 512)  # d512                1,180,160
        + (3 * 3 * 512 * 1024 + 1024)  # d1024             4,719,616
        + 9 * 2 * (3 * 3 * 1024 * 1024 + 1024)  # 9 x R1024  169,887,744
        + (3 * 3 * 1024 * 512 + 512)  # u512               4,719,104
        + (3 * 3 * 512 * 256 + 256)  # u256                1,179,904
        + (3 * 3 * 256 * 128 + 128)  # u128                  295,040
        + (3 * 3 * 128 * 64 + 64)  # u64                      73,792
        + (7 * 7 * 64 * 3 + 3)  # c7s1-3                       9,411
    )
    assert expected == 182_443_267  # NVIDIA's G1 at ngf 64, n_downsample_global 4
    assert global_count(3, 3, 64, 4, 9) == expected
    with torch.device("meta"):
        net = GlobalGenerator(3, 3, ngf=64, n_downsampling=4, n_blocks=9)
    assert n_params(net) == expected


def test_local_enhancer_param_count_by_hand() -> None:
    # G1 at ngf 64 without its output layer, plus G2 at ngf 32.
    g1 = 182_443_267 - (7 * 7 * 64 * 3 + 3)
    g2 = (
        (7 * 7 * 3 * 32 + 32)  # model1_1 c7s1-32      4,736
        + (3 * 3 * 32 * 64 + 64)  # model1_1 d64       18,496
        + 3 * 2 * (3 * 3 * 64 * 64 + 64)  # 3 x R64   221,568
        + (3 * 3 * 64 * 32 + 32)  # u32               18,464
        + (7 * 7 * 32 * 3 + 3)  # c7s1-3                4,707
    )
    expected = g1 + g2
    assert expected == 182_701_827
    assert g1 == global_count(3, 3, 64, 4, 9, with_output_layer=False)
    with torch.device("meta"):
        net = LocalEnhancer(3, 3, ngf=32, n_downsample_global=4, n_blocks_global=9,
                            n_local_enhancers=1, n_blocks_local=3)  # fmt: skip
    assert n_params(net) == expected


def test_discriminator_param_count_by_hand() -> None:
    # Default D: input 6, ndf 64, 3 layers, kernel 4: C64 C128 C256 C512(s1) C1.
    one = conv(4, 6, 64) + conv(4, 64, 128) + conv(4, 128, 256) + conv(4, 256, 512)
    one += conv(4, 512, 1)
    with torch.device("meta"):
        net = MultiscaleDiscriminator(6, ndf=64, n_layers=3, num_D=2)
    assert n_params(net) == 2 * one == 2 * 2_767_809


# --- state-dict layout ---------------------------------------------------------------------


def test_state_dict_layout_follows_nvidia() -> None:
    with torch.device("meta"):
        g = GlobalGenerator(3, 3, ngf=8, n_downsampling=2, n_blocks=2)
        local = LocalEnhancer(3, 3, ngf=4, n_downsample_global=2, n_blocks_global=2)
        d = MultiscaleDiscriminator(6, ndf=8, n_layers=2, num_D=2)
    keys = set(g.state_dict())
    assert {"model.1.weight", "model.4.weight", "model.10.conv_block.1.weight"} <= keys
    assert "model.10.conv_block.5.bias" in keys
    assert "model.19.weight" in keys and len(g.model) == 21  # pad 18, conv 19, tanh 20
    lkeys = set(local.state_dict())
    assert {"model.1.weight", "model1_1.1.weight", "model1_1.4.weight"} <= lkeys
    assert {"model1_2.0.conv_block.1.weight", "model1_2.3.weight", "model1_2.7.weight"} <= lkeys
    # G1 inside the local enhancer (ngf 8 = 4 * 2) without its last pad/conv/tanh
    assert len(local.model) == len(g.model) - 3
    assert isinstance(local.model[-1], nn.ReLU)
    dkeys = set(d.state_dict())
    assert {"scale0_layer0.0.weight", "scale0_layer1.0.weight", "scale1_layer3.0.bias"} <= dkeys
    assert not any(".1.weight" in k for k in dkeys)  # InstanceNorm without affine


def test_upsample_transpose_is_nvidia_and_resize_swaps_only_the_upsampling_layers() -> None:
    with torch.device("meta"):
        default = GlobalGenerator(3, 3, ngf=8, n_downsampling=2, n_blocks=2)
        transpose = GlobalGenerator(3, 3, ngf=8, n_downsampling=2, n_blocks=2,
                                    upsample="transpose")
        resize = GlobalGenerator(3, 3, ngf=8, n_downsampling=2, n_blocks=2, upsample="resize")
        local = LocalEnhancer(3, 3, ngf=4, n_downsample_global=2, n_blocks_global=2,
                              upsample="bilinear")
    shapes = {k: v.shape for k, v in default.state_dict().items()}
    assert shapes == {k: v.shape for k, v in transpose.state_dict().items()}
    assert isinstance(transpose.model[12], nn.ConvTranspose2d)
    assert isinstance(resize.model[12], ResizeConv) and resize.model[12].mode == "nearest"
    # the same weights count: a 3x3 kernel from 2C to C channels either way
    assert n_params(resize) == n_params(default)
    assert "model.12.conv.weight" in resize.state_dict()
    assert isinstance(local.model1_2[3], ResizeConv) and local.model1_2[3].mode == "bilinear"
    with pytest.raises(ValueError, match="upsample"):
        GlobalGenerator(3, 3, ngf=8, n_downsampling=2, n_blocks=2, upsample="pixelshuffle")


@pytest.mark.parametrize("upsample", ["resize", "bilinear"])
def test_resize_generators_keep_odd_sizes(upsample: str) -> None:
    torch.manual_seed(0)
    g = GlobalGenerator(3, 3, ngf=4, n_downsampling=2, n_blocks=1, upsample=upsample)
    out = run_generator(g, torch.rand(1, 3, 37, 50) * 2 - 1)
    assert out.shape == (1, 3, 37, 50) and out.abs().max() <= 1


def test_resize_conv_spreads_a_constant_evenly() -> None:
    """Resize + conv has no checkerboard: a constant input gives a constant interior."""
    up = ResizeConv(2, 1)
    nn.init.constant_(up.conv.weight, 0.1)
    nn.init.zeros_(up.conv.bias)
    out = up(torch.ones(1, 2, 6, 6))
    assert out.shape == (1, 1, 12, 12) and torch.allclose(out, torch.full_like(out, 1.8))
    tconv = nn.ConvTranspose2d(2, 1, 3, stride=2, padding=1, output_padding=1)
    nn.init.constant_(tconv.weight, 0.1)
    nn.init.zeros_(tconv.bias)
    inner = tconv(torch.ones(1, 2, 6, 6))[..., 1:-1, 1:-1]
    assert inner.max() > inner.min()  # the transposed convolution's grid texture


# --- shapes, padding and cropping ------------------------------------------------------------


def test_pad_to_multiple_and_crop() -> None:
    x = torch.arange(2 * 5 * 7, dtype=torch.float32).view(1, 2, 5, 7)
    padded, size = pad_to_multiple(x, 4)
    assert padded.shape == (1, 2, 8, 8) and size == (5, 7)
    assert torch.equal(padded[..., :5, :7], x)
    assert torch.equal(padded[..., 5, :7], x[..., 3, :])  # reflection of row 3 about row 4
    assert torch.equal(crop_to(padded, size), x)
    same, size = pad_to_multiple(x[..., :4, :4], 4)
    assert same.shape == (1, 2, 4, 4) and size == (4, 4)
    # too small for reflection: replicate
    tiny, size = pad_to_multiple(x[..., :3, :5], 16)
    assert tiny.shape == (1, 2, 16, 16) and size == (3, 5)
    assert torch.equal(tiny[..., 15, :5], x[..., 2, :5])


def test_global_generator_odd_size() -> None:
    torch.manual_seed(0)
    net = GlobalGenerator(3, 3, ngf=4, n_downsampling=3, n_blocks=1).eval()
    assert net.size_multiple == 8
    x = torch.rand(1, 3, 401, 599) * 2 - 1
    with torch.no_grad():
        y = run_generator(net, x)
        padded, size = pad_to_multiple(x, 8)
        direct = crop_to(net(padded), size)
    assert padded.shape == (1, 3, 408, 600)
    assert y.shape == (1, 3, 401, 599)
    assert torch.equal(y, direct)
    assert y.abs().max() <= 1.0


def test_local_enhancer_odd_size() -> None:
    torch.manual_seed(0)
    net = LocalEnhancer(3, 3, ngf=4, n_downsample_global=2, n_blocks_global=1,
                        n_local_enhancers=1, n_blocks_local=1).eval()  # fmt: skip
    assert net.size_multiple == 8
    x = torch.rand(1, 3, 401, 599) * 2 - 1
    with torch.no_grad():
        y = run_generator(net, x)
        y16 = run_generator(net, x, multiple=16)
    assert y.shape == y16.shape == (1, 3, 401, 599)
    # two local enhancers: multiple 2 ** (2 + 2)
    net2 = LocalEnhancer(3, 3, ngf=2, n_downsample_global=2, n_blocks_global=1,
                         n_local_enhancers=2, n_blocks_local=1).eval()  # fmt: skip
    assert net2.size_multiple == 16
    with torch.no_grad():
        assert run_generator(net2, x[..., :37, :45]).shape == (1, 3, 37, 45)


def test_generator_needs_padding_without_it() -> None:
    net = GlobalGenerator(3, 3, ngf=2, n_downsampling=2, n_blocks=1)
    with torch.no_grad():
        assert net(torch.zeros(1, 3, 16, 20)).shape == (1, 3, 16, 20)
        assert net(torch.zeros(1, 3, 18, 20)).shape != (1, 3, 18, 20)


def _d_side(side: int, n_layers: int) -> list[int]:
    """Feature sides of one PatchGAN: k4 p2 -> floor(s/2)+1 at stride 2, s+1 at stride 1."""
    sides = []
    for _ in range(n_layers):
        side = side // 2 + 1
        sides.append(side)
    sides += [side + 1, side + 2]
    return sides


def test_nlayer_discriminator_features() -> None:
    net = NLayerDiscriminator(6, ndf=8, n_layers=3)
    feats = net(torch.rand(2, 6, 64, 48))
    assert len(feats) == 5
    assert [f.shape[1] for f in feats] == [8, 16, 32, 64, 1]
    assert [f.shape[2] for f in feats] == _d_side(64, 3) == [33, 17, 9, 10, 11]
    assert [f.shape[3] for f in feats] == _d_side(48, 3)
    plain = NLayerDiscriminator(6, ndf=8, n_layers=3, getIntermFeat=False)
    assert plain(torch.rand(1, 6, 64, 48)).shape == (1, 1, 11, 9)
    # channels are capped at 512
    with torch.device("meta"):
        deep = NLayerDiscriminator(3, ndf=256, n_layers=4)
    assert [layer[0].out_channels for layer in deep.layers()] == [256, 512, 512, 512, 512, 1]


def test_multiscale_discriminator_features() -> None:
    n_layers, num_D = 3, 3
    net = MultiscaleDiscriminator(6, ndf=4, n_layers=n_layers, num_D=num_D)
    out = net(torch.rand(1, 6, 64, 50))
    assert len(out) == num_D
    sides = [(64, 50), (32, 25), (16, 13)]  # AvgPool 3/2/1 without padded zeros: ceil(s/2)
    for feats, (h, w) in zip(out, sides, strict=True):
        assert len(feats) == n_layers + 2
        assert [f.shape[1] for f in feats] == [4, 8, 16, 32, 1]
        assert [f.shape[2] for f in feats] == _d_side(h, n_layers)
        assert [f.shape[3] for f in feats] == _d_side(w, n_layers)
    plain = MultiscaleDiscriminator(6, ndf=4, n_layers=2, num_D=2, getIntermFeat=False)
    out = plain(torch.rand(1, 6, 32, 32))
    assert [len(o) for o in out] == [1, 1] and out[0][0].shape[2:] == (11, 11)


def test_multiscale_finest_scale_uses_nvidia_index() -> None:
    torch.manual_seed(0)
    net = MultiscaleDiscriminator(6, ndf=4, n_layers=1, num_D=2)
    x = torch.rand(1, 6, 16, 16)
    out = net(x)
    finest = [getattr(net, f"scale1_layer{j}") for j in range(3)]
    h = x
    for layer in finest:
        h = layer(h)
    assert torch.equal(out[0][-1], h)
    pooled = nn.AvgPool2d(3, stride=2, padding=1, count_include_pad=False)(x)
    for j in range(3):
        pooled = getattr(net, f"scale0_layer{j}")(pooled)
    assert torch.equal(out[1][-1], pooled)


# --- fused residual blocks -------------------------------------------------------------------


def test_set_fused_counts_blocks_and_norms() -> None:
    g = GlobalGenerator(3, 3, ngf=2, n_downsampling=1, n_blocks=4)
    # 4 blocks; the 7x7 front, one downsampling and one upsampling norm outside them.
    assert set_fused(g, True) == 4 + 3
    assert all(m.fused for m in g.modules() if isinstance(m, ResnetBlock))
    fused = [m for m in g.model if isinstance(m, ext.InstanceNormAct)]
    # The last upsampling norm takes the output layer's ReflectionPad2d(3) with it.
    assert [(m.negative_slope, m.pad) for m in fused] == [(0.0, 0), (0.0, 0), (0.0, 3)]
    assert set_fused(g, False) == 4 + 3
    assert not any(m.fused for m in g.modules() if isinstance(m, ResnetBlock))
    assert not any(isinstance(m, ext.InstanceNormAct) for m in g.modules())
    local = LocalEnhancer(3, 3, ngf=2, n_downsample_global=1, n_blocks_global=5,
                          n_local_enhancers=2, n_blocks_local=3)  # fmt: skip
    assert set_fused(local, True) == (5 + 3 + 3) + 3 + 2 * 3
    d = MultiscaleDiscriminator(6, ndf=4, n_layers=3, num_D=2)
    assert set_fused(d, True) == 2 * 3
    assert {m.negative_slope for m in d.modules() if isinstance(m, ext.InstanceNormAct)} == {0.2}
    assert set_fused(nn.Conv2d(1, 1, 1), True) == 0
    assert ResnetBlock(4).fused is False


@pytest.mark.parametrize("netG", ["global", "local"])
def test_fused_networks_match_plain(netG: str) -> None:
    # Whole generator and discriminator, fused vs plain: same state_dict, outputs, gradients.
    torch.manual_seed(0)
    if netG == "global":
        make = lambda: GlobalGenerator(3, 3, ngf=4, n_downsampling=2, n_blocks=2)  # noqa: E731
    else:
        make = lambda: LocalEnhancer(3, 3, ngf=4, n_downsample_global=1,  # noqa: E731
                                     n_blocks_global=2, n_local_enhancers=1, n_blocks_local=1)
    nets = {"plain": (make(), MultiscaleDiscriminator(6, ndf=4, n_layers=2, num_D=2))}
    nets["fused"] = (make(), MultiscaleDiscriminator(6, ndf=4, n_layers=2, num_D=2))
    for plain, fused in zip(nets["plain"], nets["fused"], strict=True):
        fused.load_state_dict(plain.state_dict())
        set_fused(fused, True)
        assert fused.state_dict().keys() == plain.state_dict().keys()
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    results = {}
    for name, (g, d) in nets.items():
        fake = g(x)
        scores = d(torch.cat([x, fake], 1))
        loss = sum(f.square().mean() for scale in scores for f in scale)
        loss.backward()
        grads = [p.grad.clone() for p in (*g.parameters(), *d.parameters())]
        results[name] = (fake, loss, grads)
    torch.testing.assert_close(results["fused"][0], results["plain"][0], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(results["fused"][1], results["plain"][1], rtol=1e-4, atol=1e-6)
    for a, b in zip(results["fused"][2], results["plain"][2], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-5)


def test_resnet_block_plain_and_fused_paths(monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    block = ResnetBlock(3)
    assert len(block.conv_block) == 7
    x = torch.rand(1, 3, 6, 5)
    with torch.no_grad():
        assert torch.allclose(block(x), x + block.conv_block(x))
    calls = []

    def fake_resnet_block(t: torch.Tensor, c1: nn.Conv2d, c2: nn.Conv2d) -> torch.Tensor:
        calls.append((c1, c2))
        return t * 2

    import restorekit_pix2pixhd.networks as networks

    # The plugin imports the extension plainly (``from restorekit import ext``).
    monkeypatch.setattr(networks, "ext", types.SimpleNamespace(resnet_block=fake_resnet_block))
    block.fused = True
    assert torch.equal(block(x), x * 2)
    assert calls == [(block.conv_block[1], block.conv_block[5])]


# --- init --------------------------------------------------------------------------------------


def test_init_weights_statistics() -> None:
    torch.manual_seed(0)
    g = init_weights(GlobalGenerator(3, 3, ngf=16, n_downsampling=2, n_blocks=2))
    convs = [m for m in g.modules() if isinstance(m, nn.Conv2d | nn.ConvTranspose2d)]
    assert any(isinstance(m, nn.ConvTranspose2d) for m in convs)
    weights = torch.cat([m.weight.flatten() for m in convs])
    assert abs(weights.mean().item()) < 1e-3
    assert weights.std().item() == pytest.approx(0.02, rel=0.02)
    for m in convs:
        if m.weight.numel() > 5000:
            assert m.weight.std().item() == pytest.approx(0.02, rel=0.1)
    norms = nn.Sequential(nn.BatchNorm2d(4000), nn.InstanceNorm2d(4000, affine=True))
    init_weights(norms)
    for m in norms:
        assert m.weight.mean().item() == pytest.approx(1.0, abs=2e-3)
        assert m.weight.std().item() == pytest.approx(0.02, rel=0.1)
        assert torch.count_nonzero(m.bias) == 0


# --- GAN and feature-matching losses -----------------------------------------------------


def test_lsgan_loss_by_hand() -> None:
    crit = GANLoss()
    pred = [
        [torch.tensor([[9.0]]), torch.tensor([[0.5, 1.5]])],  # scale 0: a feature, scores
        [torch.tensor([[-3.0]]), torch.tensor([[2.0]])],  # scale 1
    ]
    # real: mean((0.5-1)^2, (1.5-1)^2) + (2-1)^2 = 0.25 + 1 = 1.25
    assert crit(pred, True).item() == pytest.approx(1.25)
    # fake: mean(0.5^2, 1.5^2) + 2^2 = 1.25 + 4 = 5.25
    assert crit(pred, False).item() == pytest.approx(5.25)
    # one scale or a bare score tensor
    assert crit(pred[1], True).item() == pytest.approx(1.0)
    assert crit(torch.tensor([0.0, 2.0]), False).item() == pytest.approx(2.0)


def test_feature_matching_loss_by_hand() -> None:
    # num_D=2, n_layers=1 -> 3 features per scale; the last (scores) is not matched.
    fake = [
        [torch.tensor([1.0, 2.0]), torch.tensor([0.0]), torch.tensor([100.0])],
        [torch.tensor([3.0]), torch.tensor([1.0, 1.0, 1.0]), torch.tensor([-50.0])],
    ]
    real = [
        [torch.tensor([0.0, 0.0]), torch.tensor([2.0]), torch.tensor([0.0])],
        [torch.tensor([2.0]), torch.tensor([1.0, 1.0, 4.0]), torch.tensor([0.0])],
    ]
    # L1 means: scale 0: 1.5 and 2.0; scale 1: 1.0 and 1.0 -> sum 5.5
    # weight: 4 / (1 + 1) * 1 / 2 * 10 = 10
    loss = feature_matching_loss(fake, real, n_layers=1, num_D=2, lambda_feat=10.0)
    assert loss.item() == pytest.approx(55.0)
    # n_layers=3, num_D=1, lambda 2: weight 4/4 * 1 * 2 = 2
    assert feature_matching_loss(fake[:1], real[:1], 3, 1, 2.0).item() == pytest.approx(7.0)


def test_feature_matching_detaches_real() -> None:
    fake = [[torch.tensor([1.0], requires_grad=True), torch.tensor([0.0])]]
    real = [[torch.tensor([0.0], requires_grad=True), torch.tensor([0.0])]]
    feature_matching_loss(fake, real, 1, 1).backward()
    assert fake[0][0].grad is not None and real[0][0].grad is None


# --- VGG19 and the perceptual loss ---------------------------------------------------------

# Conv layers of torchvision's vgg19().features, by index: (in, out).
_VGG_CONVS = {
    0: (3, 64), 2: (64, 64), 5: (64, 128), 7: (128, 128),
    10: (128, 256), 12: (256, 256), 14: (256, 256), 16: (256, 256),
    19: (256, 512), 21: (512, 512), 23: (512, 512), 25: (512, 512),
    28: (512, 512), 30: (512, 512), 32: (512, 512), 34: (512, 512),
}  # fmt: skip


@pytest.fixture(scope="module")
def vgg_state() -> dict[str, torch.Tensor]:
    """A random VGG19 features state dict with bare ``N.weight`` keys (up to relu5_1)."""
    torch.manual_seed(0)
    return {k: v.clone() for k, v in VGG19().features.state_dict().items()}


def test_vgg19_layout(vgg_state: dict[str, torch.Tensor]) -> None:
    expected = {f"{i}.{p}" for i in _VGG_CONVS if i < 30 for p in ("weight", "bias")}
    assert set(vgg_state) == expected
    for i, (cin, cout) in _VGG_CONVS.items():
        if i < 30:
            assert vgg_state[f"{i}.weight"].shape == (cout, cin, 3, 3)
    vgg = VGG19()
    assert not any(p.requires_grad for p in vgg.parameters())
    feats = vgg(torch.rand(1, 3, 32, 32))
    assert [tuple(f.shape[1:]) for f in feats] == [
        (64, 32, 32), (128, 16, 16), (256, 8, 8), (512, 4, 4), (512, 2, 2)
    ]  # fmt: skip
    assert all(f.min() >= 0 for f in feats)  # all are ReLU outputs


def test_vgg_loss_from_safetensors(tmp_path: Path, vgg_state: dict[str, torch.Tensor]) -> None:
    from safetensors.torch import save_file

    bare = tmp_path / "vgg_bare.safetensors"
    save_file(vgg_state, str(bare))
    vgg = load_vgg19(bare)
    for k, v in vgg.features.state_dict().items():
        assert torch.equal(v, vgg_state[k])

    torch.manual_seed(1)
    x = (torch.rand(1, 3, 32, 32) * 2 - 1).requires_grad_(True)
    y = (torch.rand(1, 3, 32, 32) * 2 - 1).requires_grad_(True)
    crit = VGGLoss(bare)
    loss = crit(x, y)
    # by hand: [-1, 1] -> [0, 1] -> ImageNet normalisation, weights 1/32 .. 1
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        fx = vgg(((x + 1) / 2 - mean) / std)
        fy = vgg(((y + 1) / 2 - mean) / std)
        hand = sum(
            w * (a - b).abs().mean().item()
            for w, a, b in zip([1 / 32, 1 / 16, 1 / 8, 1 / 4, 1.0], fx, fy, strict=True)
        )
    assert loss.item() == pytest.approx(hand, rel=1e-5)
    loss.backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert y.grad is None  # the target is detached
    assert crit(y.detach(), y.detach()).item() == 0.0
    assert not any(p.requires_grad for p in crit.parameters())

    # torchvision-style keys: features.N.*, deeper convs and the classifier are ignored
    prefixed = {f"features.{k}": v for k, v in vgg_state.items()}
    for i in (30, 32, 34):
        prefixed[f"features.{i}.weight"] = torch.zeros(512, 512, 3, 3)
        prefixed[f"features.{i}.bias"] = torch.zeros(512)
    prefixed["classifier.0.weight"] = torch.zeros(4, 2)
    prefixed["classifier.0.bias"] = torch.zeros(4)
    tv = tmp_path / "vgg_tv.safetensors"
    save_file(prefixed, str(tv))
    assert VGGLoss(tv)(x, y).item() == pytest.approx(loss.item(), rel=1e-6)


def test_vgg_load_pth(tmp_path: Path, vgg_state: dict[str, torch.Tensor]) -> None:
    path = tmp_path / "vgg19.pth"
    torch.save({f"features.{k}": v for k, v in vgg_state.items()}, path)
    vgg = load_vgg19(path)
    assert torch.equal(vgg.features[28].bias, vgg_state["28.bias"])


def test_vgg_load_errors(tmp_path: Path, vgg_state: dict[str, torch.Tensor]) -> None:
    from safetensors.torch import save_file

    missing = tmp_path / "nope.safetensors"
    with pytest.raises(CheckpointError, match="nope.safetensors"):
        VGGLoss(missing)

    wrong = tmp_path / "wrong.safetensors"
    save_file({"conv1.weight": torch.zeros(2, 2)}, str(wrong))
    with pytest.raises(CheckpointError, match="wrong.safetensors") as info:
        load_vgg19(wrong)
    assert "\n" not in str(info.value) and "missing" in str(info.value)

    partial = {k: v for k, v in vgg_state.items() if not k.startswith("28.")}
    part = tmp_path / "partial.safetensors"
    save_file(partial, str(part))
    with pytest.raises(CheckpointError, match=r"partial\.safetensors.*28\.weight"):
        load_vgg19(part)

    shaped = dict(vgg_state)
    shaped["0.weight"] = torch.zeros(64, 1, 3, 3)
    bad_shape = tmp_path / "shape.safetensors"
    save_file(shaped, str(bad_shape))
    with pytest.raises(CheckpointError, match="shape.safetensors") as info:
        load_vgg19(bad_shape)
    assert "\n" not in str(info.value)

    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match="corrupt.safetensors") as info:
        load_vgg19(corrupt)
    assert "\n" not in str(info.value)

    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"\x00garbage")
    with pytest.raises(CheckpointError, match="garbage.pth"):
        load_vgg19(garbage)
