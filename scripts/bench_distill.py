"""Benchmark distillation methods: distil, evaluate with one recipe, write CSVs and a bar chart.

    python scripts/bench_distill.py --dataset mnist5k --methods dm,cafe --ipc 1,10 --preset cpu --eval-seeds 5

Writes `results/distill_<dataset>/<method>.csv` (one row per ipc and preset; rows of other ipcs/presets already
in the file are kept) and rebuilds `results/distill_<dataset>.csv` and `.png` from every per-method file present.
Every proxy (random included) is evaluated with the same recipe (`--eval-recipe`, default the DC recipe
`proxy`) and the same seeds; `random_acc_mean` is the stratified random subset of the same ipc under that
recipe (computed once per ipc and recipe, and reused from `random.csv` when it holds at least as many seeds).
With `--work DIR` each proxy is saved to `DIR/proxies/<method>-ipc<k>` (the layout of `nasdd.pipeline.make_proxies`,
so `scripts/bench_validate.py --work DIR` audits these very proxies) and reused when it is already there (its
peak memory is then unknown: NaN). MTT's expert training is reported apart (`expert_*` columns).
With `--speed` nothing is evaluated: for each method, one distiller per path is set up and its outer iterations are
timed `--rounds` times on the previous path (`reference=True`: dc/dsa's torch.func matching, the original DM
code's loop over classes, MTT's back-propagation through the whole unroll) and on the current one,
interleaved, from the same images and seeds; the median seconds per iteration of both paths, their ratio
and the load average go to `results/distill_speed.csv` (one row per method, ipc, preset and path).
`--speed --compile` adds dc/dsa/dm's compiled path (`compile_model=True`; its untimed first iteration, which
compiles, in `warmup_s`).
Peak memory: CUDA max_memory_allocated on GPU; on CPU the growth of the process's peak resident set during
distillation (VmHWM reset through /proc/self/clear_refs; ru_maxrss growth where that is unavailable).
"""

from __future__ import annotations

import math
import resource
import statistics
import sys
import time
from pathlib import Path

import _bench  # noqa: E402  (puts this checkout's nasdd first on the path)
import pandas as pd
import torch

from nasdd.cli.distill import parse_options  # noqa: E402
from nasdd.data import load_dataset  # noqa: E402
from nasdd.distill import METHODS, ProxySet, Saving, distill  # noqa: E402
from nasdd.distill.evaluate import evaluate_proxy  # noqa: E402
from nasdd.errors import NasddError  # noqa: E402
from nasdd.layout import RunLayout  # noqa: E402
from nasdd.train import RECIPES, TrainRecipe  # noqa: E402
from nasdd.utils import atomic_path, proc_status_kb, resolve_device  # noqa: E402

COLUMNS = [
    "method", "ipc", "preset", "iterations", "distill_seconds", "distill_sample_grads", "peak_mem_mb",
    "eval_recipe", "acc_mean", "acc_std", "acc_seeds", "random_acc_mean", "published",
    "expert_seconds", "expert_sample_grads",
]  # fmt: skip
# Published ConvNet-3 test accuracies (%) at ipc 1 / 10 (DC, DSA, DM, CAFE, KIP papers; random from DC).
PUBLISHED = {
    "mnist5k": {},  # a 5,000-image subset: not comparable to full-MNIST numbers
    "mnist": {"random": {1: 64.9, 10: 95.1}, "dc": {1: 91.7, 10: 97.4}, "dsa": {1: 88.7, 10: 97.8},
              "dm": {1: 89.7, 10: 97.5}, "cafe": {1: 93.1, 10: 97.2}},
    "fashion_mnist": {"random": {1: 51.4, 10: 73.8}, "dc": {1: 70.5, 10: 82.3}, "dsa": {1: 70.6, 10: 84.6},
                      "dm": {1: 70.7, 10: 83.5}, "cafe": {1: 77.1, 10: 83.0}, "kip": {1: 73.5, 10: 86.8}},
}  # fmt: skip


def published(dataset: str, method: str, ipc: int) -> float:
    return PUBLISHED.get(dataset, {}).get(method, {}).get(int(ipc), float("nan"))


