"""`nasdd bench`: audit anyone's proxies against a ranking benchmark shipped with nasdd.

A benchmark is a folder (`benchmarks/<name>/` beside this module, or any folder laid out the same way):
`truth.csv`, a converged truth table (`nasdd truth`); `summary.csv`, the rows of the built-in methods
and cheap peers that `scripts/bench_rank.py` measured against it; `scores_<N>.csv`, their score of
every member at the budget 1/N. Only the user's proxies train, through the same matched-cost protocol
(`nasdd.validate.matched.score_budget`), so a proxy gets the tau the benchmark script gives it. Each
budget's rows sit beside the cached ones, with the paired delta-tau of each user proxy against the best
cheap peer and every built-in distilled proxy, top-k metrics (Spearman over the truth's top 10 and 20,
precision@5, regret@1), a plot and a one-paragraph verdict. `leaderboard` ranks every cached option
(and the user's) and lists the registry's methods without cached scores as missing.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from nasdd.errors import NasddError
from nasdd.registry import Registry

if TYPE_CHECKING:  # torch-free at import
    from nasdd.data import DatasetBundle
    from nasdd.distill.proxy import ProxySet
    from nasdd.validate.matched import MatchedCost
    from nasdd.validate.table import TruthTable

SHIPPED = Path(__file__).parent / "benchmarks"
TOP_KS = (10, 20)


@dataclass(frozen=True)
class Benchmark:
    """A truth table with the cached scores of the built-in options, and its default budgets."""

    name: str
    folder: Path
    budgets: tuple[str, ...] = ("1/100",)
    description: str = ""

    @property
    def truth_path(self) -> Path:
        return self.folder / "truth.csv"

    def truth(self) -> TruthTable:
        from nasdd.validate.table import TruthTable

        return TruthTable.load(self.truth_path)

    def cached_budgets(self) -> list[str]:
        """Budgets with cached scores, smallest first."""
        return sorted((f"1/{p.stem[7:]}" for p in self.folder.glob("scores_*.csv")), key=lambda b: -int(b[2:]))

    def cached(self, budget: str) -> tuple[pd.DataFrame, pd.DataFrame]:
        """The cached summary rows and per-member scores at `budget` (empty when none were measured)."""
        from nasdd.validate.matched import read_scores

        scores = read_scores(self.folder, budget)
        summary = pd.read_csv(self.folder / "summary.csv") if (self.folder / "summary.csv").exists() else None
        if summary is None or scores is None:
            return pd.DataFrame(), pd.DataFrame()
        rows = summary[(summary.budget == budget) & summary.name.isin(scores.columns)].copy()
        rows["source"] = "cached"
        return rows.reset_index(drop=True), scores[rows.name.tolist()]


BENCHMARKS: Registry[Benchmark] = Registry("benchmark")
for _b in (
    Benchmark(
        "fashion_mnist",
        SHIPPED / "fashion_mnist",
        ("1/100",),
        "Fashion-MNIST, 60 convnet_cpu_pooled members, truth 3 seeds x 12 epochs (648,000 sample-gradients each)",
    ),
    Benchmark(
        "mnist5k",
        SHIPPED / "mnist5k",
        ("1/30",),
        "mnist5k, 24 convnet_cpu members, truth 2 seeds x 8 epochs (28,800 sample-gradients each)",
    ),
):
    BENCHMARKS.register(_b.name)(_b)


def load_benchmark(text: str) -> Benchmark:
    """A shipped benchmark by name, or a folder holding truth.csv (and optionally summary.csv, scores_N.csv)."""
    if text in BENCHMARKS:
        return BENCHMARKS.get(text)
    folder = Path(text)
    if folder.is_dir() and (folder / "truth.csv").is_file():
        return Benchmark(folder.name, folder, tuple(Benchmark(folder.name, folder).cached_budgets()[-1:]) or ("1/100",))
    raise NasddError(
        f"unknown benchmark {text!r}: give one of {', '.join(BENCHMARKS.names())} or a folder holding truth.csv"
    )


def top_metrics(truth: pd.Series, scores: pd.DataFrame) -> pd.DataFrame:
    """Per option: Spearman over the truth's top 10 and top 20 members."""
    from nasdd.validate.stats import top_spearman

    t = truth.loc[scores.index].to_numpy(float)
    rows = {c: {f"rho_top{k}": top_spearman(t, scores[c].to_numpy(float), k) for k in TOP_KS} for c in scores}
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis("name").reset_index()


@dataclass
class BenchResult:
    """Every row (cached and the user's) per budget, the paired comparisons, and the verdict."""

    summary: pd.DataFrame
    scores: dict[str, pd.DataFrame]
    paired: pd.DataFrame
    ceiling: dict
    verdict: str


