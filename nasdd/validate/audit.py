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
from typing import TYPE_CHECKING, Any

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
from nasdd.validate.config import AuditConfig
from nasdd.validate.peers import Peer, resolve_peers
from nasdd.validate.store import Job, ResultStore
from nasdd.validate.table import TruthTable
from nasdd.validate.table import truth_scores as table_truth
from nasdd.validate.truth import PoolTraining, Scores, collect, ground_truth, train_pool
from nasdd.validate.zerocost import zero_cost

if TYPE_CHECKING:
    from nasdd.distill.proxy import ProxySet
    from nasdd.validate.scoring import ScoringRecipe

PROXY_SPLIT, TRUTH_SPLIT, SYNTHETIC_VAL = "val", "test", "synthetic_val"


@dataclass
class Validation:
    """The audit's tables: `per_arch` (one row per architecture), `summary` (one row per proxy, peer,
    the ground truth and the noise ceiling) and the resolved `config`."""

    per_arch: pd.DataFrame
    summary: pd.DataFrame
    config: dict


@dataclass(frozen=True)
class _Audit:
    """What every row of one audit shares."""

    store: ResultStore
    bundle: DatasetBundle
    pool: list[ArchSpec]
    device: str
    truth_recipe: TrainRecipe
    config: AuditConfig

    @property
    def proxy_seeds(self) -> list[int]:
        return list(range(self.config.proxy_seeds))


def proxy_labels(proxies: Sequence[ProxySet]) -> list[str]:
    """`dm-ipc10`; `dm-space-ipc10` when distilled through a search space; a short id where names collide."""
    space = ["-space" if p.provenance.get("config", {}).get("match_space") else "" for p in proxies]
    names = [f"{p.provenance.get('method', 'proxy')}{s}-ipc{p.ipc}" for p, s in zip(proxies, space, strict=True)]
    return [f"{n}-{p.id[-6:]}" if names.count(n) > 1 else n for n, p in zip(names, proxies, strict=True)]


def _subset(bundle: DatasetBundle, method: str, ipc: int, out: Path | None, preset: str | None) -> ProxySet:
    """The coreset peer's ProxySet (seed 0), saved under out/peers and reused when already there.
    `preset` is used where the method has it (e.g. `cpu`: a shorter feature-network training)."""
    from nasdd.distill import METHODS, ProxySet, Saving, distill

    folder = None if out is None else RunLayout(out).peer(method, ipc)
    if folder is not None and RunLayout(folder).holds_proxy():
        return ProxySet.load(folder, bundle)
    preset = preset if preset in METHODS.get(method).presets else None
    return distill(bundle, method, ipc, seed=0, preset=preset, saving=Saving(out=folder))


def _train_proxy(ctx: _Audit, proxy: ProxySet, name: str, kind: str, recipe: TrainRecipe) -> Scores:
    from nasdd.distill.evaluate import proxy_recipe

    x_eval, y_eval, scored_on = proxy.val_data(*ctx.bundle.split(PROXY_SPLIT))
    split = SYNTHETIC_VAL if proxy.has_val else PROXY_SPLIT
    what = PoolTraining(proxy.id, proxy.train_data(), proxy_recipe(proxy, recipe), split, name, kind, (x_eval, y_eval))
    sc = train_pool(ctx.store, ctx.bundle, ctx.pool, what, ctx.proxy_seeds, device=ctx.device)
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


def _zero_cost(ctx: _Audit, name: str) -> Scores:
    bundle, pool, batch_size = ctx.bundle, ctx.pool, ctx.config.zc_batch

    def compute(job: Job) -> tuple[float, dict]:
        r = zero_cost(name, job.arch, bundle, seed=job.seed, batch_size=batch_size, device=ctx.device)
        return r.score, r.to_dict()

    group = (bundle.key, f"zerocost-{name}", stable_hash({"batch_size": batch_size}, 12))
    jobs = [Job(a, 0, "train") for a in pool]
    results = ctx.store.run(group, jobs, compute, desc=f"zero-cost {name}", claim=False)
    sc = collect(name, "peer:zerocost", pool, [0], "train", results, "score")
    sc.info = {"method": name}
    return sc


def _early(ctx: _Audit, steps: int) -> Scores:
    bundle, truth_recipe = ctx.bundle, ctx.truth_recipe
    recipe = replace(truth_recipe, steps=steps)
    epochs = steps * truth_recipe.batch_size / len(bundle.y_train)
    name = f"early-{epochs:.2g}ep"
    what = PoolTraining("train", (bundle.x_train, bundle.y_train), recipe, PROXY_SPLIT, name, "peer:early")
    sc = train_pool(ctx.store, bundle, ctx.pool, what, ctx.proxy_seeds, device=ctx.device)
    sc.info = {"method": "early", "steps": steps, "epochs": round(epochs, 4), "recipe": recipe.key()}
    return sc