class PeakMemory:
    """Peak memory growth (MB) inside a `with` block, on CUDA or CPU."""

    def __init__(self, device: torch.device) -> None:
        self.device, self.mb = device, float("nan")

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            self.base = torch.cuda.memory_allocated(self.device)
            return self
        self.hwm = False
        try:
            Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
            self.hwm, self.base = True, proc_status_kb("VmRSS")
        except OSError:
            self.base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return self

    def __exit__(self, *exc: object) -> None:
        if self.device.type == "cuda":
            self.mb = (torch.cuda.max_memory_allocated(self.device) - self.base) / 2**20
        elif self.hwm and self.base is not None:
            self.mb = max((proc_status_kb("VmHWM") or 0) - self.base, 0) / 1024
        else:
            self.mb = max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - self.base, 0) / 1024


def _accuracies(proxy, bundle, recipe: TrainRecipe, seeds: int, device) -> list[float]:
    results = evaluate_proxy(proxy, bundle, recipe=recipe, seeds=range(seeds), device=device)
    return [100 * r.accuracy if r.ok else float("nan") for r in results]


def _stats(accs: list[float]) -> tuple[float, float]:
    return statistics.mean(accs), statistics.stdev(accs) if len(accs) > 1 else 0.0


def _read(path: Path) -> pd.DataFrame:
    return _bench.read(path).reindex(columns=COLUMNS)


def _upsert(path: Path, row: dict) -> None:
    """Replace the row of the same (ipc, preset) in a per-method CSV, keep the others (sorted by ipc)."""
    df = _bench.upsert(path, [row], ["ipc", "preset"], columns=COLUMNS)
    _bench.write(df.sort_values("ipc", kind="stable"), path)


def random_level(folder: Path, bundle, ipc: int, recipe: TrainRecipe, recipe_text: str, args) -> float:
    """Mean accuracy of a random subset under `recipe` (reused from random.csv when it matches)."""
    df = _read(folder / "random.csv")
    hit = df[(df["ipc"] == ipc) & (df["eval_recipe"] == recipe_text) & (df["acc_seeds"] >= args.eval_seeds)]
    if len(hit):
        return float(hit["acc_mean"].iloc[-1])
    return bench_one("random", bundle, ipc, recipe, recipe_text, folder, args, random_acc=None)["acc_mean"]


def bench_one(method: str, bundle, ipc: int, recipe: TrainRecipe, recipe_text: str, folder: Path, args, random_acc):
    cls = METHODS.get(method)
    preset = args.preset if args.preset in cls.presets else None
    iterations = args.iterations if cls.iterative else None
    common = ("lr_img", "match_space", "match_pool")  # base options of every iterative method
    parsed = parse_options(args.option, cls.options_type)  # each value as this method's field type
    options = {k: v for k, v in parsed.items() if k in cls.options_type.kinds() or (k in common and cls.iterative)}
    label = (preset or "default") + (f"+it{iterations}" if iterations is not None else "")
    label += "".join(f"+{k}={v}" for k, v in options.items())
    dev = resolve_device(args.device)
    print(f"[{time.strftime('%H:%M:%S')}] {method} ipc {ipc} preset {label}: distilling", flush=True)
    saved = RunLayout(args.work).proxy(method, ipc) if args.work else None
    reuse = saved is not None and (saved / "proxy.json").exists()
    with PeakMemory(dev) as mem:
        proxy = ProxySet.load(saved, bundle) if reuse else distill(
            bundle, method, ipc, args.seed, preset=preset, saving=Saving(out=saved, resume=saved is not None),
            device=args.device, iterations=iterations, **options,
        )  # fmt: skip
    cost = proxy.provenance["cost"]
    print(f"  {cost['seconds']:.1f} s, {cost['sample_grads']:,} sample-grads; evaluating", flush=True)
    accs = _accuracies(proxy, bundle, recipe, args.eval_seeds, args.device)
    mean, std = _stats(accs)
    experts = proxy.provenance.get("experts", {}).get("cost", {})
    row = {
        "method": method,
        "ipc": ipc,
        "preset": label,
        "iterations": proxy.provenance["config"]["iterations"],
        "distill_seconds": cost["seconds"],
        "distill_sample_grads": cost["sample_grads"],
        "peak_mem_mb": float("nan") if reuse else round(mem.mb, 1),
        "eval_recipe": recipe_text,
        "acc_mean": round(mean, 2),
        "acc_std": round(std, 2),
        "acc_seeds": len(accs),
        "random_acc_mean": round(mean if random_acc is None else random_acc(), 2),
        "published": published(bundle.name, method, ipc),
        "expert_seconds": experts.get("seconds", float("nan")),
        "expert_sample_grads": experts.get("sample_grads", float("nan")),
    }
    print(f"  acc {mean:.2f} ± {std:.2f} (random {row['random_acc_mean']:.2f})", flush=True)
    _upsert(folder / f"{method}.csv", row)
    return row


