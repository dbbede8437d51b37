"""On-disk format of multimodal feature files: ``<ds>.<modality>.npy`` + ``<ds>.<modality>.ids``.

Row ``i`` of the ``.npy`` matrix (float32 or float16, shape ``[n_rows, d]``) belongs to the item
token on line ``i`` of the ``.ids`` file. Tokens are the same strings as in the dataset's ``.inter``
item field. This module only reads and writes the two files and checks them; aligning rows to
RecBole's internal ids lives in :mod:`recbole_mm.data.features`.
"""

import os
from typing import List, Sequence, Tuple

import numpy as np

FLOAT_DTYPES = (np.float32, np.float16)


def feature_paths(folder: str, dataset: str, modality: str) -> Tuple[str, str]:
    """Return the ``(.npy, .ids)`` paths of one modality of one dataset."""
    stem = os.path.join(folder, f"{dataset}.{modality}")
    return stem + ".npy", stem + ".ids"


def write_ids(path: str, tokens: Sequence[str]) -> None:
    """Write one token per line; tokens may not contain line breaks or be empty."""
    for row, token in enumerate(tokens):
        token = str(token)
        if not token or "\n" in token or "\r" in token:
            raise ValueError(f"{path}: row {row}: token {token!r} is empty or contains a line break")
    with open(path, "w", encoding="utf-8") as handle:
        handle.write("".join(f"{token}\n" for token in tokens))


def read_ids(path: str) -> List[str]:
    """Read the token list of an ``.ids`` file (one token per line, trailing newline optional)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"feature ids file not found: {path}")
    with open(path, "r", encoding="utf-8") as handle:
        text = handle.read()
    return text.split("\n")[:-1] if text.endswith("\n") else text.split("\n") if text else []


def write_features(folder: str, dataset: str, modality: str, tokens: Sequence[str], matrix: np.ndarray) -> Tuple[str, str]:
    """Write a feature matrix and its token list in the canonical format; returns the two paths."""
    matrix = np.asarray(matrix)
    if matrix.ndim != 2 or matrix.shape[0] != len(tokens):
        raise ValueError(f"matrix of shape {matrix.shape} does not match {len(tokens)} tokens")
    if matrix.dtype not in FLOAT_DTYPES:
        matrix = matrix.astype(np.float32)
    os.makedirs(folder, exist_ok=True)
    npy_path, ids_path = feature_paths(folder, dataset, modality)
    np.save(npy_path, matrix, allow_pickle=False)
    write_ids(ids_path, tokens)
    return npy_path, ids_path
