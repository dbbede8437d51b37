"""Shared fixtures: a clean argv (RecBole's Config parses sys.argv), a scratch cwd, tiny datasets."""

import os
import sys
from types import SimpleNamespace

import pytest
import torch

import recbole_mm  # noqa: F401  (before RecBole: its first import then applies compat and registers the models)
from recbole_mm.bench.planted import planted_config, write_planted_dataset

# Test tensors are tiny: one thread is faster than two and immune to other processes on the machine.
torch.set_num_threads(1)

TINY = dict(n_users=60, n_items=40, n_clusters=8, seq_len=(6, 10))


@pytest.fixture(autouse=True)
def isolated_run(tmp_path, monkeypatch):
    """Each test runs in its own folder (RecBole writes saved/, log/, log_tensorboard/ into cwd)."""
    monkeypatch.setattr(sys, "argv", [sys.argv[0]])
    monkeypatch.chdir(tmp_path)
    yield tmp_path


@pytest.fixture(scope="session")
def tiny_planted(tmp_path_factory):
    """A 60-user, 40-item planted dataset with modalities text (16-d) and image (8-d)."""
    data_path = str(tmp_path_factory.mktemp("data"))
    planted = write_planted_dataset(data_path, name="tiny", seed=1, **TINY)
    return planted, data_path


@pytest.fixture
def tiny_config(tiny_planted):
    """Factory: config_dict for the tiny dataset with overrides."""
    planted, data_path = tiny_planted

    def make(**overrides):
        base = dict(epochs=1, train_batch_size=64, eval_batch_size=64, MAX_ITEM_LIST_LENGTH=10)
        base.update(overrides)
        return planted_config(planted, data_path, **base)

    return make


def build_run(model, config_dict, dataset="tiny", change=None, trainer=False, overall_defaults=False):
    """Config -> dataset -> splits -> model (-> trainer), seeded, as RecBole's ``run_recbole`` builds them
    (seeded before the data and again before the model).

    ``change(train_dataset)`` edits the training dataset (e.g. its aligned features) before the model
    is built; ``overall_defaults`` reads the plugin's ``overall.yaml`` as the command line does.
    Returns a namespace with ``config, dataset, train, valid, test, model, trainer``.
    """
    from contextlib import nullcontext

    from recbole.config import Config
    from recbole.data import create_dataset, data_preparation
    from recbole.utils import get_model, get_trainer, init_seed

    from recbole_mm.registry import plugin_overall_defaults

    with plugin_overall_defaults() if overall_defaults else nullcontext():
        config = Config(model=model, dataset=dataset, config_dict=config_dict)
    init_seed(config["seed"], config["reproducibility"])
    data = create_dataset(config)
    train, valid, test = data_preparation(config, data)
    if change is not None:
        change(train._dataset)
    init_seed(config["seed"], config["reproducibility"])
    net = get_model(model)(config, train._dataset)
    built = get_trainer(config["MODEL_TYPE"], model)(config, net) if trainer else None
    return SimpleNamespace(config=config, dataset=data, train=train, valid=valid, test=test, model=net, trainer=built)


@pytest.fixture
def build():
    """The shared model builder (:func:`build_run`) for tests."""
    return build_run


def pytest_configure(config):
    os.environ.setdefault("PYTHONHASHSEED", "0")
    config.addinivalue_line(
        "markers", "slow: trains for more than a few seconds, starts interpreters or processes, or builds a package "
        "(the fast lane is pytest -m 'not slow')"
    )
