"""Pools of architectures to audit: a balanced draw from a space, a JSON-lines file, or an Optuna study.

`draw_pool` (the balanced, Latin-hypercube-style draw) lives in `nasdd.spaces`, where distillation can
use it too; it is re-exported here.
"""

from __future__ import annotations

import json
from pathlib import Path

from nasdd.arch import ArchSpec
from nasdd.errors import NasddError
from nasdd.spaces import SearchSpace, draw_pool, factor_counts

__all__ = ["draw_pool", "factor_counts", "read_archs", "study_pool", "write_archs"]


def read_archs(path: str | Path) -> list[ArchSpec]:
    """ArchSpecs from a JSON-lines file, one dict per line (blank lines and `#` comments skipped)."""
    path = Path(path)
    if not path.is_file():
        raise NasddError(f"`archs` file {path} does not exist", params=("archs",))
    pool: list[ArchSpec] = []
    for no, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        try:
            d = json.loads(line)
        except json.JSONDecodeError as exc:
            raise NasddError(f"{path}:{no}: not valid JSON ({exc.msg})") from None
        if not isinstance(d, dict) or "family" not in d:
            raise NasddError(f"{path}:{no}: expected an ArchSpec object with a 'family' key")
        pool.append(ArchSpec.from_dict(d))
    if not pool:
        raise NasddError(f"`archs` file {path} holds no architectures", params=("archs",))
    return list(dict.fromkeys(pool))


def write_archs(path: str | Path, pool: list[ArchSpec]) -> None:
    from nasdd.utils import atomic_open

    with atomic_open(path) as f:
        f.writelines(a.to_json() + "\n" for a in pool)


def study_pool(study_name: str, storage: str, space: SearchSpace | None = None) -> list[ArchSpec]:
    """The distinct architectures of an Optuna study's finished trials, in trial order.

    A trial's ArchSpec is its `arch` user attribute (JSON) when present, else its parameters replayed
    through `space`.
    """
    import optuna

    from nasdd.storage import masked
    from nasdd.validate.store import open_storage

    try:
        study = optuna.load_study(study_name=study_name, storage=open_storage(storage))
    except KeyError:
        raise NasddError(f"no study {study_name!r} in storage {masked(storage)}") from None
    pool: list[ArchSpec] = []
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
        arch = t.user_attrs.get("arch")
        if arch is not None:
            pool.append(ArchSpec.from_dict(json.loads(arch) if isinstance(arch, str) else arch))
        elif space is not None:
            pool.append(space.suggest(optuna.trial.FixedTrial(t.params)))
        else:
            raise NasddError(
                f"study {study_name}: trial {t.number} has no 'arch' attribute; give `space`", params=("space",)
            )
    if not pool:
        raise NasddError(f"study {study_name!r} has no completed trials")
    return list(dict.fromkeys(pool))
