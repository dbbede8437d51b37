"""Command line of the embedders (see the package docstring for examples).

    python -m recbole_mm.embed text --input FILE --id-column COL (--text-columns COL... | --template T)
                                    --model M --output DIR --dataset DS [--modality text]
    python -m recbole_mm.embed image (--images FOLDER | --input FILE --id-column COL --path-column COL)
                                     [--backend transformers|open_clip|timm] --model PATH [--model-arch ARCH]
                                     --output DIR --dataset DS [--modality image]

Common options: --batch-size --chunk-size --device --normalize --float16 --no-progress.
"""

import argparse
import logging
import sys
from typing import List, Optional

# The package's __init__ has already switched the Hugging Face libraries to offline mode.
from recbole_mm.embed.image_models import BACKENDS
from recbole_mm.embed.offline import ModelNotFoundError
from recbole_mm.embed.runner import EncodeOptions


def add_encoding_options(parser: argparse.ArgumentParser, normalize_default: bool = False) -> None:
    """Options every subcommand shares: output folder, batching, device, post-processing."""
    parser.add_argument("--batch-size", type=int, default=64, help="inputs per forward pass (default 64)")
    parser.add_argument("--chunk-size", type=int, default=1024, help="inputs per saved chunk, the unit a rerun resumes from (default 1024)")
    parser.add_argument("--device", default=None, help="torch device, e.g. cpu, cuda, cuda:1 (default: cuda if available)")
    parser.add_argument("--normalize", dest="normalize", action="store_true", help="L2-normalise every row" + (" (default)" if normalize_default else ""))
    parser.add_argument("--no-normalize", dest="normalize", action="store_false", help="keep the model's vectors as they are" + ("" if normalize_default else " (default)"))
    parser.set_defaults(normalize=normalize_default)
    parser.add_argument("--float16", action="store_true", help="store float16 instead of float32")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def add_output_options(parser: argparse.ArgumentParser, modality: str) -> None:
    parser.add_argument("--output", required=True, help="folder for <dataset>.<modality>.npy/.ids (usually the dataset folder)")
    parser.add_argument("--dataset", required=True, help="dataset name: the files' prefix")
    parser.add_argument("--modality", default=modality, help=f"modality name: the files' middle part (default {modality})")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m recbole_mm.embed", description="Encode item text or images into recbole-mm feature files (offline).")
    commands = parser.add_subparsers(dest="command", required=True)

    text = commands.add_parser("text", help="encode a text column (or several) of a TSV / CSV / RecBole atomic file")
    text.add_argument("--input", required=True, help="table with one row per item (.tsv, .csv, or RecBole .item)")
    text.add_argument("--id-column", required=True, help="column with the item tokens (as in the .inter file)")
    text.add_argument("--text-columns", nargs="+", default=[], help="columns joined into the text; a row with all of them empty is skipped")
    text.add_argument("--template", default=None, help='str.format template over columns, e.g. "{movie_title} ({release_year})"')
    text.add_argument("--separator", default=" ", help="joins the text columns when there is no template (default: a space)")
    text.add_argument("--sep", default=None, help="field separator of the input (default: ',' for .csv, tab otherwise)")
    text.add_argument("--model", default="all-MiniLM-L6-v2", help="local sentence-transformers folder or packaged model name (default all-MiniLM-L6-v2)")
    add_output_options(text, "text")
    add_encoding_options(text)

    image = commands.add_parser("image", help="encode local image files with a transformers, open_clip or timm model")
    source = image.add_mutually_exclusive_group(required=True)
    source.add_argument("--images", help="folder of <token>.<ext> files (rows sorted by token)")
    source.add_argument("--input", help="table with an id column and an image path column (rows in table order)")
    image.add_argument("--id-column", help="with --input: column with the item tokens")
    image.add_argument("--path-column", help="with --input: column with image paths")
    image.add_argument("--image-root", default=None, help="with --input: folder relative paths start from (default: the table's folder)")
    image.add_argument("--sep", default=None, help="field separator of the input (default: ',' for .csv, tab otherwise)")
    image.add_argument("--backend", choices=sorted(BACKENDS), default="transformers", help="library that loads and runs the model (default transformers)")
    image.add_argument("--model", required=True, help="transformers: local folder written by save_pretrained (with preprocessor_config.json); open_clip / timm: local checkpoint file (.safetensors, .bin, .pt, .pth)")
    image.add_argument("--model-arch", default=None, help="open_clip / timm: the checkpoint's architecture, e.g. ViT-B-32 (or an open_clip model config .json) / resnet50.a1_in1k")
    add_output_options(image, "image")
    add_encoding_options(image)

    return parser


def encode_options(args: argparse.Namespace) -> EncodeOptions:
    return EncodeOptions(batch_size=args.batch_size, chunk_size=args.chunk_size, normalize=args.normalize, float16=args.float16, progress=not args.no_progress)


def run_text(args: argparse.Namespace) -> None:
    from recbole_mm.embed.text import TextEncoder, embed_texts, texts_from_table

    tokens, texts = texts_from_table(args.input, args.id_column, args.text_columns, args.template, args.separator, args.sep)
    encoder = TextEncoder(args.model, args.device)
    embed_texts(tokens, texts, encoder, args.output, args.dataset, args.modality, encode_options(args))


def run_image(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    from recbole_mm.embed.image import ImageEncoder, embed_images, images_from_folder, images_from_table

    if args.input and not (args.id_column and args.path_column):
        parser.error("image --input needs --id-column and --path-column")
    if args.images:
        tokens, paths = images_from_folder(args.images)
    else:
        tokens, paths = images_from_table(args.input, args.id_column, args.path_column, args.image_root, args.sep)
    encoder = ImageEncoder(args.model, args.device, args.backend, args.model_arch)
    embed_images(tokens, paths, encoder, args.output, args.dataset, args.modality, encode_options(args))


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        if args.command == "text":
            run_text(args)
        else:
            run_image(args, parser)
    except (ModelNotFoundError, FileNotFoundError, ValueError, ImportError) as error:
        parser.exit(2, f"error: {error}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
