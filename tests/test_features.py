"""Feature store: every defect gives one clear error; rows reach the right internal item ids."""

import numpy as np
import pytest
from recbole.config import Config
from recbole.data import create_dataset, data_preparation

from recbole_mm.feature_files import feature_paths, write_features, write_ids
from recbole_mm.data.features import align_features, read_feature_file

TOKENS = ["a", "b", "c"]


def _write(folder, matrix, tokens=TOKENS):
    npy, ids = feature_paths(str(folder), "ds", "text")
    np.save(npy, matrix, allow_pickle=True)
    write_ids(ids, tokens)
    return npy, ids


def _object_array():
    array = np.empty((3, 2), dtype=object)
    array[:] = 1.0
    return array


DEFECTS = {
    "not_2d": (lambda: np.zeros(3, np.float32), TOKENS, "2-D"),
    "count_mismatch": (lambda: np.zeros((2, 4), np.float32), TOKENS, "3 ids but"),
    "duplicate_id": (lambda: np.zeros((3, 4), np.float32), ["a", "b", "a"], "row 2: duplicate token 'a'"),
    "nan_row": (lambda: np.array([[0, 0], [0, np.nan], [0, 0]], np.float32), TOKENS, "row 1 (token 'b') contains NaN"),
    "inf_row": (lambda: np.array([[0, 0], [0, 0], [np.inf, 0]], np.float32), TOKENS, "row 2 (token 'c') contains NaN or Inf"),
    "strings": (lambda: np.array([["x", "y"]] * 3), TOKENS, "real-valued"),
    "pickled_objects": (_object_array, TOKENS, "without pickle"),
}


@pytest.mark.parametrize("defect", sorted(DEFECTS))
def test_defect_raises_clear_error(tmp_path, defect):
    make_matrix, tokens, message = DEFECTS[defect]
    npy, ids = _write(tmp_path, make_matrix(), tokens)
    with pytest.raises(ValueError) as error:
        read_feature_file(str(tmp_path), "ds", "text")
    assert message in str(error.value)
    assert str(tmp_path) in str(error.value)  # names the file


def test_missing_files_raise(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"ds\.text\.npy"):
        read_feature_file(str(tmp_path), "ds", "text")
    np.save(feature_paths(str(tmp_path), "ds", "text")[0], np.zeros((3, 2), np.float32))
    with pytest.raises(FileNotFoundError, match=r"ds\.text\.ids"):
        read_feature_file(str(tmp_path), "ds", "text")


def test_dim_mismatch_with_config(tmp_path):
    _write(tmp_path, np.zeros((3, 4), np.float32))
    with pytest.raises(ValueError, match=r"dim 4 does not match modality_dims\[text\] = 8"):
        read_feature_file(str(tmp_path), "ds", "text", expected_dim=8)


def test_zero_overlap_raises():
    with pytest.raises(ValueError, match="none of its 3 ids match"):
        align_features("text", np.ones((3, 2), np.float32), TOKENS, ["[PAD]", "x", "y"], "f.npy")


def test_alignment_missing_policies_and_normalisation():
    matrix = np.array([[3, 4], [1, 0], [0, 2]], np.float32)  # rows of tokens a, b, c
    item_tokens = ["[PAD]", "c", "z", "a"]  # internal ids 0..3; z has no row; b is not in the dataset
    zero = align_features("text", matrix, TOKENS, item_tokens, "f.npy", "zero")
    np.testing.assert_array_equal(zero.matrix, [[0, 0], [0, 2], [0, 0], [3, 4]])
    np.testing.assert_array_equal(zero.mask, [False, True, False, True])
    mean = align_features("text", matrix, TOKENS, item_tokens, "f.npy", "mean")
    np.testing.assert_allclose(mean.matrix[2], [1.5, 3.0])
    unit = align_features("text", matrix, TOKENS, item_tokens, "f.npy", "zero", normalize=True)
    np.testing.assert_allclose(unit.matrix[[1, 3]], [[0, 1], [0.6, 0.8]])
    with pytest.raises(ValueError, match=r"1 dataset items have no row, e\.g\. tokens \['z'\]"):
        align_features("text", matrix, TOKENS, item_tokens, "f.npy", "error")


def test_float16_files_are_accepted(tmp_path):
    write_features(str(tmp_path), "ds", "text", TOKENS, np.ones((3, 2), np.float16))
    matrix, tokens, _ = read_feature_file(str(tmp_path), "ds", "text")
    aligned = align_features("text", matrix, tokens, ["[PAD]", "b"], "f")
    assert aligned.matrix.dtype == np.float32 and aligned.matrix[1].tolist() == [1.0, 1.0]


def test_rows_reach_internal_ids_after_recbole_remap(tiny_planted, tiny_config):
    """Internal id i carries the row whose token RecBole maps to i; extra rows never become items."""
    planted, data_path = tiny_planted
    config = Config(model="SASRecMM", dataset="tiny", config_dict=tiny_config())
    dataset = create_dataset(config)
    features = dataset.item_features()
    raw = np.load(feature_paths(planted.folder, "tiny", "text")[0])
    for internal_id in (1, 7, dataset.item_num - 1):
        token = dataset.field2id_token["item_id"][internal_id]
        np.testing.assert_array_equal(features["text"][0][internal_id].numpy(), raw[int(token) - 1])
    assert features["text"][0][0].abs().sum() == 0 and not features["text"][1][0]


def test_feature_rows_for_unknown_items_are_not_candidates(tiny_planted, tiny_config, tmp_path):
    """A feature file with rows for items absent from the interactions leaves item_num unchanged."""
    planted, data_path = tiny_planted
    baseline = create_dataset(Config(model="SASRecMM", dataset="tiny", config_dict=tiny_config()))
    extra = tmp_path / "features"
    for modality, dim in planted.modalities.items():
        tokens = [str(i + 1) for i in range(len(planted.item_cluster))] + ["999", "1000"]
        write_features(str(extra), "tiny", modality, tokens, np.ones((len(tokens), dim), np.float32))
    dataset = create_dataset(Config(model="SASRecMM", dataset="tiny", config_dict=tiny_config(feature_path=str(extra))))
    assert dataset.item_num == baseline.item_num
    assert "999" not in set(dataset.field2id_token["item_id"])


def test_defect_surfaces_through_create_dataset(tiny_config, tmp_path):
    folder = tmp_path / "bad"
    folder.mkdir()
    _, ids = _write(folder, np.zeros((3, 16), np.float32), ["1", "2", "3"])
    np.save(feature_paths(str(folder), "tiny", "text")[0], np.zeros((2, 16), np.float32))
    write_ids(feature_paths(str(folder), "tiny", "text")[1], ["1", "2", "3"])
    config = Config(model="SASRecMM", dataset="tiny", config_dict=tiny_config(feature_path=str(folder), modalities=["text"]))
    with pytest.raises(ValueError, match=r"tiny\.text\.ids: has 3 ids but .*tiny\.text\.npy has 2 rows"):
        create_dataset(config)


def test_item_categories_token_field(tiny_planted, tiny_config):
    planted, _ = tiny_planted
    dataset = create_dataset(Config(model="SASRecMM", dataset="tiny", config_dict=tiny_config()))
    train, _, _ = data_preparation(dataset.config, dataset)
    categories, n_categories = train._dataset.item_categories("category")
    assert categories.shape == (dataset.item_num, 1) and n_categories == 9  # 8 clusters + [PAD]
    token = dataset.field2id_token["item_id"][5]
    category_token = dataset.field2id_token["category"][categories[5, 0]]
    assert category_token == f"c{planted.item_cluster[int(token) - 1]}"
