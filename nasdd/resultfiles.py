"""The benchmarks' result files (`scripts/`, `results/`): CSV rows keyed by the settings they were measured
under, tables written atomically, and the command that made a file recorded in `results/README.md`.

    key = {"ipc": 10, "dataset": "mnist5k"}             # the settings a row is measured under
    row = find(out, key) or {**key, **measure()}         # reuse a row, or measure
    upsert(out, [row], key=list(key))                    # replaces rows of the same settings, keeps the rest
    record(out, README, root=ROOT)                       # the command into results/README.md
"""

from __future__ import annotations

import os
import re
import shlex
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from nasdd.utils import atomic_open


def read(path: str | Path) -> pd.DataFrame:
    """The rows already in a CSV (none when it does not exist)."""
    return pd.read_csv(path) if Path(path).exists() else pd.DataFrame()


def _matches(df: pd.DataFrame, key: Mapping[str, object]) -> pd.Series:
    """Rows whose settings equal `key` (compared as text: a CSV reads 10 back as 10 or 10.0)."""
    hit = pd.Series(True, index=df.index)
    for k, v in key.items():
        if k not in df:
            return pd.Series(False, index=df.index)
        hit &= df[k].map(_text) == _text(v)
    return hit


def _text(v: object) -> str:
    return str(int(v)) if isinstance(v, float) and v.is_integer() else str(v)


def find(path: str | Path, key: Mapping[str, object]) -> dict[str, Any] | None:
    """The last row measured under the settings `key`, or None."""
    df = read(path)
    hit = df[_matches(df, key)] if len(df) else df
    return hit.iloc[-1].to_dict() if len(hit) else None


def upsert(
    path: str | Path, rows: list[dict[str, Any]], key: Sequence[str], *, columns: Sequence[str] | None = None
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


def command(root: Path, argv: Sequence[str] | None = None) -> str:
    """The command line that ran this script (its path relative to `root`), with OMP_NUM_THREADS when set."""
    args = sys.argv[1:] if argv is None else argv
    env = f"OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']} " if "OMP_NUM_THREADS" in os.environ else ""
    script = Path(sys.argv[0]).resolve()
    name = script.relative_to(root) if script.is_relative_to(root) else script.name
    return f"{env}python {name} " + " ".join(map(shlex.quote, args))


def _program(cmd: str) -> str:
    """The script a command line runs (`scripts/x.py`), or its first two words after VAR=value settings."""
    words = [w for w in cmd.strip("`").split() if not re.match(r"^[A-Z_]+=", w)]
    return next((w for w in words if w.endswith(".py")), " ".join(words[:2]))


def record(out: str | Path, readme: Path, *, root: Path, argv: Sequence[str] | None = None) -> bool:
    """Write the command (`command(root, argv)`) into the `readme` table row of `out` (its first cell's first
    name). A row whose command cell holds one command of the same script gets it replaced (notes after it are
    kept); a row made by several commands, or by another program, gets this one appended ("; also ..."); a row
    already holding this exact command is left alone; a new row ends the table of files when none names `out`.
    Outputs outside the readme's folder are not recorded. Returns whether it wrote."""
    path = Path(out).resolve()
    if not path.is_relative_to(readme.parent.resolve()) or not readme.exists():
        return False
    name = path.relative_to(readme.parent.resolve()).as_posix() + ("/" if path.is_dir() else "")
    cmd = command(root, argv).strip()
    lines = readme.read_text().splitlines()
    for i, line in enumerate(lines):
        cells = line.split(" | ")
        if line.startswith("| `") and len(cells) >= 3 and cells[0][2:].split("`")[1] == name:
            spans = re.findall(r"`[^`]*`", cells[1])
            if f"`{cmd}`" in spans:
                return False
            if not spans:
                cells[1] = f"`{cmd}` {cells[1]}".rstrip()
            elif len(spans) == 1 and cells[1].startswith("`") and _program(spans[0]) == _program(cmd):
                cells[1] = f"`{cmd}`{cells[1][len(spans[0]):]}"
            else:
                cells[1] = f"{cells[1].rstrip()}; also `{cmd}`"
            lines[i] = " | ".join(cells)
            break
    else:  # a new row at the end of the table of files (the first one whose rows name files), not after prose
        first = next((i for i, line in enumerate(lines) if line.startswith("| `")), len(lines))
        end = next((i for i in range(first, len(lines)) if not lines[i].startswith("| ")), len(lines))
        lines.insert(end, f"| `{name}` | `{cmd}` | |")
    with atomic_open(readme) as f:
        f.write("\n".join(lines) + "\n")
    return True
