"""ProxySet: a distilled (or selected) training set, saved as one tensor file plus a JSON sidecar.

`proxy.pt` holds the tensors; `proxy.json` holds provenance, dataset metadata and the file's SHA-256.
Loading verifies the checksum and the stored shapes, and refuses a truncated or altered file.

A proxy may carry a synthetic validation set (`val_images`, `val_labels`; HCDC, `nasdd.distill.hcdc`):
it lives in the same `proxy.pt` (so the same checksum covers it), its shapes are recorded in the sidecar,
and it enters the proxy's `id`. Search and validation score candidates on it instead of the real val
split when it is there (`has_val`, `val_data`).
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from nasdd import __version__
from nasdd.errors import NasddError
from nasdd.layout import RunLayout
from nasdd.utils import atomic_open, atomic_path, ensure_dir, file_sha256, load_untrusted, stable_hash, write_json

if TYPE_CHECKING:
    from nasdd.data import DatasetBundle

FORMAT = 2  # 2: the sidecar carries a digest of its own contents


@dataclass(eq=False)
class ProxySet:
    """Images (normalised like the dataset), hard [N] or soft [N, K] labels, optional learned lr,
    optional ZCA whitening (`zca`: [D, D] applied to flattened images) and provenance."""

    images: torch.Tensor
    labels: torch.Tensor
    meta: dict[str, Any]
    provenance: dict[str, Any] = field(default_factory=dict)
    lr: float | None = None
    zca: torch.Tensor | None = None
    val_images: torch.Tensor | None = None
    val_labels: torch.Tensor | None = None

    def __post_init__(self) -> None:
        self.images = self.images.detach().cpu().float()
        self.labels = self.labels.detach().cpu()
        if self.zca is not None:
            self.zca = self.zca.detach().cpu().float()
        if len(self.images) != len(self.labels):
            raise NasddError(f"proxy has {len(self.images)} images but {len(self.labels)} labels")
        if (self.val_images is None) != (self.val_labels is None):
            raise NasddError("a synthetic validation set needs both val_images and val_labels")
        if self.val_images is not None and self.val_labels is not None:
            self.val_images = self.val_images.detach().cpu().float()
            self.val_labels = self.val_labels.detach().cpu().long()
            if len(self.val_images) != len(self.val_labels) or self.val_labels.dim() != 1:
                raise NasddError(
                    f"synthetic validation set has {len(self.val_images)} images but labels of shape "
                    f"{list(self.val_labels.shape)} (hard labels, one per image, are needed)"
                )
            if self.val_images.shape[1:] != self.images.shape[1:]:
                raise NasddError(
                    f"synthetic validation images {list(self.val_images.shape[1:])} differ from the training "
                    f"images {list(self.images.shape[1:])}"
                )

    @property
    def has_val(self) -> bool:
        """Whether the proxy carries a synthetic validation set."""
        return self.val_images is not None

    def val_data(self, x_val: torch.Tensor, y_val: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, str]:
        """(images, labels, description) to score candidates on: the synthetic validation set when the
        proxy has one (it lives in the proxy's input space already), else the real (`x_val`, `y_val`)
        mapped by `input_transform`."""
        if self.val_images is not None and self.val_labels is not None:
            return self.val_images, self.val_labels, f"synthetic validation set ({len(self.val_images)} images)"
        return self.input_transform(x_val), y_val, f"real val split ({len(x_val)} images)"

    @property
    def soft(self) -> bool:
        return self.labels.is_floating_point()

    @property
    def hard_labels(self) -> torch.Tensor:
        return self.labels.argmax(1) if self.soft else self.labels

    @property
    def ipc(self) -> int:
        return int(self.provenance.get("ipc", len(self.images) // max(self.meta.get("num_classes", 1), 1)))

    @property
    def id(self) -> str:
        """Stable content id: equal proxies (same tensors and lr) have the same id."""
        zca = None if self.zca is None else _tensor_digest(self.zca)
        parts: list[object] = [_tensor_digest(self.images), _tensor_digest(self.labels), self.lr, zca]
        if self.val_images is not None and self.val_labels is not None:  # absent: ids of older proxies unchanged
            parts.append([_tensor_digest(self.val_images), _tensor_digest(self.val_labels)])
        digest = stable_hash(parts, 12)
        return f"{self.provenance.get('method', 'proxy')}-ipc{self.ipc}-{digest}"

    def input_transform(self, x: torch.Tensor) -> torch.Tensor:
        """Map real (normalised) images into the proxy's input space: ZCA whitening when recorded."""
        if self.zca is None:
            return x
        z = self.zca.to(x.device, x.dtype)
        return (x.flatten(1) @ z).view_as(x)

    def train_data(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(images, labels) to hand to the trainer."""
        return self.images, self.labels

    def check_compatible(self, bundle: DatasetBundle) -> None:
        """Refuse a proxy made for another dataset (channels, image size or classes differ)."""
        want = {k: bundle.meta()[k] for k in ("dataset", "channels", "image_size", "num_classes")}
        have = {k: self.meta.get(k) for k in want}
        if want != have:
            raise NasddError(
                f"proxy was made for {have['dataset']} ({have['channels']}x{have['image_size']}px, "
                f"{have['num_classes']} classes) but the dataset is {want['dataset']} ({want['channels']}x"
                f"{want['image_size']}px, {want['num_classes']} classes); distil a proxy for this dataset"
            )

    # ------------------------------------------------------------------ files
    def save(self, out: str | Path) -> Path:
        """Write `proxy.pt` and `proxy.json` into the folder `out` (atomically); return the folder."""
        out = ensure_dir(out)
        buf = io.BytesIO()
        tensors = {"images": self.images, "labels": self.labels, "zca": self.zca}
        if self.has_val:
            tensors.update(val_images=self.val_images, val_labels=self.val_labels)
        torch.save(tensors, buf)
        with atomic_open(RunLayout(out).proxy_data, "wb") as f:
            f.write(buf.getvalue())
        sidecar = {
            "format": FORMAT,
            "sha256": file_sha256(RunLayout(out).proxy_data),
            "id": self.id,
            "images_shape": list(self.images.shape),
            "labels_shape": list(self.labels.shape),
            "soft_labels": self.soft,
            "lr": self.lr,
            "zca": self.zca is not None,
            "meta": self.meta,
            "provenance": {"nasdd_version": __version__, **self.provenance},
        }
        if self.val_images is not None and self.val_labels is not None:
            sidecar["val_images_shape"] = list(self.val_images.shape)
            sidecar["val_labels_shape"] = list(self.val_labels.shape)
        sidecar["digest"] = stable_hash(sidecar, 64)
        write_json(RunLayout(out).sidecar, sidecar)
        return out

    @classmethod
    def load(cls, path: str | Path, bundle: DatasetBundle | None = None) -> ProxySet:
        """Load and verify a proxy folder (or its proxy.json / proxy.pt); with `bundle`, check it matches."""
        folder = Path(path)
        if folder.is_file():
            folder = folder.parent
        data, side = RunLayout(folder).proxy_data, RunLayout(folder).sidecar
        if not data.exists() or not side.exists():
            raise NasddError(f"{folder} is not a proxy folder: expected {data.name} and {side.name} inside")
        try:
            sidecar = json.loads(side.read_text())
            expected = sidecar["sha256"]
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise NasddError(f"{side} is damaged ({exc}); distil the proxy again") from exc
        if not isinstance(sidecar.get("format", 1), int) or sidecar.get("format", 1) > FORMAT:
            raise NasddError(
                f"{side} is format {sidecar.get('format')!r}, this nasdd reads up to {FORMAT} (made by a newer or "
                "another nasdd); upgrade nasdd or distil the proxy again"
            )
        if sidecar.get("format", 1) >= 2 and stable_hash(_without(sidecar, "digest"), 64) != sidecar.get("digest"):
            raise NasddError(f"{side} was edited or damaged (its digest does not match its contents); distil again")
        if file_sha256(data) != expected:
            raise NasddError(f"{data} is damaged: its checksum does not match {side}; distil the proxy again")
        tensors = load_untrusted(data, what="proxy data", remedy="distil the proxy again")
        proxy = cls(
            images=tensors["images"],
            labels=tensors["labels"],
            meta=sidecar["meta"],
            provenance=sidecar.get("provenance", {}),
            lr=sidecar.get("lr"),
            zca=tensors.get("zca"),
            val_images=tensors.get("val_images"),
            val_labels=tensors.get("val_labels"),
        )
        shapes: list[list[int] | None] = [list(proxy.images.shape), list(proxy.labels.shape)]
        recorded = [sidecar["images_shape"], sidecar["labels_shape"]]
        if proxy.val_images is not None or "val_images_shape" in sidecar:
            shapes += [None if proxy.val_images is None else list(proxy.val_images.shape)]
            shapes += [None if proxy.val_labels is None else list(proxy.val_labels.shape)]
            recorded += [sidecar.get("val_images_shape"), sidecar.get("val_labels_shape")]
        if shapes != recorded:
            raise NasddError(f"{data} does not hold the shapes {side} records; distil the proxy again")
        if bundle is not None:
            proxy.check_compatible(bundle)
        return proxy

    def save_grid(self, path: str | Path, max_per_class: int = 10) -> Path:
        """A PNG grid, one row per class (de-normalised; whitened proxies are shown min-max scaled)."""
        from torchvision.utils import save_image

        imgs = self.images
        if self.zca is None:
            mean = torch.tensor(self.meta["mean"]).view(1, -1, 1, 1)
            std = torch.tensor(self.meta["std"]).view(1, -1, 1, 1)
            imgs = (imgs * std + mean).clamp(0, 1)
        else:
            lo, hi = imgs.amin(dim=(1, 2, 3), keepdim=True), imgs.amax(dim=(1, 2, 3), keepdim=True)
            imgs = (imgs - lo) / (hi - lo + 1e-8)
        labels = self.hard_labels
        k = int(self.meta.get("num_classes", int(labels.max()) + 1))
        rows = [imgs[labels == c][:max_per_class] for c in range(k)]
        ncol = max(len(r) for r in rows)
        grid = torch.cat([torch.cat([r, r.new_ones(ncol - len(r), *r.shape[1:])]) for r in rows])
        with atomic_path(path) as tmp:
            save_image(grid, tmp, nrow=ncol, padding=1, pad_value=1.0)
        return Path(path)


def _without(d: dict[str, Any], key: str) -> dict[str, Any]:
    return {k: v for k, v in d.items() if k != key}


def _tensor_digest(t: torch.Tensor) -> str:
    return hashlib.sha256(t.detach().cpu().contiguous().numpy().tobytes()).hexdigest()[:16]
