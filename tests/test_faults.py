"""Faults: a NaN / Inf loss names its term; bad item ids and over-long histories behave as for
RecBole's SASRec; a checkpoint of another model or dataset is refused with a clear error."""

import glob

import pytest
import torch

import recbole_mm
from recbole_mm.bench.planted import planted_config, write_planted_dataset
from recbole_mm.trainer import CheckpointMismatchError, NonFiniteLossError

PLUGIN_MODELS = ["SASRecMM", "MUFASA", "DMAE", "CAMMSR"]


def trainer_and_data(build, model_name, config_dict, dataset="tiny"):
    """The plugin's trainer for ``model_name``, with the train and valid loaders (shared builder)."""
    run = build(model_name, config_dict, dataset, trainer=True)
    return run.trainer, run.train, run.valid


# ----- NaN / Inf loss ------------------------------------------------------------------------------

def test_nan_in_one_loss_term_is_named(tiny_config, build):
    """CAMMSR with cl_temperature 0: only the modality-swap InfoNCE term (third) divides by zero."""
    trainer, train_data, valid_data = trainer_and_data(build, "CAMMSR", tiny_config(cl_temperature=0.0, cat_weight=0.1, cl_weight=0.1))
    with pytest.raises(NonFiniteLossError, match=r"'swap CL', term 3 of 3 \(train_loss3 in the log\) of CAMMSR.calculate_loss, epoch 0, batch 0") as error:
        trainer.fit(train_data, valid_data, saved=False)
    assert isinstance(error.value, ValueError)  # what RecBole's own check raises, so callers still catch it


def test_loss_names_of_the_model_are_used(tiny_config, build):
    trainer, train_data, valid_data = trainer_and_data(build, "CAMMSR", tiny_config(cl_temperature=0.0, cat_weight=0.1, cl_weight=0.1))
    trainer.model.loss_names = ("next-item CE", "category", "modality swap")
    with pytest.raises(NonFiniteLossError, match=r"Training loss is (nan|inf): 'modality swap', term 3 of 3"):
        trainer.fit(train_data, valid_data, saved=False)


@pytest.mark.parametrize("model_name, switches", [
    ("MUFASA", dict(cga_weight=0.1, col_weight=0.0, sim_weight=0.1, dist_weight=0.0)),
    ("DMAE", dict(dmae_dist_weight=0.0)),
    ("DMAE", dict(dmae_mode="rerank", dmae_dist_weight=0.1)),
    ("CAMMSR", dict(cat_weight=0.0, cl_weight=0.1)),
])
def test_model_loss_names_match_the_terms(tiny_config, model_name, switches, build):
    trainer, train_data, _ = trainer_and_data(build, model_name, tiny_config(**switches))
    terms = trainer.model.calculate_loss(next(iter(train_data)))
    names = trainer.model.loss_names()
    assert len(names) == (len(terms) if isinstance(terms, tuple) else 1) and len(set(names)) == len(names), names


def test_inf_single_loss_is_reported(tiny_config, monkeypatch, build):
    trainer, train_data, valid_data = trainer_and_data(build, "SASRecMM", tiny_config())
    calls = {"n": 0}
    real_loss = trainer.model.calculate_loss

    def loss_that_overflows_on_third_batch(interaction):
        calls["n"] += 1
        loss = real_loss(interaction)
        return loss * float("inf") if calls["n"] == 3 else loss

    monkeypatch.setattr(trainer.model, "calculate_loss", loss_that_overflows_on_third_batch)
    with pytest.raises(NonFiniteLossError, match=r"Training loss is inf: the loss of SASRecMM.calculate_loss, epoch 0, batch 2"):
        trainer.fit(train_data, valid_data, saved=False)


# ----- out-of-range item ids and over-long histories ---------------------------------------------

def _first_batch(build, model_name, tiny_config, max_len):
    trainer, train_data, _ = trainer_and_data(build, model_name, tiny_config(MAX_ITEM_LIST_LENGTH=max_len))
    return trainer.model, next(iter(train_data)), train_data


def _with_sequence(batch, item_seq):
    interaction = batch.__class__(dict(batch.interaction))
    interaction.interaction["item_id_list"] = item_seq
    interaction.interaction["item_length"] = torch.clamp((item_seq > 0).sum(1), min=1)
    return interaction


@pytest.mark.parametrize("model_name", PLUGIN_MODELS)
def test_histories_are_cut_to_max_item_list_length_as_for_sasrec(model_name, tiny_config, build):
    """Users have 6..10 items; with MAX_ITEM_LIST_LENGTH 4 RecBole keeps the last 4 for SASRec and
    the plugin dataset does the same (same training sequences, same lengths)."""
    _, _, sasrec_data = _first_batch(build, "SASRec", tiny_config, 4)
    _, _, plugin_data = _first_batch(build, model_name, tiny_config, 4)
    sasrec_inter, plugin_inter = sasrec_data._dataset.inter_feat, plugin_data._dataset.inter_feat
    assert plugin_inter["item_id_list"].shape[1] == 4
    assert int(plugin_inter["item_length"].max()) == 4
    assert torch.equal(sasrec_inter["item_id_list"], plugin_inter["item_id_list"])
    assert torch.equal(sasrec_inter["item_length"], plugin_inter["item_length"])


