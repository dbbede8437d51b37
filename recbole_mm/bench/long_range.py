"""Synthetic RecBole dataset whose next item depends on an item far back in the history.

Each user history is a run of episodes ``[key k, noise x gap, cue, answer(k)]``: a key item (one of
``n_keys``), ``gap`` random filler items, a fixed cue item, then the key's own answer item. Predicting
the answer after the cue needs the key, ``gap + 1`` positions back; everything nearer is noise.
A model whose attention reaches only the last ``w <= gap`` items (times its layers) sees the cue but
not the key and can do no better than guessing among the answers. With leave-one-out splitting the
test target of every user is the answer of their last episode and the earlier episodes' answers are
training targets. Modality vectors are random (they carry no signal about the pattern); the ``category``
item field is the item's role (key / noise / cue / answer).
"""

import os
from dataclasses import dataclass
from typing import Dict, Tuple

import numpy as np

from recbole_mm.feature_files import write_features
from recbole_mm.bench.planted import PlantedDataset, planted_config


ROLES = ("key", "answer", "cue", "noise")


@dataclass
class LongRangeItems:
    """Internal item indices (token = index + 1) of each role."""

    keys: np.ndarray
    answers: np.ndarray  # answers[i] answers keys[i]
    cue: int
    noise: np.ndarray

    @property
    def n_items(self) -> int:
        return len(self.keys) + len(self.answers) + 1 + len(self.noise)

    def roles(self) -> np.ndarray:
        """Index into ``ROLES`` of every item."""
        role = np.empty(self.n_items, dtype=np.int64)
        role[self.keys], role[self.answers], role[self.cue], role[self.noise] = range(len(ROLES))
        return role


def _items(n_keys: int, n_noise: int) -> LongRangeItems:
    return LongRangeItems(
        keys=np.arange(n_keys),
        answers=np.arange(n_keys, 2 * n_keys),
        cue=2 * n_keys,
        noise=np.arange(2 * n_keys + 1, 2 * n_keys + 1 + n_noise),
    )


def _history(rng, items: LongRangeItems, episodes: int, gap: Tuple[int, int]):
    history = []
    for _ in range(episodes):
        key = int(rng.integers(len(items.keys)))
        filler = rng.choice(items.noise, size=int(rng.integers(gap[0], gap[1] + 1)))
        history += [int(items.keys[key]), *map(int, filler), items.cue, int(items.answers[key])]
    return history


def recall_examples(n_keys: int, n_noise: int, length: int, n_examples: int, max_lead: int = 0, seed: int = 0,
                    key_run: int = 1):
    """Single-episode prefixes ``[noise x r, key x key_run, noise x gap, cue]`` (``length`` items,
    ``r <= max_lead``) and their targets ``answer(key)``, as item indices (token = index + 1) ``[n, length]``
    and ``[n]``. ``key_run > 1`` makes the key an interest *block* of repeated items rather than one item.

    For training a model on the recall step alone (every example informative), e.g. in tests.
    """
    rng = np.random.default_rng(seed)
    items = _items(n_keys, n_noise)
    prefixes = rng.choice(items.noise, size=(n_examples, length))
    keys = rng.integers(n_keys, size=n_examples)
    lead = rng.integers(max_lead + 1, size=n_examples)
    for offset in range(key_run):
        prefixes[np.arange(n_examples), lead + offset] = items.keys[keys]
    prefixes[:, -1] = items.cue
    return prefixes, items.answers[keys]


def write_long_range_dataset(
    data_path: str,
    name: str = "longrange",
    n_users: int = 300,
    n_keys: int = 16,
    n_noise: int = 40,
    gap: Tuple[int, int] = (12, 12),
    episodes: int = 3,
    modalities: Dict[str, int] = None,
    seed: int = 0,
) -> PlantedDataset:
    """Write ``<data_path>/<name>/<name>.inter``, ``.item`` (``category`` = role) and feature files.

    Returns a :class:`PlantedDataset` whose ``item_cluster`` is the index into ``ROLES`` of each
    item, so :func:`long_range_config` can build its RecBole config.
    """
    modalities = dict(modalities or {"title": 16, "image": 8})
    rng = np.random.default_rng(seed)
    folder = os.path.join(data_path, name)
    os.makedirs(folder, exist_ok=True)
    items = _items(n_keys, n_noise)
    item_count = np.zeros(items.n_items, dtype=np.int64)
    rows = []
    for user in range(n_users):
        for step, item in enumerate(_history(rng, items, episodes, gap)):
            rows.append(f"{user + 1}\t{item + 1}\t{1_000_000 + 1000 * user + step}\n")
            item_count[item] += 1
    with open(os.path.join(folder, f"{name}.inter"), "w", encoding="utf-8") as handle:
        handle.write("user_id:token\titem_id:token\ttimestamp:float\n")
        handle.writelines(rows)
    roles = items.roles()
    with open(os.path.join(folder, f"{name}.item"), "w", encoding="utf-8") as handle:
        handle.write("item_id:token\tcategory:token\n")
        handle.writelines(f"{i + 1}\t{ROLES[roles[i]]}\n" for i in range(items.n_items))
    tokens = [str(i + 1) for i in range(items.n_items)]
    for modality, dim in modalities.items():
        write_features(folder, name, modality, tokens, rng.normal(size=(items.n_items, dim)).astype(np.float32))
    return PlantedDataset(folder=folder, name=name, item_cluster=roles, item_count=item_count, modalities=modalities)


def long_range_config(planted: PlantedDataset, data_path: str, **overrides) -> dict:
    """RecBole ``config_dict`` for a long-range dataset (same keys as :func:`planted_config`)."""
    return planted_config(planted, data_path, **overrides)
