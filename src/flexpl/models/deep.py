"""Deep networks for the zoo: ResNet, VGG, MobileNetV2 and a small ViT, as block lists.

Plain PyTorch, written to match torchvision's layer for layer (torchvision does not
work with the pinned torch here): at 224x224 and 1000 classes the parameter counts are
torchvision's exactly (``tests/test_zoo.py``). Every model is a :class:`BlockModel`
whose blocks are the natural cut points: the stem, each residual stage or conv group,
pooling, and the head.

Options shared by the builders (all keyword-only, validated with one-line errors):

- ``width``: channel multiplier (e.g. 0.25), so a reduced variant trains on a laptop;
- ``depth``: multiplier of the number of residual/transformer blocks per stage;
- ``norm``: ``batch`` (default), ``group`` (GroupNorm, no batch statistics across
  clients) or ``none`` (ResNet, MobileNetV2; VGG uses ``batch_norm``).

FLOPs are counted by ``torch.utils.flop_counter.FlopCounterMode`` (convolutions and
matrix products, 2 FLOPs per multiply-add), so half the count is the multiply-adds that
papers publish (ResNet-50: 4.1 G).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from flexpl.errors import UserError

NORMS = ("batch", "group", "none")


# ------------------------------------------------------------------ option checks

def _positive(model: str, field: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0 or not math.isfinite(value):
        raise UserError(f"model.{field}: {model} needs a positive number, got {value!r}")
    return float(value)


def _choice(model: str, field: str, value: Any, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise UserError(f"model.{field}: {model} allows {', '.join(allowed)}; got {value!r}")
    return str(value)


def _flag(model: str, field: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise UserError(f"model.{field}: {model} needs true or false, got {value!r}")
    return value


def _image_shape(model: str, input_shape: tuple[int, ...], min_hw: int) -> tuple[int, int, int]:
    if len(input_shape) != 3:
        raise UserError(f"model: {model} needs image inputs (C, H, W), got shape {list(input_shape)}")
    c, h, w = (int(d) for d in input_shape)
    if min(h, w) < min_hw:
        raise UserError(f"model: {model} needs inputs of at least {min_hw}x{min_hw} pixels, got {h}x{w}")
    return c, h, w


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "group":  # Wu & He, ECCV 2018: 32 groups where the channels allow
        return nn.GroupNorm(math.gcd(32, channels), channels)
    return nn.Identity()


def _ch(c: int, width: float) -> int:
    return max(1, int(round(c * width)))


# ------------------------------------------------------------------ ResNet

class BasicBlock(nn.Module):
    """Two 3x3 convolutions with a shortcut (ResNet-18/34)."""

    expansion = 1

    def __init__(self, cin: int, planes: int, stride: int, norm: str) -> None:
        super().__init__()
        cout = planes * self.expansion
        self.conv1 = nn.Conv2d(cin, planes, 3, stride, 1, bias=False)
        self.bn1 = _norm(norm, planes)
        self.conv2 = nn.Conv2d(planes, cout, 3, 1, 1, bias=False)
        self.bn2 = _norm(norm, cout)
        self.relu = nn.ReLU(inplace=False)
        self.downsample = (nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), _norm(norm, cout))
                           if stride != 1 or cin != cout else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + (x if self.downsample is None else self.downsample(x)))


class Bottleneck(nn.Module):
    """1x1, 3x3 (strided: torchvision's ResNet v1.5), 1x1 with 4x expansion (ResNet-50)."""

    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int, norm: str) -> None:
        super().__init__()
        cout = planes * self.expansion
        self.conv1 = nn.Conv2d(cin, planes, 1, bias=False)
        self.bn1 = _norm(norm, planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = _norm(norm, planes)
        self.conv3 = nn.Conv2d(planes, cout, 1, bias=False)
        self.bn3 = _norm(norm, cout)
        self.relu = nn.ReLU(inplace=False)
        self.downsample = (nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), _norm(norm, cout))
                           if stride != 1 or cin != cout else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + (x if self.downsample is None else self.downsample(x)))


