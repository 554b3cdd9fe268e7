"""`nasdd distill`: distil a dataset into a ProxySet folder, optionally evaluating it."""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nasdd.cli import add_data_args, command_line, load_data_from_args
from nasdd.errors import NasddError

if TYPE_CHECKING:
    from nasdd.arch import ArchSpec
    from nasdd.data import DatasetBundle
    from nasdd.distill.options import Options
    from nasdd.distill.proxy import ProxySet


def add_arguments(p: argparse.ArgumentParser) -> None:
    from nasdd.distill import METHODS  # the methods' names and presets (imports torch)
    from nasdd.train import RECIPES

    add_data_args(p)
    p.add_argument("--method", required=True, help=f"one of: {', '.join(METHODS.names())}")
    p.add_argument("--ipc", type=int, required=True, help="images per class")
    p.add_argument("--iterations", type=int, default=None, help="outer iterations (method default if omitted)")
    p.add_argument("--seed", type=int, default=0, help="seed of the initial images and every random draw")
    p.add_argument("--init", default="real", choices=["real", "noise"], help="initialise from real images or noise")
    p.add_argument("--arch", default=None, help="matching network as ArchSpec JSON (default: the DC ConvNet)")
    p.add_argument(
        "--match-space",
        default=None,
        metavar="SPACE",
        help="match through members of this search space (name or YAML path), drawn per iteration, not --arch",
    )
    p.add_argument(
        "--match-pool", type=int, default=None, metavar="N", help="members drawn from --match-space (default 16)"
    )
    p.add_argument("--lr-img", type=float, default=None, help="learning rate of the images (default: the method's)")
    presets = sorted({name for _, cls in METHODS.items() for name in cls.presets})
    p.add_argument("--preset", default=None, choices=presets, help="a method preset (default: none); flags override it")
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE", help="method option (repeatable)")
    p.add_argument(
        "--checkpoint-every", type=int, default=100, help="iterations between checkpoints (Ctrl-C saves one too)"
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue from OUT/checkpoint.pt (always done when it holds this configuration; kept for scripts)",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace a proxy already in --out, and discard a checkpoint there of another configuration",
    )
    p.add_argument("--keep-checkpoint", action="store_true", help="keep OUT/checkpoint.pt after a successful run")
    p.add_argument("--out", required=True, help="folder for proxy.pt, proxy.json and grid.png")
    p.add_argument("--evaluate", action="store_true", help="train the default ConvNet on the proxy 5 times")
    recipes = ", ".join(RECIPES)
    p.add_argument("--eval-recipe", default="proxy", help=f"--evaluate recipe: a preset ({recipes}) and/or key=value")


def parse_options(pairs: list[str], options_type: type[Options] | None = None) -> dict[str, Any]:
    """`key=value` strings -> dict, each value parsed to the type of `options_type`'s field (default the
    base `Options`; YAML scalars for keys it lacks: numbers, booleans, strings; `Options.make` refuses
    unknown keys later)."""
    from nasdd.distill.options import Options

    options_type = options_type or Options
    out = {}
    for pair in pairs:
        if "=" not in pair:
            raise NasddError(f"--option expects KEY=VALUE, got {pair!r}")
        k, v = pair.split("=", 1)
        key = k.strip().replace("-", "_")
        out[key] = options_type.parse(key, v)
    return out


def _summary(name: str, accs: list[float]) -> str:
    sd = statistics.stdev(accs) if len(accs) > 1 else 0.0
    return f"{name:>8}: test accuracy {100 * statistics.mean(accs):.2f} ± {100 * sd:.2f} % over {len(accs)} seeds"


def command(args: argparse.Namespace) -> int:
    from nasdd.arch import ArchSpec
    from nasdd.distill import CHECKPOINT, METHODS, distill
    from nasdd.distill.evaluate import evaluate_proxy
    from nasdd.train import RECIPES, TrainRecipe

    try:
        arch = ArchSpec.from_json(args.arch) if args.arch else None
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise NasddError(f"--arch is not valid ArchSpec JSON: {exc}") from exc
    options = parse_options(args.option, METHODS.get(args.method).options_type)
    bundle = load_data_from_args(args)
    try:
        proxy = _distill(args, bundle, arch, options)
    except KeyboardInterrupt as exc:
        rerun = command_line(getattr(args, "argv", None) or sys.argv[1:])
        if str(exc):
            raise KeyboardInterrupt(f"{exc}; to resume, rerun: {rerun}") from None
        saved = Path(args.out) / CHECKPOINT
        kept = f"{saved} (from the last --checkpoint-every) is kept" if saved.exists() else "nothing was saved"
        raise KeyboardInterrupt(f"{kept}; to resume, rerun: {rerun}") from None
    cost = proxy.provenance["cost"]
    val = f" + a synthetic validation set of {len(proxy.val_images)}" if proxy.val_images is not None else ""
    print(
        f"{args.method}: {len(proxy.images)} images ({args.ipc} per class){val} -> {args.out} "
        f"[{cost['seconds']:.1f} s, {cost['sample_grads']:,} sample-gradients]"
    )
    if args.evaluate:
        recipe = TrainRecipe.parse(args.eval_recipe, RECIPES["proxy"])
        accs = [r.accuracy for r in evaluate_proxy(proxy, bundle, recipe=recipe, device=args.device)]
        print(_summary(args.method, accs))
        if args.method != "random":
            baseline = distill(bundle, "random", args.ipc, args.seed)
            ref = [r.accuracy for r in evaluate_proxy(baseline, bundle, recipe=recipe, device=args.device)]
            print(_summary("random", ref))
    return 0


def _distill(args: argparse.Namespace, bundle: DatasetBundle, arch: ArchSpec | None, options: dict) -> ProxySet:
    """The distillation the flags ask for; a checkpoint of the same configuration in --out is resumed."""
    from nasdd.distill import Saving, distill

    return distill(
        bundle,
        args.method,
        args.ipc,
        args.seed,
        preset=args.preset,
        saving=Saving(args.out, True, args.overwrite, args.checkpoint_every, args.keep_checkpoint),
        iterations=args.iterations,
        init=args.init,
        arch=arch,
        match_space=args.match_space,
        match_pool=args.match_pool,
        lr_img=args.lr_img,
        device=args.device,
        **options,
    )
