"""The matched-cost ranking protocol: every proxy and peer held to the same per-candidate budget.

Ground truth comes from a truth table (`nasdd truth`); a budget is a fraction of one truth training in
sample-gradients. Distilled proxies and the random/herding subsets train each candidate for that many
sample-gradients (`nasdd.cost.matched_recipe`), early stopping trains on the full data for as many, zero-cost scores
cost what they cost. Per budget: Kendall tau with bootstrap CIs (`nasdd.validate.audit.validate`), the
paired delta-tau of each distilled proxy against the best cheap peer and between distilled proxies (the
same resampled architectures for both), and each proxy's break-even number of candidates.

`scripts/bench_rank.py` (the committed benchmark: `audit` over its budgets, then writing the tables) and
`nasdd bench` (auditing anyone's proxy against a shipped table) both score through `score_budget` and
compare through `paired`, so a proxy gets the same tau from both at the same budget.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from nasdd.cost import break_even, matched_recipe, parse_fraction
from nasdd.layout import RunLayout
from nasdd.validate import stats
from nasdd.validate.table import TruthTable

SHOW = ["budget", "name", "kind", "tau", "tau_low", "tau_high", "rho", "regret@1", "grads_per_candidate"]


@dataclass(frozen=True)
class MatchedCost:
    """How candidates are scored at a budget: the peers beside the proxies, the ipcs of the subset peers,
    the base proxy recipe shortened to each budget, the subset peers' preset, where trainings are cached
    (`storage`, an Optuna storage URL) and where peers' subsets live (`work`)."""

    storage: str | None
    work: Path
    peers: tuple[str, ...] = ()
    ipcs: tuple[int, ...] = (10,)
    proxy_recipe: str = "proxy"
    preset: str | None = "cpu"
    device: str = "auto"
    resamples: int = 1000


def budget_name(frac: float) -> str:
    """0.01 -> `1/100` (the name of a budget in every table)."""
    return f"1/{round(1 / frac)}"


def truth_grads(table: TruthTable) -> float:
    """Sample-gradients of one truth training (the mean over the table's trainings)."""
    return float(np.nanmean(table.frame.filter(like="sample_grads_s").to_numpy(float)))


def truth_means(table: TruthTable) -> pd.Series:
    """Ground truth per member (mean test accuracy over seeds), in the table's pool order."""
    return table.accuracies().mean(axis=1).loc[[a.key() for a in table.archs()]]


