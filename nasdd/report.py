"""Tables and plots of cost against ranking fidelity, from a validation folder (`nasdd report`).

Reads `summary.csv`, `per_arch.csv` and `config.json` written by `nasdd validate` and writes:
`cost_vs_correlation.png` (Kendall τ and Spearman ρ against sample-gradient evaluations and seconds,
confidence intervals, noise-ceiling band, Pareto front), `proxy_vs_truth.png`, `proxy_<name>.png` image
grids, `search_history.png` when a search study folder is given, and `report.md` / `report.html`
(self-contained: images embedded) with the summary table, configs and a plain-language verdict.
"""

from __future__ import annotations

import base64
import html
import json
import math
import numbers
import shutil
from pathlib import Path

import pandas as pd

from nasdd.arch import ArchSpec
from nasdd.distill import METHODS
from nasdd.errors import NasddError
from nasdd.figures import (  # noqa: F401 - pareto_front is part of this module's interface
    KIND_STYLE,
    noise_ceiling,
    pareto_front,
    plot_cost_vs_correlation,
    plot_proxy_vs_truth,
    plot_search_history,
)
from nasdd.layout import RunLayout
from nasdd.utils import atomic_open, atomic_path


def _coreset_proxies_as_peers(summary: pd.DataFrame) -> pd.DataFrame:
    """A proxy made by a coreset method (random, herding, ...) is shown and judged as a coreset peer."""
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


def human_count(n: float) -> str:
    """640, 65.6k, 1.44M."""
    for div, unit in ((1e6, "M"), (1e3, "k")):
        if abs(n) >= div:
            return f"{n / div:.3g}{unit}"
    return f"{n:.3g}"


SMALL_POOL = 20  # below this many architectures, the verdict claims no ordering between proxies and peers
BENCHMARK_LINE = (
    "For context, the benchmark to believe (Fashion-MNIST, 60 `convnet_cpu_pooled` members, converged 3-seed "
    "truth, noise ceiling τ 0.92; `results/bench_fashion_mnist/verdict.md`): at 1/1000 to 1/30 of one truth "
    "training per candidate the best option ranks at τ 0.53–0.62, and no distilled proxy beats the best cheap "
    "peer."
)


def cost_ratio(speedup: float, against: str = " than one ground-truth seed", unit: str = "") -> str:
    """How a cost compares with one ground-truth seed, in `unit` (sample-gradients or seconds):
    `N× cheaper`, `N× dearer` or `about as costly` (never `0.8× cheaper` or `1× cheaper`)."""
    unit = f" in {unit}" if unit else ""
    if not math.isfinite(speedup):
        return f"free{unit}{' next to one ground-truth seed' if against else ''}" if speedup > 0 else ""
    if speedup <= 0:
        return ""
    if 1 / 1.055 < speedup < 1.055:  # what `.2g` would print as `1×`
        return f"about as costly{unit}{against.replace(' than ', ' as ')}"
    ratio = speedup if speedup >= 1 else 1 / speedup
    text = f"{ratio:,.0f}" if ratio >= 10 else f"{ratio:.2g}"
    return f"{text}× {'cheaper' if speedup >= 1 else 'dearer'}{unit}{against}"


def _costs(row: pd.Series) -> str:
    """`4.4× cheaper in sample-gradients and 13× cheaper in seconds than one ground-truth seed`."""
    grads = cost_ratio(float(row.get("speedup_sample_grads", math.nan)), "", "sample-gradients")
    secs = cost_ratio(float(row.get("speedup_seconds", math.nan)), "", "seconds")
    both = " and ".join(t for t in (grads, secs) if t)
    return f"{both} than one ground-truth seed" if both else ""


def _of_ceiling(tau: float, ceiling: tuple[float, float, float] | None) -> str:
    """`, 80% of the noise ceiling`, or why a τ above the ceiling is possible."""
    if not ceiling or not ceiling[0] > 0:
        return ""
    if tau <= ceiling[0]:
        return f", {tau / ceiling[0]:.0%} of the noise ceiling"
    return (
        f", above the noise ceiling ({ceiling[0]:.2f}: one truth seed against another; the proxy is compared "
        "with the seeds' mean, which agrees better with anything than one seed does)"
    )


