"""Model builders: the DC ConvNet family and a NAS-Bench-201-style cell network, behind one registry.

Every model is a `Classifier`: `features(x)` (the flattened embedding before the classifier) and `forward(x)`;
ConvNet also exposes `layer_outputs(x)` (one tensor per conv block) for multi-layer matching. All
models are plain nn.Modules, so `torch.func.functional_call` runs them functionally.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from nasdd.arch import ArchSpec
from nasdd.errors import NasddError
from nasdd.registry import Registry

M = TypeVar("M", bound=nn.Module)

ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "sigmoid": nn.Sigmoid,
    "relu": lambda: nn.ReLU(inplace=True),
    "leakyrelu": lambda: nn.LeakyReLU(0.01, inplace=True),
}
NORMS = ("none", "batchnorm", "layernorm", "instancenorm", "groupnorm")
POOLS = ("none", "maxpool", "avgpool")
CELL_OPS = ("none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3")
CELL_EDGES = ("edge_1_0", "edge_2_0", "edge_2_1", "edge_3_0", "edge_3_1", "edge_3_2")
MAX_DEPTH = 8


def _norm(kind: str, c: int, hw: int) -> nn.Module:
    """The DC paper's normalisations; `instancenorm` is GroupNorm(C, C, affine=True) as in DC."""
    if kind == "none":
        return nn.Identity()
    if kind == "batchnorm":
        return nn.BatchNorm2d(c)
    if kind == "layernorm":
        return nn.LayerNorm([c, hw, hw])
    if kind == "instancenorm":
        return nn.GroupNorm(c, c, affine=True)
    if kind == "groupnorm":
        return nn.GroupNorm(4 if c % 4 == 0 else 1, c, affine=True)
    raise NasddError(f"unknown normalization {kind!r}; valid: {', '.join(NORMS)}")


