"""Train a model on a planted dataset through RecBole's pipeline and measure target ranks."""

import math
import os

import numpy as np
import torch

from conftest import build_run


def train_on_planted(model_name, config_dict, dataset_name):
    """Fit ``model_name`` (no checkpoint files); returns (model, dataset, test_data, trainer)."""
    run = build_run(model_name, config_dict, dataset_name, trainer=True)
    run.trainer.fit(run.train, valid_data=None, saved=False, show_progress=False)
    return run.model, run.dataset, run.test, run.trainer


@torch.no_grad()
def target_ranks(model, test_data):
    """1-based rank of every test target among all items (padding excluded), with target ids."""
    model.eval()
    ranks, targets = [], []
    for interaction, _, _, positive_items in test_data:
        scores = model.full_sort_predict(interaction).view(len(positive_items), -1)
        scores[:, 0] = -np.inf
        target_scores = scores.gather(1, positive_items.view(-1, 1))
        ranks.append((scores > target_scores).sum(1) + 1)
        targets.append(positive_items)
    return torch.cat(ranks).numpy(), torch.cat(targets).numpy()


def training_counts(dataset, train_data_ids):
    return np.bincount(train_data_ids, minlength=dataset.item_num)


def recall_at(ranks, k=10):
    return float((ranks <= k).mean()) if len(ranks) else float("nan")


def assert_full_sort_chunk_invariant(model, interaction, items):
    """``full_sort_predict`` in chunks of ``model.score_chunk_size`` equals the unchunked scores, and
    ``predict`` on ``items`` (one at a time for the whole batch) equals those columns."""
    model.eval()
    with torch.no_grad():
        chunked = model.full_sort_predict(interaction)
        model.score_chunk_size = 0
        whole = model.full_sort_predict(interaction)
        singles = []
        for item in items:
            interaction.update(type(interaction)({model.ITEM_ID: torch.full((len(interaction),), item)}))
            singles.append(model.predict(interaction))
    torch.testing.assert_close(chunked, whole)
    torch.testing.assert_close(torch.stack(singles, 1), whole[:, list(items)])


def random_ndcg_bar(n_candidates, n_users, k=10, z=4.0):
    """Mean NDCG@k of a uniformly random rank in 1..n_candidates, plus ``z`` standard errors over
    ``n_users``: a bar that a random ranking misses (about 3e-5 odds at z = 4)."""
    gains = np.array([1.0 / math.log2(rank + 1) for rank in range(1, min(k, n_candidates) + 1)])
    mean = gains.sum() / n_candidates
    variance = (gains ** 2).sum() / n_candidates - mean ** 2
    return mean + z * math.sqrt(variance / n_users)


def stock_ndcg_bar(folder, name):
    """The bar for RecBole's own test NDCG@10 of a run on the dataset ``<folder>/<name>.inter`` (one
    test target per user).

    RecBole's full ranking leaves out each user's earlier items, so a random ranking draws from the
    items less that history, which raises its expectation; the bar assumes the longest history and
    counts only items that occur (both make it higher, never lower, than the exact one).
    """
    with open(os.path.join(folder, f"{name}.inter"), encoding="utf-8") as handle:
        next(handle)
        rows = [line.split("\t", 2)[:2] for line in handle]
    lengths = np.unique([user for user, _ in rows], return_counts=True)[1]
    n_items = len({item for _, item in rows})
    return random_ndcg_bar(n_items - int(lengths.max() - 1), len(lengths))
