"""The cheap alternatives a proxy is judged against, in one registry (`nasdd list peers`).

- `random`, `herding`: coresets of real images at the proxies' ipc, made by the distillation methods
  of the same name and trained exactly like a proxy (same recipe, seeds and val scoring).
- `early`: the full training split with the truth recipe shortened to a few budgets (the cosine/step
  schedule is compressed to the shorter run), scored on val. By default the budgets are 0.5x, 1x and 2x
  the sample-gradient cost of one proxy training, so they cost what the proxies cost.
- zero-cost scores (see `nasdd.validate.zerocost`): synflow, naswot, grad_norm, snip, params, flops.
- `stack`: a ranker over every other row's scores plus the architecture's factors
  (`nasdd.validate.calibrate.StackRanker`), fitted on the truth of `stack_members` pool members and scored
  only on the others. It needs truth trainings, so "all" leaves it out: name it (`all,stack`).
"""

from __future__ import annotations

from dataclasses import dataclass

from nasdd.errors import NasddError
from nasdd.registry import Registry
from nasdd.validate.zerocost import DESCRIPTIONS, SCORES


@dataclass(frozen=True)
class Peer:
    name: str
    kind: str  # subset | early | zerocost | stack
    description: str


PEERS: Registry[Peer] = Registry("peer")
for _peer in (
    Peer("random", "subset", "random stratified subset of real images at the proxies' ipc, trained like a proxy"),
    Peer("herding", "subset", "herding coreset (Welling 2009) at the proxies' ipc, trained like a proxy"),
    Peer("early", "early", "full training data at reduced budgets (--budgets; default matched to proxy cost)"),
    *(Peer(n, "zerocost", f"zero-cost: {DESCRIPTIONS[n]}") for n in SCORES.names()),
    Peer("stack", "stack", "ridge ranker over every other row's scores + architecture factors, fitted on some "
         "members' truth and judged on the others only (not in `all`)"),
):  # fmt: skip
    PEERS.register(_peer.name)(_peer)


def catalog() -> list[tuple[str, str]]:
    return [(p.name, p.description) for _, p in PEERS.items()]


def subset_available(name: str) -> bool:
    """Whether the distillation method behind a subset peer exists in this build."""
    from nasdd.distill import METHODS

    return name in METHODS


def resolve_peers(names: str | list[str] | None) -> list[Peer]:
    """`None`/`"all"`: every cheap peer whose method exists (not `stack`, which needs truth trainings);
    otherwise the named ones, where `all` stands for that list (clear error if unknown or if a subset
    peer's distillation method is missing)."""
    if names is None:
        names = ["all"]
    if isinstance(names, str):
        names = [n.strip() for n in names.split(",") if n.strip()]
    cheap = [n for n, p in PEERS.items() if p.kind != "stack" and (p.kind != "subset" or subset_available(n))]
    names = [m for n in names for m in (cheap if n == "all" else [n])]
    peers = [PEERS.get(n) for n in dict.fromkeys(names)]
    for p in peers:
        if p.kind == "subset" and not subset_available(p.name):
            raise NasddError(
                f"peer {p.name!r} needs the distillation method {p.name!r}, which this nasdd build does not "
                "have yet; leave it out of `peers`",
                params=("peers",),
            )
    return peers