def _interval(row: pd.Series, stat: str = "tau") -> str:
    return f"{row[stat]:.2f} [{row[f'{stat}_low']:.2f}, {row[f'{stat}_high']:.2f}]"


def verdict(
    summary: pd.DataFrame, pool: int | None = None, winner: str | None = None, moved: list[str] | None = None
) -> list[str]:
    """Plain-language conclusions: the pool and how wide its intervals are, which proxy ranks best against
    the ceiling, the peers and the cost, which pairs the audit cannot separate, the search's winner."""
    lines = []
    ceiling = noise_ceiling(summary, "tau")
    cands = summary[summary["kind"].isin(list(KIND_STYLE))].dropna(subset=["tau"])
    if cands.empty:
        return ["No proxy or peer produced a ranking."]
    if pool is None and "n_archs" in summary:
        pool = int(summary["n_archs"].max())
    width = float((cands["tau_high"] - cands["tau_low"]).median())
    small = bool(pool and pool < SMALL_POOL)
    if pool:
        tail = ": too small a pool to tell the proxies and peers apart." if small else "."
        lines.append(f"The pool holds {pool} architectures; the 95% intervals of τ are {width:.2f} wide (median){tail}")
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
        zero = " Its CI includes 0: its ranking is not distinguishable from chance." if best["tau_low"] <= 0 else ""
        costs = _costs(best)
        lines.append(
            f"{'Highest' if small else 'Best'} {KIND_STYLE[kind][2]}: **{best['name']}**, τ = {_interval(best)}"
            f"{_of_ceiling(float(best['tau']), ceiling)}, cost {human_count(best['cost_sample_grads'])} "
            f"sample-gradients{f' ({costs})' if costs else ''}.{zero}"
        )
    proxies = cands[cands["kind"] == "proxy"]
    others = cands[cands["kind"] != "proxy"]
    if small and not proxies.empty and not others.empty:
        lines.append(
            f"With {pool} architectures the audit cannot tell these proxies and peers apart: intervals this wide "
            f"overlap, and an interval from so few members is itself rough. Audit a pool of {SMALL_POOL} or more "
            "(e.g. `--preset standard`) before choosing a proxy."
        )
    elif not proxies.empty and not others.empty:
        best = proxies.loc[proxies["tau"].idxmax()]
        beaten = others[others["tau_high"] < best["tau_low"]]["name"].tolist()
        above = others[others["tau_low"] > best["tau_high"]]["name"].tolist()
        overlap = others[(others["tau_high"] >= best["tau_low"]) & (others["tau_low"] <= best["tau_high"])]
        if beaten:
            lines.append(f"{best['name']} beats {', '.join(beaten)} outside their confidence intervals.")
        if above:
            lines.append(f"{', '.join(above)} rank better than {best['name']} outside the confidence intervals.")
        if not overlap.empty:
            lines.append(
                f"With {pool or 'these'} architectures the audit cannot separate {best['name']} from "
                f"{', '.join(overlap['name'])}: their intervals overlap."
            )
    if winner:
        lines.append(f"The search's best architecture (val accuracy on the proxy): {winner}.")
    return [*lines, *list(moved or []), BENCHMARK_LINE]


def search_winner(search_dir: Path | None) -> str | None:
    """The architecture ranked first in a search folder's top.csv, with its val accuracy."""
    csv = Path(search_dir) / "top.csv" if search_dir else None
    if csv is None or not csv.exists():
        return None
    top = pd.read_csv(csv)
    if top.empty or "arch" not in top:
        return None
    acc = f" ({100 * top['accuracy'].iloc[0]:.1f}% val)" if "accuracy" in top else ""
    return f"{ArchSpec.from_json(top['arch'].iloc[0])}{acc}"


