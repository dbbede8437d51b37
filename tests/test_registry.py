"""Stock RecBole entry points find the plugin's models, dataset class and yaml defaults."""

import os
import shutil

import pytest

from recbole.config import Config
from recbole.data import create_dataset
from recbole.quick_start import run_recbole
from recbole.utils import get_model, get_trainer

import recbole_mm
from recbole_mm import resources
from recbole_mm.data.dataset import MultimodalSequentialDataset
from recbole_mm.model.sasrecmm import SASRecMM
from planted_eval import stock_ndcg_bar


def test_get_model_finds_plugin_model():
    assert get_model("SASRecMM") is SASRecMM
    assert "SASRecMM" in recbole_mm.registered_models()


def test_register_is_idempotent():
    before = recbole_mm.registered_models()
    assert recbole_mm.register() == sorted(before)
    assert get_model("SASRecMM") is SASRecMM


def test_plugin_model_yaml_is_read_by_stock_config(tiny_config):
    config = Config(model="SASRecMM", dataset="tiny", config_dict=tiny_config())
    assert config["fusion"] == "sum"  # only the plugin's SASRecMM.yaml sets this key
    assert config["train_neg_sample_args"] is None or config["train_neg_sample_args"]["distribution"] == "none"
    assert config["loss_type"] == "CE"


def test_user_values_beat_plugin_yaml(tiny_config):
    config = Config(model="SASRecMM", dataset="tiny", config_dict=tiny_config(fusion="gated", n_layers=1))
    assert config["fusion"] == "gated" and config["n_layers"] == 1


def test_create_dataset_and_trainer_lookup(tiny_config):
    config = Config(model="SASRecMM", dataset="tiny", config_dict=tiny_config())
    dataset = create_dataset(config)
    assert isinstance(dataset, MultimodalSequentialDataset)
    assert get_trainer(config["MODEL_TYPE"], "SASRecMM").__name__ == "MultimodalTrainer"  # recbole_mm.trainer


@pytest.mark.slow
def test_stock_run_recbole_without_config_files(tiny_planted, isolated_run):
    """No config files, no modalities key: the dataset folder's feature files are discovered.

    ``load_col: None`` loads every column (RecBole's default loads only user and item ids, and
    leave-one-out by time needs the timestamp) — the same as a user would set for SASRec.
    """
    planted, data_path = tiny_planted
    shutil.copytree(planted.folder, os.path.join(isolated_run, "dataset", "tiny"))
    result = run_recbole(
        model="SASRecMM",
        dataset="tiny",
        config_dict={"epochs": 2, "learning_rate": 0.01, "load_col": None, "MAX_ITEM_LIST_LENGTH": 10, "show_progress": False,
                     "state": "WARNING"},
    )
    assert set(result["test_result"]) >= {"recall@10", "ndcg@10", "mrr@10"}
    assert result["test_result"]["ndcg@10"] > stock_ndcg_bar(planted.folder, "tiny")  # the features were found and used to learn


def test_bundled_dataset_is_found_without_data_path():
    config = Config(model="SASRecMM", dataset="ml-100k-mm", config_dict={"state": "WARNING"})
    assert os.path.samefile(config["data_path"], os.path.join(resources.datasets_dir(), "ml-100k-mm"))
    assert config["modalities"] == ["title", "meta"]