def _resnet(name: str, block: type[BasicBlock] | type[Bottleneck], layers: list[int],
            input_shape: tuple[int, ...], num_classes: int, *, width: Any = 1.0, depth: Any = 1.0,
            norm: Any = "batch", stem: Any = "auto") -> list[tuple[str, nn.Module]]:
    width = _positive(name, "width", width)
    depth = _positive(name, "depth", depth)
    norm = _choice(name, "norm", norm, NORMS)
    stem = _choice(name, "stem", stem, ("auto", "imagenet", "cifar"))
    # 16x16 is the least that leaves layer4 2x2 with the CIFAR stem: batch norm over a 1x1 map
    # fails on a last batch of one sample
    c, h, w = _image_shape(name, input_shape, 16 if stem != "imagenet" else 64)
    if stem == "auto":  # CIFAR stem for small inputs (32x32, 28x28), ImageNet stem from 64x64 up
        stem = "cifar" if min(h, w) < 64 else "imagenet"
    c0 = _ch(64, width)
    if stem == "imagenet":
        first: nn.Module = nn.Sequential(nn.Conv2d(c, c0, 7, 2, 3, bias=False), _norm(norm, c0), nn.ReLU(),
                                         nn.MaxPool2d(3, 2, 1))
    else:
        first = nn.Sequential(nn.Conv2d(c, c0, 3, 1, 1, bias=False), _norm(norm, c0), nn.ReLU())
    blocks: list[tuple[str, nn.Module]] = [("stem", first)]
    cin = c0
    for i, n in enumerate(layers):
        planes = _ch(64 * 2 ** i, width)
        units = []
        for j in range(max(1, int(round(n * depth)))):
            units.append(block(cin, planes, 2 if (i > 0 and j == 0) else 1, norm))
            cin = planes * block.expansion
        blocks.append((f"layer{i + 1}", nn.Sequential(*units)))
    blocks.append(("head", nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, num_classes))))
    # torchvision's initialisation
    for _, mod in blocks:
        for m in mod.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d | nn.GroupNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
    return blocks


def resnet18(input_shape: tuple[int, ...], num_classes: int, **opts: Any) -> list[tuple[str, nn.Module]]:
    """ResNet-18 (He et al., "Deep Residual Learning for Image Recognition", CVPR 2016).

    Blocks: stem, layer1..layer4, head. ``stem``: ``imagenet`` (7x7/2 conv + max pool),
    ``cifar`` (3x3/1 conv, no pool) or ``auto`` (cifar below 64x64 pixels).
    """
    return _resnet("resnet18", BasicBlock, [2, 2, 2, 2], input_shape, num_classes, **opts)


def resnet34(input_shape: tuple[int, ...], num_classes: int, **opts: Any) -> list[tuple[str, nn.Module]]:
    """ResNet-34 (He et al., CVPR 2016); blocks and options as :func:`resnet18`."""
    return _resnet("resnet34", BasicBlock, [3, 4, 6, 3], input_shape, num_classes, **opts)


def resnet50(input_shape: tuple[int, ...], num_classes: int, **opts: Any) -> list[tuple[str, nn.Module]]:
    """ResNet-50 (He et al., CVPR 2016), bottleneck v1.5 as torchvision; blocks and options as :func:`resnet18`."""
    return _resnet("resnet50", Bottleneck, [3, 4, 6, 3], input_shape, num_classes, **opts)


# ------------------------------------------------------------------ VGG

VGG_CFG = {
    "vgg11": [[64], [128], [256, 256], [512, 512], [512, 512]],
    "vgg16": [[64, 64], [128, 128], [256, 256, 256], [512, 512, 512], [512, 512, 512]],
}


def _vgg(name: str, input_shape: tuple[int, ...], num_classes: int, *, batch_norm: Any = False,
         width: Any = 1.0, dropout: Any = 0.5, hidden: Any = 4096) -> list[tuple[str, nn.Module]]:
    bn = _flag(name, "batch_norm", batch_norm)
    width = _positive(name, "width", width)
    if isinstance(dropout, bool) or not isinstance(dropout, int | float) or not 0 <= dropout < 1:
        raise UserError(f"model.dropout: {name} needs a number in [0, 1), got {dropout!r}")
    if isinstance(hidden, bool) or not isinstance(hidden, int) or hidden < 1:
        raise UserError(f"model.hidden: {name} needs a positive integer, got {hidden!r}")
    c, h, w = _image_shape(name, input_shape, 32)
    blocks: list[tuple[str, nn.Module]] = []
    cin = c
    for i, group in enumerate(VGG_CFG[name]):
        layers: list[nn.Module] = []
        for v in group:
            cout = _ch(v, width)
            conv = nn.Conv2d(cin, cout, 3, padding=1)
            nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(conv.bias)
            layers += [conv, nn.BatchNorm2d(cout), nn.ReLU()] if bn else [conv, nn.ReLU()]
            cin = cout
        layers.append(nn.MaxPool2d(2))
        blocks.append((f"conv{i + 1}", nn.Sequential(*layers)))
    # torchvision pools to 7x7 (ImageNet); small inputs (CIFAR) end at 1x1 and keep it
    pool = 7 if min(h, w) >= 64 else 1
    feat = cin * pool * pool
    hid = _ch(hidden, width)

    def fc(a: int, b: int) -> nn.Linear:
        lin = nn.Linear(a, b)
        nn.init.normal_(lin.weight, 0, 0.01)
        nn.init.zeros_(lin.bias)
        return lin

    blocks += [
        ("pool", nn.Sequential(nn.AdaptiveAvgPool2d(pool), nn.Flatten())),
        ("fc1", nn.Sequential(fc(feat, hid), nn.ReLU(), nn.Dropout(float(dropout)))),
        ("fc2", nn.Sequential(fc(hid, hid), nn.ReLU(), nn.Dropout(float(dropout)))),
        ("out", fc(hid, num_classes)),
    ]
    return blocks