def score_budget(
    bundle: Any,
    table: TruthTable,
    proxies: Sequence[Any],
    frac: float,
    cfg: MatchedCost,
    *,
    names: dict[str, str] | None = None,
    k: int = 1,
    zerocost: bool = True,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Summary rows and per-architecture scores of every proxy and peer at one budget, each trained option
    scored as the mean of `k` seeds trained for 1/k of the budget each (named `NAME xk` when k > 1).

    `names` maps a proxy id to its row name (default `method-ipcN`); zero-cost peers run only with
    `zerocost` (they cost the same at every budget)."""
    from nasdd.spaces import load_space
    from nasdd.train import TrainRecipe
    from nasdd.validate.audit import proxy_labels, validate
    from nasdd.validate.config import AuditConfig
    from nasdd.validate.peers import resolve_peers

    names = names or {}
    grads = frac * truth_grads(table) / k
    peers = resolve_peers(list(cfg.peers)) if cfg.peers else []
    base = TrainRecipe.parse(cfg.proxy_recipe, TrainRecipe.parse("proxy"))
    ipcs = list(cfg.ipcs) or sorted({p.ipc for p in proxies})
    space = load_space(table.meta["space"])
    summaries, scores = [], []
    for i, ipc in enumerate(ipcs):
        mine = [p for p in proxies if p.ipc == ipc]
        subsets = [p.name for p in peers if p.kind == "subset"]
        others = [p.name for p in peers if p.kind == "early" or (zerocost and p.kind == "zerocost")] if i == 0 else []
        if not mine and not subsets and not others:
            continue
        n = len(mine[0].images) if mine and not subsets else ipc * bundle.num_classes
        config = AuditConfig(
            peers=",".join(subsets + others),
            proxy_recipe=matched_recipe(base, n, grads),
            proxy_seeds=k,
            early_epochs=(grads / len(bundle.y_train),) if "early" in others else None,
            ipc=ipc,
            subset_preset=cfg.preset,
            storage=cfg.storage,
            n_resamples=cfg.resamples,
        )
        out = RunLayout(cfg.work).audit_at(ipc)
        res = validate(bundle, table.archs(), mine, config, space=space, out=out, device=cfg.device, truth_table=table)
        s = res.summary[~res.summary.kind.isin(["truth", "noise_ceiling"])].copy()
        named = {label: names[p.id] for label, p in zip(proxy_labels(mine), mine, strict=True) if p.id in names}
        s["name"] = s.name.replace(named)
        distilled = s["distill_sample_grads"].fillna(0) if "distill_sample_grads" in s else 0
        s["grads_per_candidate"] = (s.cost_sample_grads - distilled) / len(res.per_arch)
        sc = res.per_arch.set_index("arch_key").rename(columns=named)[s.name.tolist()]
        if k > 1:
            s["name"] = s.name.where(s.kind == "peer:zerocost", s.name + f" x{k}")
            sc.columns = s.name.tolist()
        summaries.append(s)
        scores.append(sc)
    summary = pd.concat(summaries, ignore_index=True)
    summary.insert(0, "budget", budget_name(frac))
    return summary, pd.concat(scores, axis=1)


def paired(
    summary: pd.DataFrame,
    scores: pd.DataFrame,
    truth: pd.Series,
    resamples: int,
    *,
    among: Sequence[str] | None = None,
    between: bool = True,
) -> pd.DataFrame:
    """Delta-tau with paired CIs: each distilled proxy against the best cheap peer, and (`between`) distilled
    pairs. `among` limits the `a` side to these names (e.g. a user's proxies), each then compared with the
    best cheap peer and every other distilled proxy."""
    t = truth.loc[scores.index]
    proxies = summary[summary.kind == "proxy"].sort_values("tau", ascending=False)
    cheap = summary[summary.kind.str.startswith("peer")].sort_values("tau", ascending=False)
    best = cheap.iloc[0] if len(cheap) else None
    mine = proxies if among is None else proxies[proxies.name.isin(among)]
    pairs = [(p, best) for _, p in mine.iterrows()] if best is not None else []
    if between and among is None:
        pairs += [(a, b) for i, (_, a) in enumerate(proxies.iterrows()) for _, b in proxies.iloc[i + 1 :].iterrows()]
    elif between:
        pairs += [(a, b) for _, a in mine.iterrows() for _, b in proxies.iterrows() if b["name"] != a["name"]]
    rows = []
    for a, b in pairs:
        a_s, b_s = scores[a["name"]].to_numpy(), scores[b["name"]].to_numpy()
        d = stats.paired_delta_tau(t.to_numpy(), a_s, b_s, n_resamples=resamples, seed=0)
        rows.append({"budget": a["budget"], "a": a["name"], "b": b["name"], "b_kind": b["kind"], **d})
    return pd.DataFrame(rows)


def amortisation(summary: pd.DataFrame, per_truth: float) -> pd.DataFrame:
    """Per distilled proxy and budget: cost per candidate amortised over 100 and 1,000 candidates, and the
    break-even number of candidates against full-data training of every candidate."""
    rows = []
    for _, r in summary[summary.kind == "proxy"].iterrows():
        d, g = float(r.get("distill_sample_grads", 0) or 0), float(r.grads_per_candidate)
        rows.append(
            {
                "budget": r.budget,
                "name": r["name"],
                "distill_sample_grads": d,
                "grads_per_candidate": g,
                "per_candidate_at_100": g + d / 100,
                "per_candidate_at_1000": g + d / 1000,
                "break_even_candidates": break_even(g, d, per_truth),
            }
        )
    return pd.DataFrame(rows)


def convergence(table: TruthTable, longer: TruthTable, n_resamples: int) -> pd.DataFrame:
    """Recipe R against 2R on the members both tables hold, next to R's (and 2R's) seed-to-seed agreement."""
    keys = [k for k in longer.accuracies().index if k in table.accuracies().index]
    r, r2 = table.accuracies().loc[keys], longer.accuracies().loc[keys]
    mean_r, mean_r2 = r.mean(axis=1), r2.mean(axis=1)
    between = stats.rank_statistics(mean_r.to_numpy(), mean_r2.to_numpy(), ks=(), n_resamples=n_resamples)
    seeds_r = stats.noise_ceiling(r.to_numpy(), ks=(), n_resamples=n_resamples)
    seeds_r2 = stats.noise_ceiling(r2.to_numpy(), ks=(), n_resamples=n_resamples)
    row = {
        "members": len(keys),
        "recipe": table.meta["recipe"],
        "recipe_2x": longer.meta["recipe"],
        "tau_R_2R": between["tau"],
        "tau_R_2R_low": between["tau_low"],
        "tau_R_2R_high": between["tau_high"],
        "seed_tau_R": seeds_r["tau"],
        "seed_tau_2R": seeds_r2["tau"],
        "acc_R": r.mean(axis=1).mean(),
        "acc_2R": r2.mean(axis=1).mean(),
    }
    row["converged"] = bool(row["tau_R_2R"] >= min(row["seed_tau_R"], 0.85))
    return pd.DataFrame([row])


def verdict(summary: pd.DataFrame, deltas: pd.DataFrame, ceiling: dict) -> str:
    """Per budget: the best option, the best cheap peer, and whether any distilled proxy beats it (paired)."""
    lines = [f"Noise ceiling tau {ceiling['tau']:.2f} [{ceiling['tau_low']:.2f}, {ceiling['tau_high']:.2f}]."]
    for budget, g in summary.groupby("budget", sort=False):
        best = g.sort_values("tau", ascending=False).iloc[0]
        cheap = g[g.kind.str.startswith("peer")].sort_values("tau", ascending=False)
        line = f"- {budget} of a truth training: best {best['name']} tau {best.tau:.2f}"
        line += f" [{best.tau_low:.2f}, {best.tau_high:.2f}]"
        if len(cheap):
            line += f"; best cheap peer {cheap.iloc[0]['name']} ({cheap.iloc[0].tau:.2f})"
        d = deltas[(deltas.budget == budget) & deltas.b_kind.str.startswith("peer")] if len(deltas) else deltas
        wins = [f"{r.a} (Δτ {r.dtau:+.2f} [{r.dtau_low:+.2f}, {r.dtau_high:+.2f}])" for _, r in d.iterrows()]
        beats = [w for w, (_, r) in zip(wins, d.iterrows(), strict=True) if r.dtau_low > 0]
        if wins:
            line += "; distilled against it: " + ", ".join(wins)
            won = "Beats it (paired CI above 0): " + ", ".join(beats) if beats else "No distilled proxy beats it."
            line += ". " + won
        lines.append(line)
    return "\n".join(lines) + "\n"


def plot(summary: pd.DataFrame, deltas: pd.DataFrame, ceiling: dict, path: Path, title: str = "") -> None:
    """tau against budget (left) and the paired delta-tau against the best cheap peer (right), as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, bx) = plt.subplots(1, 2, figsize=(13, 5))
    ax.axhspan(ceiling["tau_low"], ceiling["tau_high"], color="grey", alpha=0.2, label="noise ceiling (95% CI)")
    ax.axhline(ceiling["tau"], color="grey", lw=1)
    summary = summary.assign(frac=[parse_fraction(b) for b in summary.budget])
    early = "early stopping (full data)" + summary.seeds.map(lambda k: f" x{k:g}" if k > 1 else "")
    summary["line"] = summary.name.where(summary.kind != "peer:early", early)
    for name, g in summary[summary.kind != "peer:zerocost"].groupby("line"):
        g = g.sort_values("frac")
        style = "-" if g.kind.iloc[0] == "proxy" else "--"
        ax.errorbar(g.frac, g.tau, yerr=[g.tau - g.tau_low, g.tau_high - g.tau], fmt=style + "o", capsize=3, label=name)
    for _, r in summary[summary.kind == "peer:zerocost"].drop_duplicates("name").iterrows():
        ax.axhline(r.tau, ls=":", lw=1, color="black")
        ax.annotate(r["name"], (summary.frac.min(), r.tau), fontsize=7, va="bottom")
    ax.set(xscale="log", xlabel="per-candidate budget (fraction of one truth training)", ylabel="Kendall τ vs truth")
    ax.legend(fontsize=7, loc="lower right")
    if len(deltas):
        vs_peer = deltas[deltas.b_kind.str.startswith("peer")].reset_index(drop=True)
        labels = [f"{r.a} − {r.b}\n@{r.budget}" for _, r in vs_peer.iterrows()]
        y = np.arange(len(vs_peer))
        bx.errorbar(vs_peer.dtau, y, xerr=[vs_peer.dtau - vs_peer.dtau_low, vs_peer.dtau_high - vs_peer.dtau], fmt="o")
        bx.axvline(0, color="black", lw=1)
        bx.set_yticks(y, labels, fontsize=7)
        bx.set(xlabel="Δτ (distilled − best cheap peer), paired 95% CI")
    fig.suptitle(title or "Ranking at matched cost")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def by_budget(df: pd.DataFrame) -> pd.DataFrame:
    """Rows ordered from the smallest budget up (stable: rows of one budget keep their order)."""
    if not len(df):
        return df
    order = df.budget.map(parse_fraction).sort_values(kind="stable").index
    return df.loc[order].reset_index(drop=True)