def _scoring_config(scoring: ScoringRecipe | None, left_out: int) -> dict | None:
    return None if scoring is None else {**asdict(scoring), "key": scoring.key(), "members_left_out": left_out}


def _scored(ctx: _Audit, recipe: ScoringRecipe, out: Path | None) -> Scores:
    """The pool scored by a `ScoringRecipe` (cached in `<out>/scoring.jsonl`), as one row."""
    import tempfile

    from nasdd.validate.scoring import ScoreCache, score, score_pool, spent_grads

    bundle, pool, seeds = ctx.bundle, ctx.pool, ctx.proxy_seeds
    truth_grads = training_grads(ctx.truth_recipe, len(bundle.y_train))
    path = out / "scoring.jsonl" if out is not None else Path(tempfile.mkdtemp()) / "scoring.jsonl"
    recs = score_pool(ScoreCache(path), bundle, pool, recipe, seeds,
                      truth_grads=truth_grads, device=ctx.device, log=False)  # fmt: skip
    table = pd.DataFrame(index=[a.key() for a in pool], columns=seeds, dtype=float)
    sc = Scores(f"scored-{recipe.score}-{recipe.key()[:6]}", "peer:scoring", table)
    for r in recs:
        table.loc[r["arch_key"], r["seed"]] = score(r, recipe)
        sc.failed += r["status"] != "ok"
        sc.seconds += r.get("seconds", 0.0)
        sc.sample_grads += spent_grads(r)
    sc.info = {"method": "scoring", "recipe": recipe.key()}
    return sc


