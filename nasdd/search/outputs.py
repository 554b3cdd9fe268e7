"""What a search shows and leaves: per-trial progress; trials.csv, top.csv and Optuna's matplotlib plots."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import optuna
import pandas as pd
from optuna.trial import FrozenTrial, TrialState

from nasdd.search.workers import is_counted
from nasdd.utils import atomic_open, atomic_path, progress

if TYPE_CHECKING:
    from matplotlib.axes import Axes


class TrialProgress:
    """Per-trial progress: a bar with ETA on a terminal, one line per finished trial on stdout otherwise
    (logs, pipes); nothing when `show` is false (`--quiet`). `trials` None: no set count (a budget stops it)."""

    def __init__(self, name: str, trials: int | None, done: int, *, show: bool) -> None:
        self.lines = show and not sys.stdout.isatty()
        self.trials, self.start = trials, time.monotonic()
        self.first = done if trials is None else min(done, trials)
        disable = None if show and not self.lines else True
        self.bar = progress(
            total=trials,
            initial=self.first,
            desc="search" if name == "search" else f"search {name}",
            unit="trial",
            disable=disable,
        )

    def update(self, study: optuna.Study, trial: FrozenTrial, counted: list[FrozenTrial]) -> None:
        """After `trial` ended; `counted`: the study's finished trials now (every worker's)."""
        done, best = len(counted) if self.trials is None else min(len(counted), self.trials), best_text(study, counted)
        self.bar.set_postfix_str(best, refresh=False)
        self.bar.update(max(0, done - self.bar.n))  # through update() so tqdm's ETA sees the rate
        if self.lines and is_counted(trial):
            of = "" if self.trials is None else f"/{self.trials}"
            print(f"trial {trial.number} {_outcome(trial)}; {done}{of} finished, {best}{self._eta(done)}")
            sys.stdout.flush()

    def _eta(self, done: int) -> str:
        if self.trials is None or done <= self.first or done >= self.trials:
            return ""
        left = (time.monotonic() - self.start) / (done - self.first) * (self.trials - done)
        return f", ETA {time.strftime('%H:%M:%S', time.gmtime(left))}"

    def close(self) -> None:
        self.bar.close()


def _outcome(t: FrozenTrial) -> str:
    a = t.user_attrs
    if t.state == TrialState.COMPLETE:
        how = f"cached from trial {a['cached_from']}" if "cached_from" in a else f"{a.get('seconds', 0):.1f} s"
        label = f"score({a['score_kind']})" if "score_kind" in a else "val"
        return f"{label} {t.values[0]:.4f} ({how})"
    if t.state == TrialState.PRUNED:
        return f"pruned at {a.get('pruned_at', '?')}"
    return f"failed: {a.get('fail_reason', 'unknown')}"


def best_text(study: optuna.Study, counted: list[FrozenTrial]) -> str:
    """The progress summary of the best result so far."""
    complete = [t for t in counted if t.state == TrialState.COMPLETE]
    if not complete:
        return "best -"
    if len(study.directions) > 1:
        return f"pareto {len(study.best_trials)}"
    return f"best {max(t.value for t in complete if t.value is not None):.4f}"


def top_trials(study: optuna.Study, k: int) -> list[FrozenTrial]:
    """The best `k` distinct architectures; multi-objective: the Pareto front first, each by accuracy."""
    complete = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]
    front = {t.number for t in study.best_trials} if len(study.directions) > 1 and complete else set()
    ranked = sorted(complete, key=lambda t: (t.number not in front, -t.values[0], t.number))
    seen, out = set(), []
    for t in ranked:
        if t.user_attrs.get("arch_key") not in seen:
            seen.add(t.user_attrs.get("arch_key"))
            out.append(t)
    return out[:k]


def write_outputs(study: optuna.Study, out: Path, top: int) -> None:
    """trials.csv, top.csv and Optuna's matplotlib plots (PNG) in `out`; top.csv's first value column is
    `accuracy` (val), or `score` when a scoring recipe valued the trials."""
    with atomic_open(out / "trials.csv") as f:
        study.trials_dataframe().to_csv(f, index=False)
    scored = any("score_kind" in t.user_attrs for t in study.get_trials(deepcopy=False))
    first = "score" if scored else "accuracy"
    names = [first, *(study.user_attrs.get("nasdd", {}).get("objective", "").split(",")[1:])]
    rows = []
    for rank, t in enumerate(top_trials(study, top), 1):
        a = t.user_attrs
        row = {"rank": rank, "trial": t.number, **dict(zip(names, t.values, strict=False))}
        row.update({k: a.get(k) for k in ("params", "flops", "seconds", "sample_grads", "cached_from")})
        rows.append({**row, "arch_key": a.get("arch_key"), "arch": a.get("arch")})
    with atomic_open(out / "top.csv") as f:
        pd.DataFrame(rows, columns=None if rows else ["rank", "trial", "accuracy", "arch_key", "arch"]).to_csv(
            f, index=False
        )
    write_plots(study, out, names)


def write_plots(study: optuna.Study, out: Path, names: list[str]) -> list[str]:
    """Optimisation history, parameter importances (needs >= 2 distinct results) and the Pareto front."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.figure import Figure
    from optuna.visualization import matplotlib as ovm

    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not complete:
        return []
    multi = len(study.directions) > 1
    label = "val accuracy" if names[0] == "accuracy" else names[0]

    def first(t: FrozenTrial) -> float:
        return t.values[0]

    plots: dict[str, Callable[[], Axes]] = {
        "history": lambda: ovm.plot_optimization_history(study, target=first, target_name=label)
    }
    if len({t.values[0] for t in complete}) > 1 and len(complete) >= 2:
        fanova = optuna.importance.FanovaImportanceEvaluator(seed=0)  # variance-based: indifferent to direction
        plots["importances"] = lambda: ovm.plot_param_importances(
            study, evaluator=fanova, target=first, target_name=label
        )
    if multi:
        plots["pareto"] = lambda: ovm.plot_pareto_front(study, target_names=names)
    if any(t.intermediate_values for t in complete):
        plots["intermediate"] = lambda: ovm.plot_intermediate_values(study)
    written = []
    for name, plot in plots.items():
        try:
            ax = plot()
        except (ValueError, RuntimeError, ZeroDivisionError):  # e.g. importances of a single-valued parameter set
            continue
        fig = ax.figure
        assert isinstance(fig, Figure)  # Optuna draws each plot on a figure of its own
        fig.tight_layout()
        with atomic_path(out / f"{name}.png") as tmp:
            fig.savefig(tmp, dpi=110)
        plt.close(fig)
        written.append(name)
    return written
