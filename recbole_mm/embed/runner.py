"""Batched, resumable encoding of an ordered item list into one pair of feature files.

The input rows are cut into chunks of ``chunk_size``. Each finished chunk is saved (in the
feature-file format itself) under ``<folder>/<ds>.<modality>.partial/``; a rerun with the same
model and inputs finds those chunks and encodes only the rest, so a long job that was stopped
loses at most one chunk. When every chunk is there, the rows are assembled in input order,
optionally L2-normalised and cast to float16, written with
:func:`recbole_mm.feature_files.write_features`, and the partial folder is removed.
Rows whose input is unusable (``encoder.prepare`` returns None) are left out and counted.
"""

import hashlib
import json
import logging
import os
import shutil
from dataclasses import dataclass
from typing import Any, List, Optional, Protocol, Sequence, Tuple

import numpy as np
from tqdm.auto import tqdm

from recbole_mm.feature_files import feature_paths, read_ids, write_features

logger = logging.getLogger(__name__)

MANIFEST = "manifest.json"


class Encoder(Protocol):
    """What the runner needs from a text or image model."""

    identity: str  # names the model in the resume fingerprint (e.g. its resolved path)

    def prepare(self, payload: Any) -> Optional[Any]:
        """Turn one raw input into what ``encode`` takes, or None when it is unusable."""

    def encode(self, prepared: List[Any]) -> np.ndarray:
        """Encode one batch to a float matrix ``[len(prepared), d]``."""


@dataclass
class EncodeOptions:
    batch_size: int = 64  # inputs per forward pass
    chunk_size: int = 1024  # inputs per saved chunk: the unit of resumption
    normalize: bool = False  # L2-normalise every row of the output
    float16: bool = False  # store float16 instead of float32
    progress: bool = True  # show a tqdm bar


def fingerprint(identity: str, chunk_size: int, tokens: Sequence[str], payloads: Sequence[Any]) -> str:
    """Hash of everything that decides the chunks' content; normalisation and dtype are applied later."""
    digest = hashlib.sha256(json.dumps({"model": identity, "chunk_size": chunk_size}).encode())
    for token, payload in zip(tokens, payloads):
        digest.update(f"{token}\t{payload}\n".encode())
    return digest.hexdigest()


def open_partial(folder: str, dataset: str, modality: str, key: str) -> str:
    """The partial folder of one output; chunks left by a run with other inputs are discarded."""
    partial = os.path.join(folder, f"{dataset}.{modality}.partial")
    manifest = os.path.join(partial, MANIFEST)
    if os.path.isfile(manifest):
        with open(manifest, encoding="utf-8") as handle:
            if json.load(handle).get("fingerprint") == key:
                return partial
        logger.warning("%s: inputs, model or chunk size changed since the last run; starting over", partial)
    shutil.rmtree(partial, ignore_errors=True)
    os.makedirs(partial)
    with open(manifest, "w", encoding="utf-8") as handle:
        json.dump({"fingerprint": key}, handle)
    return partial


def chunk_name(index: int) -> str:
    return f"{index:06d}"


def load_chunk(partial: str, index: int) -> Optional[Tuple[List[str], np.ndarray]]:
    """A finished chunk's tokens and rows, or None when it is absent or incomplete."""
    npy_path, ids_path = feature_paths(partial, "chunk", chunk_name(index))
    if not (os.path.isfile(ids_path) and os.path.isfile(npy_path)):
        return None
    tokens, matrix = read_ids(ids_path), np.load(npy_path, allow_pickle=False)
    return (tokens, matrix) if len(tokens) == matrix.shape[0] else None


def save_chunk(partial: str, index: int, tokens: List[str], matrix: np.ndarray) -> None:
    """Write a chunk beside its final place, then move it in, ``.ids`` last (its presence marks it done)."""
    scratch = os.path.join(partial, "writing")
    written = write_features(scratch, "chunk", chunk_name(index), tokens, matrix)
    for source, target in zip(written, feature_paths(partial, "chunk", chunk_name(index))):
        os.replace(source, target)


