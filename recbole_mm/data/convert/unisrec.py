"""UniSRec downstream folders (github.com/RUCAIBox/UniSRec, arXiv 2206.05941) -> a RecBole dataset.

A downstream folder holds the leave-one-out split already cut into sequences:
``<ds>.train.inter`` (one line per training target, the user's lines in order of *decreasing*
position: the last training item first), ``<ds>.valid.inter`` and ``<ds>.test.inter`` (one line
each per user), all with ``user_id:token item_id_list:token_seq item_id:token`` and histories
truncated to the last 50 items; ``<ds>.feat1CLS``, raw float32 text vectors whose row ``r`` is
item index ``r``; ``<ds>.item2index`` / ``<ds>.user2index`` (``original<TAB>index``).

The converter rebuilds each user's full chronological sequence (train items, then the validation
item, then the test item), checks every line against it, and writes it with increasing synthetic
timestamps, so RecBole's ``LS: valid_and_test`` split with ``order: TO`` reproduces UniSRec's
split exactly. Tokens become the original ids when the index files are there.
"""

import os
from collections import OrderedDict
from typing import Dict, List, Optional, Tuple

import numpy as np

from recbole_mm.data.convert.common import log_summary, write_dataset_yaml, write_inter
from recbole_mm.feature_files import write_features

HEADER = ["user_id:token", "item_id_list:token_seq", "item_id:token"]
Line = Tuple[int, List[str], str]  # line number, history, target


def read_split(path: str) -> "OrderedDict[str, List[Line]]":
    """``{user: [(line number, history, target), ...]}`` of one split file, users in file order."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"UniSRec split file not found: {path}")
    users: "OrderedDict[str, List[Line]]" = OrderedDict()
    with open(path, "r", encoding="utf-8") as handle:
        header = handle.readline().rstrip("\n").split("\t")
        if header != HEADER:
            raise ValueError(f"{path}: line 1: header {header} is not {HEADER}")
        for number, line in enumerate(handle, start=2):
            fields = line.rstrip("\n").split("\t")
            if fields == [""]:
                continue
            if len(fields) != 3 or not fields[0] or not fields[2]:
                raise ValueError(f"{path}: line {number}: expected user<TAB>history<TAB>target, found {line.rstrip()!r}")
            users.setdefault(fields[0], []).append((number, fields[1].split(), fields[2]))
    return users


def train_sequence(user: str, lines: List[Line], valid: Line, path: str) -> List[str]:
    """The user's training items in time order, checked against every one of their train lines.

    Lines come last-target-first, so the targets reversed are items 1..n-1 and the history of the
    final line is item 0. A user with one training item has no train line: it is the valid history.
    """
    if not lines:
        return list(valid[1])
    sequence = lines[-1][1][:1] + [target for _, _, target in reversed(lines)]
    for offset, (number, history, target) in enumerate(lines, start=1):
        position = len(sequence) - offset
        if target != sequence[position] or (history and sequence[:position][-len(history):] != history):
            raise ValueError(f"{path}: line {number}: user {user!r} history/target do not continue the user's other lines")
    return sequence


def rebuild_sequences(folder: str, name: str) -> "OrderedDict[str, List[str]]":
    """Every user's full chronological item sequence (train..., valid, test)."""
    paths = {split: os.path.join(folder, f"{name}.{split}.inter") for split in ("train", "valid", "test")}
    splits = {split: read_split(path) for split, path in paths.items()}
    sequences: "OrderedDict[str, List[str]]" = OrderedDict()
    for user, lines in splits["test"].items():
        valid, test = _single(splits["valid"], user, paths["valid"]), lines[0]
        train = train_sequence(user, splits["train"].get(user, []), valid, paths["train"])
        _check_suffix(valid, train, user, paths["valid"])
        _check_suffix(test, train + [valid[2]], user, paths["test"])
        sequences[user] = train + [valid[2], test[2]]
    extra = set(splits["train"]) - set(sequences)
    if extra:
        raise ValueError(f"{paths['train']}: user {sorted(extra)[0]!r} has train lines but no test line")
    return sequences