def moved_lines(proxy_dirs: list[Path]) -> list[str]:
    """For each distilled proxy, how far its images moved from their initialisation (provenance `moved`)."""
    lines = []
    for folder in proxy_dirs:
        side = RunLayout(folder).sidecar
        prov = json.loads(side.read_text()).get("provenance", {}) if side.exists() else {}
        moved = prov.get("moved")
        if moved is None:
            continue
        iters = prov.get("config", {}).get("iterations")
        note = " — its images look like the real ones it started from" if moved < 0.1 else ""
        done = f" after {iters} iterations" if iters is not None else ""
        lines.append(
            f"{Path(folder).name}: pixels moved {moved:.3g} data std on average from their initialisation{done}{note}."
        )
    return lines


HEADERS = {
    "name": "proxy or peer",
    "kind": "kind",
    "tau": "Kendall τ [95% CI]",
    "rho": "Spearman ρ [95% CI]",
    "p@5": "top-5 precision",
    "regret@1": "regret@1 (accuracy)",
    "cost_sample_grads": "sample-gradients",
    "cost_seconds": "seconds",
    "speedup_sample_grads": "cost vs one truth seed, in sample-gradients",
    "speedup_seconds": "cost vs one truth seed, in seconds",
}
KIND_NAMES = {"noise_ceiling": "noise ceiling", "truth": "ground truth"} | {k: v[2] for k, v in KIND_STYLE.items()}


def _table(summary: pd.DataFrame) -> pd.DataFrame:
    """Readable headers and numbers; blanks where a value does not apply (no NaN or inf)."""

    def cell(row: pd.Series, col: str) -> str:
        v = row.get(col)
        if col == "name":
            return str(v)
        if col == "kind":
            return KIND_NAMES.get(v, str(v))
        if not isinstance(v, numbers.Real) or not math.isfinite(v):
            return ""
        if col in ("tau", "rho") and math.isfinite(row.get(f"{col}_low", math.nan)):
            return _interval(row, col)
        if col == "cost_sample_grads":
            return human_count(float(v))
        if col in ("speedup_sample_grads", "speedup_seconds"):
            return cost_ratio(float(v), against="")
        return f"{v:.3g}" if col != "cost_seconds" else f"{v:.1f}"

    cols = [c for c in HEADERS if c in summary]
    return pd.DataFrame([{HEADERS[c]: cell(r, c) for c in cols} for _, r in summary.iterrows()])


CAPTIONS = {
    "cost_vs_correlation": "Ranking fidelity (Kendall τ, Spearman ρ) of every proxy and peer against its cost; "
    "error bars: 95% bootstrap intervals over the pool; grey band: noise ceiling; red circles: Pareto front.",
    "proxy_vs_truth": "Each proxy's or peer's score against full-data test accuracy, one point per architecture.",
    "search_history": "The search: val accuracy of each trial (trained on the proxy) and the best so far.",
}


def caption(image: Path) -> str:
    """A sentence for a figure (a proxy grid is named by its folder)."""
    if image.stem.startswith("proxy_") and image.stem != "proxy_vs_truth":
        return f"The images of {image.stem[len('proxy_') :]}, one row per class."
    return CAPTIONS.get(image.stem, image.stem)


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
    pool = len(config["pool"]) if isinstance(config.get("pool"), list) else None
    winner = search_winner(Path(search_dir)) if search_dir is not None else None
    lines = verdict(summary, pool, winner, moved_lines(list(proxy_dirs or [])))
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
        table.to_markdown(index=False, disable_numparse=True),
        "",
        "## Figures",
        "",
    ]
    parts += [f"![{p.stem}]({p.name})\n\n*{caption(p)}*\n" for p in images]
    parts += ["", "## Configuration", "", "```json", json.dumps(_short_config(config), indent=2), "```", ""]
    with atomic_open(path) as f:
        f.write("\n".join(parts))
    return path


def _write_html(path: Path, lines: list[str], table: pd.DataFrame, images: list[Path], config: dict) -> Path:
    def img(p: Path) -> str:
        data = base64.b64encode(p.read_bytes()).decode()
        src = f"data:image/png;base64,{data}"
        text = html.escape(caption(p))
        return f'<figure><img src="{src}" style="max-width:100%"><figcaption>{text}</figcaption></figure>'

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
