"""The sparse regime's dataset: each ml-100k-mm user's most recent ratings only.

Rule (reproducible, no randomness): sort each user's ratings by timestamp (ties keep the file's
order) and keep the last ``K``. ``K`` is the largest value for which the median item of the kept
data has at most ``max_median`` (5) TRAINING interactions, training being what the leave-one-out
split leaves for training (every kept rating but each user's last two). Items and their feature
vectors stay as they are, so most items are known to a model mainly through their content.

:func:`build` writes ``<root>/<name>/``: the kept ``.inter`` rows (in the source file's order), the
``.item`` file and every ``<source>.<modality>.npy / .ids`` pair copied as ``<name>.<modality>...``.
"""

import os
import shutil
from typing import Optional, Tuple

import numpy as np
import pandas as pd

from recbole_mm.bench.folders import build_and_install

SOURCE = "ml-100k-mm"
NAME = "ml-100k-mm-sparse"
MAX_MEDIAN_TRAIN = 5  # the median item has at most this many training interactions
HELD_OUT_PER_USER = 2  # leave-one-out: the last rating is the test target, the one before it validation


def read_inter(path: str) -> pd.DataFrame:
    """A RecBole atomic ``.inter`` file with its typed header (``user_id:token``, ...) kept as column names."""
    return pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)


def _columns(frame: pd.DataFrame) -> Tuple[str, str, str]:
    """The user, item and time columns of an atomic header (the first ``user``/``item``/``timestamp`` names)."""
    def find(prefix):
        for column in frame.columns:
            if column.split(":")[0] == prefix:
                return column
        raise ValueError(f"the .inter file has no '{prefix}' column (columns: {list(frame.columns)})")

    return find("user_id"), find("item_id"), find("timestamp")


def recency_order(frame: pd.DataFrame) -> np.ndarray:
    """Per row: its 0-based position counted from the user's most recent rating (0 = the latest)."""
    user, _, time = _columns(frame)
    ordered = frame.assign(_time=frame[time].astype(float), _row=np.arange(len(frame)))
    ordered = ordered.sort_values([user, "_time", "_row"], kind="stable")
    from_end = ordered.groupby(user, sort=False).cumcount(ascending=False)
    return from_end.reindex(frame.index).to_numpy()


def median_train_interactions(frame: pd.DataFrame, from_end: np.ndarray, keep: int) -> float:
    """Median training interactions per item when every user keeps their ``keep`` latest ratings."""
    _, item, _ = _columns(frame)
    kept = from_end < keep
    train = kept & (from_end >= HELD_OUT_PER_USER)
    counts = frame.loc[train, item].value_counts().reindex(frame.loc[kept, item].unique(), fill_value=0)
    return float(np.median(counts.to_numpy())) if len(counts) else 0.0


def choose_keep(frame: pd.DataFrame, from_end: np.ndarray, max_median: float = MAX_MEDIAN_TRAIN) -> int:
    """The largest per-user ``K`` whose median item has at most ``max_median`` training interactions."""
    longest = int(from_end.max()) + 1
    best = None
    for keep in range(HELD_OUT_PER_USER + 1, longest + 1):
        if median_train_interactions(frame, from_end, keep) > max_median:
            break
        best = keep
    if best is None:
        raise ValueError(f"no per-user cut keeps the median item at <= {max_median} training interactions")
    return best


def _write_cut(kept, source_folder: str, source: str, staging: str, name: str) -> str:
    """``<staging>/<name>/``: the kept interactions and the source's other files; returns its path."""
    folder = os.path.join(staging, name)
    os.makedirs(folder)
    kept.to_csv(os.path.join(folder, f"{name}.inter"), sep="\t", index=False, lineterminator="\n")
    for entry in sorted(os.listdir(source_folder)):
        if entry.startswith(source + ".") and not entry.endswith(".inter"):
            shutil.copyfile(os.path.join(source_folder, entry), os.path.join(folder, name + entry[len(source):]))
    return folder


def build(root: str, source_root: Optional[str] = None, source: str = SOURCE, name: str = NAME,
          max_median: float = MAX_MEDIAN_TRAIN) -> dict:
    """Write ``<root>/<name>/`` from ``<source_root>/<source>/`` (default: the bundled ml-100k-mm);
    return a description (``keep``, users, items, interactions, median training interactions)."""
    if source_root is None:
        from recbole_mm import resources

        source_root = resources.bundled_dataset_root(source)
        if source_root is None:
            raise FileNotFoundError(f"the bundled dataset '{source}' is not installed; pass source_root")
    source_folder = os.path.join(source_root, source)
    frame = read_inter(os.path.join(source_folder, f"{source}.inter"))
    from_end = recency_order(frame)
    keep = choose_keep(frame, from_end, max_median)
    kept = frame[from_end < keep]
    build_and_install(root, lambda staging: _write_cut(kept, source_folder, source, staging, name))  # never rewritten in place
    user, item, _ = _columns(frame)
    return {
        "source": source, "keep": keep, "users": int(kept[user].nunique()), "items": int(kept[item].nunique()),
        "interactions": int(len(kept)), "source_interactions": int(len(frame)),
        "median_train_interactions": median_train_interactions(frame, from_end, keep), "max_median": max_median,
    }


def describe(info: dict) -> list:
    """Lines for the report's header."""
    return [
        f"Sparse set `{NAME}`: each `{info['source']}` user's {info['keep']} most recent ratings "
        f"({info['interactions']} of {info['source_interactions']} interactions, {info['users']} users, {info['items']} items); "
        f"the median item has {info['median_train_interactions']:g} training interactions (rule: the largest per-user cut "
        f"with a median of at most {info['max_median']:g})."
    ]
