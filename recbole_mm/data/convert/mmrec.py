"""MMRec dataset folders (github.com/enoche/MMRec) -> RecBole atomic files + feature files.

An MMRec folder holds ``<ds>.inter`` (tab-separated, header ``userID itemID rating timestamp
x_label``; ids are 0-based integers) and ``text_feat.npy`` / ``image_feat.npy`` whose row ``i``
is item ``i``. MMRec's own random per-user split (``x_label``) is a collaborative-filtering split;
a sequential recommender needs each user's history in time order, so the converter keeps the
interactions, orders them by timestamp and lets RecBole's leave-one-out split them. Item and user
tokens stay MMRec's integers, so the feature rows keep their meaning.
"""

import csv
import os
from typing import Dict, List, Optional

import numpy as np

from recbole_mm.data.convert.common import Interaction, chronological, log_summary, write_dataset_yaml, write_inter
from recbole_mm.feature_files import feature_paths, write_features

FEATURE_FILES = {"text": "text_feat.npy", "image": "image_feat.npy"}


def read_mmrec_inter(path: str) -> List[Interaction]:
    """Rows of an MMRec ``.inter`` file as ``(user, item, rating, timestamp)`` tuples."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"MMRec interaction file not found: {path}")
    with open(path, "r", encoding="utf-8", newline="") as handle:
        reader = csv.reader(handle, delimiter="\t")
        header = [name.split(":")[0] for name in next(reader, [])]
        missing = [name for name in ("userID", "itemID", "timestamp") if name not in header]
        if missing:
            raise ValueError(f"{path}: line 1: header lacks {missing} (found {header})")
        column = {name: header.index(name) for name in header}
        inters = []
        for number, row in enumerate(reader, start=2):
            if not row:
                continue
            inters.append(_interaction(row, column, header, path, number))
    if not inters:
        raise ValueError(f"{path}: no interactions")
    return inters


def _interaction(row: List[str], column: Dict[str, int], header: List[str], path: str, number: int) -> Interaction:
    if len(row) != len(header):
        raise ValueError(f"{path}: line {number}: {len(row)} fields, header has {len(header)}")
    user, item = row[column["userID"]].strip(), row[column["itemID"]].strip()
    if not item.isdigit() or not user:
        raise ValueError(f"{path}: line {number}: itemID {item!r} is not a 0-based integer or userID is empty")
    try:
        rating = float(row[column["rating"]]) if "rating" in column else 1.0
        return user, str(int(item)), rating, float(row[column["timestamp"]])
    except ValueError:
        raise ValueError(f"{path}: line {number}: rating / timestamp not numeric: {row}") from None


def convert_feature(source: str, items: List[str], folder: str, dataset: str, modality: str) -> int:
    """Copy one MMRec feature matrix into ``<ds>.<modality>.npy/.ids`` (row ``i`` -> token ``i``); returns its dim."""
    matrix = np.load(source, mmap_mode="r", allow_pickle=False)
    if matrix.ndim != 2:
        raise ValueError(f"{source}: expected a 2-D array [n_items, dim], found shape {matrix.shape}")
    largest = max(int(item) for item in items)
    if largest >= matrix.shape[0]:
        raise ValueError(f"{source}: has {matrix.shape[0]} rows but the interactions use itemID {largest}")
    write_features(folder, dataset, modality, [str(row) for row in range(matrix.shape[0])], matrix)
    return int(matrix.shape[1])


def convert_mmrec(source: str, folder: str, dataset: str, name: Optional[str] = None) -> Dict[str, str]:
    """Convert the MMRec folder ``source`` (dataset ``name``, default ``dataset``) into ``folder``."""
    name = name or dataset
    inters = chronological(read_mmrec_inter(os.path.join(source, f"{name}.inter")))
    items = list(dict.fromkeys(item for _, item, _, _ in inters))
    os.makedirs(folder, exist_ok=True)
    written = {"inter": write_inter(folder, dataset, inters)}
    modalities = {}
    for modality, file_name in FEATURE_FILES.items():
        path = os.path.join(source, file_name)
        if os.path.isfile(path):
            modalities[modality] = convert_feature(path, items, folder, dataset, modality)
            written[modality] = feature_paths(folder, dataset, modality)[0]
    if not modalities:
        raise FileNotFoundError(f"{source}: neither {' nor '.join(FEATURE_FILES.values())} found")
    written["yaml"] = write_dataset_yaml(folder, dataset, f"the MMRec folder {name}", modalities)
    log_summary(dataset, inters, folder)
    return written
