"""Amazon review + metadata dumps -> RecBole atomic files, an item text table and (optionally) text features.

Both public layouts are read, plain or gzipped, one record per line:

- 2014 (McAuley et al., SIGIR 2015): reviews ``reviewerID / asin / overall / unixReviewTime``;
  metadata written as Python dict literals with ``title / categories`` (a list of category
  paths) ``/ brand / imUrl``. Literals are parsed with :func:`ast.literal_eval`, never ``eval``.
- 2018 (Ni et al., EMNLP 2019): strict JSON lines; metadata with ``title / category`` (one path)
  ``/ brand / imageURLHighRes / imageURL``.

Steps: keep interactions whose item has metadata, k-core filter (5 by default, repeated until
stable, as UniSRec arXiv 2206.05941 does), order each user's history by time, then write
``<ds>.inter``, ``<ds>.item`` (leaf categories as a token_seq field for the category-aware models,
title, first image URL), ``<ds>.text.tsv`` (``item_id``, ``text`` = title + categories + brand) for
``python -m recbole_mm.embed text``, and ``<ds>.yaml``. With ``embed_model`` the text features
``<ds>.text.npy/.ids`` are encoded right away.
"""

import ast
import gzip
import json
import logging
import os
from dataclasses import dataclass, field
from typing import Dict, Iterator, List, Optional, Tuple

import numpy as np

from recbole_mm.data.convert.common import (
    Interaction,
    category_token,
    check_cell,
    chronological,
    clean_text,
    k_core,
    log_summary,
    write_atomic,
    write_dataset_yaml,
    write_inter,
)

logger = logging.getLogger(__name__)

REVIEW_KEYS = ("reviewerID", "asin", "unixReviewTime")
ITEM_HEADER = ("item_id:token", "categories:token_seq", "title:token_seq", "image_url:token")


@dataclass
class ItemMeta:
    title: str = ""
    paths: List[List[str]] = field(default_factory=list)  # category paths, root first
    brand: str = ""
    image_url: str = ""

    def leaf_categories(self) -> List[str]:
        """The last category of each path, as distinct tokens."""
        leaves = (category_token(path[-1]) for path in self.paths if path)
        return list(dict.fromkeys(leaf for leaf in leaves if leaf))

    def text(self) -> str:
        """Title, every category name (once each) and brand, as one line of text."""
        names = dict.fromkeys(clean_text(name) for path in self.paths for name in path)
        parts = [self.title, " ".join(name for name in names if name), self.brand]
        return " ".join(part for part in parts if part)


