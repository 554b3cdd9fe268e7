"""`nasdd report`: tables and plots of cost against ranking fidelity, from a validation folder.

Reads `summary.csv`, `per_arch.csv` and `config.json` written by `nasdd validate` and writes:
`cost_vs_correlation.png` (Kendall τ and Spearman ρ against sample-gradient evaluations and seconds,
confidence intervals, noise-ceiling band, Pareto front), `proxy_vs_truth.png`, `proxy_<name>.png` image
grids, `search_history.png` when a search study folder is given, and `report.md` / `report.html`
(self-contained: images embedded) with the summary table, configs and a plain-language verdict.
"""

from __future__ import annotations

import argparse
import base64
import html
import json
import math
import shutil
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from nasdd.errors import NasddError  # noqa: E402
from nasdd.utils import atomic_open, atomic_path  # noqa: E402

KIND_STYLE = {
    "proxy": ("o", "tab:blue", "distilled proxy"),
    "peer:subset": ("s", "tab:orange", "coreset peer"),
    "peer:early": ("^", "tab:green", "early stopping"),
    "peer:zerocost": ("D", "tab:purple", "zero-cost score"),
}
TABLE_COLUMNS = [
    "name",
    "kind",
    "tau",
    "tau_low",
    "tau_high",
    "rho",
    "rho_low",
    "rho_high",
    "p@5",
    "regret@1",
    "cost_sample_grads",
    "cost_seconds",
    "speedup_sample_grads",
]


def _coreset_proxies_as_peers(summary: pd.DataFrame) -> pd.DataFrame:
    """A proxy made by a coreset method (random, herding, ...) is shown and judged as a coreset peer."""
    from nasdd.distill import METHODS

    coreset = {n for n, cls in METHODS.items() if cls.family == "coreset"}
    summary = summary.copy()
    if "method" in summary:
        summary.loc[(summary["kind"] == "proxy") & summary["method"].isin(coreset), "kind"] = "peer:subset"
    return summary


def load_validation(folder: str | Path) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """(summary, per_arch, config) of a validation folder, with a clear error when files are missing.

    Coreset proxies appear as coreset peers in the summary returned."""
    folder = Path(folder)
    missing = [f for f in ("summary.csv", "per_arch.csv", "config.json") if not (folder / f).exists()]
    if missing:
        raise NasddError(f"{folder} is not a validation folder (missing {', '.join(missing)}); run `nasdd validate`")
    return (
        _coreset_proxies_as_peers(pd.read_csv(folder / "summary.csv")),
        pd.read_csv(folder / "per_arch.csv"),
        json.loads((folder / "config.json").read_text()),
    )


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


def _ceiling(summary: pd.DataFrame, stat: str) -> tuple[float, float, float] | None:
    nc = summary[summary["kind"] == "noise_ceiling"]
    if nc.empty:
        return None
    r = nc.iloc[0]
    return float(r[stat]), float(r.get(f"{stat}_low", np.nan)), float(r.get(f"{stat}_high", np.nan))


def plot_cost_vs_correlation(summary: pd.DataFrame, path: Path) -> Path:
    """2x2: rows Kendall τ / Spearman ρ, columns cost in sample-gradients / seconds (log scale)."""
    rows = summary[summary["kind"].isin(list(KIND_STYLE))].copy()
    fig, axes = plt.subplots(2, 2, figsize=(12, 9), sharey="row")
    for r, (stat, label) in enumerate((("tau", "Kendall τ"), ("rho", "Spearman ρ"))):
        for c, (cost, xlabel) in enumerate(
            (
                ("cost_sample_grads", "cost (sample-gradient evaluations)"),
                ("cost_seconds", "cost (wall seconds, this machine)"),
            )
        ):
            ax = axes[r, c]
            floor = 1.0 if cost == "cost_sample_grads" else 1e-2  # free scores (cost 0) sit at the axis floor
            x = rows[cost].clip(lower=floor).to_numpy(float)
            y = rows[stat].to_numpy(float)
            ceiling = _ceiling(summary, stat)
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
                )
            front = pareto_front(x, y)
            ax.scatter(x[front], y[front], s=160, facecolors="none", edgecolors="red", lw=1.2, label="Pareto front")
            for xi, yi, name in zip(x, y, rows["name"], strict=True):
                if math.isfinite(yi):
                    ax.annotate(name, (xi, yi), fontsize=7, xytext=(3, 3), textcoords="offset points")
            ax.set_xscale("log")
            ax.axhline(0, color="black", lw=0.5)
            ax.set_xlabel(xlabel)
            ax.set_ylabel(f"{label} vs ground truth")
            ax.grid(alpha=0.3)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=8)
    fig.suptitle("Ranking fidelity against cost (error bars: 95% bootstrap CI over architectures)")
    fig.tight_layout(rect=(0, 0.05, 1, 0.97))
    return _save(fig, path)