def run(
    bench: Benchmark,
    proxies: Sequence[ProxySet],
    budgets: Sequence[str],
    cfg: MatchedCost,
    *,
    names: dict[str, str] | None = None,
    bundle: DatasetBundle | None = None,
) -> BenchResult:
    """Score `proxies` at each budget (cached trainings in `cfg.storage` are read back) beside the cached
    rows. `names` maps a proxy id to its row name (default `yours:method-ipcN`)."""
    from nasdd.cost import parse_fraction
    from nasdd.validate.audit import proxy_labels
    from nasdd.validate.matched import budget_name, by_budget, noise_ceiling, paired, score_budget, truth_means

    table = bench.truth()
    truth = truth_means(table)
    labels = proxy_labels(proxies) if proxies else []
    names = {p.id: (names or {}).get(p.id) or f"yours:{lab}" for p, lab in zip(proxies, labels, strict=True)}
    if proxies and bundle is None:
        from nasdd.data import load_dataset

        bundle = load_dataset(table.meta["dataset"])
    summaries, all_scores, deltas = [], {}, []
    for budget in budgets:
        frac = parse_fraction(budget)
        budget = budget_name(frac)
        cached, cached_scores = bench.cached(budget)
        parts, sc = [cached], [cached_scores] if len(cached_scores) else []
        if proxies and bundle is not None:  # the bundle is loaded above when proxies are given
            mine, mine_scores = score_budget(bundle, table, proxies, frac, cfg, names=names)
            mine["source"] = "yours"
            parts.append(mine)
            sc.append(mine_scores)
        summary = pd.concat([p for p in parts if len(p)], ignore_index=True) if any(len(p) for p in parts) else None
        if summary is None:
            raise NasddError(f"benchmark {bench.name} has no cached rows at {budget} and no proxy was given")
        scores = pd.concat(sc, axis=1).loc[truth.index]
        summary = summary.merge(top_metrics(truth, scores), on="name", how="left")
        summaries.append(summary)
        all_scores[budget] = scores
        among = list(names.values()) if proxies else None
        deltas.append(paired(summary, scores, truth, cfg.resamples, among=among, between=bool(proxies)))
    ceiling = noise_ceiling(table, cfg.resamples)
    summary = by_budget(pd.concat(summaries, ignore_index=True))
    d = by_budget(pd.concat(deltas, ignore_index=True))
    return BenchResult(summary, all_scores, d, ceiling, verdict(bench, summary, d, ceiling, list(names.values())))


def _ci(r: pd.Series, col: str, sign: bool = False) -> str:
    f = "{:+.2f}" if sign else "{:.2f}"
    return f"{f.format(r[col])} [{f.format(r[col + '_low'])}, {f.format(r[col + '_high'])}]"


def verdict(bench: Benchmark, summary: pd.DataFrame, deltas: pd.DataFrame, ceiling: dict, mine: list[str]) -> str:
    """One paragraph per budget: where each of the user's proxies stands and whether it beats the best cheap
    option at the same cost (paired CI), with its top-k behaviour."""
    out = []
    ceil = f"noise ceiling τ {ceiling['tau']:.2f} [{ceiling['tau_low']:.2f}, {ceiling['tau_high']:.2f}]"
    for budget, g in summary.groupby("budget", sort=False):
        g = g.sort_values("tau", ascending=False).reset_index(drop=True)
        cheap = g[g.kind.str.startswith("peer")]
        best_peer = cheap.iloc[0] if len(cheap) else None
        grads = g.grads_per_candidate.dropna()
        cost = f" ({grads.median():,.0f} sample-gradients per candidate)" if len(grads) else ""
        text = [f"At {budget} of a truth training{cost} on {bench.name} ({g.n_archs.max():.0f} members, {ceil}):"]
        for name in [n for n in mine if n in set(g.name)] or []:
            r = g[g.name == name].iloc[0]
            rank = int(g.index[g.name == name][0]) + 1
            s = f"{name} ranks the members at τ {_ci(r, 'tau')}, {rank} of {len(g)} options"
            if best_peer is not None:
                d = deltas[(deltas.budget == budget) & (deltas.a == name) & (deltas.b == best_peer["name"])]
                if len(d):
                    dr = d.iloc[0]
                    word = "not distinguishable from"
                    word = "better than" if dr.dtau_low > 0 else "worse than" if dr.dtau_high < 0 else word
                    s += f"; against the best cheap option at that cost, {best_peer['name']} (τ {best_peer.tau:.2f}), "
                    s += f"Δτ {_ci(dr, 'dtau', True)} (paired), so it is {word} it"
            built = deltas[(deltas.budget == budget) & (deltas.a == name) & (deltas.b_kind == "proxy")]
            if len(built):
                s += f"; it beats {int((built.dtau_low > 0).sum())} and loses to {int((built.dtau_high < 0).sum())}"
                s += f" of {len(built)} other distilled proxies (paired CI excluding 0)"
            tops = [f"top-{k} Spearman {r[f'rho_top{k}']:.2f}" for k in TOP_KS if pd.notna(r.get(f"rho_top{k}"))]
            s += f". Among the truth's best members: {', '.join(tops)}; precision@5 {r['p@5']:.2f}, "
            s += f"regret@1 {100 * r['regret@1']:.1f} points (the true best minus the accuracy of its pick)."
            text.append(s)
        if not mine:
            b = g.iloc[0]
            text.append(f"the best option is {b['name']} at τ {_ci(b, 'tau')};")
            if best_peer is not None:
                vs = deltas[(deltas.budget == budget) & (deltas.dtau_low > 0)]
                text.append(
                    f"the best cheap peer is {best_peer['name']} (τ {best_peer.tau:.2f}); distilled proxies whose "
                    f"paired CI lies above it: {', '.join(vs.a) if len(vs) else 'none'}."
                )
        out.append(" ".join(text))
    return "\n\n".join(out) + "\n"