@pytest.mark.parametrize("model_name", PLUGIN_MODELS)
@pytest.mark.parametrize("fault", ["item id past the catalogue", "sequence longer than MAX_ITEM_LIST_LENGTH"])
def test_bad_batches_raise_index_error_like_sasrec(model_name, fault, tiny_config, build):
    """RecBole's dataset never produces such batches; a hand-made one fails in SASRec with an
    IndexError (embedding / position lookup), and in the plugin models with an IndexError too."""
    for name in ("SASRec", model_name):
        model, batch, train_data = _first_batch(build, name, tiny_config, 6)
        item_seq = batch["item_id_list"]
        if fault.startswith("item id"):
            bad = item_seq.clone()
            bad[:, 0] = train_data._dataset.item_num  # one past the last item id
        else:
            bad = torch.cat([item_seq, item_seq.clamp(min=1)], dim=1)  # 12 > MAX_ITEM_LIST_LENGTH 6
        for method in ("calculate_loss", "full_sort_predict"):
            model.train(method == "calculate_loss")
            with pytest.raises(IndexError):
                getattr(model, method)(_with_sequence(batch, bad))


# ----- checkpoints of another model / dataset ------------------------------------------------------

@pytest.fixture(scope="module")
def saved_sasrecmm(tmp_path_factory):
    """A SASRecMM checkpoint trained one epoch on the session's tiny dataset layout."""
    folder = tmp_path_factory.mktemp("ckpt")
    planted = write_planted_dataset(str(folder / "data"), name="tiny", seed=1, n_users=60, n_items=40, n_clusters=8, seq_len=(6, 10))
    other = write_planted_dataset(str(folder / "data"), name="other", seed=2, n_users=40, n_items=30, n_clusters=6, seq_len=(6, 8))
    config = dict(epochs=1, train_batch_size=64, eval_batch_size=64, MAX_ITEM_LIST_LENGTH=10, checkpoint_dir=str(folder / "saved"))
    recbole_mm.run_recbole_mm(model="SASRecMM", dataset="tiny", config_dict=planted_config(planted, str(folder / "data"), **config))
    return glob.glob(str(folder / "saved" / "SASRecMM-*.pth"))[0], planted, other, str(folder / "data")


def test_resuming_another_models_checkpoint_is_refused(saved_sasrecmm, tiny_config):
    path, *_ = saved_sasrecmm
    with pytest.raises(CheckpointMismatchError, match=r"saved by SASRecMM on dataset 'tiny', but this run is MUFASA on dataset 'tiny'"):
        recbole_mm.run_recbole_mm(model="MUFASA", dataset="tiny", config_dict=tiny_config(resume_file=path))


def test_evaluating_another_datasets_checkpoint_is_refused(saved_sasrecmm, build):
    path, _, other, data_path = saved_sasrecmm
    trainer, _, valid_data = trainer_and_data(build, "SASRecMM", planted_config(other, data_path, MAX_ITEM_LIST_LENGTH=10), dataset="other")
    with pytest.raises(CheckpointMismatchError, match=r"saved by SASRecMM on dataset 'tiny', but this run is SASRecMM on dataset 'other'"):
        trainer.evaluate(valid_data, model_file=path)


def test_same_names_but_other_shapes_are_refused(saved_sasrecmm, tiny_config, build):
    path, *_ = saved_sasrecmm
    trainer, _, _ = trainer_and_data(build, "SASRecMM", tiny_config(hidden_size=32, inner_size=64))
    with pytest.raises(CheckpointMismatchError, match=r"does not fit this model: .*\(64,\) in the checkpoint, \(32,\) here"):
        trainer.resume_checkpoint(path)


def test_a_file_that_is_no_checkpoint_is_refused(tmp_path, tiny_config, build):
    trainer, _, _ = trainer_and_data(build, "SASRecMM", tiny_config())
    junk = tmp_path / "junk.pth"
    torch.save({"weights": torch.zeros(2)}, junk)
    with pytest.raises(CheckpointMismatchError, match="is not a RecBole checkpoint"):
        trainer.resume_checkpoint(junk)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        trainer.resume_checkpoint(tmp_path / "missing.pth")


# ----- loss type -------------------------------------------------------------------------------------

@pytest.mark.parametrize("model_name", ["SASRecMM", "MUFASA", "CAMMSR"])
def test_bpr_loss_trains_with_sampled_negatives(tiny_config, model_name, build):
    """BPR against RecBole's sampled negative: finite loss with gradient into the item side."""
    trainer, train_data, _ = trainer_and_data(build, model_name, tiny_config(loss_type="BPR", train_neg_sample_args={"distribution": "uniform", "sample_num": 1}))
    losses = trainer.model.calculate_loss(next(iter(train_data)))
    main = losses[0] if isinstance(losses, tuple) else losses
    assert torch.isfinite(main) and main > 0
    main.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in trainer.model.parameters())


def test_unknown_loss_type_is_refused_when_the_model_is_built(tiny_config, build):
    with pytest.raises(ValueError, match=r"CAMMSR: loss_type must be one of \('CE', 'BPR'\), got 'MSE'"):
        trainer_and_data(build, "CAMMSR", tiny_config(loss_type="MSE"))
