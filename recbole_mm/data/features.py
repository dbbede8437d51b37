"""Multimodal feature store: read feature files, validate them, align rows to RecBole's item ids.

Input per modality: ``<feature_path>/<ds>.<modality>.npy`` + ``.ids`` (see
:mod:`recbole_mm.feature_files`). Output per modality: a float32 matrix ``[n_items, d]`` whose
row ``i`` belongs to RecBole's internal item id ``i`` (row 0, the padding item, is zero) and a
boolean mask saying which rows a model may use. Items without a row follow ``missing_feature``:
``zero`` gives a zero row with mask False (the model takes its missing-modality path), ``mean``
imputes the mean of the matched rows with mask True (the model uses it like a real row), ``error``
refuses to load. Rows of items the dataset does not contain are ignored, so they never become
candidates. Every defect raises one error naming the file and,
where there is one, the row and token.
"""

import logging
import os
from dataclasses import dataclass
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from recbole_mm.feature_files import feature_paths, read_ids

MISSING_POLICIES = ("zero", "mean", "error")
MMAP_THRESHOLD_BYTES = 64 * 1024 * 1024  # memory-map feature files larger than this
ROW_BLOCK_BYTES = 16 * 1024 * 1024  # bytes of a feature file read per step: bounds the temporary memory

logger = logging.getLogger(__name__)


@dataclass
class ModalityFeatures:
    """One modality aligned to RecBole's internal item ids."""

    name: str
    matrix: np.ndarray  # [n_items, d] float32, row 0 zero
    mask: np.ndarray  # [n_items] bool: the model may use the row (False: padding, items without a row under 'zero')
    source: str
    file_rows: int
    filled: int = 0  # items without a row that got the mean vector ('mean'); their mask is True

    @property
    def dim(self) -> int:
        return int(self.matrix.shape[1])

    @property
    def matched(self) -> int:
        return int(self.mask.sum()) - self.filled

    def summary(self) -> str:
        missing = self.matrix.shape[0] - 1 - self.matched
        filled = " (mean vector)" if self.filled else ""
        return f"{self.name}: rows {self.file_rows}, matched {self.matched}, missing {missing}{filled}, dim {self.dim}"


def _load_matrix(npy_path: str) -> np.ndarray:
    if not os.path.isfile(npy_path):
        raise FileNotFoundError(f"feature file not found: {npy_path}")
    mmap_mode = "r" if os.path.getsize(npy_path) > MMAP_THRESHOLD_BYTES else None
    try:
        matrix = np.load(npy_path, mmap_mode=mmap_mode, allow_pickle=False)
    except ValueError as error:
        raise ValueError(f"{npy_path}: cannot be read without pickle (object array?): {error}") from None
    if not isinstance(matrix, np.ndarray):
        raise ValueError(f"{npy_path}: expected one .npy array, found {type(matrix).__name__}")
    if matrix.ndim != 2:
        raise ValueError(f"{npy_path}: expected a 2-D array [n_rows, dim], found shape {matrix.shape}")
    if not (np.issubdtype(matrix.dtype, np.floating) or np.issubdtype(matrix.dtype, np.integer)):
        raise ValueError(f"{npy_path}: expected a real-valued (float) array, found dtype {matrix.dtype}")
    return matrix


def _check_tokens(tokens: Sequence[str], ids_path: str, n_rows: int, npy_path: str) -> None:
    if len(tokens) != n_rows:
        raise ValueError(f"{ids_path}: has {len(tokens)} ids but {npy_path} has {n_rows} rows")
    first_row = {}
    for row, token in enumerate(tokens):
        if token == "":
            raise ValueError(f"{ids_path}: row {row}: empty token")
        if token in first_row:
            raise ValueError(f"{ids_path}: row {row}: duplicate token {token!r} (first at row {first_row[token]})")
        first_row[token] = row


