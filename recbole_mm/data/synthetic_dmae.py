"""A planted "similar-to-history" dataset: the next item resembles some earlier item, in content.

Items belong to latent clusters; each modality vector is the cluster's centroid plus noise. Every
user has a few interest clusters and clicks items of those clusters in random order, so there is no
sequential transition to learn: what predicts the next item is that it is *similar to items already
in the history* -- exactly the target-vs-behaviour similarity that DMAE's MIEU measures. Items are
numerous and clicked uniformly, so IDs alone are sparse evidence. Timestamps grow by random gaps
of minutes to days, so click-time buckets are non-trivial.
"""

import os
from typing import Dict

import numpy as np

from recbole_mm.data.feature_files import write_features
from recbole_mm.data.synthetic import PlantedDataset, _modality_matrix


def write_similar_history_dataset(
    data_path: str,
    name: str = "simhist",
    n_users: int = 200,
    n_items: int = 300,
    n_clusters: int = 30,
    interests_per_user: int = 3,
    seq_len: tuple = (6, 12),
    modalities: Dict[str, int] = None,
    content_noise: float = 0.5,
    seed: int = 0,
) -> PlantedDataset:
    """Write ``<data_path>/<name>/<name>.inter``, ``.item`` (``category`` = cluster) and feature files."""
    modalities = dict(modalities or {"text": 16, "image": 8})
    rng = np.random.default_rng(seed)
    item_cluster = rng.permutation(np.arange(n_items) % n_clusters)
    members = [np.flatnonzero(item_cluster == c) for c in range(n_clusters)]
    clicks = [_user_clicks(rng, user, members, interests_per_user, seq_len) for user in range(n_users)]
    inter = np.concatenate(clicks)  # [n_clicks, 3]: user token, item token, unix time
    folder = os.path.join(data_path, name)
    os.makedirs(folder, exist_ok=True)
    _write_table(os.path.join(folder, f"{name}.inter"), "user_id:token\titem_id:token\ttimestamp:float", inter)
    items = np.array([[str(i + 1), f"c{c}"] for i, c in enumerate(item_cluster)])
    _write_table(os.path.join(folder, f"{name}.item"), "item_id:token\tcategory:token", items)
    item_count = np.bincount(inter[:, 1] - 1, minlength=n_items)
    tokens = [str(i + 1) for i in range(n_items)]
    for modality, dim in modalities.items():
        write_features(folder, name, modality, tokens, _modality_matrix(rng, item_cluster, n_clusters, dim, content_noise))
    return PlantedDataset(folder=folder, name=name, item_cluster=item_cluster, item_count=item_count, modalities=modalities)


def _user_clicks(rng, user, members, interests_per_user, seq_len) -> np.ndarray:
    """One user's clicks ``[n, 3]`` (user token, item token, time): items of a few clusters, random order."""
    interests = rng.choice(len(members), size=interests_per_user, replace=False)
    length = int(rng.integers(seq_len[0], seq_len[1] + 1))
    items = [int(rng.choice(members[int(rng.choice(interests))])) + 1 for _ in range(length)]
    times = 1_000_000_000 + int(rng.integers(0, 10**7)) + np.cumsum(rng.integers(60, 3 * 86_400, size=length))
    return np.stack([np.full(length, user + 1), np.array(items), times], 1)


def _write_table(path: str, header: str, rows: np.ndarray) -> None:
    np.savetxt(path, rows, fmt="%s", delimiter="\t", header=header, comments="", encoding="utf-8")
