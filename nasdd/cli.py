"""The `nasdd` command line: one subcommand per stage, each defined next to the code it runs.

Every stage module exposes `add_arguments(parser)` and `command(args) -> int`. Errors the user can
fix (NasddError) print one line and exit with code 2; `--debug` shows the traceback instead. Only the
requested subcommand's module is imported, so `--help`, `--version` and `nasdd list` start without torch;
Ctrl-C at any moment (start-up included) prints one line and exits with code 130.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from nasdd import __version__
from nasdd.errors import NasddError

# subcommand -> (module that implements it, one-line help)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "list": ("nasdd.catalog", "list datasets, search spaces, methods, peers and samplers"),
    "distill": ("nasdd.distill.cli", "distil a dataset into a synthetic proxy set"),
    "experts": ("nasdd.distill.experts", "train expert trajectories for trajectory matching"),
    "search": ("nasdd.search", "Optuna architecture search with candidates trained on a proxy"),
    "validate": ("nasdd.validate.cli", "audit how faithfully proxies rank architectures"),
    "truth": ("nasdd.validate.truth_cli", "train a pool on full data into a reusable truth table (CSV)"),
    "import-proxy": ("nasdd.distill.import_cli", "turn another codebase's synthetic set into a ProxySet"),
    "bench": ("nasdd.validate.bench_cli", "rank your proxies against a shipped benchmark at matched cost"),
    "calibrate": ("nasdd.validate.calibrate_cli", "choose a scoring recipe on a calibration truth table"),
    "report": ("nasdd.report", "tables and plots of cost against ranking fidelity"),
    "run": ("nasdd.pipeline", "distil -> search -> validate -> report in one command"),
}


def add_common(parser: argparse.ArgumentParser) -> None:
    """Options every subcommand takes."""
    parser.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda or cuda:N")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's)")


def add_data_args(parser: argparse.ArgumentParser, default: str = "mnist5k") -> None:
    """Dataset options shared by the stages that load data."""
    parser.add_argument("--dataset", default=default, help=f"dataset name or imagefolder:PATH (default {default})")
    parser.add_argument("--data-root", default="data", help="where torchvision datasets live or download to")
    parser.add_argument(
        "--max-per-class", type=int, default=None, help="cap the training pool per class (default: no cap)"
    )
    parser.add_argument("--image-size", type=int, default=32, help="resize imagefolder images to this size")


def load_data_from_args(args: argparse.Namespace):  # noqa: ANN201 - returns DatasetBundle
    from nasdd.data import load_dataset

    return load_dataset(args.dataset, root=args.data_root, max_per_class=args.max_per_class, image_size=args.image_size)


class HelpFormatter(argparse.HelpFormatter):
    """Every option's help ends with its default, unless the text already names one or there is none."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        none = action.default is None or action.default is False or action.default == argparse.SUPPRESS
        if "default" in text or none or not action.option_strings:
            return text
        return f"{text} (default: %(default)s)"


class _Parser(argparse.ArgumentParser):
    """argparse with a one-line usage error (exit code 2) that points at --help."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message}; see `{self.prog} --help`\n")


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The full parser; with `only`, just that subcommand's module is imported (the others list by name)."""
    parser = _Parser(prog="nasdd", description="Neural architecture search on distilled proxy datasets, with an audit.")
    parser.add_argument("--version", action="version", version=f"nasdd {__version__}")
    sub = parser.add_subparsers(dest="subcommand", metavar="SUBCOMMAND", required=True)
    for name, (module, help_text) in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text, formatter_class=HelpFormatter)
        if only is None or name == only:
            try:
                mod = importlib.import_module(module)
            except ModuleNotFoundError as exc:
                if not exc.name or not exc.name.startswith("nasdd"):
                    raise
                p.set_defaults(func=_not_built(name))
            else:
                mod.add_arguments(p)
                p.set_defaults(func=mod.command)
        add_common(p)
    return parser


def _requested(argv: Sequence[str]) -> str:
    """The subcommand named on the command line ('' when none is: only top-level options)."""
    first = next((a for a in argv if not a.startswith("-")), "")
    return first if first in SUBCOMMANDS else ""


def _not_built(name: str):  # noqa: ANN202
    def run(args: argparse.Namespace) -> int:
        raise NasddError(f"`nasdd {name}` is not available in this version yet")

    return run


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    name = _requested(argv)
    started = False
    try:
        args = build_parser(only=name).parse_args(argv)
        from nasdd.utils import set_quiet

        set_quiet(args.quiet)
        if args.threads:
            import torch

            torch.set_num_threads(args.threads)
        started = True
        if not hasattr(args, "storage"):
            return int(args.func(args) or 0)
        from nasdd.storage import from_env, storage_errors

        args.storage = from_env(args.storage)  # NASDD_STORAGE when --storage is not given
        with storage_errors(args.storage):
            return int(args.func(args) or 0)
    except NasddError as exc:
        if args.debug:
            raise
        message = str(exc)
        if "://" in message:  # a URL quoted by a message: never print its password
            from nasdd.storage import hide

            message = hide(message)
        print(f"nasdd {args.subcommand}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        detail = f": {exc}" if str(exc) else ""
        if started and not detail:
            detail = "; finished work is saved, rerun the same command to resume"
        print(f"{' '.join(['nasdd', name]).strip()}: interrupted{detail}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