def _row_blocks(matrix: np.ndarray) -> Iterator[Tuple[int, np.ndarray]]:
    """``(first row, block)`` over the rows of ``matrix``, a bounded number of rows at a time.

    A memory-mapped C-order file is read with plain file reads rather than through the mapping:
    pages read through a mapping stay resident in this process, so one pass over a large file
    would leave the whole file in its RSS next to the aligned copy.
    """
    step = max(1, ROW_BLOCK_BYTES // max(1, matrix.shape[1] * matrix.dtype.itemsize))
    from_file = isinstance(matrix, np.memmap) and matrix.flags.c_contiguous and matrix.filename
    handle = open(matrix.filename, "rb") if from_file else None
    try:
        for start in range(0, matrix.shape[0], step):
            rows = min(step, matrix.shape[0] - start)
            if handle is None:
                yield start, np.asarray(matrix[start : start + rows])
                continue
            handle.seek(matrix.offset + start * matrix.shape[1] * matrix.dtype.itemsize)
            block = np.fromfile(handle, dtype=matrix.dtype, count=rows * matrix.shape[1])
            yield start, block.reshape(rows, matrix.shape[1])
    finally:
        if handle is not None:
            handle.close()


def _check_finite(matrix: np.ndarray, tokens: Sequence[str], npy_path: str) -> None:
    for start, block in _row_blocks(matrix):
        bad_rows = np.flatnonzero(~np.isfinite(block).all(axis=1))
        if bad_rows.size:
            row = start + int(bad_rows[0])
            raise ValueError(f"{npy_path}: row {row} (token {tokens[row]!r}) contains NaN or Inf")


def read_feature_file(folder: str, dataset: str, modality: str, expected_dim: Optional[int] = None):
    """Read and validate one modality's files; returns ``(matrix, tokens, npy_path)``.

    Large matrices stay memory-mapped; nothing is copied here.
    """
    npy_path, ids_path = feature_paths(folder, dataset, modality)
    matrix = _load_matrix(npy_path)
    tokens = read_ids(ids_path)
    _check_tokens(tokens, ids_path, matrix.shape[0], npy_path)
    if expected_dim is not None and matrix.shape[1] != int(expected_dim):
        raise ValueError(f"{npy_path}: dim {matrix.shape[1]} does not match modality_dims[{modality}] = {expected_dim}")
    _check_finite(matrix, tokens, npy_path)
    return matrix, tokens, npy_path


def _row_of_each_item(item_tokens: Sequence[str], file_tokens: Sequence[str]) -> np.ndarray:
    """For each internal item id, the feature-file row holding it, or -1."""
    row_of_token = {token: row for row, token in enumerate(file_tokens)}
    rows = np.fromiter((row_of_token.get(str(token), -1) for token in item_tokens), dtype=np.int64, count=len(item_tokens))
    rows[0] = -1  # internal id 0 is RecBole's [PAD]
    return rows


def align_features(
    name: str,
    matrix: np.ndarray,
    file_tokens: Sequence[str],
    item_tokens: Sequence[str],
    source: str,
    missing_feature: str = "zero",
    normalize: bool = False,
) -> ModalityFeatures:
    """Reorder ``matrix`` rows to RecBole's internal ids (``item_tokens[i]`` is id ``i``)."""
    if missing_feature not in MISSING_POLICIES:
        raise ValueError(f"missing_feature must be one of {MISSING_POLICIES}, got {missing_feature!r}")
    rows = _row_of_each_item(item_tokens, file_tokens)
    mask = rows >= 0
    if not mask.any():
        raise ValueError(
            f"{source}: none of its {len(file_tokens)} ids match the dataset's {len(item_tokens) - 1} item tokens "
            f"(first file id {file_tokens[0] if file_tokens else None!r}, first dataset token {item_tokens[1] if len(item_tokens) > 1 else None!r})"
        )
    missing_ids = np.flatnonzero(~mask[1:]) + 1  # dataset items without a row (id 0 is padding)
    if missing_feature == "error" and missing_ids.size:
        examples = [str(item_tokens[i]) for i in missing_ids[:5]]
        raise ValueError(f"{source}: {missing_ids.size} dataset items have no row, e.g. tokens {examples} (missing_feature: error)")
    aligned = _gather_rows(matrix, rows)
    if normalize:
        _normalize_rows(aligned)
    filled = 0
    if missing_feature == "mean" and missing_ids.size:  # imputed: models use the mean like a real row
        aligned[missing_ids] = aligned.sum(axis=0, dtype=np.float64) / mask.sum()  # unmatched rows are zero
        mask[missing_ids], filled = True, int(missing_ids.size)
    return ModalityFeatures(name=name, matrix=aligned, mask=mask, source=source, file_rows=len(file_tokens), filled=filled)


def _gather_rows(matrix: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """``[len(rows), d]`` float32 with row ``i`` = ``matrix[rows[i]]`` (zero where ``rows[i] < 0``).

    One sequential pass over the file in blocks, so the only full-size allocation is the result.
    """
    aligned = np.zeros((len(rows), matrix.shape[1]), dtype=np.float32)
    item_ids = np.flatnonzero(rows >= 0)
    item_ids = item_ids[np.argsort(rows[item_ids], kind="stable")]  # items in file-row order
    sorted_rows = rows[item_ids]
    for start, block in _row_blocks(matrix):
        low, high = np.searchsorted(sorted_rows, [start, start + block.shape[0]])
        if high > low:
            aligned[item_ids[low:high]] = block[sorted_rows[low:high] - start]
    return aligned


def _normalize_rows(matrix: np.ndarray) -> None:
    """L2-normalise every non-zero row in place, a block at a time (zero rows stay zero)."""
    step = max(1, ROW_BLOCK_BYTES // (4 * max(1, matrix.shape[1])))
    for start in range(0, matrix.shape[0], step):
        block = matrix[start : start + step]
        block /= np.maximum(np.linalg.norm(block, axis=1, keepdims=True), 1e-12)


def _per_modality(value, modality: str, key: str):
    if isinstance(value, dict):
        return value.get(modality)
    if value is None:
        return None
    raise ValueError(f"config key {key} must map modality names to values, got {value!r}")


def discover_modalities(folder: str, dataset: str) -> List[str]:
    """Modalities that have both files in ``folder``, sorted by name."""
    prefix = f"{dataset}."
    found = []
    for entry in sorted(os.listdir(folder)) if os.path.isdir(folder) else []:
        if entry.startswith(prefix) and entry.endswith(".npy"):
            modality = entry[len(prefix) : -len(".npy")]
            if modality and "." not in modality and os.path.isfile(feature_paths(folder, dataset, modality)[1]):
                found.append(modality)
    return found


def configured_modalities(config, folder: str) -> List[str]:
    """The ``modalities`` list of a RecBole config, or every feature file pair found when unset."""
    modalities = config["modalities"]
    if modalities is None:
        modalities = discover_modalities(folder, config["dataset"])
        if not modalities:
            raise FileNotFoundError(
                f"no feature files '{config['dataset']}.<modality>.npy' + '.ids' in {folder}; "
                "write them (python -m recbole_mm.embed ...) or set feature_path / modalities"
            )
    if isinstance(modalities, str):
        modalities = [modalities]
    if not modalities:
        raise ValueError("config key 'modalities' must list at least one modality, e.g. modalities: [title, meta]")
    if len(set(modalities)) != len(modalities):
        raise ValueError(f"config key 'modalities' lists a modality twice: {modalities}")
    return list(modalities)


def load_item_features(config, item_tokens: Sequence[str]) -> Dict[str, ModalityFeatures]:
    """Read every configured modality and align it to ``item_tokens`` (``field2id_token[item_id]``).

    Returns ``{modality: ModalityFeatures}`` in config order (the first is the anchor modality).
    """
    dataset_name = config["dataset"]
    folder = config["feature_path"] or config["data_path"]
    policy = config["missing_feature"] or "zero"
    normalize = bool(config["normalize_features"])
    features = {}
    for modality in configured_modalities(config, folder):
        expected_dim = _per_modality(config["modality_dims"], modality, "modality_dims")
        matrix, tokens, source = read_feature_file(folder, dataset_name, modality, expected_dim)
        features[modality] = align_features(modality, matrix, tokens, item_tokens, source, policy, normalize)
    return features
