"""The benchmark protocol: history-excluded ranking (``exclude_history``)."""

import math

import pytest
import torch
from recbole.config import Config
from recbole.data import create_dataset, data_preparation
from recbole.trainer import Trainer
from recbole.utils import get_model, get_trainer, init_seed

from recbole_mm.evaluation import HistoryExclusion, history_mask, with_history_exclusion
from recbole_mm.registry import plugin_overall_defaults


def _build(model, config_dict):
    with plugin_overall_defaults():
        config = Config(model=model, dataset="tiny", config_dict=config_dict)
    init_seed(config["seed"], config["reproducibility"])
    train, valid, test = data_preparation(config, create_dataset(config))
    net = get_model(config["model"])(config, train._dataset)
    return config, net, (train, valid, test)


def _by_hand(net, test_data, exclude, k=10):
    """NDCG@k from ``full_sort_predict``, history masked by hand; also the number of repeated targets."""
    gains, repeats = [], 0
    net.eval()
    with torch.no_grad():
        for interaction, _, rows, items in test_data:
            scores = net.full_sort_predict(interaction).view(len(interaction), -1).clone()
            scores[:, 0] = -math.inf
            seq = interaction[net.ITEM_SEQ]
            for row, item in zip(rows.tolist(), items.tolist()):
                history = {int(i) for i in seq[row] if int(i) != 0}
                repeats += item in history
                row_scores = scores[row].clone()
                if exclude:
                    row_scores[sorted(history)] = -math.inf
                rank = int((row_scores > row_scores[item]).sum())
                gains.append(1.0 / math.log2(rank + 2) if rank < k and row_scores[item] > -math.inf else 0.0)
    return sum(gains) / len(gains), repeats


def test_history_mask_sets_the_sequence_items_but_never_padding():
    mask = history_mask(torch.tensor([[0, 0, 3, 1], [2, 2, 4, 0]]), 6)
    assert mask.tolist() == [[False, True, False, True, False, False], [False, False, True, False, True, False]]


@pytest.mark.parametrize("model", ["SASRecMM", "SASRec"])
def test_exclude_history_equals_the_metric_by_hand(model, tiny_config):
    """The plugin trainer (``get_trainer``, as stock run_recbole picks it) and RecBole's own trainer with
    the mixin: NDCG@10 with history masked by hand, repeated targets counted as misses."""
    config, net, (train, _, test) = _build(model, tiny_config(exclude_history=True, epochs=1))
    trainer_class = get_trainer(config["MODEL_TYPE"], config["model"])
    if model == "SASRec":
        assert not issubclass(trainer_class, HistoryExclusion)
        trainer_class = with_history_exclusion(trainer_class)
    assert issubclass(trainer_class, HistoryExclusion)
    trainer = trainer_class(config, net)
    trainer.fit(train, None, saved=False, show_progress=False)
    expected, repeats = _by_hand(net, test, exclude=True)
    assert repeats > 0  # the tiny planted walks repeat items: the repeated-target path is exercised
    result = trainer.evaluate(test, load_best_model=False)
    assert result["ndcg@10"] == pytest.approx(expected, abs=1e-4)
    trainer.exclude_history = False  # the same trained model under RecBole's ranking
    plain, _ = _by_hand(net, test, exclude=False)
    assert trainer.evaluate(test, load_best_model=False)["ndcg@10"] == pytest.approx(plain, abs=1e-4)
    assert plain != pytest.approx(expected, abs=1e-4)


def test_exclude_history_off_changes_nothing_against_recbole(tiny_config):
    """Key missing (RecBole's Config returns None) and key False: RecBole's Trainer's metrics exactly."""
    for overrides in ({}, {"exclude_history": False}):
        config, net, (train, _, test) = _build("SASRec", tiny_config(epochs=1, **overrides))
        Trainer(config, net).fit(train, None, saved=False, show_progress=False)
        reference = Trainer(config, net).evaluate(test, load_best_model=False)
        mixed = with_history_exclusion(Trainer)(config, net)
        assert mixed.exclude_history is False
        assert mixed.evaluate(test, load_best_model=False) == reference


def test_exclude_history_rejects_non_bool(tiny_config):
    config, net, _ = _build("SASRec", tiny_config(exclude_history="yes"))
    with pytest.raises(ValueError, match="exclude_history"):
        with_history_exclusion(Trainer)(config, net)