class Classifier(nn.Module):
    """What every built model is: `features(x)` (the [N, feature_dim] embedding) and a linear `classifier`
    on it (`forward`)."""

    feature_dim: int
    classifier: nn.Linear

    def features(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class ConvNet(Classifier):
    """The ConvNet of Zhao et al. (ICLR 2021): one block of conv3x3-norm-act-pool per entry of `widths` (its
    width; the default is depth 3, width 128), then a linear layer.

    Deviation: a pooling layer is skipped once the feature map is 1 pixel wide, so deep members still
    build on 8x8 inputs (the DC code would fail there).
    """

    def __init__(
        self,
        channels: int,
        num_classes: int,
        image_size: int,
        widths: tuple[int, ...] = (128, 128, 128),
        activation: str = "relu",
        normalization: str = "instancenorm",
        pooling: str = "avgpool",
    ) -> None:
        super().__init__()
        blocks, c, hw = [], channels, image_size
        for w in widths:
            layers: list[nn.Module] = [nn.Conv2d(c, w, 3, padding=1), _norm(normalization, w, hw)]
            layers.append(ACTIVATIONS[activation]())
            if pooling != "none" and hw >= 2:
                layers.append(nn.MaxPool2d(2, 2) if pooling == "maxpool" else nn.AvgPool2d(2, 2))
                hw //= 2
            blocks.append(nn.Sequential(*layers))
            c = w
        self.blocks = nn.ModuleList(blocks)
        self.feature_dim = c * hw * hw
        self.classifier = nn.Linear(self.feature_dim, num_classes)

    def layer_outputs(self, x: torch.Tensor) -> list[torch.Tensor]:
        outs = []
        for block in self.blocks:
            x = block(x)
            outs.append(x)
        return outs

    def features(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return x.flatten(1)


class _ReLUConvBN(nn.Sequential):
    def __init__(self, c_in: int, c_out: int, k: int, stride: int = 1) -> None:
        super().__init__(
            nn.ReLU(inplace=False), nn.Conv2d(c_in, c_out, k, stride, k // 2, bias=False), nn.BatchNorm2d(c_out)
        )


class _Zero(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 0.0


def _cell_op(name: str, c: int) -> nn.Module:
    return {
        "none": lambda: _Zero(),
        "skip_connect": lambda: nn.Identity(),
        "nor_conv_1x1": lambda: _ReLUConvBN(c, c, 1),
        "nor_conv_3x3": lambda: _ReLUConvBN(c, c, 3),
        "avg_pool_3x3": lambda: nn.AvgPool2d(3, 1, 1, count_include_pad=False),
    }[name]()


class Cell201(nn.Module):
    """A NAS-Bench-201 cell: 4 nodes, node j = sum over i < j of op_(j,i)(node i)."""

    def __init__(self, ops: dict[str, str], c: int) -> None:
        super().__init__()
        self.edges = nn.ModuleDict({e: _cell_op(ops[e], c) for e in CELL_EDGES})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        nodes = [x]
        for j in (1, 2, 3):
            nodes.append(sum(self.edges[f"edge_{j}_{i}"](nodes[i]) for i in range(j)))
        return nodes[3]


class _ResBlock(nn.Module):
    """NAS-Bench-201's reduction block: two ReLU-conv-BN (first with stride 2) plus a pooled shortcut.

    The shortcut pools with `ceil_mode` so odd feature maps (e.g. 10x10 -> 5x5 -> 3x3) match the strided
    conv; on even sizes (all NAS-Bench-201 inputs) it is NAS-Bench-201's plain 2x2 average pool.
    """

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.a = _ReLUConvBN(c_in, c_out, 3, 2)
        self.b = _ReLUConvBN(c_out, c_out, 3, 1)
        self.shortcut = nn.Sequential(nn.AvgPool2d(2, 2, ceil_mode=True), nn.Conv2d(c_in, c_out, 1, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(self.a(x)) + self.shortcut(x)


class CellNet(Classifier):
    """NAS-Bench-201 macro skeleton: stem, 3 stages of `cells_per_stage` cells, two reduction blocks."""

    def __init__(
        self, channels: int, num_classes: int, image_size: int, ops: dict[str, str], c: int = 16, n: int = 5
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(channels, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)]
        for stage in range(3):
            if stage:
                layers.append(_ResBlock(c, 2 * c))
                c *= 2
            layers += [Cell201(ops, c) for _ in range(n)]
        layers += [nn.BatchNorm2d(c), nn.ReLU(inplace=False), nn.AdaptiveAvgPool2d(1)]
        self.body = nn.Sequential(*layers)
        self.feature_dim = c
        self.classifier = nn.Linear(c, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x).flatten(1)


# ---------------------------------------------------------------------------------------------------
# Families: a builder plus the rules a search-space YAML is checked against.

ParamRule = Callable[[Any], str | None]  # returns what was expected, or None when the value is valid


def _one_of(options: tuple[str, ...]) -> ParamRule:
    return lambda v: None if v in options else f"one of {', '.join(options)}"


def _positive_int(v: Any) -> str | None:
    return None if isinstance(v, int) and not isinstance(v, bool) and v >= 1 else "a positive integer"


@dataclass(frozen=True)
class Family:
    """A model family: how to build it and which parameters (with their rules) it accepts."""

    build: Callable[[ArchSpec, int, int, int], Classifier]
    rules: dict[str, ParamRule]
    description: str


def _build_convnet(spec: ArchSpec, channels: int, image_size: int, num_classes: int) -> Classifier:
    depth = spec.get("depth", 3)
    widths = tuple(spec.get(f"width_{i + 1}", spec.get("width", 128)) for i in range(depth))
    return ConvNet(
        channels,
        num_classes,
        image_size,
        widths,
        activation=spec.get("activation", "relu"),
        normalization=spec.get("normalization", "instancenorm"),
        pooling=spec.get("pooling", "avgpool"),
    )


def _build_cell201(spec: ArchSpec, channels: int, image_size: int, num_classes: int) -> Classifier:
    ops = {e: spec.get(e, "nor_conv_3x3") for e in CELL_EDGES}
    return CellNet(channels, num_classes, image_size, ops, c=spec.get("channels", 16), n=spec.get("cells_per_stage", 5))


_depth_rule: ParamRule = lambda v: _positive_int(v) or (None if v <= MAX_DEPTH else f"at most {MAX_DEPTH}")  # noqa: E731

FAMILIES: Registry[Family] = Registry("model family")
FAMILIES.register("convnet")(
    Family(
        _build_convnet,
        {
            "depth": _depth_rule,
            "width": _positive_int,
            "activation": _one_of(tuple(ACTIVATIONS)),
            "normalization": _one_of(NORMS),
            "pooling": _one_of(POOLS),
            **{f"width_{i}": _positive_int for i in range(1, MAX_DEPTH + 1)},
        },
        "ConvNet of Zhao et al. (ICLR 2021): conv3x3-norm-act-pool blocks and a linear classifier",
    )
)
FAMILIES.register("cell201")(
    Family(
        _build_cell201,
        {
            **{e: _one_of(CELL_OPS) for e in CELL_EDGES},
            "channels": _positive_int,
            "cells_per_stage": _positive_int,
        },
        "NAS-Bench-201 cell (4 nodes, 6 edges) stacked in 3 stages with 2 reduction blocks",
    )
)

DEFAULT_ARCH = ArchSpec.make(
    "convnet", depth=3, width=128, activation="relu", normalization="instancenorm", pooling="avgpool"
)


def build(spec: ArchSpec, channels: int, image_size: int, num_classes: int) -> Classifier:
    """Build the Classifier an ArchSpec describes for inputs of shape [channels, image_size, image_size]."""
    family = FAMILIES.get(spec.family)
    for name, value in spec.params:
        if name not in family.rules:
            raise NasddError(f"{spec.family} has no parameter {name!r}; valid parameters: {', '.join(family.rules)}")
        expected = family.rules[name](value)
        if expected:
            raise NasddError(f"{spec.family} parameter {name}={value!r} is invalid; expected {expected}")
    return family.build(spec, channels, image_size, num_classes)


def reinit_(net: M) -> M:
    """Draw fresh initial weights for `net` in place (each submodule's own initialiser, from torch's global
    RNG; BatchNorm statistics reset)."""
    for m in net.modules():
        reset = getattr(m, "reset_parameters", None)
        if m is not net and callable(reset):
            reset()
    return net


def param_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def forward_flops(model: nn.Module, input_shape: tuple[int, int, int]) -> int:
    """Forward FLOPs for one sample (torch's FLOP counter: matmuls and convolutions).

    Counted on two samples and halved: a batch of one cannot pass an instance norm on a 1x1 map.
    """
    p = next(model.parameters(), None)
    x = torch.zeros(2, *input_shape, device=p.device if p is not None else "cpu")
    was_training = model.training
    model.eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(x)
    model.train(was_training)
    return int(counter.get_total_flops()) // 2