def vgg11(input_shape: tuple[int, ...], num_classes: int, **opts: Any) -> list[tuple[str, nn.Module]]:
    """VGG-11 (Simonyan & Zisserman, "Very Deep Convolutional Networks for Large-Scale Image Recognition", ICLR 2015).

    Blocks: conv1..conv5 (each conv group with its max pool), pool, fc1, fc2, out.
    Options: ``batch_norm`` (false), ``width``, ``dropout`` (0.5), ``hidden`` (4096).
    """
    return _vgg("vgg11", input_shape, num_classes, **opts)


def vgg16(input_shape: tuple[int, ...], num_classes: int, **opts: Any) -> list[tuple[str, nn.Module]]:
    """VGG-16 (Simonyan & Zisserman, ICLR 2015); blocks and options as :func:`vgg11`."""
    return _vgg("vgg16", input_shape, num_classes, **opts)


def vgg11_bn(input_shape: tuple[int, ...], num_classes: int, **opts: Any) -> list[tuple[str, nn.Module]]:
    """VGG-11 with batch norm after every convolution (as torchvision's ``vgg11_bn``)."""
    if "batch_norm" in opts:
        raise UserError("model.batch_norm: vgg11_bn always has batch norm; use vgg11 with batch_norm")
    return _vgg("vgg11", input_shape, num_classes, batch_norm=True, **opts)


def vgg16_bn(input_shape: tuple[int, ...], num_classes: int, **opts: Any) -> list[tuple[str, nn.Module]]:
    """VGG-16 with batch norm after every convolution (as torchvision's ``vgg16_bn``)."""
    if "batch_norm" in opts:
        raise UserError("model.batch_norm: vgg16_bn always has batch norm; use vgg16 with batch_norm")
    return _vgg("vgg16", input_shape, num_classes, batch_norm=True, **opts)


# ------------------------------------------------------------------ MobileNetV2

def _make_divisible(v: float, divisor: int = 8) -> int:
    """torchvision's ``_make_divisible``: round to a multiple of 8, never 10% below ``v``."""
    new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v


def _conv_bn_relu6(cin: int, cout: int, k: int, stride: int, groups: int, norm: str) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, (k - 1) // 2, groups=groups, bias=False),
                         _norm(norm, cout), nn.ReLU6())


