"""SR3 building blocks. The base UNet, the supernet and extracted subnets all use these classes."""
from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
from torch import nn
import torch.nn.functional as F



class DepthwiseSeparable(nn.Module):
    """k x k depthwise conv, then a 1x1 pointwise conv."""

    def __init__(self, cin: int, cout: int, k: int = 3, stride: int = 1):
        super().__init__()
        self.depthwise = nn.Conv2d(cin, cin, k, stride=stride, padding=k // 2, groups=cin)
        self.pointwise = nn.Conv2d(cin, cout, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pointwise(self.depthwise(x))


class InvertedBottleneck(nn.Module):
    """MobileNetV2's block without BN (the unit's GroupNorm comes first): 1x1 expand, dw 3x3, 1x1 project."""

    def __init__(self, cin: int, cout: int, expand: int = 2):
        super().__init__()
        mid = cin * expand
        self.expand = nn.Conv2d(cin, mid, 1)
        self.depthwise = nn.Conv2d(mid, mid, 3, padding=1, groups=mid)
        self.project = nn.Conv2d(mid, cout, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.project(F.silu(self.depthwise(F.silu(self.expand(x)))))


def grouped_conv3x3(cin: int, cout: int, groups: int = 4) -> nn.Conv2d:
    g = math.gcd(math.gcd(cin, cout), groups)
    return nn.Conv2d(cin, cout, 3, padding=1, groups=g)


# A unit's operator: (in_channels, out_channels) -> module, all with the same output shape.
UNIT_OPS: dict[str, Callable[[int, int], nn.Module]] = {
    "conv3x3": lambda cin, cout: nn.Conv2d(cin, cout, 3, padding=1),  # SR3's own
    "dwsep3x3": lambda cin, cout: DepthwiseSeparable(cin, cout, 3),
    "dwsep5x5": lambda cin, cout: DepthwiseSeparable(cin, cout, 5),
    "ibn2": lambda cin, cout: InvertedBottleneck(cin, cout, 2),
    "gconv3x3": grouped_conv3x3,
}
DEFAULT_OP = "conv3x3"
SKIP = "skip"  # a second unit may vanish, so depth can shrink
SHORTCUTS = ("identity", "conv1x1")  # a residual block's shortcut


Choice = str | Sequence[str]  # one operator, or the candidates of a searchable slot


def group_norm(groups: int, channels: int) -> nn.Module:
    """GroupNorm with `groups` groups, or the largest divisor of `channels` below it (narrow subnets). With 0
    groups, no normalisation at all (identity), as in EDSR-style super-resolution networks."""
    if groups == 0:
        return nn.Identity()
    return nn.GroupNorm(math.gcd(groups, channels), channels)


class SearchSlot(nn.Module):
    """One architecture decision: named choices and their parameters alpha.

    `weigh(alpha, slot, training)` turns alpha into weights; the search installs softmax, temperature or
    Gumbel relaxations (which record each training sample by slot name, so costs can price it).
    """

    def __init__(self, slot: str, names: Sequence[str]):
        super().__init__()
        self.slot, self.names = slot, list(names)
        self.alpha = nn.Parameter(torch.zeros(len(self.names)))
        self.weigh: Callable[..., torch.Tensor] | None = None

    def weights(self) -> torch.Tensor:
        if self.weigh is None:
            return torch.softmax(self.alpha, 0)
        return self.weigh(self.alpha, self.slot, self.training)

    def probs(self) -> torch.Tensor:
        """Deterministic probabilities of the choices (what eval mode uses)."""
        return torch.softmax(self.alpha, 0) if self.weigh is None else self.weigh(self.alpha, self.slot, False)


class MixedOp(SearchSlot):
    """A searchable operator slot: its candidates' outputs summed with the slot's weights.

    With `single_path` (hard Gumbel, GDAS-style) only the sampled candidate runs while training; its output is
    scaled by its straight-through weight (1 in value), so alpha still receives a gradient.
    """

    def __init__(self, slot: str, candidates: dict[str, nn.Module]):
        super().__init__(slot, list(candidates))
        self.candidates = nn.ModuleDict(candidates)
        self.single_path = False

    def forward(self, *args: torch.Tensor) -> torch.Tensor:
        w = self.weights()
        if self.single_path and self.training:
            i = int(torch.argmax(w.detach()))
            return w[i] * self.candidates[self.names[i]](*args)
        out: torch.Tensor | None = None
        for i, name in enumerate(self.names):
            y = w[i] * self.candidates[name](*args)
            out = y if out is None else out + y
        assert out is not None
        return out


class WidthSlot(SearchSlot):
    """A searchable width: the channel fraction of one UNet level (names such as "1" and "0.5").

    Channel counts cannot be blended, so the supernet runs one width per level per step while training,
    drawn the way the installed relaxation draws: the Gumbel sample's argmax in Gumbel modes, a draw from the
    (temperature) softmax otherwise. A straight-through gate (1 in value, the chosen weight's gradient) gates
    the level's outputs; the chosen one-hot is recorded like an operator's sample. Eval mode runs the most
    likely width.
    """

    def choose(self, training: bool) -> tuple[str, torch.Tensor | None]:
        """(width name, straight-through gate or None in eval mode)."""
        if not training:
            return self.names[int(torch.argmax(self.probs().detach()))], None
        w = self.weights()
        if getattr(self.weigh, "stochastic", False):
            i = int(torch.argmax(w.detach()))
        else:
            i = int(torch.multinomial(w.detach(), 1))
        one_hot = F.one_hot(torch.tensor(i), len(self.names)).to(w.dtype)
        straight = one_hot + w - w.detach()
        samples = getattr(self.weigh, "samples", None)
        if samples is not None:
            samples[self.slot] = straight
        return self.names[i], straight[i]


def choice_module(slot: str, choice: Choice, build: Callable[[str], nn.Module]) -> nn.Module:
    """The plain module for one operator, or a MixedOp over several."""
    if isinstance(choice, str):
        return build(choice)
    if len(choice) == 1:
        return build(choice[0])
    return MixedOp(slot, {c: build(c) for c in choice})


class NoiseEmbedding(nn.Module):
    """Sinusoidal encoding of the continuous noise level sqrt(gamma), then an MLP (SR3/WaveGrad)."""

    def __init__(self, dim: int, scale: float):
        super().__init__()
        self.dim, self.scale = dim, scale
        self.mlp = nn.Sequential(nn.Linear(dim, dim * 4), nn.SiLU(), nn.Linear(dim * 4, dim))

    def forward(self, noise_level: torch.Tensor) -> torch.Tensor:
        half = self.dim // 2
        freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=noise_level.device) / half)
        arg = self.scale * noise_level.float()[:, None] * freqs[None]
        parts = [torch.sin(arg), torch.cos(arg)]
        if self.dim % 2:  # an odd width (a uniformly narrowed network) pads one constant feature
            parts.append(torch.zeros_like(arg[:, :1]))
        return self.mlp(torch.cat(parts, dim=1))


class ConvUnit(nn.Module):
    """GroupNorm -> Swish -> (Dropout) -> operator. The operator is the searchable part."""

    def __init__(self, cin: int, cout: int, groups: int, dropout: float = 0.0, op: str = DEFAULT_OP):
        super().__init__()
        self.norm = group_norm(groups, cin)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.op = UNIT_OPS[op](cin, cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(self.dropout(F.silu(self.norm(x))))


class ResBlock(nn.Module):
    """Two units with the noise embedding added between them, plus a (1x1) residual path."""

    def __init__(self, cin: int, cout: int, emb_dim: int, groups: int, dropout: float = 0.0,
                 ops: tuple[Choice, Choice] = (DEFAULT_OP, DEFAULT_OP), slot: str = "", shortcut: str | None = None):
        super().__init__()
        # A 1x1 projection where the channel count changes, or where elastic widths may make it change.
        shortcut = shortcut or ("conv1x1" if cin != cout else "identity")
        if shortcut not in SHORTCUTS or (shortcut == "identity" and cin != cout):
            raise ValueError(f"{slot}.shortcut: {shortcut!r} cannot map {cin} to {cout} channels")
        self.noise = nn.Linear(emb_dim, cout)
        self.unit1 = choice_module(f"{slot}.unit1", ops[0], lambda op: ConvUnit(cin, cout, groups, 0.0, op))
        self.unit2 = choice_module(f"{slot}.unit2", ops[1], lambda op: nn.Identity() if op == SKIP
                                   else ConvUnit(cout, cout, groups, dropout, op))
        self.skip = nn.Conv2d(cin, cout, 1) if shortcut == "conv1x1" else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.unit1(x) + self.noise(emb)[:, :, None, None]
        return self.unit2(h) + self.skip(x)


class SelfAttention(nn.Module):
    """Single-head spatial self-attention with a residual connection."""

    def __init__(self, channels: int, groups: int):
        super().__init__()
        self.norm = group_norm(groups, channels)
        self.qkv = nn.Conv2d(channels, channels * 3, 1, bias=False)
        self.out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, c, h * w).unbind(1)
        attn = torch.softmax(torch.bmm(q.transpose(1, 2), k) / math.sqrt(c), dim=-1)  # (b, hw, hw)
        y = torch.bmm(v, attn.transpose(1, 2)).reshape(b, c, h, w)
        return x + self.out(y)


class PooledSelfAttention(SelfAttention):
    """Self-attention whose keys and values are average-pooled 2x2: a quarter of the attention cost."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).chunk(3, dim=1)
        k, v = F.avg_pool2d(k, 2), F.avg_pool2d(v, 2)
        attn = torch.softmax(torch.bmm(q.flatten(2).transpose(1, 2), k.flatten(2)) / math.sqrt(c), dim=-1)
        y = torch.bmm(v.flatten(2), attn.transpose(1, 2)).reshape(b, c, h, w)
        return x + self.out(y)


class LinearAttention(SelfAttention):
    """Efficient attention (Shen et al.): softmax over q's channels and k's positions; O(hw c^2), not O((hw)^2 c)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, c, h * w).unbind(1)
        context = torch.bmm(torch.softmax(k, dim=-1), v.transpose(1, 2))  # (b, c, c)
        y = torch.bmm(context.transpose(1, 2), torch.softmax(q, dim=1)).reshape(b, c, h, w)
        return x + self.out(y)


