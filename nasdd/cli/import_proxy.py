"""`nasdd import-proxy`: a synthetic set from another codebase -> a checksummed ProxySet folder
(see `nasdd.distill.importers` for the formats)."""

from __future__ import annotations

import argparse

from nasdd.cli import add_data_args, load_data_from_args

FORMAT_NAMES = ("dc", "mtt", "tensors", "folder")  # nasdd.distill.importers.FORMATS, listed without torch


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "source", help="res_*.pt (DC/DSA/DM), images_best.pt or its folder (MTT), a .pt/.npz, or a folder of PNGs"
    )
    add_data_args(parser, default="fashion_mnist")
    parser.add_argument("--format", choices=FORMAT_NAMES, default=None, help="default: detected from the path")
    parser.add_argument(
        "--normalization",
        default=None,
        help="what the images were saved in: dataset (the DC/DSA/DM/MTT code's constants for --dataset), none "
        "(pixels in [0,1]), nasdd (this dataset's own), MEAN,STD or M1,M2,M3/S1,S2,S3 (default: what the "
        "format records: dataset for dc and mtt, none for folder; required for tensors)",
    )
    parser.add_argument("--method", default="imported", help="the method that made the set (names its rows)")
    parser.add_argument("--experiment", type=int, default=0, help="which [images, labels] pair of a DC file")
    parser.add_argument("--lr", type=float, default=None, help="learned learning rate (overrides the file's)")
    parser.add_argument("--out", required=True, help="ProxySet folder to write")


def command(args: argparse.Namespace) -> int:
    from nasdd.distill.importers import import_proxy

    bundle = load_data_from_args(args)
    proxy = import_proxy(
        args.source,
        bundle,
        fmt=args.format,
        normalization=args.normalization,
        method=args.method,
        experiment=args.experiment,
        lr=args.lr,
    )
    out = proxy.save(args.out)
    imp = proxy.provenance["imported"]
    print(
        f"imported {len(proxy.images)} images ({imp['format']}, {imp['normalization']} -> {bundle.name}'s "
        f"normalisation, {'soft' if proxy.soft else 'hard'} labels, lr {proxy.lr}) as {proxy.id} into {out}"
    )
    return 0
