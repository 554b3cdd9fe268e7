"""The report's figures: cost against ranking fidelity, proxy scores against the truth, search history.

matplotlib.pyplot is imported (headless, Agg) only when a figure is drawn.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from nasdd.errors import NasddError
from nasdd.utils import atomic_path

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure
    from matplotlib.text import Annotation
    from matplotlib.transforms import Bbox

KIND_STYLE = {
    "proxy": ("o", "tab:blue", "distilled proxy"),
    "peer:subset": ("s", "tab:orange", "coreset peer"),
    "peer:early": ("^", "tab:green", "early stopping"),
    "peer:zerocost": ("D", "tab:purple", "zero-cost score"),
}


def pareto_front(cost: np.ndarray, score: np.ndarray) -> np.ndarray:
    """Boolean mask of points no other point beats on both lower cost and higher score."""
    keep = np.ones(len(cost), dtype=bool)
    for i in range(len(cost)):
        dominated = (cost <= cost[i]) & (score >= score[i]) & ((cost < cost[i]) | (score > score[i]))
        keep[i] = not dominated.any()
    return keep & np.isfinite(score) & np.isfinite(cost)


def _series_key(row: pd.Series) -> str:
    """Rows of one method across ipc or budgets share a line."""
    if row["kind"] == "peer:early":
        return "early"
    method = row.get("method")
    return f"{row['kind']}:{method}" if isinstance(method, str) else row["name"]


def noise_ceiling(summary: pd.DataFrame, stat: str) -> tuple[float, float, float] | None:
    nc = summary[summary["kind"] == "noise_ceiling"]
    if nc.empty:
        return None
    r = nc.iloc[0]
    return float(r[stat]), float(r.get(f"{stat}_low", np.nan)), float(r.get(f"{stat}_high", np.nan))


def plot_cost_vs_correlation(summary: pd.DataFrame, path: Path) -> Path:
    """2x2: rows Kendall τ / Spearman ρ, columns cost in sample-gradients / seconds (log scale)."""
    with _style():
        return _cost_vs_correlation(summary, path)


def _cost_vs_correlation(summary: pd.DataFrame, path: Path) -> Path:
    plt = _pyplot()
    rows = summary[summary["kind"].isin(list(KIND_STYLE))].copy()
    fig, axes = plt.subplots(2, 2, figsize=(12, 9), sharey="row")
    to_label = []
    for r, (stat, label) in enumerate((("tau", "Kendall τ"), ("rho", "Spearman ρ"))):
        for c, (cost, xlabel) in enumerate(
            (
                ("cost_sample_grads", "cost (sample-gradient evaluations; cost 0 drawn at 1)"),
                ("cost_seconds", "cost (wall seconds, this machine; under 0.01 drawn at 0.01)"),
            )
        ):
            ax = axes[r, c]
            floor = 1.0 if cost == "cost_sample_grads" else 1e-2  # free scores (cost 0) sit at the axis floor
            x = rows[cost].clip(lower=floor).to_numpy(float)
            y = rows[stat].to_numpy(float)
            ceiling = noise_ceiling(summary, stat)
            if ceiling is not None:
                mid, lo, hi = ceiling
                ax.axhspan(lo if math.isfinite(lo) else mid, hi if math.isfinite(hi) else mid, color="grey", alpha=0.2)
                ax.axhline(mid, color="grey", ls="--", lw=1, label="noise ceiling (truth vs truth)")
            for _, g in rows.groupby(rows.apply(_series_key, axis=1), sort=False):
                g = g.sort_values(cost)
                marker, color, _ = KIND_STYLE[g["kind"].iloc[0]]
                if len(g) > 1:
                    ax.plot(g[cost].clip(lower=floor), g[stat], color=color, alpha=0.4, lw=1)
            for kind, (marker, color, name) in KIND_STYLE.items():
                g = rows[rows["kind"] == kind]
                if g.empty:
                    continue
                err = np.vstack([g[stat] - g[f"{stat}_low"], g[f"{stat}_high"] - g[stat]]).clip(min=0)
                ax.errorbar(
                    g[cost].clip(lower=floor),
                    g[stat],
                    yerr=np.nan_to_num(err),
                    fmt=marker,
                    color=color,
                    ms=6,
                    capsize=2,
                    lw=0.8,
                    label=name,
                    zorder=3,
                )
            front = pareto_front(x, y)
            ax.scatter(x[front], y[front], s=220, facecolors="none", edgecolors="red", lw=1.0, label="Pareto front",
                       zorder=2)  # fmt: skip
            to_label.append((ax, x, y, rows["name"].tolist()))
            ax.set_xscale("log")
            ax.axhline(0, color="black", lw=0.5)
            ax.set_xlabel(xlabel)
            ax.set_ylabel(f"{label} vs ground truth")
            ax.grid(alpha=0.3)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=8)
    fig.suptitle("Ranking fidelity against cost (error bars: 95% bootstrap CI over architectures)")
    fig.tight_layout(rect=(0, 0.05, 1, 0.97))
    for ax, x, y, names in to_label:  # once the axes are final: labels are placed in screen space
        ax.set_xlim(ax.get_xlim())
        ax.set_ylim(ax.get_ylim())
        label_points(ax, x, y, names)
    return _save(fig, path)


def plot_proxy_vs_truth(summary: pd.DataFrame, per_arch: pd.DataFrame, path: Path) -> Path:
    """One panel per proxy or peer: its score against mean full-data test accuracy, per architecture."""
    names = list(dict.fromkeys(n for n in summary.loc[summary["kind"].isin(list(KIND_STYLE)), "name"] if n in per_arch))
    if not names:
        raise NasddError("per_arch.csv has no proxy or peer score columns to plot")
    with _style():
        return _proxy_vs_truth(summary, per_arch, names, path)


def _proxy_vs_truth(summary: pd.DataFrame, per_arch: pd.DataFrame, names: list[str], path: Path) -> Path:
    plt = _pyplot()
    ncol = min(4, len(names))
    nrow = math.ceil(len(names) / ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(3.6 * ncol, 3.2 * nrow), squeeze=False)
    stats = summary.drop_duplicates("name").set_index("name")
    for ax, name in zip(axes.flat, names, strict=False):
        kind = stats.loc[name, "kind"]
        ax.scatter(per_arch[name], 100 * per_arch["truth_mean"], s=14, color=KIND_STYLE[kind][1])
        scale = axis_scale(per_arch[name].to_numpy(float))
        if scale != "linear":
            ax.set_xscale(scale, **({"linthresh": _linthresh(per_arch[name])} if scale == "symlog" else {}))
        ax.set_title(f"{name}\nτ={stats.loc[name, 'tau']:.2f}  ρ={stats.loc[name, 'rho']:.2f}", fontsize=9)
        ax.set_xlabel("proxy score" + ("" if scale == "linear" else f" ({scale} axis)"), fontsize=8)
        ax.set_ylabel("full-data test acc. (%)", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(names) :]:
        ax.axis("off")
    fig.tight_layout()
    return _save(fig, path)


def plot_search_history(search_dir: Path, path: Path) -> Path | None:
    """Objective per trial and best-so-far from a search folder's trials.csv."""
    csv = search_dir / "trials.csv"
    if not csv.exists():
        return None
    trials = pd.read_csv(csv)
    value = "value" if "value" in trials else next((c for c in trials if c.startswith("values_")), None)
    if value is None or "state" not in trials:
        return None
    done = trials[trials["state"] == "COMPLETE"].sort_values("number")
    with _style():
        return _search_history(done, value, path)


