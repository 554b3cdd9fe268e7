"""Expert trajectories for trajectory matching (MTT): networks trained on the full training split with
plain SGD, their parameters saved after every epoch.

A buffer lives in `<root>/experts/<dataset_key>/<arch_key>-<recipe_key>[-zca]/`: one file per expert
(`expert_<i>.pt`: the flattened parameters at epochs 0..E as a [E+1, P] tensor plus its cost) and a
`buffer.json` manifest. Files are written atomically after every epoch, so an interrupted run resumes
at the last finished epoch, and a second call with the same settings trains nothing. Asking for more
epochs or experts than stored extends the buffer. Expert `i` is initialised with seed `i` and epoch `e`
shuffles with seed `i * 100_003 + e`, so every expert is reproducible. `nasdd experts` trains them
(`nasdd.cli.experts`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
from torch.nn.utils import parameters_to_vector

from nasdd.arch import ArchSpec
from nasdd.data import DatasetBundle, cache_dir
from nasdd.errors import NasddError
from nasdd.models import DEFAULT_ARCH
from nasdd.train import TrainRecipe, build_seeded, evaluate, fit, image_shape
from nasdd.utils import atomic_open, load_untrusted, progress, resolve_device, write_json

# MTT's expert recipe: SGD lr 0.01, no momentum, no weight decay, batch 256, DSA; flip is dropped
# because digits are not mirror-symmetric. `epochs` is set by the caller.
EXPERT_FORMAT = 1  # the `format` an expert file records; a newer one is refused
EXPERT_RECIPE = TrainRecipe(
    epochs=1,
    batch_size=256,
    lr=0.01,
    momentum=0.0,
    weight_decay=0.0,
    schedule="constant",
    augment="dsa:color_crop_cutout_scale_rotate",
)
ZCA_EPS = 0.1  # MTT's ZCA regularisation strength


def zca_matrix(x: torch.Tensor, eps: float = ZCA_EPS) -> torch.Tensor:
    """The [D, D] ZCA whitening matrix of images `x` [N, C, H, W] (applied as `x.flatten(1) @ W`)."""
    flat = x.flatten(1).double()
    flat = flat - flat.mean(0)
    cov = flat.T @ flat / len(flat)
    evals, evecs = torch.linalg.eigh(cov)
    return (evecs @ torch.diag((evals.clamp_min(0) + eps).rsqrt()) @ evecs.T).float()


def whiten(x: torch.Tensor, zca: torch.Tensor | None) -> torch.Tensor:
    return x if zca is None else (x.flatten(1) @ zca.to(x.device, x.dtype)).view_as(x)


@dataclass
class ExpertBuffer:
    """A folder of expert trajectories; `trajectories[i]` is a [epochs+1, P] float tensor."""

    folder: Path
    trajectories: list[torch.Tensor]
    seconds: float
    sample_grads: int
    trained_epochs: int  # epochs trained by the call that returned this buffer (0 = all reused)

    @property
    def cost(self) -> dict:
        return {"seconds": round(self.seconds, 3), "sample_grads": self.sample_grads}


def buffer_folder(
    root: str | Path | None, bundle: DatasetBundle, arch: ArchSpec, recipe: TrainRecipe, zca: bool = False
) -> Path:
    """`<root>/experts/<dataset_key>/<arch_key>-<recipe_key>[-zca]` (the recipe keyed without its epochs);
    `root` None: nasdd's cache folder (`nasdd.data.cache_dir()`, `~/.cache/nasdd`)."""
    root = cache_dir() if root is None else root
    name = f"{arch.key()}-{replace(recipe, epochs=1, steps=None).key()}" + ("-zca" if zca else "")
    return Path(root) / "experts" / bundle.key / name


def _check_recipe(recipe: TrainRecipe) -> None:
    if recipe.optimizer != "sgd" or recipe.momentum != 0 or recipe.schedule != "constant" or recipe.steps:
        raise NasddError(
            "experts are trained with plain SGD epoch by epoch: the recipe needs optimizer=sgd, momentum=0, "
            f"schedule=constant and no steps (got {recipe.optimizer}, momentum={recipe.momentum}, "
            f"schedule={recipe.schedule}, steps={recipe.steps})"
        )