class InvertedResidual(nn.Module):
    """MobileNetV2's expand (1x1) - depthwise (3x3) - project (1x1, linear) block."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int, norm: str) -> None:
        super().__init__()
        hidden = int(round(cin * expand))
        self.use_res = stride == 1 and cin == cout
        layers: list[nn.Module] = []
        if expand != 1:
            layers.append(_conv_bn_relu6(cin, hidden, 1, 1, 1, norm))
        layers += [_conv_bn_relu6(hidden, hidden, 3, stride, hidden, norm),
                   nn.Conv2d(hidden, cout, 1, bias=False), _norm(norm, cout)]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_res else self.conv(x)


MOBILENET_V2_CFG = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
                    (6, 320, 1, 1)]  # expansion t, channels c, repeats n, first stride s


def mobilenet_v2(input_shape: tuple[int, ...], num_classes: int, *, width: Any = 1.0, depth: Any = 1.0,
                 norm: Any = "batch", dropout: Any = 0.2) -> list[tuple[str, nn.Module]]:
    """MobileNetV2 (Sandler et al., "MobileNetV2: Inverted Residuals and Linear Bottlenecks", CVPR 2018).

    Blocks: stem, ir1..ir7 (one per row of the paper's Table 2), last (1x1 conv to 1280),
    head (pool, dropout, classifier). Options: ``width`` (channels rounded to multiples of 8
    as torchvision), ``depth``, ``norm``, ``dropout`` (0.2).
    """
    width = _positive("mobilenet_v2", "width", width)
    depth = _positive("mobilenet_v2", "depth", depth)
    norm = _choice("mobilenet_v2", "norm", norm, NORMS)
    if isinstance(dropout, bool) or not isinstance(dropout, int | float) or not 0 <= dropout < 1:
        raise UserError(f"model.dropout: mobilenet_v2 needs a number in [0, 1), got {dropout!r}")
    # downsamples 32x: 64x64 is the least that leaves batch norm a 2x2 map (a 1x1 map fails on a batch of one)
    c, _, _ = _image_shape("mobilenet_v2", input_shape, 64 if norm == "batch" else 32)
    cin = _make_divisible(32 * width)
    last = _make_divisible(1280 * max(1.0, width))
    blocks: list[tuple[str, nn.Module]] = [("stem", _conv_bn_relu6(c, cin, 3, 2, 1, norm))]
    for i, (t, ch, n, s) in enumerate(MOBILENET_V2_CFG):
        cout = _make_divisible(ch * width)
        units = []
        for j in range(max(1, int(round(n * depth)))):
            units.append(InvertedResidual(cin, cout, s if j == 0 else 1, t, norm))
            cin = cout
        blocks.append((f"ir{i + 1}", nn.Sequential(*units)))
    blocks.append(("last", _conv_bn_relu6(cin, last, 1, 1, 1, norm)))
    head = nn.Linear(last, num_classes)
    blocks.append(("head", nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(float(dropout)), head)))
    for _, mod in blocks:  # torchvision's initialisation
        for m in mod.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
            elif isinstance(m, nn.BatchNorm2d | nn.GroupNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)
    return blocks


# ------------------------------------------------------------------ ViT

class PatchEmbed(nn.Module):
    """Patches -> linear embedding, class token prepended, learned position embedding added."""

    def __init__(self, c: int, h: int, w: int, patch: int, dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(c, dim, patch, patch)
        n = (h // patch) * (w // patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.randn(1, n + 1, dim) * 0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.proj(x).flatten(2).transpose(1, 2)
        return torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed


class TransformerBlock(nn.Module):
    """Pre-norm encoder block: multi-head self-attention and a GELU MLP, each with a residual."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(dim, int(dim * mlp_ratio)), nn.GELU(), nn.Linear(int(dim * mlp_ratio), dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        att = torch.softmax((q @ k.transpose(-2, -1)) * (d // self.heads) ** -0.5, dim=-1)
        x = x + self.proj((att @ v).transpose(1, 2).reshape(b, n, d))
        return x + self.mlp(self.norm2(x))


class ClassHead(nn.Module):
    """Final LayerNorm, the class token's features, the classifier."""

    def __init__(self, dim: int, num_classes: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.fc = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.norm(x)[:, 0])


def vit_tiny(input_shape: tuple[int, ...], num_classes: int, *, patch: Any = None, dim: Any = 192,
             depth: Any = 12, heads: Any = 3, mlp_ratio: Any = 4.0) -> list[tuple[str, nn.Module]]:
    """ViT-Tiny (Dosovitskiy et al., "An Image is Worth 16x16 Words", ICLR 2021; Tiny size from
    Touvron et al., DeiT, ICML 2021): 192 wide, 12 blocks, 3 heads.

    Blocks: embed (patches + class token + positions), block1..blockN, head (norm, class token,
    classifier). ``patch`` defaults to 16 from 64x64 up and 4 below (CIFAR); ``depth`` is the
    number of transformer blocks.
    """
    c, h, w = _image_shape("vit-tiny", input_shape, 4)
    if patch is None:
        patch = 16 if min(h, w) >= 64 else 4
    for field, v in (("patch", patch), ("dim", dim), ("depth", depth), ("heads", heads)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise UserError(f"model.{field}: vit-tiny needs a positive integer, got {v!r}")
    mlp_ratio = _positive("vit-tiny", "mlp_ratio", mlp_ratio)
    if h % patch or w % patch:
        raise UserError(f"model.patch: {h}x{w} images do not split into {patch}x{patch} patches")
    if dim % heads:
        raise UserError(f"model.heads: dim {dim} is not divisible by {heads} heads")
    blocks: list[tuple[str, nn.Module]] = [("embed", PatchEmbed(c, h, w, patch, dim))]
    blocks += [(f"block{i + 1}", TransformerBlock(dim, heads, mlp_ratio)) for i in range(depth)]
    blocks.append(("head", ClassHead(dim, num_classes)))
    return blocks


# name -> (builder, default cut: index of the first block of the second stage)
DEEP: dict[str, tuple[Any, int]] = {
    "resnet18": (resnet18, 2), "resnet34": (resnet34, 2), "resnet50": (resnet50, 2),
    "vgg11": (vgg11, 2), "vgg16": (vgg16, 2), "vgg11_bn": (vgg11_bn, 2), "vgg16_bn": (vgg16_bn, 2),
    "mobilenet_v2": (mobilenet_v2, 3), "vit-tiny": (vit_tiny, 3),
}
