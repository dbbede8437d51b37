"""The synthetic benchmark set: planted multimodal ground truth with a cold-item test split.

Built by the project's generator (:func:`recbole_mm.bench.planted.write_planted_dataset`): items
fall into clusters, each item's modality vectors reveal its cluster, and users walk the clusters
in a fixed cycle, so the next item's cluster is predictable and its content tells which items are
in it. On top of that, :func:`make_cold_split` turns part of the catalogue into cold items:

- in every cluster the ``cold_per_cluster`` least popular items are cold; each appears at most
  ``cold_cap`` times in every user's history but the last item (a cold item's later appearances
  are replaced by a warm item of the same cluster, so the planted cluster walk is unchanged);
- for a ``cold_target_fraction`` of users the test target (the last item) is replaced by a cold
  item of the same cluster;
- for a ``cold_valid_fraction`` of users (drawn apart, 0 in ``planted-cold``) the validation target
  (the item before the last) is replaced the same way, so that early stopping and tuning see cold
  items too. Training sequences and test targets are those of ``planted-cold`` byte for byte.

An ID-only model has seen a cold item at most ``cold_cap`` times and cannot rank it; a model that
reads the modalities knows its cluster from its content. The report's cold-item table
(Recall@10 / NDCG@10 over test users whose target is rare in training) shows whether a model
that uses features actually exploits them.

``python -m recbole_mm.bench --regime cold`` (tuned, seeds) or ``--dataset planted-cold`` (one
budget) runs the benchmark on it; ``--regime cold-valid`` / ``--dataset planted-cold-valid`` on the
set with cold validation targets.
"""

import dataclasses
import hashlib
import os
from typing import Dict, List, Tuple

import numpy as np

from recbole_mm.bench.folders import build_and_install
from recbole_mm.bench.planted import PlantedDataset, planted_config, write_planted_dataset

NAME = "planted-cold"
GENERATOR = dict(
    n_users=1500,
    n_items=400,
    n_clusters=80,
    seq_len=(8, 24),
    modalities={"text": 32, "image": 16},
    popularity_exponent=1.2,
    transition_noise=0.05,
    content_noise=0.3,
    seed=7,
)
COLD_SPLIT = dict(cold_per_cluster=1, cold_cap=2, cold_target_fraction=0.5, seed=11)
# `planted-cold`'s validation targets are warm, so a model's validation score cannot see the cold-item
# column it is judged on; the second set gives half the users a cold validation target as well.
VALID_NAME = "planted-cold-valid"
SPLITS = {NAME: COLD_SPLIT, VALID_NAME: dict(COLD_SPLIT, cold_valid_fraction=0.5, valid_seed=12)}
FEATURES = ["category"]  # the planted cluster as a token field, for FDSA / SASRecF
# protocol keys of planted_config that the benchmark profile sets itself
_PROTOCOL_KEYS = ("MAX_ITEM_LIST_LENGTH", "metrics", "topk", "valid_metric", "seed", "state", "eval_args", "train_neg_sample_args")


def _read_histories(path: str) -> Tuple[str, Dict[str, List[List[str]]]]:
    """Header and per-user rows ``[user, item, timestamp]`` in file order (the generator writes each
    user's walk in time order)."""
    with open(path, encoding="utf-8") as handle:
        header = handle.readline()
        histories: Dict[str, List[List[str]]] = {}
        for line in handle:
            fields = line.rstrip("\n").split("\t")
            histories.setdefault(fields[0], []).append(fields)
    return header, histories


def _cold_items(planted: PlantedDataset, per_cluster: int) -> Dict[int, np.ndarray]:
    """Per cluster: its ``per_cluster`` least popular item indices."""
    cold = {}
    for cluster in np.unique(planted.item_cluster):
        members = np.flatnonzero(planted.item_cluster == cluster)
        cold[int(cluster)] = members[np.argsort(planted.item_count[members], kind="stable")[:per_cluster]]
    return cold


def _cold_validation_targets(histories, planted: PlantedDataset, cold_by_cluster, fraction: float, seed: int) -> int:
    """Replace the validation target (the item before the last) of a ``fraction`` of users by a cold
    item of its cluster, with a generator of its own so the test side stays as it was; returns how many."""
    rng = np.random.default_rng(seed)
    replaced = 0
    for rows in histories.values():
        if rng.random() < fraction and len(rows) >= 3:  # RecBole's leave-one-out needs a training item first
            cluster = int(planted.item_cluster[int(rows[-2][1]) - 1])
            rows[-2][1] = str(int(rng.choice(cold_by_cluster[cluster])) + 1)
            replaced += 1
    return replaced


