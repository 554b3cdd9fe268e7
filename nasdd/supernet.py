"""A relaxed ConvNet supernet: every discrete factor of a `convnet` search space becomes a mixture.

DARTS-style continuous relaxation (Liu et al., ICLR 2019, eq. 2: a mixed operation is the softmax-weighted
sum of the candidate operations), applied per factor of the space rather than per edge, because a
`convnet` space's factors are global (one activation, one width, ... for every block):

- activation, normalisation, pooling: inside every block, the softmax-weighted sum of the choices;
- width: the conv is built at the widest choice; choice `w` runs its own normalisation (per width, since
  layer/group/instance norms mix channels) on the first `w` channels and is zero-padded back; the block
  output is the weighted sum over widths (a one-hot width leaves exactly `w` live channels);
- depth: one linear head per depth choice reads the features after that many blocks; the logits are
  the weighted sum of the heads.

At a one-hot mixture the supernet computes exactly the discrete member it selects when it holds that
member's weights (`load_member_`; tests check it). Mixture weights come from the relaxation parameters
`lam` (one flat vector of logits, `relaxation(lam)`: a softmax per factor at temperature `T`).
BatchNorm uses batch statistics (`track_running_stats=False`), as a member does in training mode.
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import nn

from nasdd.arch import ArchSpec
from nasdd.errors import NasddError
from nasdd.models import ConvNet, _norm
from nasdd.spaces import SearchSpace

FACTORS = ("depth", "width", "activation", "normalization", "pooling")
_ACT: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "sigmoid": torch.sigmoid,
    "relu": F.relu,
    "leakyrelu": lambda x: F.leaky_relu(x, 0.01),
}


def space_choices(space: SearchSpace) -> dict[str, list]:
    """The choices of each relaxed factor of a finite convnet `space` (refuses other families and
    parameters); a factor the space leaves out gets the ConvNet default as its one choice."""
    if space.family != "convnet" or not space.finite:
        raise NasddError(f"hcdc relaxes finite convnet spaces only; {space.name} is not one")
    grid = space.grid()
    extra = sorted(set(grid) - set(FACTORS))
    if extra:
        raise NasddError(f"hcdc cannot relax parameter {extra[0]!r} of {space.name}; relaxable: {', '.join(FACTORS)}")
    choices = {f: list(grid.get(f, [_DEFAULTS[f]])) for f in FACTORS}
    if set(choices["pooling"]) - {"maxpool", "avgpool"}:
        raise NasddError(
            f"hcdc mixes pooled members only (maxpool, avgpool: the same feature-map sizes); {space.name} has "
            f"pooling {choices['pooling']}; use a pooled space such as convnet_cpu_pooled"
        )
    return {f: sorted(v) if f in ("depth", "width") else v for f, v in choices.items()}


_DEFAULTS = {"depth": 3, "width": 128, "activation": "relu", "normalization": "instancenorm", "pooling": "avgpool"}


class RelaxedConvNet(nn.Module):
    """The supernet over `choices` (factor -> list of values; see `space_choices`)."""

    def __init__(self, choices: dict[str, list], channels: int, num_classes: int, image_size: int) -> None:
        super().__init__()
        self.choices = {f: list(choices[f]) for f in FACTORS}
        self.sizes = [len(self.choices[f]) for f in FACTORS]
        depth, self.wide = max(self.choices["depth"]), max(self.choices["width"])
        convs, norms, self.hw, self.pooled = [], nn.ModuleDict(), [], []
        c, hw = channels, image_size
        for layer in range(depth):
            convs.append(nn.Conv2d(c, self.wide, 3, padding=1))
            for w in self.choices["width"]:
                for n in self.choices["normalization"]:
                    norms[f"{layer}_{w}_{n}"] = self._norm(n, w, hw)
            self.pooled.append(hw >= 2)
            hw = hw // 2 if hw >= 2 else hw
            self.hw.append(hw)
            c = self.wide
        self.convs, self.norms = nn.ModuleList(convs), norms
        self.heads = nn.ModuleDict(
            {str(d): nn.Linear(self.wide * self.hw[d - 1] ** 2, num_classes) for d in self.choices["depth"]}
        )

    @staticmethod
    def _norm(kind: str, c: int, hw: int) -> nn.Module:
        return nn.BatchNorm2d(c, track_running_stats=False) if kind == "batchnorm" else _norm(kind, c, hw)

    # ------------------------------------------------------------------------------- relaxation
    @property
    def n_lam(self) -> int:
        return sum(self.sizes)

    def relaxation(self, lam: torch.Tensor, temperature: float = 1.0) -> dict[str, torch.Tensor]:
        """Mixture weights per factor: softmax(logits / temperature) of each factor's slice of `lam`."""
        return {f: torch.softmax(part / temperature, 0) for f, part in zip(FACTORS, lam.split(self.sizes), strict=True)}

    def logits(self, arch: ArchSpec, mix: float = 0.0) -> torch.Tensor:
        """Logits whose softmax puts 1 - mix + mix/n on `arch`'s choice of each factor and mix/n elsewhere
        (mix 0: one-hot, as -inf/0 logits clamped at -1e4)."""
        parts = []
        for f in FACTORS:
            values = self.choices[f]
            value = arch.get(f, _DEFAULTS[f])
            if value not in values:
                raise NasddError(f"{arch} has {f}={value!r}, which the supernet does not hold ({values})")
            p = torch.full((len(values),), mix / len(values))
            p[values.index(value)] += 1.0 - mix
            parts.append(p.clamp_min(1e-30).log().clamp_min(-1e4))
        return torch.cat(parts)

    # ---------------------------------------------------------------------------------- forward
    def forward(self, x: torch.Tensor, alphas: dict[str, torch.Tensor]) -> torch.Tensor:
        h, heads = x, []
        for layer, conv in enumerate(self.convs):
            z = conv(h)
            widths = []
            for a_w, w in zip(alphas["width"], self.choices["width"], strict=True):
                zw = z[:, :w]
                y = _mix(
                    a * self.norms[f"{layer}_{w}_{n}"](zw)
                    for a, n in zip(alphas["normalization"], self.choices["normalization"], strict=True)
                )
                y = _mix(a * _ACT[k](y) for a, k in zip(alphas["activation"], self.choices["activation"], strict=True))
                if self.pooled[layer]:
                    y = _mix(
                        a * (F.max_pool2d(y, 2, 2) if p == "maxpool" else F.avg_pool2d(y, 2, 2))
                        for a, p in zip(alphas["pooling"], self.choices["pooling"], strict=True)
                    )
                widths.append(a_w * F.pad(y, (0, 0, 0, 0, 0, self.wide - w)))
            h = _mix(widths)
            depth = layer + 1
            if depth in self.choices["depth"]:
                a_d = alphas["depth"][self.choices["depth"].index(depth)]
                heads.append(a_d * self.heads[str(depth)](h.flatten(1)))
        return _mix(heads)

    # ------------------------------------------------------------------------------- members
    @torch.no_grad()
    def load_member_(self, arch: ArchSpec, member: ConvNet) -> RelaxedConvNet:
        """Copy a built member's weights into the supernet's slices for it (other slices are untouched)."""
        w, n = arch.get("width", _DEFAULTS["width"]), arch.get("normalization", _DEFAULTS["normalization"])
        depth = arch.get("depth", _DEFAULTS["depth"])
        for layer, block in enumerate(member.blocks):
            assert isinstance(block, nn.Sequential)
            conv, src = self.convs[layer], block[0]
            assert isinstance(conv, nn.Conv2d) and isinstance(src, nn.Conv2d)
            conv.weight.zero_()
            conv.weight[:w, : src.in_channels].copy_(src.weight)
            _bias(conv).zero_()
            _bias(conv)[:w].copy_(_bias(src))
            self.norms[f"{layer}_{w}_{n}"].load_state_dict(block[1].state_dict(), strict=False)
        head = self.heads[str(depth)]
        assert isinstance(head, nn.Linear)
        head.weight.zero_()
        head.weight[:, : member.feature_dim].copy_(member.classifier.weight)
        head.bias.copy_(member.classifier.bias)
        return self


def _mix(terms: Iterable[torch.Tensor]) -> torch.Tensor:
    """The sum of a mixture's weighted terms (left to right, as Python's `sum`)."""
    return functools.reduce(operator.add, terms)


def _bias(layer: nn.Conv2d) -> torch.Tensor:
    assert layer.bias is not None  # the supernet's and ConvNet's convs have biases
    return layer.bias
