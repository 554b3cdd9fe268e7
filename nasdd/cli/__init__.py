"""The `nasdd` command line: `main`, the options every subcommand shares, and one module per subcommand.

Every subcommand module exposes `add_arguments(parser)` and `command(args) -> int`; SUBCOMMANDS names it, a
module of this package (`list` is `nasdd.cli.catalog`, `import-proxy` is `nasdd.cli.import_proxy`). Only the
requested subcommand's module is imported, and it imports the library inside its functions, so `--help`,
`--version` and `nasdd list` start without torch (so does every `X --help` but those of distill and run, whose
options list the registered methods). Errors the user can fix (NasddError) print one line, each parameter they
name shown as the flag that set it (`NasddError.render`), and exit with code 2; `--debug` shows the traceback
instead. Ctrl-C at any moment (start-up included) prints one line and exits with code 130.
"""

from __future__ import annotations

import argparse
import importlib
import os
import shlex
import signal
import sys
from collections.abc import Sequence

from nasdd import __version__
from nasdd.errors import NasddError

# subcommand -> (module that implements it, one-line help)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "list": ("nasdd.cli.catalog", "list datasets, search spaces, methods, peers, samplers and pruners"),
    "distill": ("nasdd.cli.distill", "distil a dataset into a synthetic proxy set"),
    "experts": ("nasdd.cli.experts", "train expert trajectories for trajectory matching"),
    "search": ("nasdd.cli.search", "Optuna architecture search with candidates trained on a proxy"),
    "validate": ("nasdd.cli.validate", "audit how faithfully proxies rank architectures"),
    "truth": ("nasdd.cli.truth", "train a pool on full data into a reusable truth table (CSV)"),
    "import-proxy": ("nasdd.cli.import_proxy", "turn another codebase's synthetic set into a ProxySet"),
    "bench": ("nasdd.cli.bench", "rank your proxies against a shipped benchmark at matched cost"),
    "calibrate": ("nasdd.cli.calibrate", "choose a scoring recipe on a calibration truth table"),
    "report": ("nasdd.cli.report", "tables and plots of cost against ranking fidelity"),
    "run": ("nasdd.cli.run", "distil -> search -> validate -> report in one command"),
}


def add_common(parser: argparse.ArgumentParser) -> None:
    """Options every subcommand takes."""
    parser.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda or cuda:N")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="CPU threads for torch (default: OMP_NUM_THREADS if set, else the cores this process may use "
        "that other processes do not keep busy)",
    )


def add_data_args(parser: argparse.ArgumentParser, default: str = "mnist5k") -> None:
    """Dataset options shared by the stages that load data."""
    parser.add_argument("--dataset", default=default, help=f"dataset name or imagefolder:PATH (default {default})")
    parser.add_argument(
        "--data-root",
        default=None,
        help="where torchvision datasets live or download to (default: $NASDD_DATA, else "
        "$XDG_CACHE_HOME/nasdd/data, i.e. ~/.cache/nasdd/data; Fashion-MNIST from Debian's package is read in place)",
    )
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

    commands: dict[str, _Parser]  # the top-level parser's subcommand parsers, by name (build_parser)

    def flag(self, dest: str) -> str | None:
        """The option that sets `dest` (its longest spelling, e.g. `--truth-seeds`); None when none does."""
        flags = [max(a.option_strings, key=len) for a in self._actions if a.dest == dest and a.option_strings]
        return flags[0] if flags else None

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message}; see `{self.prog} --help`\n")


def build_parser(only: str | None = None) -> _Parser:
    """The full parser; with `only`, just that subcommand's module is imported (the others list by name)."""
    parser = _Parser(prog="nasdd", description="Neural architecture search on distilled proxy datasets, with an audit.")
    parser.add_argument("--version", action="version", version=f"nasdd {__version__}")
    sub = parser.add_subparsers(dest="subcommand", metavar="SUBCOMMAND", required=True)
    parser.commands = sub.choices
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
    started = ok = False
    try:
        from nasdd.utils import _CREATED  # here, not at the top: Ctrl-C while importing is one line too

        _CREATED.clear()  # folders of an earlier in-process command are not this one's to remove
        parser = build_parser(only=name)
        args = parser.parse_args(argv)
        from nasdd.utils import set_quiet

        set_quiet(args.quiet)
        set_threads(args.threads)
        args.argv = argv
        started = True
        signal.signal(signal.SIGTERM, _raise_interrupt)  # `kill`: the same clean stop as Ctrl-C
        if hasattr(args, "storage"):
            from nasdd.storage import from_env, storage_errors

            args.storage = from_env(args.storage)  # NASDD_STORAGE when --storage is not given
            with storage_errors(args.storage):
                code = int(args.func(args) or 0)
        else:
            code = int(args.func(args) or 0)
        ok = code == 0
        return code
    except NasddError as exc:
        if args.debug:
            raise
        message = exc.render(parser.commands[args.subcommand].flag)  # a parameter a flag set reads as the flag
        if "://" in message:  # a URL quoted by a message: never print its password
            from nasdd.storage import hide

            message = hide(message)
        print(f"nasdd {args.subcommand}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        detail = f": {exc}" if str(exc) else ""
        if started and not detail:
            detail = f"; finished work is saved; to resume, rerun: {command_line(argv)}"
        elif started and "rerun" not in detail:  # e.g. a distillation inside `nasdd run` saved its checkpoint
            detail += f"; to resume, rerun: {command_line(argv)}"
        print(f"{' '.join(['nasdd', name]).strip()}: interrupted{detail}", file=sys.stderr)
        return 130
    finally:
        if started:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
        if not ok and "nasdd.utils" in sys.modules:
            sys.modules["nasdd.utils"].remove_empty_created()  # a failed command leaves no empty folder behind


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def command_line(argv: Sequence[str]) -> str:
    """The command a user typed (`nasdd ...`), quoted for a shell."""
    return shlex.join(["nasdd", *argv])


def set_threads(threads: int | None) -> int | None:
    """Set torch's CPU thread count: `threads` when given, else none when OMP_NUM_THREADS is set (torch reads
    it), else `nasdd.utils.default_threads()`. torch is only imported here when already loaded; otherwise
    OMP_NUM_THREADS is set for it (and for worker processes) to read. Returns the count set, or None."""
    from nasdd.utils import default_threads

    if threads is not None and threads < 1:
        raise NasddError(f"--threads must be a positive integer, got {threads}")
    if threads is None and os.environ.get("OMP_NUM_THREADS"):
        return None
    n = threads or default_threads()
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(n)
    else:
        os.environ["OMP_NUM_THREADS"] = str(n)
    return n
