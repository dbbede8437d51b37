"""Missing modalities and float16 files, for every model: SASRecMM, MUFASA, DMAE, CAMMSR.

The tiny planted dataset is rewritten so some items have no row: item 3 lacks text, item 7 lacks
image, item 5 lacks both. ``missing_feature: zero`` gives them a zero row and mask False (the model's
missing path), ``mean`` the mean row and mask True (used like a real row), ``error`` refuses to load.
"""

import os

import numpy as np
import pytest
import torch
from recbole.config import Config
from recbole.data import create_dataset
from recbole.quick_start import run_recbole

from conftest import TINY, build_run
from planted_eval import stock_ndcg_bar
from recbole_mm.feature_files import feature_paths, read_ids, write_features
from recbole_mm.bench.planted import planted_config, write_planted_dataset

MODELS = ["SASRecMM", "MUFASA", "DMAE", "CAMMSR"]
MISSING = {"text": ["3", "5"], "image": ["5", "7"]}
SETTINGS = {  # small and fast; MUFASA's sparse attention needs blocks shorter than the history
    "MUFASA": dict(window_size=4, block_size=2, top_blocks=2),
}


def _rewrite(planted, dtype, upcast=False):
    """Rewrite ``planted``'s feature files without the rows of ``MISSING``, stored as ``dtype``
    (then back as float32 when ``upcast``: the float16 values in a float32 file)."""
    for modality in planted.modalities:
        npy, ids = feature_paths(planted.folder, planted.name, modality)
        tokens, matrix = read_ids(ids), np.load(npy)
        keep = [row for row, token in enumerate(tokens) if token not in MISSING[modality]]
        values = matrix[keep].astype(dtype)
        write_features(planted.folder, planted.name, modality, [tokens[row] for row in keep], values.astype(np.float32) if upcast else values)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """``data_path`` with ``holey`` (rows missing), ``half`` (the same, float16) and ``halfup`` (half's values as float32)."""
    data_path = str(tmp_path_factory.mktemp("holey"))
    for name, dtype, upcast in (("holey", np.float32, False), ("half", np.float16, False), ("halfup", np.float16, True)):
        _rewrite(write_planted_dataset(data_path, name=name, seed=4, **TINY), dtype, upcast)
    return data_path


def _config_dict(data_path, model, **overrides):
    modalities = type("Planted", (), {"modalities": {"text": 16, "image": 8}})()
    base = dict(epochs=1, train_batch_size=64, eval_batch_size=64, MAX_ITEM_LIST_LENGTH=10, hidden_size=16, inner_size=32,
                n_layers=1, n_heads=1, missing_feature="zero", **SETTINGS.get(model, {}))
    base.update(overrides)
    return planted_config(modalities, data_path, **base)


def _spec(data_path, model, dataset="holey", **overrides):
    """What the shared builder (and RecBole's Config) takes: model, dataset and config_dict."""
    return dict(model=model, dataset=dataset, config_dict=_config_dict(data_path, model, **overrides))


def _build(spec, change=None):
    """Dataset splits and a model with seeded parameters; ``change(dataset)`` edits the aligned features first."""
    run = build_run(**spec, change=change)
    return run.model, run.train, run.test, run.dataset


def _internal(dataset, token):
    return int(dataset.token2id(dataset.iid_field, token))


def eval_tokens(message):
    """The token list an error message quotes."""
    return [token.strip(" '") for token in message.split("tokens [")[1].split("]")[0].split(",")]


def _total(loss):
    return sum(loss) if isinstance(loss, tuple) else loss


def _outputs(model, train, test):
    """Training loss (eval mode, seeded sampling) and full-ranking scores of one batch each."""
    model.eval()
    with torch.no_grad():
        torch.manual_seed(0)
        loss = _total(model.calculate_loss(next(iter(train))))
        scores = model.full_sort_predict(next(iter(test))[0])
    return loss, scores


@pytest.mark.parametrize("policy", ["zero", "mean"])
@pytest.mark.parametrize("model_name", MODELS)
def test_policies_train_and_score_finitely(data, model_name, policy):
    model, train, test, dataset = _build(_spec(data, model_name, missing_feature=policy))
    for modality, tokens in MISSING.items():
        matrix, mask = getattr(model, f"feature_{modality}"), getattr(model, f"feature_mask_{modality}")
        ids = [_internal(dataset, token) for token in tokens]
        assert bool(mask[ids].all()) == (policy == "mean")
        present = [i for i in range(1, len(mask)) if i not in ids]
        expected = torch.zeros(matrix.shape[1]) if policy == "zero" else matrix[present].mean(0)
        torch.testing.assert_close(matrix[ids], expected.expand(len(ids), -1))
    model.train()
    loss = _total(model.calculate_loss(next(iter(train))))
    loss.backward()
    assert torch.isfinite(loss)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    _, scores = _outputs(model, train, test)
    assert torch.isfinite(scores[:, 1:]).all()


@pytest.mark.parametrize("model_name", MODELS)
def test_error_policy_names_the_missing_items(data, model_name):
    with pytest.raises(ValueError, match=r"holey\.text\.npy: 2 dataset items have no row, e\.g\. tokens \[.*\] \(missing_feature: error\)") as error:
        create_dataset(Config(**_spec(data, model_name, missing_feature="error")))
    assert sorted(eval_tokens(str(error.value))) == MISSING["text"]


@pytest.mark.parametrize("model_name", MODELS)
def test_masked_rows_take_the_missing_path(data, model_name):
    """Under ``zero``, what is stored in a masked row changes nothing; an unmasked row does (control)."""
    config = _spec(data, model_name)
    reference = _outputs(*_build(config)[:3])

    def overwrite(tokens_by_modality):
        def change(dataset):
            generator = np.random.default_rng(0)
            for modality, tokens in tokens_by_modality.items():
                features = dataset._item_features[modality]
                for token in tokens:
                    features.matrix[_internal(dataset, token)] = 5 * generator.normal(size=features.dim)
        return change

    masked = _outputs(*_build(config, overwrite(MISSING))[:3])
    torch.testing.assert_close(masked[0], reference[0])
    torch.testing.assert_close(masked[1], reference[1])
    unmasked = _outputs(*_build(config, overwrite({"text": ["9"], "image": ["9"]}))[:3])
    assert not torch.allclose(unmasked[1], reference[1])


@pytest.mark.parametrize("model_name", MODELS)
def test_float16_feature_files(data, model_name):
    """float16 files load as float32 buffers and give the scores of the same values stored as float32."""
    half_model, train, test, _ = _build(_spec(data, model_name, dataset="half"))
    assert all(getattr(half_model, f"feature_{m}").dtype == torch.float32 for m in half_model.modalities)
    half = _outputs(half_model, train, test)
    upcast = _outputs(*_build(_spec(data, model_name, dataset="halfup"))[:3])
    assert torch.isfinite(half[1][:, 1:]).all()
    torch.testing.assert_close(half[1], upcast[1])


@pytest.mark.slow
def test_stock_run_recbole_with_missing_rows(data):
    config = _config_dict(data, "CAMMSR", missing_feature="mean", epochs=2, learning_rate=0.01)
    result = run_recbole(model="CAMMSR", dataset="holey", config_dict=config)
    assert result["test_result"]["ndcg@10"] > stock_ndcg_bar(os.path.join(data, "holey"), "holey")
