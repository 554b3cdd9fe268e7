"""`nasdd report`: tables and plots of cost against ranking fidelity (see `nasdd.report`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from nasdd.errors import NasddError


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("folder", help="a `nasdd validate` output folder")
    p.add_argument("--search", default=None, help="a `nasdd search` study folder for the history plot")
    p.add_argument("--proxies", nargs="*", default=[], help="proxy folders whose image grids to include")
    p.add_argument("--format", default="md,html", help="comma list of md, html")
    p.add_argument("--out", default=None, help="where to write (default: the validation folder)")


def command(args: argparse.Namespace) -> int:
    from nasdd.report import write_report

    formats = tuple(f.strip() for f in args.format.split(",") if f.strip())
    bad = [f for f in formats if f not in ("md", "html")]
    if bad:
        raise NasddError(f"unknown report format {bad[0]!r}; valid formats: md, html")
    files = write_report(
        args.folder, search_dir=args.search, proxy_dirs=[Path(p) for p in args.proxies], formats=formats, out=args.out
    )
    for name, path in files.items():
        print(f"{name:>20}: {path}")
    return 0
