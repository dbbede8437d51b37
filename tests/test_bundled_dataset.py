"""The bundled ml-100k-mm files agree with each other and with properties/dataset/ml-100k-mm.yaml."""

import os

import numpy as np
import pytest
import yaml

from recbole_mm import resources
from recbole_mm.feature_files import feature_paths, read_ids
from recbole_mm.data.convert import movielens

NAME = "ml-100k-mm"
FOLDER = os.path.join(resources.datasets_dir(), NAME)
CONFIG = yaml.safe_load(open(resources.dataset_yaml(NAME), encoding="utf-8"))
ITEMS_WITHOUT_TEXT = {"267"}  # MovieLens' "unknown" movie: no title, genre or year


def read_atomic(name):
    """Header and rows of one atomic file, split on tabs."""
    with open(os.path.join(FOLDER, f"{NAME}.{name}"), encoding="utf-8") as handle:
        lines = handle.read().splitlines()
    return lines[0].split("\t"), [line.split("\t") for line in lines[1:]]


@pytest.fixture(scope="module")
def items():
    header, rows = read_atomic("item")
    assert header == list(movielens.ITEM_HEADER)
    return rows


@pytest.mark.slow
def test_atomic_files_are_complete(items):
    header, inters = read_atomic("inter")
    assert header == movielens.INTER_HEADER.split("\t")
    assert len(inters) == 100_000 and len(items) == 1682
    for rows, width in ((items, len(movielens.ITEM_HEADER)), (inters, len(header))):
        assert all(len(row) == width and all(row) for row in rows)  # no empty cell anywhere
    item_ids = [row[0] for row in items]
    assert len(set(item_ids)) == len(item_ids)
    assert {row[1] for row in inters} == set(item_ids)


@pytest.mark.parametrize("modality", CONFIG["modalities"])
def test_feature_files_match_the_items(items, modality):
    npy, ids_path = feature_paths(FOLDER, NAME, modality)
    ids, matrix = read_ids(ids_path), np.load(npy, allow_pickle=False)
    item_ids = [row[0] for row in items]
    assert ids == [token for token in item_ids if token not in ITEMS_WITHOUT_TEXT]  # item-file order
    assert matrix.shape == (len(ids), CONFIG["modality_dims"][modality]) and matrix.dtype == np.float32
    assert np.isfinite(matrix).all()
    np.testing.assert_allclose(np.linalg.norm(matrix, axis=1), 1.0, atol=1e-4)


def test_meta_rows_follow_the_item_metadata(items):
    """Items with the same genres and year share a meta vector (up to batching noise), and only they do."""
    texts = [movielens.meta_text(year, genres) for _, _, year, genres in items]
    texts = [text for text in texts if text]
    matrix = np.load(feature_paths(FOLDER, NAME, "meta")[0])
    first_row = {}
    for index, text in enumerate(texts):
        first_row.setdefault(text, index)
        assert np.abs(matrix[index] - matrix[first_row[text]]).max() < 1e-4, text
    distinct = matrix[sorted(first_row.values())]
    similarity = distinct @ distinct.T - 2 * np.eye(len(distinct))
    assert similarity.max() < 1 - 1e-4


def test_titles_carry_meaning(items):
    """A sequel's title vector is the nearest to the original's: the vectors are real embeddings."""
    ids = read_ids(feature_paths(FOLDER, NAME, "title")[1])
    matrix = np.load(feature_paths(FOLDER, NAME, "title")[0])
    row = {token: index for index, token in enumerate(ids)}
    similarity = matrix @ matrix[row["172"]]  # Empire Strikes Back
    nearest = [ids[index] for index in np.argsort(-similarity)[1:4]]
    assert {"50", "181"} & set(nearest)  # Star Wars, Return of the Jedi
