"""Is a truth recipe converged? Ranking agreement between two truth tables of the same pool (a recipe R and
a longer one), next to each table's seed-to-seed agreement (the noise ceiling).

    PYTHONPATH=. python scripts/check_truth.py --short A.csv --long B.csv --out results/X/check.csv

Converged (the ranking benchmark's criterion): tau(R, 2R) >= min(seed-to-seed tau of R, 0.85).
"""

from __future__ import annotations

import _bench

from nasdd.validate.matched import convergence
from nasdd.validate.table import TruthTable


def main() -> None:
    ap = _bench.parser(__doc__, out=None, dataset=None)
    ap.add_argument("--short", required=True, help="truth table of the recipe under test")
    ap.add_argument("--long", required=True, help="truth table of a longer recipe, same members")
    ap.add_argument("--resamples", type=int, default=1000)
    args = _bench.parse(ap)
    short, long = TruthTable.load(args.short), TruthTable.load(args.long)
    short.check(dataset_key=long.meta["dataset_key"], space=long.meta["space"])
    table = convergence(short, long, args.resamples)
    if args.out:
        _bench.write(table, args.out)
        _bench.record(args.out)
    print(table.T.to_string(header=False))


if __name__ == "__main__":
    main()
