"""`validate(...)`: the audit of ranking fidelity, returning its tables (and writing them with `out`).

Every proxy and peer scores the same pool; its per-architecture score (mean over its seeds) is compared
with the ground truth (mean test accuracy over truth seeds) by `nasdd.validate.stats`. The noise
ceiling is the agreement between truth seeds. Costs: a row's `cost_*` is its distillation plus every
candidate training (or zero-cost evaluation) over all its seeds; `speedup_*` divides the cost of ONE
ground-truth seed over the pool by it. Proxies and peers are scored on the val split, truth on test; a
proxy that carries a synthetic validation set (HCDC) is scored on that instead (its row's `split` is
`synthetic_val` and `scored_on` describes it).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from nasdd import __version__
from nasdd.arch import ArchSpec
from nasdd.cost import training_grads
from nasdd.data import DatasetBundle
from nasdd.errors import NasddError
from nasdd.layout import RunLayout
from nasdd.spaces import SearchSpace
from nasdd.storage import masked, sqlite_url
from nasdd.train import TrainRecipe
from nasdd.utils import atomic_open, ensure_dir, stable_hash, write_json
from nasdd.validate import stats
from nasdd.validate.peers import Peer, resolve_peers
from nasdd.validate.store import Job, ResultStore
from nasdd.validate.table import truth_scores as table_truth
from nasdd.validate.truth import Scores, collect, ground_truth, train_pool
from nasdd.validate.zerocost import zero_cost

PROXY_SPLIT, TRUTH_SPLIT, SYNTHETIC_VAL = "val", "test", "synthetic_val"


@dataclass
class Validation:
    """The audit's tables: `per_arch` (one row per architecture), `summary` (one row per proxy, peer,
    the ground truth and the noise ceiling) and the resolved `config`."""

    per_arch: pd.DataFrame
    summary: pd.DataFrame
    config: dict


def _recipe(r: TrainRecipe | str, base: str) -> TrainRecipe:
    return r if isinstance(r, TrainRecipe) else TrainRecipe.parse(r, base)


def proxy_labels(proxies: Sequence[Any]) -> list[str]:
    """`dm-ipc10`; `dm-space-ipc10` when distilled through a search space; a short id where names collide."""
    space = ["-space" if p.provenance.get("config", {}).get("match_space") else "" for p in proxies]
    names = [f"{p.provenance.get('method', 'proxy')}{s}-ipc{p.ipc}" for p, s in zip(proxies, space, strict=True)]
    return [f"{n}-{p.id[-6:]}" if names.count(n) > 1 else n for n, p in zip(names, proxies, strict=True)]


def _subset(bundle: DatasetBundle, method: str, ipc: int, out: Path | None, preset: str | None) -> Any:
    """The coreset peer's ProxySet (seed 0), saved under out/peers and reused when already there.
    `preset` is used where the method has it (e.g. `cpu`: a shorter feature-network training)."""
    from nasdd.distill import METHODS, ProxySet, Saving, distill

    folder = None if out is None else RunLayout(out).peer(method, ipc)
    if folder is not None and RunLayout(folder).holds_proxy():
        return ProxySet.load(folder, bundle)
    preset = preset if preset in METHODS.get(method).presets else None
    return distill(bundle, method, ipc, seed=0, preset=preset, saving=Saving(out=folder))


def _train_proxy(ctx: dict, proxy: Any, name: str, kind: str, recipe: TrainRecipe) -> Scores:
    from nasdd.distill.evaluate import proxy_recipe

    x_eval, y_eval, scored_on = proxy.val_data(*ctx["bundle"].split(PROXY_SPLIT))
    sc = train_pool(
        ctx["store"],
        ctx["bundle"],
        ctx["pool"],
        source=proxy.id,
        data=proxy.train_data(),
        recipe=proxy_recipe(proxy, recipe),
        seeds=ctx["proxy_seeds"],
        split=SYNTHETIC_VAL if proxy.has_val else PROXY_SPLIT,
        device=ctx["device"],
        name=name,
        kind=kind,
        eval_data=(x_eval, y_eval),
    )
    cost = proxy.provenance.get("cost", {})
    sc.info = {
        "method": proxy.provenance.get("method"),
        "ipc": proxy.ipc,
        "proxy_id": proxy.id,
        "recipe": proxy_recipe(proxy, recipe).key(),
        "distill_seconds": float(cost.get("seconds", 0.0)),
        "distill_sample_grads": int(cost.get("sample_grads", 0)),
        "scored_on": scored_on,
    }
    return sc


def _zero_cost(ctx: dict, name: str, batch_size: int) -> Scores:
    bundle, pool = ctx["bundle"], ctx["pool"]

    def compute(job: Job) -> tuple[float, dict]:
        r = zero_cost(name, job.arch, bundle, seed=job.seed, batch_size=batch_size, device=ctx["device"])
        return r.score, r.to_dict()

    group = (bundle.key, f"zerocost-{name}", stable_hash({"batch_size": batch_size}, 12))
    jobs = [Job(a, 0, "train") for a in pool]
    results = ctx["store"].run(group, jobs, compute, desc=f"zero-cost {name}", claim=False)
    sc = collect(name, "peer:zerocost", pool, [0], "train", results, "score")
    sc.info = {"method": name}
    return sc


def _early(ctx: dict, steps: int) -> Scores:
    bundle, truth_recipe = ctx["bundle"], ctx["truth_recipe"]
    recipe = replace(truth_recipe, steps=steps)
    epochs = steps * truth_recipe.batch_size / len(bundle.y_train)
    name = f"early-{epochs:.2g}ep"
    sc = train_pool(
        ctx["store"],
        bundle,
        ctx["pool"],
        source="train",
        data=(bundle.x_train, bundle.y_train),
        recipe=recipe,
        seeds=ctx["proxy_seeds"],
        split=PROXY_SPLIT,
        device=ctx["device"],
        name=name,
        kind="peer:early",
    )
    sc.info = {"method": "early", "steps": steps, "epochs": round(epochs, 4), "recipe": recipe.key()}
    return sc


def _scoring_config(scoring: Any, left_out: int) -> dict | None:
    return None if scoring is None else {**asdict(scoring), "key": scoring.key(), "members_left_out": left_out}


def _scored(ctx: dict, recipe: Any, out: Path | None) -> Scores:
    """The pool scored by a `ScoringRecipe` (cached in `<out>/scoring.jsonl`), as one row."""
    import tempfile

    from nasdd.validate.scoring import ScoreCache, score, score_pool

    bundle, pool, seeds = ctx["bundle"], ctx["pool"], ctx["proxy_seeds"]
    truth_grads = training_grads(ctx["truth_recipe"], len(bundle.y_train))
    path = out / "scoring.jsonl" if out is not None else Path(tempfile.mkdtemp()) / "scoring.jsonl"
    recs = score_pool(ScoreCache(path), bundle, pool, recipe, seeds, truth_grads=truth_grads,
                      bn_images=recipe.bn_images, device=ctx["device"], log=False)  # fmt: skip
    table = pd.DataFrame(index=[a.key() for a in pool], columns=seeds, dtype=float)
    sc = Scores(f"scored-{recipe.score}-{recipe.key()[:6]}", "peer:scoring", table)
    for r in recs:
        table.loc[r["arch_key"], r["seed"]] = score(r, recipe)
        sc.failed += r["status"] != "ok"
        sc.seconds += r.get("seconds", 0.0)
        sc.sample_grads += int(r.get("sample_grads", 0) + (r.get("bn_forwards", 0) + r.get("curve_forwards", 0)) / 3)
    sc.info = {"method": "scoring", "recipe": recipe.key()}
    return sc


def _budget_steps(ctx: dict, budgets: Sequence[float] | None, proxy_grads: list[int]) -> list[int]:
    """Early-stopping lengths in steps: `budgets` in epochs of full data, or 0.5x/1x/2x the proxy cost
    (those shorter than the truth training; half of it if none is)."""
    bs, n = ctx["truth_recipe"].batch_size, len(ctx["bundle"].y_train)
    if budgets:
        return sorted({max(1, round(b * n / bs)) for b in budgets})
    base = float(np.median(proxy_grads)) if proxy_grads else float(n)
    steps = sorted({max(1, round(f * base / bs)) for f in (0.5, 1.0, 2.0)})
    full = ctx["truth_recipe"].total_steps(n)
    return [s for s in steps if s < full] or [max(1, full // 2)]  # as long as the truth is not early


def _per_arch(pool: Sequence[ArchSpec], space: SearchSpace | None, truth: Scores, rows: list[Scores]) -> pd.DataFrame:
    factors = space.factors() if space is not None else sorted({k for a in pool for k, _ in a.params})
    first = truth.table.columns[0]
    records = []
    for a in pool:
        k = a.key()
        r0 = truth.results[Job(a, first, TRUTH_SPLIT).key]
        rec: dict[str, Any] = {"arch_key": k, "arch": a.to_json(), **{f: a.get(f) for f in factors}}
        rec["params"], rec["flops"] = r0.get("params"), r0.get("flops_per_sample")
        rec.update({f"truth_s{s}": truth.table.loc[k, s] for s in truth.table.columns})
        rec["truth_mean"] = truth.mean[k]
        rec.update({sc.name: sc.mean[k] for sc in rows})
        records.append(rec)
    return pd.DataFrame.from_records(records)


def _cost(sc: Scores, truth_grads: float, truth_seconds: float) -> dict[str, float]:
    seconds = sc.seconds + sc.info.get("distill_seconds", 0.0)
    grads = sc.sample_grads + sc.info.get("distill_sample_grads", 0)
    return {
        "cost_seconds": seconds,
        "cost_sample_grads": grads,
        "distill_seconds": sc.info.get("distill_seconds", 0.0),
        "distill_sample_grads": sc.info.get("distill_sample_grads", 0),
        "speedup_seconds": truth_seconds / seconds if seconds > 0 else math.inf,
        "speedup_sample_grads": truth_grads / grads if grads > 0 else math.inf,
    }


def _summary(truth: Scores, rows: list[Scores], ctx: dict) -> pd.DataFrame:
    keys = [a.key() for a in ctx["pool"]]
    t = truth.mean.reindex(keys).to_numpy(float)
    keep = np.isfinite(t)
    n_seeds = truth.table.shape[1]
    per_seed_grads, per_seed_seconds = truth.sample_grads / n_seeds, truth.seconds / n_seeds
    opts = {"ks": ctx["ks"], "n_resamples": ctx["n_resamples"], "seed": ctx["bootstrap_seed"]}
    out = []
    seeds = truth.table.reindex(keys).to_numpy(float)
    full = np.isfinite(seeds).all(axis=1)
    if n_seeds >= 2 and full.sum() >= 2:
        row = {"name": "noise_ceiling", "kind": "noise_ceiling", "split": TRUTH_SPLIT, "n_archs": int(full.sum())}
        out.append({**row, "seeds": n_seeds, **stats.noise_ceiling(seeds[full], **opts)})
    out.append(
        {
            "name": "ground_truth",
            "kind": "truth",
            "split": TRUTH_SPLIT,
            "n_archs": int(keep.sum()),
            "seeds": n_seeds,
            "failed": truth.failed,
            "cost_seconds": truth.seconds,
            "cost_sample_grads": truth.sample_grads,
            "speedup_seconds": 1.0 / n_seeds,
            "speedup_sample_grads": 1.0 / n_seeds,
        }
    )
    for sc in rows:
        s = sc.mean.reindex(keys).to_numpy(float)[keep]
        split = "train batch" if "zerocost" in sc.kind else PROXY_SPLIT
        if str(sc.info.get("scored_on", "")).startswith("synthetic"):
            split = SYNTHETIC_VAL
        row = {"name": sc.name, "kind": sc.kind, "split": split}
        row.update({"n_archs": int(keep.sum()), "seeds": sc.table.shape[1], "failed": sc.failed})
        row.update({k: v for k, v in sc.info.items() if k not in ("distill_seconds", "distill_sample_grads")})
        row.update(stats.rank_statistics(t[keep], s, **opts))
        row.update(_cost(sc, per_seed_grads, per_seed_seconds))
        out.append(row)
    front = ["name", "kind", "method", "ipc", "split", "n_archs", "seeds", "failed"]
    df = pd.DataFrame.from_records(out)
    return df[[c for c in front if c in df] + [c for c in df if c not in front]]


def validate(
    bundle: DatasetBundle,
    pool: Sequence[ArchSpec],
    proxies: Sequence[Any] = (),
    *,
    space: SearchSpace | None = None,
    peers: str | list[str] | None = None,
    truth_seeds: int = 2,
    truth_recipe: TrainRecipe | str | None = None,
    proxy_recipe: TrainRecipe | str = "proxy",
    proxy_seeds: int = 1,
    proxy_epochs: Sequence[int] | None = None,
    budgets: Sequence[float] | None = None,
    ipc: int | None = None,
    subset_preset: str | None = None,
    storage: str | None = None,
    out: str | Path | None = None,
    device: str = "auto",
    ks: Sequence[int | str] = stats.DEFAULT_KS,
    n_resamples: int = 1000,
    bootstrap_seed: int = 0,
    zc_batch: int = 64,
    truth_table: Any = None,
    scoring: Any = None,
) -> Validation:
    """Audit how faithfully each ProxySet in `proxies` (and each peer) ranks `pool` against ground truth.

    Every training is cached in `storage` (an Optuna storage URL; default `<out>/results.db`, or in
    memory without `out`), so a rerun or another worker trains nothing twice. `proxy_epochs` sweeps the
    proxy training length (one row per proxy and length). Subset peers use `ipc` (default: the
    proxies' ipcs, else 10) and the distillation preset `subset_preset` where the method
    has it. `truth_table` (a `nasdd.validate.table.TruthTable`) replaces truth training: the audit uses
    the pool members the table holds, its seeds and its recipe (a table made on another dataset split,
    space or recipe is refused). `scoring` (a `nasdd.validate.scoring.ScoringRecipe`, e.g. from `nasdd
    calibrate`) adds its row; a recipe calibrated for another space or dataset is refused, and the members it
    was calibrated on are left out of the whole audit. Returns the tables; with `out`, also writes
    per_arch.csv, summary.csv, config.json and pool.jsonl there.
    """
    pool = list(dict.fromkeys(pool))
    if len(pool) < 3:
        raise NasddError(f"a pool needs at least 3 architectures to rank, got {len(pool)}")
    if truth_seeds < 1 or proxy_seeds < 1:
        raise NasddError("--truth-seeds and --proxy-seeds must be at least 1")
    if budgets and min(budgets) <= 0:
        raise NasddError(f"early-stopping budgets must be > 0 full-data epochs, got {min(budgets):g}; fix --budgets")
    for p in proxies:
        p.check_compatible(bundle)
    out = ensure_dir(out) if out is not None else None
    if storage is None and out is not None:
        storage = sqlite_url(RunLayout(out).results_db)
    requested, truth = len(pool), None
    if truth_table is not None:
        truth_table.check(
            dataset_key=bundle.key,
            space=None if space is None else space.name,
            recipe_key=None if truth_recipe is None else _recipe(truth_recipe, "full").key(),
        )
        truth_recipe = truth_table.recipe
        pool, truth = table_truth(truth_table, pool)
        if len(pool) < 3:
            raise NasddError(f"the truth table holds {len(pool)} of the {requested} pool members; 3 are needed")
    calibrated = 0
    if scoring is not None:
        scoring.check(space=space.name if space is not None else scoring.space or "", dataset_key=bundle.key)
        held = [a for a in pool if a.key() not in set(scoring.members)]
        calibrated, pool = len(pool) - len(held), held
        if len(pool) < 3:
            raise NasddError(f"{calibrated} pool members calibrated the scoring recipe; fewer than 3 are left")
        if truth is not None:
            truth.table = truth.table.loc[[a.key() for a in pool]]
    truth_recipe, base_recipe = _recipe(truth_recipe or "full", "full"), _recipe(proxy_recipe, "proxy")
    recipes = (
        [(f"@e{e}" if len(proxy_epochs) > 1 else "", replace(base_recipe, epochs=e, steps=None)) for e in proxy_epochs]
        if proxy_epochs
        else [("", base_recipe)]
    )
    peer_list: list[Peer] = resolve_peers(peers)
    ctx = {
        "store": ResultStore(storage),
        "bundle": bundle,
        "pool": pool,
        "device": device,
        "truth_recipe": truth_recipe,
        "proxy_seeds": list(range(proxy_seeds)),
        "ks": list(ks),
        "n_resamples": n_resamples,
        "bootstrap_seed": bootstrap_seed,
    }
    if truth is None:
        truth = ground_truth(ctx["store"], bundle, pool, truth_recipe, list(range(truth_seeds)), device=device)
    rows: list[Scores] = []
    for proxy, label in zip(proxies, proxy_labels(proxies), strict=True):
        rows += [_train_proxy(ctx, proxy, label + sfx, "proxy", r) for sfx, r in recipes]
    ipcs = sorted({p.ipc for p in proxies}) or [ipc or 10]
    if ipc is not None:
        ipcs = [ipc]
    for peer in peer_list:
        if peer.kind == "subset":
            for i in ipcs:
                if any(p.provenance.get("method") == peer.name and p.ipc == i for p in proxies):
                    continue  # this coreset is already audited as a proxy
                subset = _subset(bundle, peer.name, i, out, subset_preset)
                rows += [_train_proxy(ctx, subset, f"{peer.name}-ipc{i}{s}", "peer:subset", r) for s, r in recipes]
        elif peer.kind == "zerocost":
            rows.append(_zero_cost(ctx, peer.name, zc_batch))
    if any(p.kind == "early" for p in peer_list):
        n_proxy = [i * bundle.num_classes for i in ipcs] + [len(p.images) for p in proxies]
        grads = [training_grads(r, n) for n in n_proxy for _, r in recipes]
        rows += [_early(ctx, steps) for steps in _budget_steps(ctx, budgets, grads)]
    if scoring is not None:
        rows.append(_scored(ctx, scoring, out))
    per_arch = _per_arch(pool, space, truth, rows)
    summary = _summary(truth, rows, ctx)
    config = {
        "nasdd_version": __version__,
        "dataset": bundle.meta(),
        "space": None if space is None else {"name": space.name, "path": space.path},
        "pool": [a.to_dict() for a in pool],
        "proxies": [{"id": p.id, "provenance": p.provenance} for p in proxies],
        "peers": [p.name for p in peer_list],
        "subset_preset": subset_preset,
        "truth_recipe": asdict(truth_recipe),
        "truth_seeds": truth.table.shape[1],
        "truth_table": None
        if truth_table is None
        else {**truth_table.meta, "members_used": len(pool), "pool_requested": requested},
        "proxy_recipes": {sfx or "default": asdict(r) for sfx, r in recipes},
        "proxy_seeds": proxy_seeds,
        "budgets_steps": [sc.info["steps"] for sc in rows if sc.kind == "peer:early"],
        "splits": {
            "truth": TRUTH_SPLIT,
            "proxies_and_peers": PROXY_SPLIT,
            "zero_cost": "one train batch",
            "synthetic_val": [p.id for p in proxies if p.has_val],
        },
        "statistics": {"ks": list(map(str, ks)), "n_resamples": n_resamples, "confidence": 0.95},
        "scoring_recipe": _scoring_config(scoring, calibrated),
        "storage": masked(storage) or "in-memory",
        "device": device,
    }
    if out is not None:
        write_tables(out, per_arch, summary, config, pool)
    return Validation(per_arch, summary, config)


def write_tables(out: Path, per_arch: pd.DataFrame, summary: pd.DataFrame, config: dict, pool: list) -> None:
    """per_arch.csv, summary.csv, config.json and pool.jsonl, each written atomically."""
    from nasdd.validate.pool import write_archs

    for name, df in (("per_arch.csv", per_arch), ("summary.csv", summary)):
        with atomic_open(out / name) as f:
            df.to_csv(f, index=False, float_format="%.6g")
    write_json(out / "config.json", config)
    write_archs(out / "pool.jsonl", pool)