def plot_proxy_vs_truth(summary: pd.DataFrame, per_arch: pd.DataFrame, path: Path) -> Path:
    """One panel per proxy or peer: its score against mean full-data test accuracy, per architecture."""
    names = list(dict.fromkeys(n for n in summary.loc[summary["kind"].isin(list(KIND_STYLE)), "name"] if n in per_arch))
    if not names:
        raise NasddError("per_arch.csv has no proxy or peer score columns to plot")
    ncol = min(4, len(names))
    nrow = math.ceil(len(names) / ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(3.6 * ncol, 3.2 * nrow), squeeze=False)
    stats = summary.drop_duplicates("name").set_index("name")
    for ax, name in zip(axes.flat, names, strict=False):
        kind = stats.loc[name, "kind"]
        ax.scatter(per_arch[name], 100 * per_arch["truth_mean"], s=14, color=KIND_STYLE[kind][1])
        ax.set_title(f"{name}\nτ={stats.loc[name, 'tau']:.2f}  ρ={stats.loc[name, 'rho']:.2f}", fontsize=9)
        ax.set_xlabel("proxy score", fontsize=8)
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
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.scatter(done["number"], 100 * done[value], s=12, label="trial (val accuracy, trained on the proxy)")
    ax.plot(done["number"], 100 * done[value].cummax(), color="red", label="best so far")
    ax.set_xlabel("trial")
    ax.set_ylabel("validation accuracy (%)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return _save(fig, path)


def _save(fig: plt.Figure, path: Path) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)
    return path


def copy_grids(folders: list[Path], out: Path) -> list[Path]:
    """`proxy_<name>.png` for every proxy folder holding a grid.png."""
    written = []
    for folder in folders:
        grid = folder / "grid.png"
        if grid.exists():
            target = out / f"proxy_{folder.name}.png"
            if grid.resolve() != target.resolve():
                with atomic_path(target) as tmp:
                    shutil.copyfile(grid, tmp)
            written.append(target)
    return written


def verdict(summary: pd.DataFrame) -> list[str]:
    """Plain-language conclusions: which proxy ranks best, against the ceiling, the peers and the cost."""
    lines = []
    ceiling = _ceiling(summary, "tau")
    cands = summary[summary["kind"].isin(list(KIND_STYLE))].dropna(subset=["tau"])
    if cands.empty:
        return ["No proxy or peer produced a ranking."]
    if ceiling is not None:
        lines.append(
            f"Full-data training agrees with itself across seeds at Kendall τ = {ceiling[0]:.2f} "
            f"(95% CI {ceiling[1]:.2f} to {ceiling[2]:.2f}): no proxy can be expected to do better."
        )
    for kind in ("proxy", "peer:subset", "peer:early", "peer:zerocost"):
        g = cands[cands["kind"] == kind]
        if g.empty:
            continue
        best = g.loc[g["tau"].idxmax()]
        rel = f", {best['tau'] / ceiling[0]:.0%} of the noise ceiling" if ceiling and ceiling[0] > 0 else ""
        zero = " Its CI includes 0: its ranking is not distinguishable from chance." if best["tau_low"] <= 0 else ""
        lines.append(
            f"Best {KIND_STYLE[kind][2]}: **{best['name']}**, τ = {best['tau']:.2f} "
            f"[{best['tau_low']:.2f}, {best['tau_high']:.2f}]{rel}, cost {best['cost_sample_grads']:.3g} "
            f"sample-gradients ({best.get('speedup_sample_grads', float('nan')):.1f}× cheaper than one "
            f"ground-truth seed).{zero}"
        )
    proxies = cands[cands["kind"] == "proxy"]
    others = cands[cands["kind"] != "proxy"]
    if not proxies.empty and not others.empty:
        best = proxies.loc[proxies["tau"].idxmax()]
        beaten = others[others["tau_high"] < best["tau_low"]]["name"].tolist()
        not_beaten = others[others["tau"] >= best["tau"]]["name"].tolist()
        if beaten:
            lines.append(f"{best['name']} beats {', '.join(beaten)} outside their confidence intervals.")
        if not_beaten:
            lines.append(
                f"Peers that rank at least as well as the best distilled proxy: {', '.join(not_beaten)}. "
                "Prefer the cheaper of them unless the distilled proxy is needed for other reasons."
            )
        elif not beaten:
            lines.append(f"{best['name']} ranks best, but its confidence interval overlaps every peer's.")
    return lines


