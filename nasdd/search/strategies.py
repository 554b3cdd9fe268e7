"""Search strategies, chosen by name (`nasdd search --strategy NAME`; `nasdd list strategies`)."""

from __future__ import annotations

from nasdd.errors import unknown_name

STRATEGIES: dict[str, str] = {
    "default": "every trial trains a sampled candidate on the proxy (or the full data) and is scored on real val; "
    "--pruner for multi-fidelity, --retrain-top for the top k on the full data",
    "prescreen": "score --trials candidates with a cheap signal (--prescreen: a zero-cost score or the proxy), then "
    "synchronous successive halving on the real data over the best of them, bracket and rungs (epochs) chosen "
    "from --budget; winner by real val after the last rung",
}


def check(name: str) -> str:
    if name not in STRATEGIES:
        raise unknown_name("strategy", name, list(STRATEGIES))
    return name


def catalog() -> list[tuple[str, str]]:
    return list(STRATEGIES.items())