def open_text(path: str):
    """Open a plain or gzipped text file (recognised by its magic bytes, not its name)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"input file not found: {path}")
    with open(path, "rb") as handle:
        gzipped = handle.read(2) == b"\x1f\x8b"
    return gzip.open(path, "rt", encoding="utf-8") if gzipped else open(path, "r", encoding="utf-8")


def read_records(path: str) -> Iterator[Tuple[int, dict]]:
    """``(line number, record)`` for each non-blank line: JSON, else a Python dict literal."""
    with open_text(path) as handle:
        for number, line in enumerate(handle, start=1):
            line = line.strip()
            if line:
                yield number, parse_record(line, path, number)


def parse_record(line: str, path: str, number: int) -> dict:
    try:
        record = json.loads(line)
    except ValueError:
        try:
            record = ast.literal_eval(line)
        except (ValueError, SyntaxError, MemoryError, RecursionError) as error:
            raise ValueError(f"{path}: line {number}: neither JSON nor a Python dict literal ({type(error).__name__}: {error})") from None
    if not isinstance(record, dict):
        raise ValueError(f"{path}: line {number}: expected one record ({{...}}), found {type(record).__name__}")
    return record


def read_reviews(path: str) -> List[Interaction]:
    """Interactions of a review dump; exact repeats (same user, item and time) are kept once."""
    seen, inters = set(), []
    for number, record in read_records(path):
        row = review_row(record, f"{path}: line {number}")
        if (row[0], row[1], row[3]) not in seen:
            seen.add((row[0], row[1], row[3]))
            inters.append(row)
    if not inters:
        raise ValueError(f"{path}: no reviews")
    return inters


def review_row(record: dict, where: str) -> Interaction:
    """``(user, item, rating, time)`` of one review; ``where`` (file: line) prefixes every error."""
    missing = [key for key in REVIEW_KEYS if key not in record]
    if missing:
        raise ValueError(f"{where}: review lacks {missing} (has {sorted(record)})")
    user, item = (check_cell(str(record[key]).strip(), f"{where}: {key}") for key in ("reviewerID", "asin"))
    if not user or not item:
        raise ValueError(f"{where}: empty reviewerID or asin")
    try:
        return user, item, float(record.get("overall", 1.0)), float(record["unixReviewTime"])
    except (TypeError, ValueError):
        raise ValueError(f"{where}: overall / unixReviewTime not numeric: {record.get('overall')!r} / {record['unixReviewTime']!r}") from None


def category_paths(record: dict) -> List[List[str]]:
    """2014 ``categories`` (list of paths) or 2018 ``category`` (one path), cleaned, empty names dropped."""
    raw = record.get("categories", record.get("category")) or []
    paths = raw if raw and all(isinstance(path, (list, tuple)) for path in raw) else [raw]
    return [[name for name in map(clean_text, path) if name] for path in paths if isinstance(path, (list, tuple))]


def first_image(record: dict) -> str:
    for key in ("imageURLHighRes", "imageURL", "imUrl"):
        value = record.get(key)
        if isinstance(value, (list, tuple)):
            value = value[0] if value else None
        if value:
            return str(value).strip()
    return ""


def read_meta(path: str, wanted: Optional[set] = None) -> Dict[str, ItemMeta]:
    """Metadata of the items in ``wanted`` (all when None); the first record of an asin wins."""
    metas = {}
    for number, record in read_records(path):
        if "asin" not in record:
            raise ValueError(f"{path}: line {number}: metadata record lacks 'asin'")
        asin = str(record["asin"])
        if asin in metas or (wanted is not None and asin not in wanted):
            continue
        metas[asin] = ItemMeta(
            title=clean_text(record.get("title")),
            paths=category_paths(record),
            brand=clean_text(record.get("brand")),
            image_url=check_cell(first_image(record), f"{path}: line {number}: image URL"),
        )
    return metas


def item_rows(items: List[str], metas: Dict[str, ItemMeta]):
    for item in items:
        meta = metas.get(item, ItemMeta())
        yield item, " ".join(meta.leaf_categories()), meta.title, meta.image_url


def convert_amazon(
    reviews: str,
    meta: Optional[str],
    folder: str,
    dataset: str,
    user_k: int = 5,
    item_k: int = 5,
    keep_items_without_meta: bool = False,
    embed_model: Optional[str] = None,
    embed_options=None,
    device: Optional[str] = None,
) -> Dict[str, str]:
    """Convert one review dump (+ its metadata); returns the paths written, by kind."""
    inters = read_reviews(reviews)
    metas = read_meta(meta, {item for _, item, _, _ in inters}) if meta else {}
    if meta and not keep_items_without_meta:
        inters = [row for row in inters if row[1] in metas]
    inters = chronological(k_core(inters, user_k, item_k))
    if not inters:
        raise ValueError(f"{reviews}: no interactions survive the {user_k}/{item_k}-core filter")
    os.makedirs(folder, exist_ok=True)
    items = list(dict.fromkeys(item for _, item, _, _ in inters))
    written = {"inter": write_inter(folder, dataset, inters)}
    written["item"] = os.path.join(folder, f"{dataset}.item")
    write_atomic(written["item"], ITEM_HEADER, item_rows(items, metas))
    written["text_table"] = os.path.join(folder, f"{dataset}.text.tsv")
    write_atomic(written["text_table"], ("item_id", "text"), ((item, metas.get(item, ItemMeta()).text()) for item in items))
    modalities = {"text": None}
    if embed_model:
        modalities["text"] = embed_text_table(written["text_table"], embed_model, folder, dataset, embed_options, device)
    written["yaml"] = write_dataset_yaml(
        folder, dataset, f"Amazon reviews {os.path.basename(reviews)}", modalities, ["categories"], "categories",
        {"MAX_ITEM_LIST_LENGTH": (50, "(int) Longest history a model reads, as in UniSRec.")},
    )
    log_summary(dataset, inters, folder)
    if not embed_model:
        logger.info(f"next: python -m recbole_mm.embed text --input {written['text_table']} --id-column item_id "
                    f"--text-columns text --output {folder} --dataset {dataset} --modality text --model <sentence-transformers model>")
    return written


def embed_text_table(table: str, model: str, folder: str, dataset: str, options=None, device: Optional[str] = None) -> int:
    """Encode ``<ds>.text.tsv`` into ``<ds>.text.npy/.ids`` with a sentence-transformers model; returns the dim."""
    from recbole_mm.embed.text import TextEncoder, embed_texts, texts_from_table

    tokens, texts = texts_from_table(table, "item_id", ["text"])
    npy_path, _ = embed_texts(tokens, texts, TextEncoder(model, device), folder, dataset, "text", options)
    return int(np.load(npy_path, mmap_mode="r").shape[1])