def make_cold_split(planted: PlantedDataset, cold_per_cluster=2, cold_cap=2, cold_target_fraction=0.5, seed=11,
                    cold_valid_fraction=0.0, valid_seed=12):
    """Rewrite ``<name>.inter`` with cold items, cold test targets and, with ``cold_valid_fraction``,
    cold validation targets (see the module docstring).

    Returns the planted dataset with updated ``item_count`` and a dict describing the split.
    """
    rng = np.random.default_rng(seed)
    path = os.path.join(planted.folder, f"{planted.name}.inter")
    header, histories = _read_histories(path)
    cold_by_cluster = _cold_items(planted, cold_per_cluster)
    cold = {int(item) for items in cold_by_cluster.values() for item in items}
    warm_by_cluster = {c: np.array([i for i in np.flatnonzero(planted.item_cluster == c) if i not in cold]) for c in cold_by_cluster}
    seen = np.zeros(len(planted.item_cluster), dtype=np.int64)
    cold_targets = 0
    for rows in histories.values():
        for row in rows[:-1]:
            item = int(row[1]) - 1
            if item in cold:
                if seen[item] < cold_cap:
                    seen[item] += 1
                else:
                    row[1] = str(int(rng.choice(warm_by_cluster[int(planted.item_cluster[item])])) + 1)
        if rng.random() < cold_target_fraction:
            cluster = int(planted.item_cluster[int(rows[-1][1]) - 1])
            rows[-1][1] = str(int(rng.choice(cold_by_cluster[cluster])) + 1)
            cold_targets += 1
    cold_valid = _cold_validation_targets(histories, planted, cold_by_cluster, cold_valid_fraction, valid_seed) if cold_valid_fraction else 0
    item_count = np.zeros_like(planted.item_count)
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(header)
        for rows in histories.values():
            for row in rows:
                item_count[int(row[1]) - 1] += 1
                handle.write("\t".join(row) + "\n")
    info = {"cold_items": len(cold), "cold_cap": cold_cap, "cold_test_users": cold_targets, "users": len(histories)}
    if cold_valid_fraction:
        info["cold_valid_users"] = cold_valid
    return dataclasses.replace(planted, item_count=item_count), info


def build(data_path: str, name: str = NAME, generator: dict = None, cold_split: dict = None):
    """Write the set under ``<data_path>/<name>/``; return ``(planted, config_dict, info)``.

    The set is written to a staging folder and replaces ``<data_path>/<name>/`` only when its files
    differ, so runs of another invocation reading the set are never disturbed.
    ``config_dict`` holds the dataset keys (data_path, load_col, modalities, category_field);
    the benchmark profile adds the protocol. ``info`` describes the cold split and carries a
    fingerprint of the written interactions (so cached runs of an older set are not reused).
    """
    generator = dict(GENERATOR, **(generator or {}))
    cold_split = dict(SPLITS.get(name, COLD_SPLIT), **(cold_split or {}))
    made = {}

    def write(staging: str) -> str:
        made["planted"], made["info"] = make_cold_split(write_planted_dataset(staging, name=name, **generator), **cold_split)
        return made["planted"].folder

    folder = build_and_install(data_path, write)
    planted, info = dataclasses.replace(made["planted"], folder=folder), made["info"]
    config = planted_config(planted, data_path)
    for key in _PROTOCOL_KEYS:
        config.pop(key, None)
    with open(os.path.join(planted.folder, f"{name}.inter"), "rb") as handle:
        info["fingerprint"] = hashlib.sha1(handle.read()).hexdigest()[:12]
    info["generator"], info["split"], info["name"] = generator, cold_split, name
    return planted, config, info


def describe(info: dict) -> List[str]:
    """Lines for the report's header."""
    g = info["generator"]
    valid = (f" {info['cold_valid_users']} of {info['users']} validation targets replaced the same way "
             f"(so early stopping sees cold items)." if info.get("cold_valid_users") else "")
    return [
        f"Synthetic set `{info.get('name', NAME)}` from `write_planted_dataset` ({g['n_users']} users, {g['n_items']} items in "
        f"{g['n_clusters']} clusters, modalities {g['modalities']}, Zipf exponent {g['popularity_exponent']}, seed {g['seed']}), "
        f"then a cold split: {info['cold_items']} cold items (the {info['split']['cold_per_cluster']} least popular per cluster, "
        f"each at most {info['cold_cap']} times in training), {info['cold_test_users']} of {info['users']} test targets "
        f"replaced by a cold item of the same cluster.{valid} Ground truth: the next item's cluster follows the previous one's, "
        f"and content reveals the cluster, so models that read features should win on cold users."
    ]

