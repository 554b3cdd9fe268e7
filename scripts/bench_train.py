"""Training and evaluation throughput of the one trainer, old loop against the fast paths, in one run.

Members: the default `convnet_cpu` and `convnet_dc` members, the `convnet_cpu` default without pooling,
the default `cell201` member (plus `--members` seeded random members per space). Variants of
`nasdd.train.fit`, measured interleaved in `--rounds` rounds so that the machine's load hits all alike
(the median round is reported): `plain` (`fast=False`: whole batches, eager), `chunks` (`fast=True`,
no compile) and `compiled` (`fast=True, compile_model=True`; its first, compiling call is timed apart as
`compile_seconds`, with an empty Inductor cache, i.e. cold). Evaluation: `evaluate(fast=False)` against
`evaluate(fast=True)`. For the default `convnet_cpu` member also `nasdd.batched.fit_seeds` over 3 seeds
against 3 separate `fit` calls. The machine's single-thread SGEMM rate (`torch.mm` at the shapes of
these convolutions' im2col GEMMs, best of 20) bounds training at 3 x forward FLOPs per image if
convolutions ran as SGEMM; `sgemm_bound_fraction` is each row's share of that limit (wall rate), `_cpu`
the same per CPU second. oneDNN's direct convolutions beat torch.mm at these shapes, so it is a reference,
not a ceiling. Example (the committed results/train_throughput.csv)::

    OMP_NUM_THREADS=1 PYTHONPATH=. python scripts/bench_train.py --threads 1
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", tempfile.mkdtemp(prefix="nasdd-bench-inductor-"))  # cold compiles

import _bench  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402

from nasdd.arch import ArchSpec  # noqa: E402
from nasdd.batched import fit_seeds  # noqa: E402
from nasdd.data import DatasetBundle, load_dataset  # noqa: E402
from nasdd.spaces import load_space  # noqa: E402
from nasdd.train import TrainRecipe, build_seeded, evaluate, fit  # noqa: E402
from nasdd.utils import resolve_device  # noqa: E402

VARIANTS = {"plain": {"fast": False}, "chunks": {"compile_model": False}, "compiled": {"compile_model": True}}
# (M, K, N) of im2col GEMMs: out channels x (in channels x 9) x (pixels x images), for widths 32 and 128
GEMM_SHAPES = [(32, 288, 196 * 32), (32, 288, 784 * 32), (128, 1152, 196 * 8), (128, 1152, 49 * 32)]


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        return next(line.split(":", 1)[1].strip() for line in lines if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def sgemm_gflops(device: torch.device, repeats: int = 20) -> float:
    """The best GFLOP/s of float32 torch.mm over GEMM_SHAPES (best of `repeats` per shape)."""
    best = 0.0
    for m, k, n in GEMM_SHAPES:
        a, b = torch.randn(m, k, device=device), torch.randn(k, n, device=device)
        for _ in range(repeats):
            start = time.perf_counter()
            torch.mm(a, b)
            if device.type == "cuda":
                torch.cuda.synchronize()
            best = max(best, 2 * m * k * n / (time.perf_counter() - start) / 1e9)
    return best


def _members(args: argparse.Namespace) -> list[tuple[str, str, ArchSpec]]:
    cpu = load_space("convnet_cpu").default_arch()
    jobs = [
        ("convnet_cpu", "default", cpu),
        ("convnet_dc", "default", load_space("convnet_dc").default_arch()),
        ("convnet_cpu", "default, no pooling", ArchSpec.make("convnet", **{**dict(cpu.params), "pooling": "none"})),
        ("cell201", "default", load_space("cell201").default_arch()),
    ]
    for name in dict.fromkeys(j[0] for j in jobs):
        rng = random.Random(args.seed)
        jobs += [(name, "sampled", load_space(name).sample(rng)) for _ in range(args.members)]
    return jobs


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def bench_member(spec: ArchSpec, bundle: DatasetBundle, args: argparse.Namespace, device: torch.device) -> list[dict]:
    """One row per variant: median train and eval images/s over interleaved rounds."""
    shape = (bundle.channels, bundle.image_size, bundle.image_size)
    x, y = bundle.x_train, bundle.y_train
    models = {v: build_seeded(spec, shape, bundle.num_classes, seed=0) for v in VARIANTS}
    warm = TrainRecipe(steps=2, batch_size=args.batch_size, schedule="constant")
    compile_seconds = _timed(lambda: fit(models["compiled"], x, y, warm, device=device, compile_model=True))
    for v in ("plain", "chunks"):
        res = fit(models[v], x, y, warm, device=device, **VARIANTS[v])
    per_epoch = -(-len(x) // args.batch_size) - (len(x) % args.batch_size > 0)  # full batches only
    steps = int(min(max(args.budget / (res.seconds / res.steps), 2), args.max_steps, per_epoch))
    recipe = TrainRecipe(steps=steps, batch_size=args.batch_size, schedule="constant")
    xt, yt = bundle.x_test[: args.eval_images], bundle.y_test[: args.eval_images]
    train = {v: [] for v in VARIANTS}
    cpu = {v: [] for v in VARIANTS}  # per CPU second of this process: less sensitive to the other agents' load
    ev = {v: [] for v in VARIANTS}
    for _ in range(args.rounds):
        for v, kw in VARIANTS.items():
            cpu_start = time.process_time()
            res = fit(models[v], x, y, recipe, seed=1, device=device, **kw)
            cpu[v].append(res.sample_grads / (time.process_time() - cpu_start))
            train[v].append(res.sample_grads / res.seconds)
            fast = kw.get("fast", True)
            ev[v].append(len(yt) / _timed(lambda m=models[v], f=fast: evaluate(m, xt, yt, device=device, fast=f)))
    rows = []
    for v in VARIANTS:
        rows.append(
            {
                "variant": v,
                "params": res.params,
                "forward_mflops_per_image": round(res.flops_per_sample / 1e6, 3),
                "train_images_per_s": round(statistics.median(train[v]), 1),
                "eval_images_per_s": round(statistics.median(ev[v]), 1),
                "train_speedup": round(statistics.median(train[v]) / statistics.median(train["plain"]), 2),
                "train_images_per_cpu_s": round(statistics.median(cpu[v]), 1),
                "train_speedup_cpu": round(statistics.median(cpu[v]) / statistics.median(cpu["plain"]), 2),
                "eval_speedup": round(statistics.median(ev[v]) / statistics.median(ev["plain"]), 2),
                "train_steps": steps,
                "sample_grads": steps * args.batch_size,
                "rounds": args.rounds,
                "eval_images": len(yt),
                "compile_seconds": round(compile_seconds, 1) if v == "compiled" else None,
            }
        )
    return rows


def bench_seeds(spec: ArchSpec, bundle: DatasetBundle, args: argparse.Namespace, device: torch.device) -> list[dict]:
    """3 seeds: one `fit_seeds` pass against three `fit` calls (chunks, no compile), interleaved."""
    x, y, seeds = bundle.x_train, bundle.y_train, [0, 1, 2]
    recipe = TrainRecipe(steps=args.seed_steps, batch_size=args.batch_size, schedule="constant")
    nc, times = bundle.num_classes, {"3 seeds separate": [], "3 seeds batched (vmap)": []}
    fit_seeds(spec, x, y, TrainRecipe(steps=1, batch_size=args.batch_size), num_classes=nc, seeds=seeds, device=device)
    shape = tuple(x.shape[1:])
    for _ in range(args.rounds):
        times["3 seeds separate"].append(
            _timed(
                lambda: [
                    fit(build_seeded(spec, shape, nc, s), x, y, recipe, seed=s, device=device, compile_model=False)
                    for s in seeds
                ]
            )
        )
        times["3 seeds batched (vmap)"].append(
            _timed(lambda: fit_seeds(spec, x, y, recipe, num_classes=nc, seeds=seeds, device=device))
        )
    n = 3 * args.seed_steps * args.batch_size
    base = n / statistics.median(times["3 seeds separate"])
    return [
        {
            "variant": v,
            "train_images_per_s": round(n / statistics.median(t), 1),
            "train_speedup": round(n / statistics.median(t) / base, 2),  # against 3 separate fast fits
            "train_steps": args.seed_steps,
            "sample_grads": n,
            "rounds": args.rounds,
        }
        for v, t in times.items()
    ]


def main(argv: list[str] | None = None) -> int:
    parser = _bench.parser(__doc__, out="results/train_throughput.csv", device="cpu")
    parser.add_argument("--members", type=int, default=0, help="seeded random members per space, besides the listed")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=256, help="the proxy recipe's batch size")
    parser.add_argument("--budget", type=float, default=3.0, help="about this many seconds per plain measurement")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--max-steps", type=int, default=100)
    parser.add_argument("--seed-steps", type=int, default=6, help="steps of the 3-seed comparison")
    parser.add_argument("--eval-images", type=int, default=1000)
    args = _bench.parse(parser, argv)
    device = resolve_device(args.device)
    bundle = load_dataset(args.dataset)
    gflops = sgemm_gflops(device)
    print(f"single-thread SGEMM {gflops:.1f} GFLOP/s" if torch.get_num_threads() == 1 else f"SGEMM {gflops:.1f}")
    rows = []
    jobs = _members(args)
    for space, member, spec in jobs:
        new = bench_member(spec, bundle, args, device)
        if (space, member) == ("convnet_cpu", "default"):
            same = {k: new[0][k] for k in ("params", "forward_mflops_per_image")}
            new += [{**same, **r} for r in bench_seeds(spec, bundle, args, device)]
        for r in new:
            r["sgemm_gflops"] = round(gflops, 1)
            r["sgemm_bound_fraction"] = round(
                r["train_images_per_s"] * 3 * r["forward_mflops_per_image"] * 1e6 / (gflops * 1e9), 3
            )
            r["load_avg_1min"] = round(os.getloadavg()[0], 1)  # the machine is shared: load slows every row
            rows.append({"space": space, "member": member, "arch": spec.short(), "arch_key": spec.key(), **r})
            print(
                f"{space:12s} {member:20s} {r['variant']:22s} {r['forward_mflops_per_image']:8.2f} MFLOP  "
                f"train {r['train_images_per_s']:8.1f} img/s(x{r['train_speedup']}, cpu x{r.get('train_speedup_cpu')}) "
                f"eval {r.get('eval_images_per_s') or float('nan'):8.1f} img/s  load {r['load_avg_1min']}  "
                f"{r['sgemm_bound_fraction']:.1%} of SGEMM bound",
                flush=True,
            )
    common = {
        "batch_size": args.batch_size,
        "input": "x".join(map(str, (bundle.channels, bundle.image_size, bundle.image_size))),
        "dataset": bundle.name,
        "torch_threads": torch.get_num_threads(),
        "device": _device_name(device),
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
    }
    df = pd.DataFrame([{**r, **common} for r in rows])
    df["train_seconds"] = (df["sample_grads"] / df["train_images_per_s"]).round(2)
    df["eval_seconds"] = (df["eval_images"] / df["eval_images_per_s"]).round(2)
    df["sgemm_bound_images_per_s"] = (df["sgemm_gflops"] * 1e3 / (3 * df["forward_mflops_per_image"])).round(1)
    df["sgemm_bound_fraction_cpu"] = (df["train_images_per_cpu_s"] / df["sgemm_bound_images_per_s"]).round(3)
    _bench.write(df, args.out)
    _bench.record(args.out, argv)
    print(f"wrote {args.out} ({len(rows)} rows, torch threads {torch.get_num_threads()}, device {device})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
