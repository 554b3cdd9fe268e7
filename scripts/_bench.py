"""What every benchmark script shares: the common arguments, and (from `nasdd.resultfiles`) CSV rows keyed by
their settings and the command line recorded in results/README.md. A script keeps only what it measures:

    import _bench                                      # scripts/ is on sys.path when a script runs
    ap = _bench.parser(__doc__, out="results/x.csv")   # --dataset --device --threads --quiet --out [--work]
    ap.add_argument("--ipc", type=int, default=10)     # the script's own settings
    args = _bench.parse(ap)                            # applies --threads and --quiet
    key = {"ipc": args.ipc, "dataset": args.dataset}   # the settings a row is measured under
    row = _bench.find(args.out, key) or {**key, **measure(args)}   # reuse a row, or measure
    _bench.upsert(args.out, [row], key=list(key))      # replaces rows of the same settings, keeps the rest
    _bench.record(args.out)                            # the command into results/README.md

It lives in scripts/, not in the package: only the scripts use it, and it is not installed with nasdd. The
result files' logic it hands on is the package's (`nasdd.resultfiles`, tested there).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # `python scripts/X.py` imports the nasdd of this checkout

from nasdd import resultfiles  # noqa: E402
from nasdd.resultfiles import find, read, upsert, write  # noqa: E402, F401  (the scripts call them as _bench.X)
from nasdd.utils import set_quiet  # noqa: E402

README = ROOT / "results" / "README.md"


def parser(
    doc: str, *, out: str | None, work: str | None = None, dataset: str | None = "mnist5k", device: str = "auto",
    threads: int | None = None,
) -> argparse.ArgumentParser:  # fmt: skip
    """An argument parser with the options every benchmark takes; `--help` shows `doc`."""
    first, _, rest = doc.strip().partition("\n")
    ap = argparse.ArgumentParser(description=first, epilog=rest, formatter_class=argparse.RawDescriptionHelpFormatter)
    if dataset is not None:
        ap.add_argument("--dataset", default=dataset, help=f"dataset (default {dataset})")
    ap.add_argument("--device", default=device, help=f"torch device (default {device})")
    ap.add_argument("--threads", type=int, default=threads, help=f"torch threads (default {threads or 'torch'})")
    ap.add_argument("--quiet", action="store_true", help="no progress bars")
    ap.add_argument("--out", default=out, help=f"result file or folder (default {out or 'named after the settings'})")
    if work is not None:
        ap.add_argument("--work", default=work, help=f"intermediate files, not committed (default {work})")
    return ap


def parse(ap: argparse.ArgumentParser, argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse, then apply `--threads` and `--quiet`."""
    args = ap.parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    set_quiet(args.quiet)
    return args


def record(out: str | Path, argv: Sequence[str] | None = None, readme: Path = README) -> bool:
    """Write the command that ran this script into results/README.md (`nasdd.resultfiles.record`)."""
    return resultfiles.record(out, readme, root=ROOT, argv=argv)


def random_proxy(work: Path, dataset: str, ipc: int) -> Path:
    """A seeded `random` proxy of `dataset` under `work`, made once and reused (the workers benchmarks' proxy)."""
    from nasdd.data import load_dataset
    from nasdd.distill import Saving, distill

    proxy = work / f"proxy-{dataset}-random-ipc{ipc}"
    if not (proxy / "proxy.json").exists():
        distill(load_dataset(dataset), "random", ipc=ipc, seed=0, saving=Saving(out=proxy))
    return proxy
