"""A planted dataset where the informative modality depends on the item's category (CAMMSR tests).

Like :mod:`recbole_mm.data.synthetic` (users walk clusters c -> c+1, Zipf-like item popularity), but
each item also has a category, drawn independently of its cluster, and each category trusts one
modality: category ``k`` (token ``by_<modality k>``) shows the item's cluster only in modality
``k``; the item's other modalities show the centroid of a *random* cluster instead (misleading,
not just noisy). Every modality also carries a small category signature, so the content itself
says which modality to believe. A model that mixes modalities with fixed weights is pulled toward
the wrong cluster for half the items; a per-item gate can pick the right modality, which matters
most for items rare in training, whose ID embedding is barely learned.
"""

import os
from dataclasses import dataclass
from typing import Dict, List

import numpy as np

from recbole_mm.data.feature_files import write_features
from recbole_mm.data.synthetic import PlantedDataset, write_cluster_walks, write_item_categories


@dataclass
class CategoryModalityDataset(PlantedDataset):
    """What was written, with the category of each item and the modality each category trusts."""

    item_category: np.ndarray = None  # [n_items] category index of item token str(i + 1)
    informative: List[str] = None  # informative[k]: the modality that reveals clusters in category k

    def category_token(self, category: int) -> str:
        return f"by_{self.informative[category]}"


def _unit_rows(rng, rows: int, dim: int) -> np.ndarray:
    vectors = rng.normal(size=(rows, dim))
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def _category_modality_matrix(rng, item_cluster, item_category, own_category, n_clusters, dim, content_noise, signature_scale):
    """One modality: the true cluster's centroid for items of ``own_category``, a random cluster's
    centroid for the others; plus the category's signature and Gaussian noise."""
    n_items = len(item_cluster)
    centroids = _unit_rows(rng, n_clusters, dim)
    signatures = _unit_rows(rng, int(item_category.max()) + 1, dim)
    shown = np.where(item_category == own_category, item_cluster, rng.integers(n_clusters, size=n_items))
    vectors = centroids[shown] + signature_scale * signatures[item_category]
    vectors += content_noise * rng.normal(size=(n_items, dim)) / np.sqrt(dim)
    return vectors.astype(np.float32)


def write_category_modality_dataset(
    data_path: str,
    name: str = "catmod",
    n_users: int = 300,
    n_items: int = 200,
    n_clusters: int = 10,
    seq_len: tuple = (8, 20),
    modalities: Dict[str, int] = None,
    popularity_exponent: float = 1.2,
    transition_noise: float = 0.05,
    content_noise: float = 0.3,
    signature_scale: float = 0.5,
    seed: int = 0,
) -> CategoryModalityDataset:
    """Write ``<data_path>/<name>/<name>.inter``, ``.item`` (``category`` token) and the feature files.

    One category per modality (category k trusts modality k), items split between them at random.
    """
    modalities = dict(modalities or {"text": 16, "image": 16})
    informative = list(modalities)
    rng = np.random.default_rng(seed)
    folder = os.path.join(data_path, name)
    os.makedirs(folder, exist_ok=True)
    item_cluster = np.arange(n_items) % n_clusters
    rng.shuffle(item_cluster)
    item_category = rng.integers(len(informative), size=n_items)
    item_count = write_cluster_walks(folder, name, rng, item_cluster, n_clusters, n_users, seq_len, popularity_exponent, transition_noise)
    write_item_categories(folder, name, [f"by_{informative[category]}" for category in item_category])
    tokens = [str(i + 1) for i in range(n_items)]
    for index, (modality, dim) in enumerate(modalities.items()):
        matrix = _category_modality_matrix(rng, item_cluster, item_category, index, n_clusters, dim, content_noise, signature_scale)
        write_features(folder, name, modality, tokens, matrix)
    return CategoryModalityDataset(
        folder=folder, name=name, item_cluster=item_cluster, item_count=item_count, modalities=modalities,
        item_category=item_category, informative=informative,
    )