def _search_history(done: pd.DataFrame, value: str, path: Path) -> Path:
    fig, ax = _pyplot().subplots(figsize=(7, 4))
    ax.scatter(done["number"], 100 * done[value], s=12, label="trial (val accuracy, trained on the proxy)")
    ax.plot(done["number"], 100 * done[value].cummax(), color="red", label="best so far")
    ax.set_xlabel("trial")
    ax.set_ylabel("validation accuracy (%)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return _save(fig, path)


def axis_scale(values: np.ndarray, decades: float = 2.0) -> str:
    """`log` for positive values spanning more than `decades` powers of ten, `symlog` for values of both
    signs (or zeros) whose magnitudes do, else `linear`: one outlier must not squash a panel."""
    v = values[np.isfinite(values)]
    mags = np.abs(v[v != 0])
    if len(mags) < 2 or math.log10(mags.max() / mags.min()) <= decades:
        return "linear"
    return "log" if (v > 0).all() else "symlog"


def _linthresh(values: pd.Series) -> float:
    """symlog's linear range: the smallest non-zero magnitude (at least 1e-12)."""
    mags = values.abs()
    return max(float(mags[mags > 0].min()), 1e-12)


def _style():  # noqa: ANN202 - a context manager
    """One look for every figure, whatever style another library set (Optuna's plots switch to ggplot)."""
    return _pyplot().style.context("default")


def _save(fig: Figure, path: Path) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110)
    _pyplot().close(fig)
    return path