def _table(summary: pd.DataFrame) -> pd.DataFrame:
    cols = [c for c in TABLE_COLUMNS if c in summary]
    return summary[cols].round(3)


def write_report(
    folder: str | Path,
    *,
    search_dir: str | Path | None = None,
    proxy_dirs: list[Path] | None = None,
    formats: tuple[str, ...] = ("md", "html"),
    out: str | Path | None = None,
) -> dict[str, Path]:
    """Write every plot and the report files for the validation in `folder`; return their paths."""
    folder = Path(folder)
    out = Path(out) if out else folder
    summary, per_arch, config = load_validation(folder)
    files: dict[str, Path] = {
        "cost_vs_correlation": plot_cost_vs_correlation(summary, out / "cost_vs_correlation.png"),
        "proxy_vs_truth": plot_proxy_vs_truth(summary, per_arch, out / "proxy_vs_truth.png"),
    }
    if search_dir is not None and (h := plot_search_history(Path(search_dir), out / "search_history.png")):
        files["search_history"] = h
    grid_dirs = list(proxy_dirs or []) + sorted(p.parent for p in folder.glob("peers/*/grid.png"))
    grids = copy_grids(grid_dirs, out)
    images = [files["cost_vs_correlation"], files["proxy_vs_truth"], *grids]
    if "search_history" in files:
        images.append(files["search_history"])
    lines = verdict(summary)
    table = _table(summary)
    if "md" in formats:
        files["md"] = _write_md(out / "report.md", lines, table, images, config)
    if "html" in formats:
        files["html"] = _write_html(out / "report.html", lines, table, images, config)
    return files


def _write_md(path: Path, lines: list[str], table: pd.DataFrame, images: list[Path], config: dict) -> Path:
    parts = [
        "# nasdd report",
        "",
        "## Verdict",
        "",
        *[f"- {x}" for x in lines],
        "",
        "## Summary",
        "",
        table.to_markdown(index=False),
        "",
        "## Figures",
        "",
    ]
    parts += [f"![{p.stem}]({p.name})" for p in images]
    parts += ["", "## Configuration", "", "```json", json.dumps(_short_config(config), indent=2), "```", ""]
    with atomic_open(path) as f:
        f.write("\n".join(parts))
    return path


def _write_html(path: Path, lines: list[str], table: pd.DataFrame, images: list[Path], config: dict) -> Path:
    def img(p: Path) -> str:
        data = base64.b64encode(p.read_bytes()).decode()
        src = f"data:image/png;base64,{data}"
        return f'<figure><img src="{src}" style="max-width:100%"><figcaption>{p.stem}</figcaption></figure>'

    items = "".join(f"<li>{html.escape(x).replace('**', '')}</li>" for x in lines)
    body = (
        f"<h1>nasdd report</h1><h2>Verdict</h2><ul>{items}</ul><h2>Summary</h2>{table.to_html(index=False)}"
        f"<h2>Figures</h2>{''.join(img(p) for p in images)}<h2>Configuration</h2>"
        f"<pre>{html.escape(json.dumps(_short_config(config), indent=2))}</pre>"
    )
    page = (
        f"<!doctype html><html><head><meta charset='utf-8'><title>nasdd report</title><style>body{{font-family:"
        f"sans-serif;max-width:1100px;margin:auto}} table{{border-collapse:collapse;font-size:12px}} td,th"
        f"{{border:1px solid #ccc;padding:2px 6px}}</style></head><body>{body}</body></html>"
    )
    with atomic_open(path) as f:
        f.write(page)
    return path


def _short_config(config: dict) -> dict:
    """The config without the long pool list (pool.jsonl holds it)."""
    return {k: (f"{len(v)} architectures (pool.jsonl)" if k == "pool" else v) for k, v in config.items()}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("folder", help="a `nasdd validate` output folder")
    p.add_argument("--search", default=None, help="a `nasdd search` study folder for the history plot")
    p.add_argument("--proxies", nargs="*", default=[], help="proxy folders whose image grids to include")
    p.add_argument("--format", default="md,html", help="comma list of md, html")
    p.add_argument("--out", default=None, help="where to write (default: the validation folder)")


def command(args: argparse.Namespace) -> int:
    formats = tuple(f.strip() for f in args.format.split(",") if f.strip())
    bad = [f for f in formats if f not in ("md", "html")]
    if bad:
        raise NasddError(f"unknown report format {bad[0]!r}; valid formats: md, html")
    files = write_report(
        args.folder, search_dir=args.search, proxy_dirs=[Path(p) for p in args.proxies], formats=formats, out=args.out
    )
    for name, path in files.items():
        print(f"{name:>20}: {path}")
    return 0