def encode_chunk(encoder: Encoder, tokens: Sequence[str], payloads: Sequence[Any], batch_size: int, bar) -> Tuple[List[str], np.ndarray]:
    """Encode one chunk batch by batch; unusable inputs are dropped."""
    kept_tokens, blocks = [], []
    for start in range(0, len(tokens), batch_size):
        prepared = [encoder.prepare(payload) for payload in payloads[start : start + batch_size]]
        keep = [offset for offset, item in enumerate(prepared) if item is not None]
        if keep:
            vectors = np.asarray(encoder.encode([prepared[offset] for offset in keep]), dtype=np.float32)
            if vectors.ndim != 2 or vectors.shape[0] != len(keep):
                raise ValueError(f"encoder returned shape {vectors.shape} for a batch of {len(keep)} inputs")
            blocks.append(vectors)
            kept_tokens.extend(tokens[start + offset] for offset in keep)
        bar.update(len(prepared))
    matrix = np.concatenate(blocks) if blocks else np.zeros((0, 0), dtype=np.float32)
    return kept_tokens, matrix


def check_tokens(tokens: Sequence[str], payloads: Sequence[Any]) -> None:
    """One input per token, and no token twice (a feature file may hold each item once)."""
    if len(tokens) != len(payloads):
        raise ValueError(f"{len(tokens)} tokens but {len(payloads)} inputs")
    seen = set()
    for row, token in enumerate(tokens):
        if token in seen:
            raise ValueError(f"row {row}: token '{token}' appears twice")
        seen.add(token)


def l2_normalize(matrix: np.ndarray) -> np.ndarray:
    """Unit-length rows; an all-zero row stays zero."""
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    return matrix / np.maximum(norms, 1e-12)


def assemble(chunks: List[Tuple[List[str], np.ndarray]], source: str) -> Tuple[List[str], np.ndarray]:
    """Concatenate the chunks in order, checking that they agree on the dimension."""
    filled = [(tokens, matrix) for tokens, matrix in chunks if tokens]
    if not filled:
        raise ValueError(f"{source}: no item had a usable input; nothing to write")
    dims = {matrix.shape[1] for _, matrix in filled}
    if len(dims) != 1:
        raise ValueError(f"{source}: chunks disagree on the dimension {sorted(dims)}; delete the partial folder and rerun")
    tokens = [token for chunk_tokens, _ in filled for token in chunk_tokens]
    return tokens, np.concatenate([matrix for _, matrix in filled])


def encode_to_features(
    encoder: Encoder,
    tokens: Sequence[str],
    payloads: Sequence[Any],
    folder: str,
    dataset: str,
    modality: str,
    options: Optional[EncodeOptions] = None,
) -> Tuple[str, str]:
    """Encode ``payloads`` (one per token, in order) into ``<folder>/<dataset>.<modality>.npy/.ids``."""
    options = options or EncodeOptions()
    check_tokens(tokens, payloads)
    if options.batch_size < 1 or options.chunk_size < 1:
        raise ValueError("batch_size and chunk_size must be positive")
    partial = open_partial(folder, dataset, modality, fingerprint(encoder.identity, options.chunk_size, tokens, payloads))
    starts = range(0, len(tokens), options.chunk_size)
    chunks = [load_chunk(partial, index) for index in range(len(starts))]
    done_rows = sum(min(options.chunk_size, len(tokens) - start) for start, chunk in zip(starts, chunks) if chunk is not None)
    if done_rows:
        logger.info("%s: resuming, %d of %d rows already encoded", partial, done_rows, len(tokens))
    with tqdm(total=len(tokens), initial=done_rows, unit="item", desc=modality, disable=not options.progress) as bar:
        for index, start in enumerate(starts):
            if chunks[index] is None:
                end = start + options.chunk_size
                chunks[index] = encode_chunk(encoder, tokens[start:end], payloads[start:end], options.batch_size, bar)
                save_chunk(partial, index, *chunks[index])
    kept_tokens, matrix = assemble(chunks, partial)
    if options.normalize:
        matrix = l2_normalize(matrix)
    matrix = matrix.astype(np.float16 if options.float16 else np.float32)
    paths = write_features(folder, dataset, modality, kept_tokens, matrix)
    shutil.rmtree(partial)
    skipped = len(tokens) - len(kept_tokens)
    logger.info("%s: %d of %d items encoded, %d skipped (no usable input), dim %d -> %s", modality, len(kept_tokens), len(tokens), skipped, matrix.shape[1], paths[0])
    return paths
