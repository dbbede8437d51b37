"""Synthetic RecBole datasets with planted multimodal ground truth, for the benchmark (and the tests).

Items belong to ``n_clusters`` latent clusters. Each modality vector of an item is its cluster's
centroid (one random centroid per cluster and modality) plus noise, so content reveals the
cluster. Users walk the clusters in a fixed cycle (cluster c is followed by cluster c+1), picking
an item of the next cluster with Zipf-like popularity, so many items are rare in training. A model
that reads the modalities knows a rare item's cluster from its content; an ID-only model must learn
it from the few interactions the item has. The ``.item`` file carries the cluster as a ``category``
token so category-aware models can use it.
"""

import os
from dataclasses import dataclass
from typing import Dict, List

import numpy as np

from recbole_mm.feature_files import write_features


@dataclass
class PlantedDataset:
    """What was written, plus the ground truth tests check against."""

    folder: str  # <data_path>/<name>
    name: str
    item_cluster: np.ndarray  # [n_items] cluster of item token str(i + 1)
    item_count: np.ndarray  # [n_items] interactions per item
    modalities: Dict[str, int]

    def item_token(self, index: int) -> str:
        return str(index + 1)

    def rare_items(self, max_count: int) -> List[str]:
        return [self.item_token(i) for i in np.flatnonzero(self.item_count <= max_count)]


def _item_popularity(rng, n_items, exponent):
    weights = 1.0 / np.arange(1, n_items + 1) ** exponent
    return weights[rng.permutation(n_items)]


def _walk(rng, length, items_by_cluster, popularity, n_clusters, noise):
    """One user's history: clusters follow c -> c+1 (with probability 1 - noise)."""
    cluster = int(rng.integers(n_clusters))
    history = []
    for _ in range(length):
        members = items_by_cluster[cluster]
        weights = popularity[members] / popularity[members].sum()
        history.append(int(rng.choice(members, p=weights)))
        cluster = int(rng.integers(n_clusters)) if rng.random() < noise else (cluster + 1) % n_clusters
    return history


def _modality_matrix(rng, item_cluster, n_clusters, dim, content_noise):
    centroids = rng.normal(size=(n_clusters, dim))
    centroids /= np.linalg.norm(centroids, axis=1, keepdims=True)
    vectors = centroids[item_cluster] + content_noise * rng.normal(size=(len(item_cluster), dim)) / np.sqrt(dim)
    return vectors.astype(np.float32)


def write_cluster_walks(folder, name, rng, item_cluster, n_clusters, n_users, seq_len, popularity_exponent, transition_noise) -> np.ndarray:
    """Write ``<name>.inter``: per user a walk over the item clusters (:func:`_walk`), timestamps in
    order; returns how often each item occurs."""
    n_items = len(item_cluster)
    items_by_cluster = [np.flatnonzero(item_cluster == c) for c in range(n_clusters)]
    popularity = _item_popularity(rng, n_items, popularity_exponent)
    item_count = np.zeros(n_items, dtype=np.int64)
    rows = []
    for user in range(n_users):
        history = _walk(rng, int(rng.integers(seq_len[0], seq_len[1] + 1)), items_by_cluster, popularity, n_clusters, transition_noise)
        for step, item in enumerate(history):
            rows.append(f"{user + 1}\t{item + 1}\t{1_000_000 + 1000 * user + step}\n")
            item_count[item] += 1
    with open(os.path.join(folder, f"{name}.inter"), "w", encoding="utf-8") as handle:
        handle.write("user_id:token\titem_id:token\ttimestamp:float\n")
        handle.writelines(rows)
    return item_count


def write_item_categories(folder, name, categories) -> None:
    """Write ``<name>.item`` with one ``category`` token per item (item tokens ``1..N``)."""
    with open(os.path.join(folder, f"{name}.item"), "w", encoding="utf-8") as handle:
        handle.write("item_id:token\tcategory:token\n")
        handle.writelines(f"{i + 1}\t{category}\n" for i, category in enumerate(categories))


def write_planted_dataset(
    data_path: str,
    name: str = "planted",
    n_users: int = 300,
    n_items: int = 200,
    n_clusters: int = 20,
    seq_len: tuple = (8, 20),
    modalities: Dict[str, int] = None,
    popularity_exponent: float = 1.2,
    transition_noise: float = 0.05,
    content_noise: float = 0.3,
    seed: int = 0,
) -> PlantedDataset:
    """Write ``<data_path>/<name>/<name>.inter``, ``.item`` and one feature file pair per modality."""
    modalities = dict(modalities or {"text": 16, "image": 8})
    rng = np.random.default_rng(seed)
    folder = os.path.join(data_path, name)
    os.makedirs(folder, exist_ok=True)
    item_cluster = np.arange(n_items) % n_clusters
    rng.shuffle(item_cluster)
    item_count = write_cluster_walks(folder, name, rng, item_cluster, n_clusters, n_users, seq_len, popularity_exponent, transition_noise)
    write_item_categories(folder, name, [f"c{cluster}" for cluster in item_cluster])
    tokens = [str(i + 1) for i in range(n_items)]
    for modality, dim in modalities.items():
        write_features(folder, name, modality, tokens, _modality_matrix(rng, item_cluster, n_clusters, dim, content_noise))
    return PlantedDataset(folder=folder, name=name, item_cluster=item_cluster, item_count=item_count, modalities=modalities)


def planted_config(planted: PlantedDataset, data_path: str, **overrides) -> dict:
    """A RecBole ``config_dict`` that loads a planted dataset with all its modalities."""
    config = {
        "data_path": data_path,
        "USER_ID_FIELD": "user_id",
        "ITEM_ID_FIELD": "item_id",
        "TIME_FIELD": "timestamp",
        "load_col": {"inter": ["user_id", "item_id", "timestamp"], "item": ["item_id", "category"]},
        "modalities": list(planted.modalities),
        "category_field": "category",
        "MAX_ITEM_LIST_LENGTH": 20,
        "train_neg_sample_args": None,
        "eval_args": {"split": {"LS": "valid_and_test"}, "order": "TO", "mode": "full"},
        "metrics": ["Recall", "NDCG", "MRR"],
        "topk": [10],
        "valid_metric": "NDCG@10",
        "show_progress": False,
        "save_dataset": False,
        "save_dataloaders": False,
        "log_wandb": False,
        "state": "WARNING",
        "reproducibility": True,
        "seed": 2020,
    }
    config.update(overrides)
    return config
