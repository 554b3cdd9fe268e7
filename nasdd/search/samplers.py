"""The Optuna pieces a search is made of: samplers, pruners and objectives, chosen by name."""

from __future__ import annotations

from typing import TYPE_CHECKING

import optuna

from nasdd.errors import NasddError, unknown_name

if TYPE_CHECKING:
    from nasdd.spaces import SearchSpace

SAMPLERS: dict[str, str] = {
    "tpe": "Tree-structured Parzen Estimator (Optuna's default; single and multi-objective)",
    "random": "independent uniform sampling (single and multi-objective)",
    "grid": "every member of a finite space once, in random order; stops when the grid is exhausted",
    "cmaes": "CMA-ES with margin over int/float parameters; categorical ones fall back to TPE (single objective)",
    "qmc": "scrambled Sobol quasi-random sequence, categoricals mapped onto Sobol coordinates",
    "nsga2": "NSGA-II genetic algorithm (population min(50, max(4, trials // 4))), made for multi-objective",
}
PRUNERS = ("none", "median", "hyperband")
OBJECTIVES = {"accuracy": "maximize", "params": "minimize", "flops": "minimize"}
REPORTS = 10  # intermediate validation accuracies per trial when a pruner is on


def catalog() -> list[tuple[str, str]]:
    """The samplers `nasdd list samplers` shows."""
    return list(SAMPLERS.items())


def make_sampler(name: str, space: SearchSpace, *, seed: int, trials: int, multi: bool) -> optuna.samplers.BaseSampler:
    if name not in SAMPLERS:
        raise unknown_name("sampler", name, list(SAMPLERS))
    if name == "cmaes" and multi:
        raise NasddError("the cmaes sampler is single-objective; use tpe, random, grid, qmc or nsga2")
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "grid":
        return optuna.samplers.GridSampler(space.grid(), seed=seed)
    if name == "cmaes":
        return optuna.samplers.CmaEsSampler(
            seed=seed,
            with_margin=True,
            independent_sampler=optuna.samplers.TPESampler(seed=seed),
            warn_independent_sampling=False,
        )
    if name == "qmc":
        return optuna.samplers.QMCSampler(seed=seed, scramble=True, warn_independent_sampling=False)
    return optuna.samplers.NSGAIISampler(seed=seed, population_size=min(50, max(4, trials // 4)))


def make_pruner(name: str, *, multi: bool, resource: int, every: int) -> optuna.pruners.BasePruner:
    if name not in PRUNERS:
        raise unknown_name("pruner", name, PRUNERS)
    if name != "none" and multi:
        raise NasddError("Optuna does not support pruning in multi-objective studies; use --pruner none")
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=5)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=every, max_resource=resource)
    return optuna.pruners.NopPruner()


def parse_objective(text: str) -> list[str]:
    names = [s.strip() for s in text.split(",") if s.strip()]
    if not names or names[0] != "accuracy" or len(names) > 2 or any(n not in OBJECTIVES for n in names):
        raise NasddError(f"unknown objective {text!r}; valid objectives: accuracy, accuracy,params, accuracy,flops")
    return names
