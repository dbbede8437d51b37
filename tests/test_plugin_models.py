"""Every plugin model learns the planted pattern: after brief training on the tiny planted set its
test NDCG@10 clears a bar that a random ranking misses.

Users of the tiny set walk eight clusters in a fixed cycle and an item's content reveals its cluster,
so a model that learned anything ranks the next cluster's five items near the top. The bar is the
exact mean NDCG@10 of a uniformly random ranking plus four standard errors over the test users; the
same model's scores shuffled per user (a random ranking with its score distribution) must miss it,
so the check is one a random model fails. Ties count against the target, so constant scores fail too.
"""

import numpy as np
import pytest
import torch

from planted_eval import random_ndcg_bar, train_on_planted

K = 10
# Per-model settings for the tiny set (histories of at most 10 items).
MODELS = {
    "SASRecMM": {},
    "MUFASA": dict(window_size=4, block_size=2, top_blocks=2),
    "DMAE": {},
    "CAMMSR": {},
}


@torch.no_grad()
def full_sort_scores(model, test_data):
    """Full-sort scores of every test user (padding column set to -inf) and the target items."""
    model.eval()
    scores, targets = [], []
    for interaction, _, _, positive_items in test_data:
        batch = model.full_sort_predict(interaction).view(len(positive_items), -1).clone()
        batch[:, 0] = -np.inf
        scores.append(batch)
        targets.append(positive_items)
    return torch.cat(scores), torch.cat(targets)


def ndcg_at_k(scores, targets, k=K):
    """Mean NDCG@k of one target per row; items scored equal to the target rank above it."""
    target = scores.gather(1, targets.view(-1, 1))
    ranks = (scores >= target).sum(1).double()
    return float(torch.where(ranks <= k, 1.0 / torch.log2(ranks + 1), torch.zeros_like(ranks)).mean())


def shuffled(scores, seed=0):
    """Each row's real-item scores in a random order (the padding column stays -inf)."""
    generator = torch.Generator().manual_seed(seed)
    out = scores.clone()
    for row in range(len(out)):
        out[row, 1:] = out[row, 1:][torch.randperm(out.shape[1] - 1, generator=generator)]
    return out


def test_bar_is_missed_by_random_and_constant_rankings():
    n_users, n_items = 200, 40
    bar = random_ndcg_bar(n_items, n_users)
    generator = torch.Generator().manual_seed(1)
    scores = torch.cat([torch.full((n_users, 1), -np.inf), torch.rand(n_users, n_items, generator=generator)], 1)
    targets = torch.randint(1, n_items + 1, (n_users,), generator=generator)
    assert ndcg_at_k(scores, targets) < bar
    constant = torch.cat([torch.full((n_users, 1), -np.inf), torch.zeros(n_users, n_items)], 1)
    assert ndcg_at_k(constant, targets) < bar
    # a target scored strictly highest clears it
    scores.scatter_(1, targets.view(-1, 1), 2.0)
    assert ndcg_at_k(scores, targets) == 1.0


@pytest.mark.parametrize("model_name", sorted(MODELS))
def test_model_beats_random_ranking_on_planted_data(tiny_config, model_name):
    config = tiny_config(epochs=8, learning_rate=0.01, seed=2, **MODELS[model_name])
    model, dataset, test_data, _ = train_on_planted(model_name, config, "tiny")
    scores, targets = full_sort_scores(model, test_data)
    bar = random_ndcg_bar(dataset.item_num - 1, len(targets))
    assert ndcg_at_k(shuffled(scores), targets) < bar
    assert ndcg_at_k(scores, targets) > bar