SPEED_COLUMNS = ["method", "ipc", "preset", "path", "rounds", "sec_per_iter", "sec_min", "speedup", "load", "warmup_s"]


def loadavg() -> str:
    """The 1-, 5- and 15-minute load averages (the machine is shared: wall seconds are noisy)."""
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "nan"


def bench_speed(method: str, bundle, ipc: int, args) -> list[dict]:
    """Seconds per outer iteration of the previous (`reference`) and the current path, interleaved; with
    `--compile`, also the current path compiled (dc/dsa/dm: `compile_model=True`), after one untimed warm-up
    iteration that compiles (its seconds in `warmup_s`); the other paths then run explicitly eager. Each path
    is one distiller with the path's options (`reference`, `compile_model`), set up alike from the same seed."""
    cls = METHODS.get(method)
    kinds = cls.options_type.kinds()
    preset = args.preset if args.preset in cls.presets else None
    options = {k: v for k, v in parse_options(args.option, cls.options_type).items() if k in kinds or k == "lr_img"}
    label = (preset or "default") + "".join(f"+{k}={v}" for k, v in options.items())
    kwargs = {**cls.presets.get(preset, {}), **options, "iterations": 0}
    paths = ["reference", "current"] + (["compiled"] if args.compile and "compile_model" in kinds else [])
    ds = {}
    for path in paths:
        switches = {"reference": path == "reference"} if "reference" in kinds else {}
        if len(paths) > 2:
            switches["compile_model"] = path == "compiled"
        ds[path] = cls(ipc=ipc, seed=args.seed, device=args.device, **kwargs, **switches)
        ds[path].run(bundle)  # validation and setup (MTT: experts), no iteration
    start = ds["current"].images.detach().clone()

    def one(path: str, r: int) -> float:
        d = ds[path]
        with torch.no_grad():
            d.images.copy_(start)
        torch.manual_seed(args.seed * 1_000_003 + r)  # the same draws on every path
        t = time.perf_counter()
        d.step(r)
        return time.perf_counter() - t

    warmup = {p: one(p, 0) for p in paths[2:]}
    load = loadavg()
    times: dict[str, list[float]] = {p: [] for p in paths}
    for r in range(args.rounds):
        for path in paths if r % 2 == 0 else paths[::-1]:
            times[path].append(one(path, r))
            print(f"  {method} round {r} {path}: {times[path][-1]:.2f} s", flush=True)
    load += " -> " + loadavg()
    med = {k: statistics.median(v) for k, v in times.items()}
    return [
        {
            "method": method,
            "ipc": ipc,
            "preset": label,
            "path": path,
            "rounds": args.rounds,
            "sec_per_iter": round(med[path], 3),
            "sec_min": round(min(times[path]), 3),
            "speedup": round(med["reference"] / med[path], 2),
            "load": load,
            "warmup_s": round(warmup[path], 1) if path in warmup else float("nan"),
        }
        for path in paths
    ]


def write_speed(rows: list[dict], path: Path) -> pd.DataFrame:
    """Upsert rows (by method, ipc, preset, path) into the speed CSV."""
    df = pd.read_csv(path) if path.exists() else pd.DataFrame(columns=SPEED_COLUMNS)
    new = pd.DataFrame(rows, columns=SPEED_COLUMNS)
    keys = ["method", "ipc", "preset", "path"]
    old = df.set_index(keys).index.isin(new.set_index(keys).index) if len(df) else []
    out = pd.concat([df[~old], new], ignore_index=True) if len(df) else new
    _bench.write(out[SPEED_COLUMNS], path)
    return out


def combine(results: Path, dataset: str) -> pd.DataFrame:
    """Rebuild `distill_<dataset>.csv` and `.png` from every per-method CSV present."""
    folder = results / f"distill_{dataset}"
    frames = [_read(p) for p in sorted(folder.glob("*.csv"))]
    if not frames:
        return pd.DataFrame(columns=COLUMNS)
    df = pd.concat(frames, ignore_index=True)[COLUMNS].sort_values(["ipc", "method"])
    df["published"] = [published(dataset, m, i) for m, i in zip(df["method"], df["ipc"], strict=True)]
    _bench.write(df, results / f"distill_{dataset}.csv")
    plot(df, results / f"distill_{dataset}.png", dataset)
    return df