def _pyplot():  # noqa: ANN202 - matplotlib.pyplot, imported (headless) only by code that plots
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


# label offsets (points) tried in turn: right, left, above, below, then further out
OFFSETS = [(5, 3), (5, -9), (-5, 3), (-5, -9), (0, 10), (0, -16), (10, 16), (-10, 16), (10, -22), (-10, -22)]
OFFSETS += [(18, 26), (-18, 26), (18, -32), (-18, -32), (30, 4), (-30, 4), (24, 38), (-24, 38), (24, -44), (-24, -44)]


def label_points(ax: Axes, x: np.ndarray, y: np.ndarray, names: list[str], fontsize: int = 7) -> list[Annotation]:
    """Name every finite point, each label at the first offset whose box overlaps no label placed before and
    no other point's marker (else the least-overlapping one); a thin line links a moved label to its point.
    Call it once the axes' scales, limits and layout are final: boxes are measured on screen."""
    from matplotlib.transforms import Bbox

    r = 4 * ax.figure.dpi / 72  # a marker's half-width in pixels
    marks = {}
    for xi, yi in zip(x, y, strict=True):
        if math.isfinite(xi) and math.isfinite(yi):
            px, py = ax.transData.transform((xi, yi))
            marks[(xi, yi)] = Bbox.from_extents(px - r, py - r, px + r, py + r)
    frame = ax.get_window_extent()
    placed: list[Bbox] = []
    texts: list[Annotation] = []
    for xi, yi, name in sorted(zip(x, y, names, strict=True), key=lambda t: (-t[1], t[0])):
        if not (math.isfinite(xi) and math.isfinite(yi)):
            continue
        best: tuple[float, Annotation, Bbox, int] | None = None
        for k, (dx, dy) in enumerate(OFFSETS):
            ha = "left" if dx >= 0 else "right"
            t = ax.annotate(name, (xi, yi), xytext=(dx, dy), textcoords="offset points", fontsize=fontsize, ha=ha)
            box = t.get_window_extent().expanded(1.05, 1.1)
            overlap = sum(_area(box, other) for other in placed)
            overlap += sum(_area(box, m) for p, m in marks.items() if p != (xi, yi))
            overlap += box.width * box.height - _area(box, frame)  # the part outside the axes is cut off
            if best is None or overlap < best[0]:
                if best is not None:
                    best[1].remove()
                best = (overlap, t, box, k)
            else:
                t.remove()
            if overlap == 0:
                break
        assert best is not None  # OFFSETS is not empty
        _, t, box, k = best
        if k >= 4:
            t.arrow_patch = None
            t.set_annotation_clip(False)
            ax.annotate("", (xi, yi), xytext=box_center(ax, box), arrowprops={"arrowstyle": "-", "lw": 0.4})
        placed.append(box)
        texts.append(t)
    return texts


def box_center(ax: Axes, box: Bbox) -> tuple[float, float]:
    """A display-space box's centre in data coordinates."""
    return tuple(ax.transData.inverted().transform(((box.x0 + box.x1) / 2, (box.y0 + box.y1) / 2)))


def _area(a: Bbox, b: Bbox) -> float:
    w = min(a.x1, b.x1) - max(a.x0, b.x0)
    h = min(a.y1, b.y1) - max(a.y0, b.y0)
    return w * h if w > 0 and h > 0 else 0.0
