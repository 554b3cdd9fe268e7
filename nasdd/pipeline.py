"""`nasdd run`: distil -> search -> validate -> report in one command, every output in one folder.

Each stage skips what is already done (proxies on disk, finished search trials, cached trainings in
the validation store), so rerunning the same command resumes where it stopped. A rerun whose settings
differ from those in the folder's run_config.json stops before any work (use another --out). The space's
default member is the matching network of the distillers and the network the proxies are judged with,
so a CPU-sized space gives a CPU-sized run.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from nasdd.arch import ArchSpec
from nasdd.data import DatasetBundle
from nasdd.distill import METHODS, ProxySet, Saving, distill
from nasdd.errors import NasddError
from nasdd.layout import RunLayout
from nasdd.spaces import load_space
from nasdd.utils import ensure_dir, seconds_since_start, write_json

if TYPE_CHECKING:
    from nasdd.validate.scoring import ScoringRecipe


@dataclass(frozen=True)
class Preset:
    """How big each stage is."""

    distill_preset: str  # the methods' preset name
    space: str
    search_trials: int
    pool: int
    truth_seeds: int
    truth_recipe: str
    proxy_recipe: str
    peers: str
    resamples: int


PRESETS = {
    # seconds on `digits`: for tests
    "tiny": Preset("quick", "convnet_cpu", 3, 5, 2, "full,epochs=1", "epochs=20", "random,early,synflow,params", 100),
    # minutes on mnist5k with 2 CPU cores
    "quick": Preset(
        "quick",
        "convnet_cpu_pooled",  # members without pooling train ~10x slower on a CPU
        8,
        10,
        2,
        "full,epochs=8",  # converged (tau 8 vs 16 epochs >= seed noise); shipped as nasdd/validate/truth_*.csv
        "epochs=50",
        "random,early,synflow,naswot,grad_norm,params",
        500,
    ),
    # the standard audit: larger pool, full recipes
    "standard": Preset("cpu", "convnet_cpu", 30, 24, 2, "full", "proxy", "all", 1000),
}


def make_proxies(
    bundle: DatasetBundle,
    methods: list[str],
    ipc: int,
    distill_preset: str,
    out: Path,
    arch: ArchSpec,
    seed: int = 0,
    device: str = "auto",
) -> list[tuple[str, Path]]:
    """Distil each method into `out/proxies/<method>-ipc<k>` (skipped when already there; resumes a
    checkpoint) with the matching network `arch`; return (method, folder) pairs."""
    done = []
    for method in methods:
        folder = RunLayout(out).proxy(method, ipc)
        if not RunLayout(folder).holds_proxy():
            cls = METHODS.get(method)
            name = distill_preset if distill_preset in cls.presets else None
            saving = Saving(out=folder, resume=True)
            distill(bundle, method, ipc, seed, preset=name, arch=arch, device=device, saving=saving)
        done.append((method, folder))
    return done


@dataclass(frozen=True)
class RunConfig:
    """What `nasdd run` does: distil `methods` at `ipc`, each stage sized by `preset` (its search space replaced
    by `space` when given), every stage seeded with `seed`. `budget` (sample-gradients): search with the
    prescreen strategy within it. `scoring`: a recipe (from `nasdd calibrate`) whose row the audit adds."""

    methods: tuple[str, ...]
    ipc: int = 10
    preset: str = "quick"
    space: str | None = None
    seed: int = 0
    budget: int | None = None
    scoring: ScoringRecipe | None = None

    def __post_init__(self) -> None:
        if not self.methods:
            raise NasddError("methods is empty; give at least one method (see `nasdd list methods`)")
        if self.preset not in PRESETS:
            raise NasddError(f"unknown preset {self.preset!r}; valid presets: {', '.join(PRESETS)}")
        if self.ipc < 1:
            raise NasddError(f"`ipc` must be a positive integer, got {self.ipc}", params=("ipc",))
        if self.budget is not None and self.budget < 1:
            raise NasddError(f"`budget` must be at least 1 sample-gradient, got {self.budget}", params=("budget",))


def run_pipeline(bundle: DatasetBundle, config: RunConfig, *, out: str | Path, device: str = "auto") -> dict[str, Path]:
    """Run every stage into `out`; return the report files.

    With a `budget` the search stage is the prescreen strategy: a snip pre-screen of the space, then synchronous
    successive halving on the full data with the preset's truth recipe, planned from the budget. A `scoring`
    recipe is checked against the space and dataset before anything trains.
    """
    from nasdd.report import write_report
    from nasdd.search import search
    from nasdd.search.config import SearchConfig
    from nasdd.storage import sqlite_url
    from nasdd.train import TrainRecipe
    from nasdd.validate import validate
    from nasdd.validate.config import AuditConfig
    from nasdd.validate.pool import draw_pool
    from nasdd.validate.table import shipped

    methods, ipc, seed, budget = list(config.methods), config.ipc, config.seed, config.budget
    scoring_recipe = config.scoring
    p = PRESETS[config.preset]
    if config.space:
        p = replace(p, space=config.space)
    for m in methods:
        METHODS.get(m)
    sp = load_space(p.space)
    if scoring_recipe is not None:
        scoring_recipe.check(space=sp.name, dataset_key=bundle.key)
    arch = sp.default_arch()
    record = {
        "dataset": bundle.meta(),
        "methods": methods,
        "ipc": ipc,
        "preset": config.preset,
        "settings": asdict(p),
        "seed": seed,
        "matching_arch": arch.to_dict(),
        **({"budget": budget} if budget is not None else {}),
    }
    check_rerun(Path(out), record)
    out = ensure_dir(out)
    layout = RunLayout(out)
    write_json(out / "run_config.json", record)
    _stage("1/4 distil", methods)
    proxies = make_proxies(bundle, methods, ipc, p.distill_preset, out, arch, seed, device)
    distilled = [f for m, f in proxies if METHODS.get(m).family != "coreset"] or [proxies[0][1]]
    common = SearchConfig(study_name="search", seed=seed, storage=sqlite_url(RunLayout(layout.search).study_db))
    if budget is None:
        _stage("2/4 search", f"{p.search_trials} trials on {distilled[0].name}")
        search_config = replace(common, trials=p.search_trials, recipe=TrainRecipe.parse(p.proxy_recipe))
        search(sp, str(distilled[0]), bundle, search_config, out=layout.search, device=device, show_progress=True)
    else:
        _stage("2/4 search", f"prescreen (snip), then successive halving on the full data within {budget} sample-grads")
        retrain = TrainRecipe.parse(p.truth_recipe, "full")
        search_config = replace(common, strategy="prescreen", budget=budget, sampler="random", retrain_recipe=retrain)
        search(sp, "full", bundle, search_config, out=layout.search, device=device, show_progress=True)
    pool = draw_pool(sp, p.pool, seed)
    truth = TrainRecipe.parse(p.truth_recipe, "full")
    table = shipped(dataset_key=bundle.key, space=sp.name, recipe=truth, pool=pool)
    source = "truth from the table shipped with nasdd" if table else f"training the truth ({p.truth_recipe})"
    _stage("3/4 validate", f"pool of {p.pool} from {sp.name}; {source}")
    audit_config = AuditConfig(
        peers=p.peers,
        truth_seeds=p.truth_seeds,
        truth_recipe=truth,
        proxy_recipe=TrainRecipe.parse(p.proxy_recipe, "proxy"),
        n_resamples=p.resamples,
        ipc=ipc,
        scoring=scoring_recipe,
    )
    proxy_sets = [ProxySet.load(f, bundle) for _, f in proxies]
    validate(bundle, pool, proxy_sets, audit_config, space=sp, out=layout.validate, device=device, truth_table=table)
    _stage("4/4 report", str(out))
    files = write_report(layout.validate, search_dir=layout.search, proxy_dirs=[f for _, f in proxies], out=out)
    print(f"done in {seconds_since_start():.0f} s (the whole command, start-up included)")
    return files


def check_rerun(out: Path, config: dict) -> None:
    """Fail, before any work, when `out` holds something other than this run: another run's settings
    (its run_config.json) or files that no run wrote."""
    saved = out / "run_config.json"
    if saved.exists():
        old = json.loads(saved.read_text())
        new = json.loads(json.dumps(config, default=str))
        diff = _differences(old, new)
        if diff:
            shown = "; ".join(f"{k}: {a} there, {b} now" for k, a, b in diff[:3])
            raise NasddError(
                f"`out` {out} holds a run with other settings ({shown}); give another `out`", params=("out",)
            )
    elif out.is_dir() and any(out.iterdir()):
        raise NasddError(f"`out` {out} is not empty and holds no `nasdd run`; give another `out`", params=("out",))


def _differences(old: object, new: object, key: str = "") -> list[tuple[str, object, object]]:
    """(dotted key, old, new) for every leaf that differs between two JSON documents."""
    if isinstance(old, dict) and isinstance(new, dict):
        return [d for k in dict.fromkeys([*old, *new]) for d in _differences(old.get(k), new.get(k), f"{key}.{k}")]
    return [] if old == new else [(key.lstrip("."), old, new)]


def _stage(name: str, what: object) -> None:
    print(f"[{name}] {what}", flush=True)
