"""Read the item tables the embedders take as input: TSV, CSV or a RecBole atomic file.

Every cell is read as a string and a missing cell as ``""``, so ids keep their exact spelling
(``007`` stays ``007``) and the caller decides what an empty value means. A RecBole header
(``item_id:token``) is reduced to the bare column names.
"""

import csv
import os
import re
from typing import Iterable, List, Optional

import pandas as pd

ATOMIC_HEADER = re.compile(r"^(?P<name>.+):(?P<type>token|token_seq|float|float_seq)$")


def guess_separator(path: str) -> str:
    """Comma for ``.csv`` files, tab for everything else (``.tsv``, ``.item``, ``.inter``, ...)."""
    return "," if path.lower().endswith(".csv") else "\t"


def strip_atomic_types(columns: Iterable[str]) -> List[str]:
    """``['item_id:token', 'title']`` -> ``['item_id', 'title']``."""
    names = []
    for column in columns:
        match = ATOMIC_HEADER.match(str(column))
        names.append(match.group("name") if match else str(column))
    return names


def read_table(path: str, sep: Optional[str] = None) -> pd.DataFrame:
    """Load ``path`` with string cells, ``""`` for missing ones, and bare column names."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"input table not found: {path}")
    sep = sep or guess_separator(path)
    # Tab-separated files (RecBole's among them) do not quote: a '"' inside a title is text.
    quoting = csv.QUOTE_NONE if sep == "\t" else csv.QUOTE_MINIMAL
    table = pd.read_csv(path, sep=sep, dtype=str, keep_default_na=False, quoting=quoting)
    table.columns = strip_atomic_types(table.columns)
    return table


def require_columns(table: pd.DataFrame, columns: Iterable[str], source: str) -> None:
    """Fail with the available names when a requested column is absent."""
    missing = [column for column in columns if column not in table.columns]
    if missing:
        raise ValueError(f"{source}: no column {missing}; columns are {list(table.columns)}")


def unique_ids(table: pd.DataFrame, id_column: str, source: str) -> List[str]:
    """The id column as a list, refusing empty or repeated ids (the feature format forbids both)."""
    ids = [value.strip() for value in table[id_column].tolist()]
    seen = {}
    for row, token in enumerate(ids):
        if not token:
            raise ValueError(f"{source}: row {row}: empty id in column '{id_column}'")
        if token in seen:
            raise ValueError(f"{source}: id '{token}' appears at rows {seen[token]} and {row}")
        seen[token] = row
    return ids
