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
PRUNERS = ("none", "median", "hyperband", "sha")
MULTI_FIDELITY = ("hyperband", "sha")  # rungs in epochs of the training data when the recipe counts epochs
OBJECTIVES = {"accuracy": "maximize", "params": "minimize", "flops": "minimize"}
REPORTS = 10  # intermediate validation accuracies per trial (median pruner, or a recipe counting steps)


def catalog() -> list[tuple[str, str]]:
    """The samplers `nasdd list samplers` shows."""
    return list(SAMPLERS.items())


PRUNER_NOTES = {
    "none": "every trial trains to the end (the default)",
    "median": "Optuna's MedianPruner (from the 6th trial): stop a trial below the median of earlier ones at a report",
    "hyperband": "Optuna's HyperbandPruner, reduction factor 3, rungs in epochs of the training data",
    "sha": "Optuna's SuccessiveHalvingPruner, factor 3 (`--sampler random --pruner sha`: random search + SHA)",
}


def pruner_catalog() -> list[tuple[str, str]]:
    """The pruners `nasdd list pruners` shows."""
    return [(n, PRUNER_NOTES.get(n, "")) for n in PRUNERS]


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


def report_every(pruner: str, *, resource: int, steps: bool) -> int:
    """Epochs (or steps) between intermediate val accuracies: none without a pruner; every epoch for
    Hyperband and successive halving on a recipe that counts epochs (their rungs are then epochs of the
    training data: min_resource 1 epoch, max_resource the recipe's epochs); else `REPORTS` per trial."""
    if pruner == "none":
        return 0
    return 1 if pruner in MULTI_FIDELITY and not steps else max(1, resource // REPORTS)


def make_pruner(name: str, *, multi: bool, resource: int, every: int) -> optuna.pruners.BasePruner:
    if name not in PRUNERS:
        raise unknown_name("pruner", name, PRUNERS)
    if name != "none" and multi:
        raise NasddError(
            "Optuna does not support pruning in multi-objective studies; use `pruner` none", params=("pruner",)
        )
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=5)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=every, max_resource=resource, reduction_factor=3)
    if name == "sha":  # random search with successive halving: `--sampler random --pruner sha`
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=every, reduction_factor=3)
    return optuna.pruners.NopPruner()


def parse_objective(text: str) -> list[str]:
    names = [s.strip() for s in text.split(",") if s.strip()]
    if not names or names[0] != "accuracy" or len(names) > 2 or any(n not in OBJECTIVES for n in names):
        raise NasddError(f"unknown objective {text!r}; valid objectives: accuracy, accuracy,params, accuracy,flops")
    return names