def plot(df: pd.DataFrame, path: Path, dataset: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ipcs = sorted(df["ipc"].unique())
    methods = [m for m in df["method"].unique() if m != "random"] or ["random"]
    fig, axes = plt.subplots(1, len(ipcs), figsize=(max(4, 1.1 * len(methods) + 2) * len(ipcs), 4), squeeze=False)
    for ax, ipc in zip(axes[0], ipcs, strict=True):
        sub = df[df["ipc"] == ipc].drop_duplicates("method", keep="last").set_index("method")
        names = [m for m in methods if m in sub.index]
        ax.bar(names, sub.loc[names, "acc_mean"], yerr=sub.loc[names, "acc_std"], capsize=3, color="tab:blue")
        level = sub["random_acc_mean"].dropna()
        if len(level):
            ax.axhline(float(level.iloc[0]), color="tab:red", ls="--", label=f"random {float(level.iloc[0]):.1f}")
            ax.legend(loc="lower right")
        lo = min([float(sub.loc[names, "acc_mean"].min()) if names else 100, *level.tolist()])
        ax.set_ylim(max(0, lo - 10), 100)
        ax.set_title(f"{dataset}, ipc {ipc}")
        ax.set_ylabel("test accuracy (%)")
        ax.tick_params(axis="x", rotation=30)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = _bench.parser(__doc__, out="results")
    p.add_argument("--methods", default="random", help="comma-separated method names")
    p.add_argument("--ipc", default="1,10", help="comma-separated images per class")
    p.add_argument("--preset", default="cpu", help="method preset (methods without it use their defaults)")
    p.add_argument("--iterations", type=int, default=None, help="override the preset's iterations (noted in preset)")
    p.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="method option for the methods that have it, or lr_img, match_space, match_pool (noted in preset)",
    )
    p.add_argument("--eval-seeds", type=int, default=5)
    p.add_argument("--eval-recipe", default="proxy", help="recipe preset and/or key=value pairs")
    p.add_argument("--max-per-class", type=int, default=None)
    p.add_argument("--seed", type=int, default=0, help="distillation seed")
    p.add_argument("--work", default=None, help="save (and reuse) each proxy under DIR/proxies/<method>-ipc<k>")
    p.add_argument("--speed", action="store_true", help="time outer iterations, previous path against current")
    p.add_argument("--rounds", type=int, default=3, help="with --speed: timed iterations per path")
    p.add_argument("--compile", action="store_true", help="with --speed: also time the compiled path (dc/dsa/dm)")
    args = _bench.parse(p, argv)
    try:
        methods = [m.strip() for m in args.methods.split(",") if m.strip()]
        for m in methods:
            METHODS.get(m)
        ipcs = [int(i) for i in args.ipc.split(",")]
        parse_options(args.option)  # a malformed KEY=VALUE is refused before any work
        recipe = TrainRecipe.parse(args.eval_recipe, RECIPES["proxy"])
        bundle = load_dataset(args.dataset, max_per_class=args.max_per_class)
    except (NasddError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    name = args.dataset if args.max_per_class is None else f"{args.dataset}_max{args.max_per_class}"
    results = Path(args.out)
    if args.speed:
        rows = [row for ipc in ipcs for m in methods if m != "random" for row in bench_speed(m, bundle, ipc, args)]
        df = write_speed(rows, results / "distill_speed.csv")
        print(df.to_string(index=False))
        return 0
    folder = results / f"distill_{name}"
    folder.mkdir(parents=True, exist_ok=True)
    for ipc in ipcs:
        # looked up only once a method's row is written, so a concurrent run may have filled random.csv by then
        def rand(ipc: int = ipc) -> float:
            return random_level(folder, bundle, ipc, recipe, args.eval_recipe, args)

        if "random" in methods:
            rand()
        for m in methods:
            if m != "random":
                bench_one(m, bundle, ipc, recipe, args.eval_recipe, folder, args, rand)
    df = combine(results, name)
    print(df.to_string(index=False, float_format=lambda v: "nan" if math.isnan(v) else f"{v:g}"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