def _single(split: Dict[str, List[Line]], user: str, path: str) -> Line:
    lines = split.get(user)
    if not lines or len(lines) != 1:
        raise ValueError(f"{path}: user {user!r} must have exactly one line, found {len(lines or [])}")
    return lines[0]


def _check_suffix(line: Line, sequence: List[str], user: str, path: str) -> None:
    number, history, _ = line
    if not history or sequence[-len(history):] != history:
        raise ValueError(f"{path}: line {number}: user {user!r} history is not the end of the user's earlier items")


def read_index(path: str) -> Dict[str, str]:
    """``{index: original id}`` from an ``original<TAB>index`` file; empty when the file is absent."""
    if not os.path.isfile(path):
        return {}
    mapping = {}
    with open(path, "r", encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            fields = line.rstrip("\n").split("\t")
            if fields == [""]:
                continue
            if len(fields) != 2 or not fields[1].strip().isdigit():
                raise ValueError(f"{path}: line {number}: expected original<TAB>index, found {line.rstrip()!r}")
            mapping[fields[1].strip()] = fields[0]
    return mapping


def read_plm_features(path: str, n_items: int, plm_size: Optional[int] = None) -> np.ndarray:
    """Memory-map ``.feat1CLS`` as ``[n_rows, plm_size]``; the size is inferred from the file when not given."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"UniSRec feature file not found: {path}")
    values = os.path.getsize(path) // 4
    if os.path.getsize(path) % 4:
        raise ValueError(f"{path}: size {os.path.getsize(path)} is not a whole number of float32 values")
    if plm_size is None:  # n_items rows (0-based indices) or n_items + 1 (a padding row 0)
        plm_size = next((values // rows for rows in (n_items, n_items + 1) if values % rows == 0), None)
        if plm_size is None:
            raise ValueError(f"{path}: {values} float32 values do not split into {n_items} or {n_items + 1} rows; pass --plm-size")
    if values % plm_size:
        raise ValueError(f"{path}: {values} float32 values are not a multiple of plm_size {plm_size}")
    return np.memmap(path, dtype=np.float32, mode="r", shape=(values // plm_size, plm_size))


def convert_unisrec(
    source: str, folder: str, dataset: str, name: Optional[str] = None, suffix: str = "feat1CLS", plm_size: Optional[int] = None
) -> Dict[str, str]:
    """Convert the UniSRec downstream folder ``source`` (dataset ``name``, default ``dataset``) into ``folder``."""
    name = name or dataset
    sequences = rebuild_sequences(source, name)
    items = read_index(os.path.join(source, f"{name}.item2index"))
    users = read_index(os.path.join(source, f"{name}.user2index"))
    indices = sorted({item for sequence in sequences.values() for item in sequence} | set(items), key=_as_int(source))
    matrix = read_plm_features(os.path.join(source, f"{name}.{suffix}"), int(indices[-1]) + 1, plm_size)
    if int(indices[-1]) >= matrix.shape[0]:
        raise ValueError(f"{source}/{name}.{suffix}: has {matrix.shape[0]} rows but item index {indices[-1]} is used")
    inters = [
        (users.get(user, user), items.get(item, item), 1.0, float(step + 1))
        for user, sequence in sequences.items()
        for step, item in enumerate(sequence)
    ]
    os.makedirs(folder, exist_ok=True)
    written = {"inter": write_inter(folder, dataset, inters)}
    rows = [int(index) for index in indices]
    written["text"], _ = write_features(folder, dataset, "text", [items.get(index, index) for index in indices], matrix[rows])
    written["yaml"] = write_dataset_yaml(
        folder, dataset, f"the UniSRec downstream folder {name}", {"text": int(matrix.shape[1])},
        extra={"MAX_ITEM_LIST_LENGTH": (50, "(int) UniSRec keeps the last 50 items of a history.")},
    )
    log_summary(dataset, inters, folder)
    return written


def _as_int(source: str):
    def key(token: str) -> int:
        if not token.isdigit():
            raise ValueError(f"{source}: item index {token!r} is not a non-negative integer")
        return int(token)

    return key
