"""What every converter shares: k-core filtering, chronological order, atomic files, the dataset yaml.

Interactions travel between the steps as plain tuples ``(user, item, rating, timestamp)`` with
string tokens, so each converter only has to parse its own source format.
"""

import html
import json
import logging
import os
import re
from collections import Counter, defaultdict
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

logger = logging.getLogger(__name__)

Interaction = Tuple[str, str, float, float]  # user token, item token, rating, timestamp

LEAVE_ONE_OUT = {"split": {"LS": "valid_and_test"}, "order": "TO", "group_by": "user", "mode": "full"}
INTER_HEADER = ("user_id:token", "item_id:token", "rating:float", "timestamp:float")
_TAGS = re.compile(r"<[^>]*>")
_SPACES = re.compile(r"\s+")


def k_core(inters: List[Interaction], user_k: int = 5, item_k: int = 5) -> List[Interaction]:
    """Drop users with < ``user_k`` and items with < ``item_k`` interactions until none is left to drop.

    Removing an item can push a user below the threshold and vice versa, so the two filters are
    repeated until a pass removes nothing.
    """
    while True:
        users = Counter(user for user, _, _, _ in inters)
        items = Counter(item for _, item, _, _ in inters)
        kept = [row for row in inters if users[row[0]] >= user_k and items[row[1]] >= item_k]
        if len(kept) == len(inters):
            return kept
        inters = kept


def chronological(inters: Iterable[Interaction]) -> List[Interaction]:
    """Users in order of first appearance, each user's interactions by time (ties keep input order)."""
    by_user: Dict[str, List[Interaction]] = defaultdict(list)
    for row in inters:
        by_user[row[0]].append(row)
    return [row for rows in by_user.values() for row in sorted(rows, key=lambda row: row[3])]


def clean_text(value) -> str:
    """One line of plain text: HTML entities decoded, tags dropped, whitespace collapsed.

    Lists are joined with spaces. Double quotes become single quotes and tabs/newlines spaces, so
    the text can sit in a tab-separated atomic file that RecBole reads with csv quoting on.
    """
    if value is None:
        return ""
    if isinstance(value, (list, tuple)):
        value = " ".join(clean_text(part) for part in value)
    text = html.unescape(html.unescape(str(value)))  # dumps often hold doubly escaped entities
    text = _TAGS.sub(" ", text).replace('"', "'")
    return _SPACES.sub(" ", text).strip()


def category_token(name: str) -> str:
    """A category name as one token of a ``token_seq`` field (RecBole splits those on spaces)."""
    return _SPACES.sub("_", clean_text(name))


def check_cell(value: str, what: str) -> str:
    if "\t" in value or "\n" in value or "\r" in value:
        raise ValueError(f"{what}: {value!r} contains a tab or line break")
    return value


def write_atomic(path: str, header: Sequence[str], rows: Iterable[Sequence]) -> int:
    """Write a RecBole atomic file (tab-separated, typed header); returns the number of rows."""
    count = 0
    with open(path, "w", encoding="utf-8") as handle:
        handle.write("\t".join(header) + "\n")
        for row in rows:
            handle.write("\t".join(_cell(value) for value in row) + "\n")
            count += 1
    return count


def _cell(value) -> str:
    if isinstance(value, float):
        return repr(int(value)) if value.is_integer() else repr(value)
    return str(value)


def write_inter(folder: str, dataset: str, inters: Sequence[Interaction]) -> str:
    """``<ds>.inter`` with user, item, rating and timestamp columns."""
    path = os.path.join(folder, f"{dataset}.inter")
    write_atomic(path, INTER_HEADER, inters)
    return path


def _yaml_value(value) -> str:
    return json.dumps(value)  # JSON scalars, lists and dicts are valid YAML flow values


def write_dataset_yaml(
    folder: str,
    dataset: str,
    source: str,
    modalities: Dict[str, int],
    item_columns: Optional[List[str]] = None,
    category_field: Optional[str] = None,
    extra: Optional[Dict[str, Tuple[object, str]]] = None,
) -> str:
    """Write ``<folder>/<ds>.yaml`` in the style of ``properties/dataset/*.yaml`` (one commented key a line).

    ``modalities`` maps each modality to its dim (None when its file is still to be written);
    ``extra`` adds ``{key: (value, comment)}`` lines.
    """
    load_col = {"inter": ["user_id", "item_id", "rating", "timestamp"]}
    if item_columns:
        load_col["item"] = ["item_id", *item_columns]
    lines = [
        f"# {dataset}: converted from {source} by python -m recbole_mm.data.convert.",
        "USER_ID_FIELD: user_id          # (str) User column of the .inter file.",
        "ITEM_ID_FIELD: item_id          # (str) Item column; the feature files' .ids hold these tokens.",
        "RATING_FIELD: rating            # (str) Rating column (loaded, not used by the sequential models).",
        "TIME_FIELD: timestamp           # (str) Orders each user's history (eval_args order: TO).",
        f"load_col: {_yaml_value(load_col)}  # (dict) Columns RecBole loads from each atomic file.",
        f"modalities: {_yaml_value(list(modalities))}  # (list) Feature files {dataset}.<modality>.npy/.ids; the first is the anchor.",
    ]
    dims = {name: dim for name, dim in modalities.items() if dim}
    if dims:
        lines.append(f"modality_dims: {_yaml_value(dims)}  # (dict) Checked against the feature files.")
    if category_field:
        lines.append(f"category_field: {category_field}  # (str) Item token_seq field of leaf categories (CAMMSR).")
    lines.append("missing_feature: zero           # (str) zero | mean | error for items without a feature row.")
    lines.append(f"eval_args: {_yaml_value(LEAVE_ONE_OUT)}  # (dict) Leave-one-out by time: last item test, second last valid.")
    for key, (value, comment) in (extra or {}).items():
        lines.append(f"{key}: {_yaml_value(value)}  # {comment}")
    path = os.path.join(folder, f"{dataset}.yaml")
    with open(path, "w", encoding="utf-8") as handle:
        handle.write("\n".join(lines) + "\n")
    return path


def log_summary(dataset: str, inters: Sequence[Interaction], folder: str) -> None:
    users = len({row[0] for row in inters})
    items = len({row[1] for row in inters})
    logger.info(f"{dataset}: {len(inters)} interactions, {users} users, {items} items -> {folder}")