def _early_steps(ctx: _Audit, proxy_grads: list[int]) -> list[int]:
    """Early-stopping lengths in steps: `early_epochs` in epochs of full data, or 0.5x/1x/2x the proxy cost
    (those shorter than the truth training; half of it if none is)."""
    bs, n = ctx.truth_recipe.batch_size, len(ctx.bundle.y_train)
    if ctx.config.early_epochs:
        return sorted({max(1, round(b * n / bs)) for b in ctx.config.early_epochs})
    base = float(np.median(proxy_grads)) if proxy_grads else float(n)
    steps = sorted({max(1, round(f * base / bs)) for f in (0.5, 1.0, 2.0)})
    full = ctx.truth_recipe.total_steps(n)
    return [s for s in steps if s < full] or [max(1, full // 2)]  # as long as the truth is not early


def _factors(pool: Sequence[ArchSpec], space: SearchSpace | None) -> pd.DataFrame:
    """[arch key x factor]: the space's factors (or every parameter of the members) of each member."""
    names = space.factors() if space is not None else sorted({k for a in pool for k, _ in a.params})
    return pd.DataFrame([{f: a.get(f) for f in names} for a in pool], index=[a.key() for a in pool], columns=names)


def _per_arch(pool: Sequence[ArchSpec], factors: pd.DataFrame, truth: Scores, rows: list[Scores]) -> pd.DataFrame:
    first = truth.table.columns[0]
    records = []
    for a in pool:
        k = a.key()
        r0 = truth.results[Job(a, first, TRUTH_SPLIT).key]
        rec: dict[str, Any] = {"arch_key": k, "arch": a.to_json(), **factors.loc[k].to_dict()}
        rec["params"], rec["flops"] = r0.get("params"), r0.get("flops_per_sample")
        rec.update({f"truth_s{s}": truth.table.loc[k, s] for s in truth.table.columns})
        rec["truth_mean"] = truth.mean[k]
        rec.update({sc.name: sc.mean.get(k, math.nan) for sc in rows})  # a held-out row lacks its fitted members
        records.append(rec)
    return pd.DataFrame.from_records(records)


def _stack(ctx: _Audit, truth: Scores, rows: list[Scores], factors: pd.DataFrame) -> Scores:
    """The `stack` peer: `StackRanker` (ridge) over every other row's mean scores plus `factors`, fitted on the
    truth of `stack_members` members (a draw seeded by `bootstrap_seed`) and scored on the others only. Its
    cost: every row it reads, plus one truth seed of each calibration member. Its row also holds the paired
    Δτ against the single row that ranked the calibration members best (chosen on them, judged on the rest)."""
    from nasdd.validate.calibrate import StackRanker, splits

    c = ctx.config
    mean = truth.mean.reindex(factors.index)
    keys = [k for k in factors.index if math.isfinite(mean[k])]
    if len(keys) - c.stack_members < 3:
        raise NasddError(
            f"the stack peer is fitted on `stack_members` {c.stack_members} of {len(keys)} members with a truth "
            "and scored on the rest; at least 3 must be left: lower `stack_members` or grow the pool",
            params=("stack_members",),
        )
    cal, ev = splits(keys, c.stack_members, 1, seed=c.bootstrap_seed)[0]
    scores = pd.DataFrame({sc.name: sc.mean.reindex(keys) for sc in rows}, index=keys)
    ranker = StackRanker(model="ridge", seed=c.bootstrap_seed).fit(ctx.bundle.key, scores.loc[cal], factors, mean)
    sc = Scores("stack", "peer:stack", ranker.predict(ctx.bundle.key, scores.loc[ev], factors).to_frame(0))
    n_seeds = truth.table.shape[1]
    calib_grads = truth.sample_grads / n_seeds * len(cal) / len(mean)
    sc.seconds = sum(r.seconds + r.info.get("distill_seconds", 0.0) for r in rows)
    sc.seconds += truth.seconds / n_seeds * len(cal) / len(mean)
    sc.sample_grads = int(sum(r.sample_grads + r.info.get("distill_sample_grads", 0) for r in rows) + calib_grads)
    t_cal, t_ev = mean.loc[cal].to_numpy(float), mean.loc[ev].to_numpy(float)
    best = max(rows, key=lambda r: stats.kendall_tau(t_cal, scores.loc[cal, r.name].to_numpy(float)), default=None)
    sc.info = {"method": "stack", "calibration_members": len(cal), "features": len(rows),
               "calibration_sample_grads": int(calib_grads)}  # fmt: skip
    if best is not None:
        pair = stats.paired_delta_tau(t_ev, sc.mean.loc[ev].to_numpy(float), scores.loc[ev, best.name].to_numpy(float),
                                      n_resamples=c.n_resamples, seed=c.bootstrap_seed)  # fmt: skip
        sc.info.update(paired_against=best.name, **pair)
    return sc


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


def _summary(truth: Scores, rows: list[Scores], ctx: _Audit) -> pd.DataFrame:
    keys = [a.key() for a in ctx.pool]
    t = truth.mean.reindex(keys).to_numpy(float)
    keep = np.isfinite(t)
    n_seeds = truth.table.shape[1]
    per_seed_grads, per_seed_seconds = truth.sample_grads / n_seeds, truth.seconds / n_seeds
    c = ctx.config
    opts: dict[str, Any] = {"ks": list(c.ks), "n_resamples": c.n_resamples, "seed": c.bootstrap_seed}
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
        judged = keep & np.isin(keys, sc.table.index)  # a held-out row (stack) is judged on its members only
        s = sc.mean.reindex(keys).to_numpy(float)[judged]
        split = "train batch" if "zerocost" in sc.kind else PROXY_SPLIT
        if str(sc.info.get("scored_on", "")).startswith("synthetic"):
            split = SYNTHETIC_VAL
        row = {"name": sc.name, "kind": sc.kind, "split": split}
        row.update({"n_archs": int(judged.sum()), "seeds": sc.table.shape[1], "failed": sc.failed})
        row.update({k: v for k, v in sc.info.items() if k not in ("distill_seconds", "distill_sample_grads")})
        row.update(stats.rank_statistics(t[judged], s, **opts))
        row.update(_cost(sc, per_seed_grads, per_seed_seconds))
        out.append(row)
    front = ["name", "kind", "method", "ipc", "split", "n_archs", "seeds", "failed"]
    df = pd.DataFrame.from_records(out)
    return df[[c for c in front if c in df] + [c for c in df if c not in front]]


def validate(
    bundle: DatasetBundle,
    pool: Sequence[ArchSpec],
    proxies: Sequence[ProxySet] = (),
    config: AuditConfig | None = None,
    *,
    space: SearchSpace | None = None,
    out: str | Path | None = None,
    device: str = "auto",
    truth_table: TruthTable | None = None,
) -> Validation:
    """Audit how faithfully each ProxySet in `proxies` (and each peer) ranks `pool` against ground truth.

    `config`: the settings (an `AuditConfig`; None: its defaults). Every training is cached in its `storage`
    (default `<out>/results.db`, or in memory without `out`), so a rerun or another worker trains nothing
    twice. `truth_table` replaces truth training: the audit uses the pool members the table holds, its seeds
    and its recipe (a table made on another dataset split, space or recipe is refused). `config.scoring`
    (e.g. from `nasdd calibrate`) adds its row; a recipe calibrated for another space or dataset is refused,
    and the members it was calibrated on are left out of the whole audit. Returns the tables; with `out`,
    also writes per_arch.csv, summary.csv, config.json and pool.jsonl there.
    """
    c = config or AuditConfig()  # None: the defaults
    scoring = c.scoring
    pool = list(dict.fromkeys(pool))
    if len(pool) < 3:
        raise NasddError(f"a pool needs at least 3 architectures to rank, got {len(pool)}")
    for p in proxies:
        p.check_compatible(bundle)
    out = ensure_dir(out) if out is not None else None
    storage = c.storage if c.storage is not None or out is None else sqlite_url(RunLayout(out).results_db)
    requested, truth = len(pool), None
    truth_recipe = c.truth_recipe
    if truth_table is not None:
        truth_table.check(
            dataset_key=bundle.key,
            space=None if space is None else space.name,
            recipe_key=None if truth_recipe is None else truth_recipe.key(),
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
    truth_recipe = truth_recipe or TrainRecipe.parse("full")
    base_recipe = c.proxy_recipe or TrainRecipe.parse("proxy")
    epochs = c.proxy_epochs or ()
    recipes = [(f"@e{e}" if len(epochs) > 1 else "", replace(base_recipe, epochs=e, steps=None)) for e in epochs]
    recipes = recipes or [("", base_recipe)]
    peer_list: list[Peer] = resolve_peers(c.peers)
    ctx = _Audit(ResultStore(storage), bundle, pool, device, truth_recipe, c)
    if truth is None:
        truth = ground_truth(ctx.store, bundle, pool, truth_recipe, list(range(c.truth_seeds)), device=device)
    rows: list[Scores] = []
    for proxy, label in zip(proxies, proxy_labels(proxies), strict=True):
        rows += [_train_proxy(ctx, proxy, label + sfx, "proxy", r) for sfx, r in recipes]
    ipcs = [c.ipc] if c.ipc is not None else sorted({p.ipc for p in proxies}) or [10]
    for peer in peer_list:
        if peer.kind == "subset":
            for i in ipcs:
                if any(p.provenance.get("method") == peer.name and p.ipc == i for p in proxies):
                    continue  # this coreset is already audited as a proxy
                subset = _subset(bundle, peer.name, i, out, c.subset_preset)
                rows += [_train_proxy(ctx, subset, f"{peer.name}-ipc{i}{s}", "peer:subset", r) for s, r in recipes]
        elif peer.kind == "zerocost":
            rows.append(_zero_cost(ctx, peer.name))
    if any(p.kind == "early" for p in peer_list):
        n_proxy = [i * bundle.num_classes for i in ipcs] + [len(p.images) for p in proxies]
        grads = [training_grads(r, n) for n in n_proxy for _, r in recipes]
        rows += [_early(ctx, steps) for steps in _early_steps(ctx, grads)]
    if scoring is not None:
        rows.append(_scored(ctx, scoring, out))
    factors = _factors(pool, space)
    if any(p.kind == "stack" for p in peer_list):
        rows.append(_stack(ctx, truth, rows, factors))
    per_arch = _per_arch(pool, factors, truth, rows)
    summary = _summary(truth, rows, ctx)
    record = {
        "nasdd_version": __version__,
        "dataset": bundle.meta(),
        "space": None if space is None else {"name": space.name, "path": space.path},
        "pool": [a.to_dict() for a in pool],
        "proxies": [{"id": p.id, "provenance": p.provenance} for p in proxies],
        "peers": [p.name for p in peer_list],
        "subset_preset": c.subset_preset,
        "truth_recipe": asdict(truth_recipe),
        "truth_seeds": truth.table.shape[1],
        "truth_table": None
        if truth_table is None
        else {**truth_table.meta, "members_used": len(pool), "pool_requested": requested},
        "proxy_recipes": {sfx or "default": asdict(r) for sfx, r in recipes},
        "proxy_seeds": c.proxy_seeds,
        "budgets_steps": [sc.info["steps"] for sc in rows if sc.kind == "peer:early"],
        "splits": {
            "truth": TRUTH_SPLIT,
            "proxies_and_peers": PROXY_SPLIT,
            "zero_cost": "one train batch",
            "synthetic_val": [p.id for p in proxies if p.has_val],
        },
        "statistics": {"ks": list(map(str, c.ks)), "n_resamples": c.n_resamples, "confidence": 0.95},
        "scoring_recipe": _scoring_config(scoring, calibrated),
        "storage": masked(storage) or "in-memory",
        "device": device,
        "audit": c.to_dict(),
    }
    if out is not None:
        write_tables(out, per_arch, summary, record, pool)
    return Validation(per_arch, summary, record)


def write_tables(out: Path, per_arch: pd.DataFrame, summary: pd.DataFrame, config: dict, pool: list) -> None:
    """per_arch.csv, summary.csv, config.json and pool.jsonl, each written atomically."""
    from nasdd.validate.pool import write_archs

    for name, df in (("per_arch.csv", per_arch), ("summary.csv", summary)):
        with atomic_open(out / name) as f:
            df.to_csv(f, index=False, float_format="%.6g")
    write_json(out / "config.json", config)
    write_archs(out / "pool.jsonl", pool)