class ChannelAttention(nn.Module):
    """Squeeze-and-excitation gate: the cheapest form of global context."""

    def __init__(self, channels: int, groups: int, reduction: int = 4):
        super().__init__()
        self.norm = group_norm(groups, channels)
        self.fc1 = nn.Conv2d(channels, max(channels // reduction, 4), 1)
        self.fc2 = nn.Conv2d(max(channels // reduction, 4), channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.norm(x).mean(dim=(2, 3), keepdim=True)
        return x * torch.sigmoid(self.fc2(F.silu(self.fc1(s))))


ATTN_OPS: dict[str, Callable[[int, int], nn.Module]] = {
    "none": lambda ch, groups: nn.Identity(),
    "self": SelfAttention,
    "pooled": PooledSelfAttention,
    "linear": LinearAttention,
    "channel": ChannelAttention,
}


RESAMPLE_OPS = ("conv3x3", "dwsep3x3")  # the convolution after up- or downsampling


def _resample_conv(channels: int, op: str, stride: int) -> nn.Module:
    if op == "conv3x3":
        return nn.Conv2d(channels, channels, 3, stride=stride, padding=1)
    if op == "dwsep3x3":
        return DepthwiseSeparable(channels, channels, 3, stride)
    raise ValueError(f"unknown resampling operator {op!r}; choose from {', '.join(RESAMPLE_OPS)}")


class Downsample(nn.Module):
    """Strided 3x3 convolution (SR3's own) or its depthwise-separable form."""

    def __init__(self, channels: int, op: str = "conv3x3"):
        super().__init__()
        self.conv = _resample_conv(channels, op, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    """Nearest-neighbour x2, then a 3x3 convolution (SR3's own) or its depthwise-separable form."""

    def __init__(self, channels: int, op: str = "conv3x3"):
        super().__init__()
        self.conv = _resample_conv(channels, op, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class Stage(nn.Module):
    """A residual block followed by its attention slot (identity when the slot is 'none')."""

    def __init__(self, cin: int, cout: int, emb_dim: int, groups: int, dropout: float,
                 ops: tuple[Choice, Choice], attn: Choice, slot: str = "", shortcut: str | None = None):
        super().__init__()
        self.slot = slot
        self.res = ResBlock(cin, cout, emb_dim, groups, dropout, ops, slot, shortcut)
        self.attn = choice_module(f"{slot}.attn", attn, lambda a: ATTN_OPS[a](cout, groups))

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        return self.attn(self.res(x, emb))