def plot(result: BenchResult, path: Path, mine: Sequence[str], title: str) -> None:
    """Per budget, every option's tau with its 95% CI, the user's proxies in red, the noise ceiling shaded."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    budgets = list(dict.fromkeys(result.summary.budget))
    rows = max(len(result.summary[result.summary.budget == b]) for b in budgets)
    fig, axes = plt.subplots(1, len(budgets), figsize=(6.5 * len(budgets), 1.5 + 0.22 * rows), squeeze=False)
    colour = {"proxy": "tab:blue", "peer:subset": "tab:green", "peer:early": "tab:olive", "peer:zerocost": "grey"}
    for ax, budget in zip(axes[0], budgets, strict=True):
        g = result.summary[result.summary.budget == budget].sort_values("tau")
        y = np.arange(len(g))
        c = ["tab:red" if n in mine else colour.get(k, "black") for n, k in zip(g.name, g.kind, strict=True)]
        ceil = result.ceiling
        ax.axvspan(ceil["tau_low"], ceil["tau_high"], color="grey", alpha=0.2, label="noise ceiling")
        for yi, ci, (_, r) in zip(y, c, g.iterrows(), strict=True):
            ax.errorbar(r.tau, yi, xerr=[[r.tau - r.tau_low], [r.tau_high - r.tau]], fmt="o", ms=4, color=ci, capsize=2)
        ax.set_yticks(y, g.name, fontsize=7)
        for tick, n in zip(ax.get_yticklabels(), g.name, strict=True):
            tick.set_color("tab:red" if n in mine else "black")
        ax.set(xlabel="Kendall τ against the truth (95% CI)", title=f"{budget} of a truth training per candidate")
        ax.legend(fontsize=7, loc="lower right")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def leaderboard(bench: Benchmark, result: BenchResult, methods: Sequence[str], cfg: MatchedCost) -> pd.DataFrame:
    """One row per option (cached and the user's): tau at every budget, the top-k metrics and the paired
    delta-tau against the best cheap peer at the benchmark's first default budget; then one row per method of
    `methods` that has no row, marked missing."""
    s = result.summary
    main = bench.budgets[0] if bench.budgets[0] in set(s.budget) else s.budget.iloc[-1]
    at = s[s.budget == main].set_index("name")
    vs = result.paired
    vs = vs[(vs.budget == main) & vs.b_kind.str.startswith("peer")].set_index("a") if len(vs) else vs
    names = list(dict.fromkeys(s.sort_values("tau", ascending=False).name))
    rows = []
    for name in names:
        one = s[s.name == name]
        first = one.iloc[0]
        row = {
            "name": name,
            "method": first.get("method"),
            "kind": first.kind,
            "source": first.get("source", "cached"),
            "ipc": first.get("ipc"),
            "seeds": first.get("seeds"),
        }
        row.update({f"tau@{b}": one.set_index("budget").tau.get(b, math.nan) for b in dict.fromkeys(s.budget)})
        if name in at.index:
            r = at.loc[name]
            row.update({"budget": main, "tau_low": r.tau_low, "tau_high": r.tau_high, "rho": r.rho})
            row.update({f"rho_top{k}": r.get(f"rho_top{k}") for k in TOP_KS})
            row.update({"p@5": r["p@5"], "regret@1": r["regret@1"]})
            if len(vs) and name in vs.index:
                d = vs.loc[[name]].iloc[0]
                row.update({"vs_peer": d.b, "dtau": d.dtau, "dtau_low": d.dtau_low, "dtau_high": d.dtau_high})
            row["distill_sample_grads"] = r.get("distill_sample_grads")
        row["status"] = "measured"
        rows.append(row)
    df = pd.DataFrame(rows)
    have = set(df.method.dropna())
    gone = "missing: no cached scores"
    missing = [{"name": m, "method": m, "kind": "proxy", "status": gone} for m in methods if m not in have]
    df = pd.concat([df, pd.DataFrame(missing)], ignore_index=True) if missing else df
    order = df.assign(_main=df.get(f"tau@{main}")).sort_values(["status", "_main"], ascending=[True, False])
    return order.drop(columns="_main").reset_index(drop=True)