def _load_expert(path: Path) -> dict | None:
    if not path.exists():
        return None
    return load_untrusted(path, what="expert file", remedy="delete it to train it again", version=EXPERT_FORMAT)


def _save_expert(path: Path, state: dict) -> None:
    with atomic_open(path, "wb") as f:
        torch.save({**state, "format": EXPERT_FORMAT}, f)


def train_experts(
    bundle: DatasetBundle,
    *,
    arch: ArchSpec = DEFAULT_ARCH,
    num_experts: int = 5,
    epochs: int = 15,
    recipe: TrainRecipe = EXPERT_RECIPE,
    root: str | Path | None = None,
    zca: bool = False,
    device: str | torch.device = "auto",
) -> ExpertBuffer:
    """Train (or reuse, or extend) `num_experts` expert trajectories of `epochs` epochs each."""
    if num_experts < 1 or epochs < 1:
        raise NasddError(f"num_experts and epochs must be >= 1, got {num_experts} and {epochs}")
    _check_recipe(recipe)
    dev = resolve_device(device)
    folder = buffer_folder(root, bundle, arch, recipe, zca)
    folder.mkdir(parents=True, exist_ok=True)
    w = zca_matrix(bundle.x_train) if zca else None
    x, y = whiten(bundle.x_train, w), bundle.y_train
    x_val = whiten(bundle.x_val, w)
    one_epoch = replace(recipe, epochs=1)
    loaded = [_load_expert(folder / f"expert_{i}.pt") for i in range(num_experts)]
    todo = sum(max(epochs - (len(s["trajectory"]) - 1 if s else 0), 0) for s in loaded)
    bar = progress(total=todo, desc="experts")
    trained = 0
    states: list[dict] = []
    for i, state in enumerate(loaded):
        model = build_seeded(arch, image_shape(x), bundle.num_classes, seed=i).to(dev)
        if state is None:
            traj = [parameters_to_vector(model.parameters()).detach().cpu()]
            state = {"trajectory": torch.stack(traj), "seconds": 0.0, "sample_grads": 0, "val_accuracy": None}
        else:
            torch.nn.utils.vector_to_parameters(state["trajectory"][-1].clone().to(dev), model.parameters())
            traj = list(state["trajectory"])
        for e in range(len(traj) - 1, epochs):
            res = fit(model, x, y, one_epoch, seed=i * 100_003 + e, device=dev)
            if not res.ok:
                raise NasddError(f"expert {i} failed at epoch {e}: {res.error}; lower the expert lr")
            traj.append(parameters_to_vector(model.parameters()).detach().cpu())
            state["trajectory"] = torch.stack(traj)
            state["seconds"] += res.seconds
            state["sample_grads"] += res.sample_grads
            if e == epochs - 1:
                state["val_accuracy"] = evaluate(model, x_val, bundle.y_val, device=dev)[0]
            _save_expert(folder / f"expert_{i}.pt", state)
            trained += 1
            bar.update(1)
        states.append(state)
    bar.close()
    trajs = [s["trajectory"][: epochs + 1] for s in states]
    seconds = sum(s["seconds"] for s in states)
    grads = sum(int(s["sample_grads"]) for s in states)
    write_json(
        folder / "buffer.json",
        {
            "dataset": bundle.meta(),
            "arch": arch.to_dict(),
            "recipe": asdict(recipe),
            "zca": zca,
            "experts": len(list(folder.glob("expert_*.pt"))),
            "epochs": min(len(s["trajectory"]) - 1 for s in states),
            "params": int(trajs[0].shape[1]),
            "val_accuracy": [s["val_accuracy"] for s in states],
            "cost": {"seconds": round(seconds, 3), "sample_grads": grads},
        },
    )
    return ExpertBuffer(folder, trajs, seconds, grads, trained)
