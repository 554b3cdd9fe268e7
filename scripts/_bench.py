"""What every benchmark script shares: the common arguments, CSV rows keyed by their settings, and the
command line recorded in results/README.md. A script keeps only what it measures:

    import _bench                                      # scripts/ is on sys.path when a script runs
    ap = _bench.parser(__doc__, out="results/x.csv")   # --dataset --device --threads --quiet --out [--work]
    ap.add_argument("--ipc", type=int, default=10)     # the script's own settings
    args = _bench.parse(ap)                            # applies --threads and --quiet
    key = {"ipc": args.ipc, "dataset": args.dataset}   # the settings a row is measured under
    row = _bench.find(args.out, key) or {**key, **measure(args)}   # reuse a row, or measure
    _bench.upsert(args.out, [row], key=list(key))      # replaces rows of the same settings, keeps the rest
    _bench.record(args.out)                            # the command into results/README.md

It lives in scripts/, not in the package: only the scripts use it, and it is not installed with nasdd.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # `python scripts/X.py` imports the nasdd of this checkout

from nasdd.utils import atomic_open, set_quiet  # noqa: E402

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


def read(path: str | Path) -> pd.DataFrame:
    """The rows already in a CSV (none when it does not exist)."""
    return pd.read_csv(path) if Path(path).exists() else pd.DataFrame()


def _matches(df: pd.DataFrame, key: dict) -> pd.Series:
    """Rows whose settings equal `key` (compared as text: a CSV reads 10 back as 10 or 10.0)."""
    hit = pd.Series(True, index=df.index)
    for k, v in key.items():
        if k not in df:
            return pd.Series(False, index=df.index)
        hit &= df[k].map(_text) == _text(v)
    return hit


def _text(v: object) -> str:
    return str(int(v)) if isinstance(v, float) and v.is_integer() else str(v)


def find(path: str | Path, key: dict) -> dict | None:
    """The last row measured under the settings `key`, or None."""
    df = read(path)
    hit = df[_matches(df, key)] if len(df) else df
    return hit.iloc[-1].to_dict() if len(hit) else None


def upsert(
    path: str | Path, rows: list[dict], key: Sequence[str], *, columns: Sequence[str] | None = None
) -> pd.DataFrame:
    """Write `rows` into a CSV, replacing the rows of the same settings (`key` columns) and keeping the
    others in their order; `columns` fixes the column order (default: the file's, then new ones)."""
    df = read(path)
    for row in rows:
        if len(df):
            df = df[~_matches(df, {k: row[k] for k in key})]
    df = pd.concat([df, pd.DataFrame(rows)], ignore_index=True) if len(df) else pd.DataFrame(rows)
    df = df.reindex(columns=list(columns)) if columns else df
    write(df, path)
    return df


def write(df: pd.DataFrame, path: str | Path) -> None:
    """Write a whole table atomically (a reader never sees half a file)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(path) as f:
        df.to_csv(f, index=False)


def command(argv: Sequence[str] | None = None) -> str:
    """The command line that ran this script, with OMP_NUM_THREADS when set."""
    args = sys.argv[1:] if argv is None else argv
    env = f"OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']} " if "OMP_NUM_THREADS" in os.environ else ""
    script = Path(sys.argv[0]).resolve()
    name = script.relative_to(ROOT) if script.is_relative_to(ROOT) else script.name
    return f"{env}python {name} " + " ".join(map(shlex.quote, args))


def record(out: str | Path, argv: Sequence[str] | None = None, readme: Path = README) -> bool:
    """Write the command into the results/README.md table row of `out` (its first cell's first name):
    the row's first code span in the command cell is replaced, notes after it are kept; a new row is
    added when none names `out`. Outputs outside results/ are not recorded. Returns whether it wrote."""
    path = Path(out).resolve()
    if not path.is_relative_to(readme.parent.resolve()) or not readme.exists():
        return False
    name = path.relative_to(readme.parent.resolve()).as_posix() + ("/" if path.is_dir() else "")
    cmd = command(argv).strip()
    lines = readme.read_text().splitlines()
    for i, line in enumerate(lines):
        cells = line.split(" | ")
        if line.startswith("| `") and len(cells) >= 3 and cells[0][2:].split("`")[1] == name:
            notes = cells[1][1:].partition("`")[2] if cells[1].startswith("`") else f" {cells[1]}"
            cells[1] = f"`{cmd}`{notes}"
            lines[i] = " | ".join(cells)
            break
    else:
        lines.append(f"| `{name}` | `{cmd}` | |")
    with atomic_open(readme) as f:
        f.write("\n".join(lines) + "\n")
    return True


def random_proxy(work: Path, dataset: str, ipc: int) -> Path:
    """A seeded `random` proxy of `dataset` under `work`, made once and reused (the workers benchmarks' proxy)."""
    from nasdd.data import load_dataset
    from nasdd.distill import Saving, distill

    proxy = work / f"proxy-{dataset}-random-ipc{ipc}"
    if not (proxy / "proxy.json").exists():
        distill(load_dataset(dataset), "random", ipc=ipc, seed=0, saving=Saving(out=proxy))
    return proxy
