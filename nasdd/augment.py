"""Differentiable siamese augmentation (DSA; Zhao & Bilen, ICML 2021), shared by every stage.

`DSA(strategy)(x, seed)` transforms a batch differentiably. Calls with the same seed draw the same
transform, so a real and a synthetic batch of any sizes can be augmented identically (siamese). With
`per_sample=True` every image gets its own draw (as in evaluation-time augmentation); otherwise one
draw is shared by the batch, as the paper does for matching. `mode="single"` applies one operation
sampled from the strategy per call (the paper's default); `mode="all"` applies every one in order.
Ranges follow the paper: scale 1.2, rotate 15 degrees, flip 0.5, brightness 1.0, saturation 2.0,
contrast 0.5, crop padding 1/8 of the size, cutout 1/2 of the size.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from nasdd.errors import NasddError

OPS = ("color", "crop", "cutout", "flip", "scale", "rotate")
DEFAULT_STRATEGY = "color_crop_cutout_flip_scale_rotate"


class DSA:
    """A seeded, differentiable augmentation: the same seed gives the same transform."""

    def __init__(self, strategy: str = DEFAULT_STRATEGY, mode: str = "single", per_sample: bool = False) -> None:
        ops = [op for op in strategy.split("_") if op]
        bad = [op for op in ops if op not in OPS]
        if bad or not ops:
            raise NasddError(f"unknown augmentation {bad or strategy!r}; valid operations: {', '.join(OPS)}")
        if mode not in ("single", "all"):
            raise NasddError(f"unknown augmentation mode {mode!r}; valid modes: single, all")
        self.ops, self.mode, self.per_sample = ops, mode, per_sample

    def __repr__(self) -> str:
        return f"DSA({'_'.join(self.ops)!r}, mode={self.mode!r}, per_sample={self.per_sample})"

    def __call__(self, x: torch.Tensor, seed: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(int(seed))
        n = x.shape[0] if self.per_sample else 1
        ops = self.ops if self.mode == "all" else [self.ops[int(torch.randint(len(self.ops), (1,), generator=g))]]
        for op in ops:
            x = getattr(self, f"_{op}")(x, g, n)
        return x

    @staticmethod
    def _rand(g: torch.Generator, n: int, x: torch.Tensor) -> torch.Tensor:
        """n uniform draws in [0, 1), shaped to broadcast over [N, C, H, W]."""
        return torch.rand(n, generator=g).to(device=x.device, dtype=x.dtype).view(n, 1, 1, 1)

    def _color(self, x: torch.Tensor, g: torch.Generator, n: int) -> torch.Tensor:
        x = x + (self._rand(g, n, x) - 0.5) * 1.0  # brightness
        m = x.mean(dim=1, keepdim=True)
        x = (x - m) * (self._rand(g, n, x) * 2.0) + m  # saturation
        m = x.mean(dim=(1, 2, 3), keepdim=True)
        return (x - m) * (self._rand(g, n, x) + 0.5) + m  # contrast

    def _affine(self, x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
        theta = theta.to(device=x.device, dtype=x.dtype).expand(x.shape[0], 2, 3)
        grid = F.affine_grid(theta, list(x.shape), align_corners=True)
        return F.grid_sample(x, grid, align_corners=True)

    def _scale(self, x: torch.Tensor, g: torch.Generator, n: int) -> torch.Tensor:
        s = torch.rand(n, 2, generator=g) * (1.2 - 1 / 1.2) + 1 / 1.2
        theta = torch.zeros(n, 2, 3)
        theta[:, 0, 0], theta[:, 1, 1] = s[:, 0], s[:, 1]
        return self._affine(x, theta)

    def _rotate(self, x: torch.Tensor, g: torch.Generator, n: int) -> torch.Tensor:
        a = (torch.rand(n, generator=g) - 0.5) * 2 * 15 / 180 * math.pi
        theta = torch.stack(
            [torch.stack([a.cos(), a.sin(), torch.zeros(n)], 1), torch.stack([-a.sin(), a.cos(), torch.zeros(n)], 1)],
            1,
        )
        return self._affine(x, theta)

    def _flip(self, x: torch.Tensor, g: torch.Generator, n: int) -> torch.Tensor:
        flip = (torch.rand(n, generator=g) < 0.5).to(device=x.device).view(n, 1, 1, 1)
        return torch.where(flip, x.flip(3), x)

    def _crop(self, x: torch.Tensor, g: torch.Generator, n: int) -> torch.Tensor:
        """Translate by up to 1/8 of the image size with zero padding (the paper's crop)."""
        h, w = x.shape[2:]
        sy, sx = int(h * 0.125 + 0.5), int(w * 0.125 + 0.5)  # rounded as in the DSA code (28 px -> 4)
        dy = torch.randint(-sy, sy + 1, (n,), generator=g)
        dx = torch.randint(-sx, sx + 1, (n,), generator=g)
        theta = torch.zeros(n, 2, 3)
        theta[:, 0, 0] = theta[:, 1, 1] = 1.0
        theta[:, 0, 2], theta[:, 1, 2] = 2 * dx / max(w - 1, 1), 2 * dy / max(h - 1, 1)
        return self._affine(x, theta)

    def _cutout(self, x: torch.Tensor, g: torch.Generator, n: int) -> torch.Tensor:
        h, w = x.shape[2:]
        ch, cw = int(h * 0.5 + 0.5), int(w * 0.5 + 0.5)
        cy = torch.randint(0, h + (1 - ch % 2), (n, 1, 1), generator=g)
        cx = torch.randint(0, w + (1 - cw % 2), (n, 1, 1), generator=g)
        ys = torch.arange(h).view(1, h, 1) - cy + ch // 2  # position inside the ch x cw square
        xs = torch.arange(w).view(1, 1, w) - cx + cw // 2
        inside = (ys >= 0) & (ys < ch) & (xs >= 0) & (xs < cw)
        mask = (~inside).to(device=x.device, dtype=x.dtype).unsqueeze(1)
        return x * mask


def make_augment(name: str | None) -> DSA | None:
    """From a recipe string: None/'none', 'dsa' (paper default, per-sample) or 'dsa:<ops joined by _>'."""
    if name in (None, "", "none"):
        return None
    if name == "dsa":
        return DSA(per_sample=True)
    if name.startswith("dsa:"):
        return DSA(name[4:], per_sample=True)
    raise NasddError(f"unknown augmentation {name!r}; valid: none, dsa, dsa:<ops> with ops from {', '.join(OPS)}")