def scores_file(folder: Path, budget: str) -> Path:
    """A benchmark folder's per-member scores at `budget` (`1/100` -> `scores_100.csv`, columns `NAME@1/100`)."""
    return folder / f"scores_{budget[2:]}.csv"


def read_scores(folder: Path, budget: str) -> pd.DataFrame | None:
    """The scores of `scores_file` with the columns named as the summary's rows (None when there is none)."""
    path = scores_file(folder, budget)
    if not path.exists():
        return None
    return pd.read_csv(path, index_col=0).rename(columns=lambda c: c.removesuffix(f"@{budget}"))


def noise_ceiling(table: TruthTable, resamples: int) -> dict:
    """The truth's seed-to-seed agreement (tau and its CI): no proxy can be told apart from above it."""
    return stats.noise_ceiling(table.accuracies().to_numpy(), ks=(), n_resamples=resamples)


@dataclass(frozen=True)
class Budget:
    """One budget of an audit: every row (this run's and an earlier run's not redone), the per-member scores,
    and the paired delta-tau."""

    summary: pd.DataFrame
    scores: pd.DataFrame
    paired: pd.DataFrame

    @property
    def name(self) -> str:
        return str(self.summary.budget.iloc[0])


def _earlier(
    summary: pd.DataFrame, scores: pd.DataFrame, old: pd.DataFrame, folder: Path | None
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """This budget's rows and scores with those of an earlier run (`old` rows, `folder`'s scores) not redone."""
    budget = summary.budget.iloc[0]
    old_scores = read_scores(folder, budget) if folder is not None and len(old) else None
    if old_scores is None:
        return summary, scores
    old = old[(old.budget == budget) & ~old.name.isin(summary.name)]
    old = old[old.name.isin(old_scores.columns)]
    return pd.concat([summary, old], ignore_index=True), pd.concat([scores, old_scores[old.name]], axis=1)


def audit(
    bundle: Any,
    table: TruthTable,
    proxies: Sequence[Any],
    fracs: Sequence[float],
    cfg: MatchedCost,
    *,
    names: dict[str, str] | None = None,
    seeds: Sequence[int] = (1,),
    old: pd.DataFrame | None = None,
    folder: Path | None = None,
) -> Iterator[Budget]:
    """The matched-cost benchmark, one budget at a time from the smallest: every proxy and peer scored with
    each seed count of `seeds` (`score_budget(k=...)`; zero-cost peers once, their rows repeated at every
    budget), beside the rows of an earlier run this one does not redo (`old`, the summary rows read before
    the run, with the scores files in `folder`), then compared pairwise (`paired`)."""
    truth = truth_means(table)
    zc: tuple[pd.DataFrame, pd.DataFrame] | None = None  # zero-cost rows cost the same at every budget
    for i, frac in enumerate(sorted(fracs)):
        runs = [
            score_budget(bundle, table, proxies, frac, cfg, names=names, k=k, zerocost=i == 0 and j == 0)
            for j, k in enumerate(seeds)
        ]
        summary = pd.concat([r[0] for r in runs], ignore_index=True)
        scores = pd.concat([r[1] for r in runs], axis=1)
        if zc is None:
            rows = summary[summary.kind == "peer:zerocost"]
            zc = rows.drop(columns="budget"), scores[rows.name.tolist()]
        elif len(zc[0]):
            summary = pd.concat([summary, zc[0].assign(budget=summary.budget.iloc[0])], ignore_index=True)
            scores = pd.concat([scores, zc[1]], axis=1)
        summary, scores = _earlier(summary, scores, pd.DataFrame() if old is None else old, folder)
        yield Budget(summary, scores, paired(summary, scores, truth, cfg.resamples))
