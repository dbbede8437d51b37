"""recbole_mm.data.convert: Amazon (2014 / 2018), MMRec and UniSRec layouts -> datasets stock RecBole trains on.

Every fixture is written here, in the source layout, from a small random history table: 36 users
over 24 items with 6-10 clicks each (enough to survive a 5-core filter), plus noise users and items
that the filter must remove.
"""

import gzip
import json
import os

import numpy as np
import pytest
from recbole.config import Config
from recbole.data import create_dataset
from recbole.quick_start import run_recbole

from recbole_mm.data.convert.__main__ import main as convert_main
from recbole_mm.data.convert.amazon import read_meta, read_records, read_reviews
from recbole_mm.data.convert.common import chronological, clean_text, k_core
from recbole_mm.feature_files import feature_paths, read_ids
from test_embed import text_model  # noqa: F401  (fixture: a tiny random sentence-transformers folder)

TINY_RUN = dict(epochs=1, train_batch_size=64, eval_batch_size=64, hidden_size=8, inner_size=16, n_layers=1, n_heads=1,
                MAX_ITEM_LIST_LENGTH=10, train_neg_sample_args=None, show_progress=False, save_dataset=False,
                save_dataloaders=False, state="WARNING", log_wandb=False, metrics=["Recall", "NDCG"], topk=[10],
                valid_metric="NDCG@10")  # the split protocol comes from the converter's yaml


def histories(seed=0, n_users=36, n_items=24):
    """``{user: [(item, time), ...]}`` in time order, every user 6-10 distinct items."""
    rng = np.random.default_rng(seed)
    result = {}
    for user in range(n_users):
        items = rng.choice(n_items, size=int(rng.integers(6, 11)), replace=False)
        times = 1_300_000_000 + np.sort(rng.choice(10**6, size=len(items), replace=False)) * 60
        result[f"U{user:03d}"] = [(f"B{item:04d}", int(time)) for item, time in zip(items, times)]
    return result


def noise_rows():
    """A user with 2 clicks and an item clicked twice: the 5-core filter drops both."""
    return [("Unoise", "B0000", 1_300_000_000), ("Unoise", "B0001", 1_300_000_100),
            ("U000", "Brare", 1_400_000_000), ("U001", "Brare", 1_400_000_000)]


def review_rows(hist):
    rows = [(user, item, time) for user, clicks in hist.items() for item, time in clicks] + noise_rows()
    order = np.random.default_rng(1).permutation(len(rows))  # dumps are not in time order
    return [rows[i] for i in order]


def meta_record(item, layout):
    number = int(item[1:]) if item[1:].isdigit() else 99
    title = f"Toy &amp; <b>Game</b> number {number}\n  \"deluxe\""
    path = ["Toys & Games", f"Kind {number % 4}", f"Leaf {number % 3}"]
    if layout == 2014:
        return {"asin": item, "title": title, "categories": [path, ["Toys & Games", "Gifts"]], "brand": "Acme", "imUrl": f"http://img/{item}.jpg"}
    return {"asin": item, "title": title, "category": path, "brand": "Acme", "imageURL": [f"http://img/{item}_s.jpg"], "imageURLHighRes": [f"http://img/{item}.jpg"]}


def write_lines(path, records, layout):
    """2014: Python dict literals (as the metadata dumps are); 2018: JSON; ``.gz`` paths are gzipped."""
    text = "".join((repr(record) if layout == 2014 else json.dumps(record)) + "\n" for record in records)
    if str(path).endswith(".gz"):
        with gzip.open(path, "wt", encoding="utf-8") as handle:
            handle.write(text)
    else:
        path.write_text(text, encoding="utf-8")
    return str(path)


def write_amazon(folder, layout, gz):
    hist = histories()
    suffix = ".json.gz" if gz else ".json"
    reviews = [{"reviewerID": user, "asin": item, "overall": 4.0, "unixReviewTime": time, "reviewText": "fine"} for user, item, time in review_rows(hist)]
    items = sorted({item for _, item, _ in review_rows(hist)})
    reviews_path = write_lines(folder / f"reviews{suffix}", reviews, layout)
    meta_path = write_lines(folder / f"meta{suffix}", [meta_record(item, layout) for item in items], layout)
    return hist, reviews_path, meta_path


def run_converted(data_path, dataset, **overrides):
    """Stock run_recbole on a converted dataset, with the yaml the converter wrote."""
    yaml_path = os.path.join(data_path, dataset, f"{dataset}.yaml")
    config = dict(TINY_RUN, data_path=str(data_path), **overrides)
    return run_recbole(model="SASRecMM", dataset=dataset, config_file_list=[yaml_path], config_dict=config)


def read_inter(path):
    lines = open(path, encoding="utf-8").read().splitlines()
    return lines[0].split("\t"), [line.split("\t") for line in lines[1:]]


# --- shared steps ------------------------------------------------------------------------------


def test_k_core_repeats_until_stable():
    """Dropping item x leaves user b with 1 < 2 interactions, which must then go too."""
    inters = [(u, i, 1.0, 0.0) for u, i in [("a", "p"), ("a", "q"), ("b", "p"), ("b", "x"), ("c", "p"), ("c", "q")]]
    kept = k_core(inters, user_k=2, item_k=2)
    assert {(u, i) for u, i, _, _ in kept} == {("a", "p"), ("a", "q"), ("c", "p"), ("c", "q")}


def test_chronological_orders_each_user_and_keeps_ties_in_input_order():
    inters = [("u", "c", 1.0, 30.0), ("v", "z", 1.0, 5.0), ("u", "a", 1.0, 10.0), ("u", "b2", 1.0, 20.0), ("u", "b1", 1.0, 20.0)]
    assert [i for _, i, _, _ in chronological(inters)] == ["a", "b2", "b1", "c", "z"]


def test_clean_text():
    assert clean_text("Caf&eacute; &amp;amp; <i>Bar</i>\n\t \"best\"  ") == "Café & Bar 'best'"
    assert clean_text(["a  b", None, "<br/>c"]) == "a b c"


def test_gzipped_and_plain_dumps_read_the_same(tmp_path):
    records = [{"asin": "X1", "title": "t"}, {"asin": "X2", "title": "u"}]
    plain = write_lines(tmp_path / "m.json", records, 2014)
    zipped = write_lines(tmp_path / "m.json.gz", records, 2014)
    assert list(read_records(plain)) == list(read_records(zipped)) == [(1, records[0]), (2, records[1])]


def test_literals_are_never_evaluated(tmp_path):
    path = tmp_path / "meta.json"
    path.write_text("{'asin': 'A', 'title': 't'}\n{'asin': __import__('os').getcwd()}\n")
    with pytest.raises(ValueError, match=r"meta\.json: line 2: neither JSON nor a Python dict literal"):
        read_meta(str(path))


def test_malformed_line_names_file_and_line(tmp_path):
    path = tmp_path / "reviews.json"
    path.write_text('{"reviewerID": "u", "asin": "a", "unixReviewTime": 1}\n\n{"reviewerID": "u", "asin": \n')
    with pytest.raises(ValueError, match=r"reviews\.json: line 3"):
        read_reviews(str(path))
    path.write_text('{"reviewerID": "u", "asin": "a"}\n')
    with pytest.raises(ValueError, match=r"reviews\.json: line 1: review lacks \['unixReviewTime'\]"):
        read_reviews(str(path))


# --- Amazon ------------------------------------------------------------------------------------


@pytest.mark.parametrize("layout,gz", [(2014, True), (2018, False)])
def test_amazon_files(tmp_path, layout, gz):
    hist, reviews, meta = write_amazon(tmp_path, layout, gz)
    out = tmp_path / "data" / "amz"
    assert convert_main(["amazon", "--reviews", reviews, "--meta", meta, "--dataset", "amz", "--output", str(out)]) == 0
    header, rows = read_inter(out / "amz.inter")
    assert header == ["user_id:token", "item_id:token", "rating:float", "timestamp:float"]
    assert {row[0] for row in rows} == set(hist) and "Brare" not in {row[1] for row in rows}
    for user, clicks in hist.items():  # chronological, nothing of the user lost
        assert [(row[1], int(row[3])) for row in rows if row[0] == user] == clicks
    item_header, items = read_inter(out / "amz.item")
    assert item_header == ["item_id:token", "categories:token_seq", "title:token_seq", "image_url:token"]
    by_item = {row[0]: row for row in items}
    assert by_item["B0005"][1] == ("Leaf_2 Gifts" if layout == 2014 else "Leaf_2")
    assert by_item["B0005"][2] == "Toy & Game number 5 'deluxe'"
    assert by_item["B0005"][3] == "http://img/B0005.jpg"
    text = dict(line.split("\t") for line in (out / "amz.text.tsv").read_text().splitlines()[1:])
    expected = "Toy & Game number 5 'deluxe' Toys & Games Kind 1 Leaf 2" + (" Gifts" if layout == 2014 else "") + " Acme"
    assert text["B0005"] == expected


@pytest.mark.slow
def test_amazon_with_embedding_trains_with_stock_run_recbole(tmp_path, text_model):  # noqa: F811
    _, reviews, meta = write_amazon(tmp_path, 2014, gz=True)
    data_path = tmp_path / "data"
    args = ["amazon", "--reviews", reviews, "--meta", meta, "--dataset", "amz", "--output", str(data_path / "amz"), "--embed-model", text_model]
    assert convert_main(args) == 0
    result = run_converted(data_path, "amz")
    assert 0.0 <= result["test_result"]["ndcg@10"] <= 1.0
    assert np.load(feature_paths(str(data_path / "amz"), "amz", "text")[0]).shape[1] == 16
    config = Config(model="CAMMSR", dataset="amz", config_file_list=[str(data_path / "amz" / "amz.yaml")], config_dict=dict(TINY_RUN, data_path=str(data_path)))
    categories, n_categories = create_dataset(config).item_categories(config["category_field"])
    assert n_categories == 1 + 3 + 1 and (categories > 0).all(dim=1)[1:].all()  # pad + Leaf_0..2 + Gifts


# --- MMRec -------------------------------------------------------------------------------------


def write_mmrec(folder, n_items=24):
    hist = histories(seed=2, n_items=n_items)
    users = {user: index for index, user in enumerate(hist)}
    lines = ["userID\titemID\trating\ttimestamp\tx_label"]
    for user, clicks in hist.items():
        for step, (item, time) in enumerate(reversed(clicks)):  # MMRec files need not be in time order
            lines.append(f"{users[user]}\t{int(item[1:])}\t5.0\t{time}\t{0 if step > 1 else 2 - step}")
    (folder / "baby.inter").write_text("\n".join(lines) + "\n")
    rng = np.random.default_rng(0)
    np.save(folder / "text_feat.npy", rng.normal(size=(n_items, 12)).astype(np.float32))
    np.save(folder / "image_feat.npy", rng.normal(size=(n_items, 20)))  # float64, as some MMRec files are
    return hist, users


@pytest.mark.slow
def test_mmrec_converts_and_trains(tmp_path):
    source = tmp_path / "mmrec"
    source.mkdir()
    hist, users = write_mmrec(source)
    data_path = tmp_path / "data"
    assert convert_main(["mmrec", "--input", str(source), "--dataset", "baby", "--output", str(data_path / "baby")]) == 0
    _, rows = read_inter(data_path / "baby" / "baby.inter")
    for user, clicks in hist.items():
        assert [row[1] for row in rows if row[0] == str(users[user])] == [str(int(item[1:])) for item, _ in clicks]
    ids = read_ids(feature_paths(str(data_path / "baby"), "baby", "image")[1])
    image = np.load(feature_paths(str(data_path / "baby"), "baby", "image")[0])
    assert image.dtype == np.float32 and ids[7] == "7"
    np.testing.assert_allclose(image[7], np.load(source / "image_feat.npy")[7].astype(np.float32))
    result = run_converted(data_path, "baby")
    assert 0.0 <= result["test_result"]["ndcg@10"] <= 1.0


def test_mmrec_reports_bad_rows(tmp_path):
    source = tmp_path / "mmrec"
    source.mkdir()
    write_mmrec(source)
    with open(source / "baby.inter", "a") as handle:
        handle.write("3\tx9\t5.0\t1\t0\n")
    with pytest.raises(ValueError, match=r"baby\.inter: line \d+: itemID 'x9'"):
        convert_main_raising(["mmrec", "--input", str(source), "--dataset", "baby", "--output", str(tmp_path / "o")])


def convert_main_raising(argv):
    """The converter functions themselves (the CLI turns their errors into exit code 2)."""
    from recbole_mm.data.convert.__main__ import build_parser, run

    return run(build_parser().parse_args(argv))


# --- UniSRec -----------------------------------------------------------------------------------


def write_unisrec(folder, name="Sci", max_len=50, plm_size=24):
    """UniSRec's downstream layout, cut the way its preprocessing script cuts it (0-based indices)."""
    hist = histories(seed=3)
    hist["Ulong"] = [(f"B{i % 24:04d}", 1_400_000_000 + i) for i in range(60)]  # longer than max_len
    user2index = {user: index for index, user in enumerate(hist)}
    item2index = {}
    sequences = {}
    for user, clicks in hist.items():
        sequences[user2index[user]] = [str(item2index.setdefault(item, len(item2index))) for item, _ in clicks]
    header = "user_id:token\titem_id_list:token_seq\titem_id:token\n"
    train, valid, test = [header], [header], [header]
    for uid, sequence in sequences.items():
        items = sequence[:-2]
        for target_idx in range(1, len(items)):
            train.append(f"{uid}\t{' '.join(items[:-target_idx][-max_len:])}\t{items[-target_idx]}\n")
        valid.append(f"{uid}\t{' '.join(items[-max_len:])}\t{sequence[-2]}\n")
        test.append(f"{uid}\t{' '.join((items + [sequence[-2]])[-max_len:])}\t{sequence[-1]}\n")
    for split, lines in (("train", train), ("valid", valid), ("test", test)):
        (folder / f"{name}.{split}.inter").write_text("".join(lines))
    (folder / f"{name}.item2index").write_text("".join(f"{item}\t{index}\n" for item, index in item2index.items()))
    (folder / f"{name}.user2index").write_text("".join(f"{user}\t{index}\n" for user, index in user2index.items()))
    features = np.random.default_rng(0).normal(size=(len(item2index), plm_size)).astype(np.float32)
    features.tofile(folder / f"{name}.feat1CLS")
    return hist, item2index, features


@pytest.mark.slow
def test_unisrec_reproduces_the_split_and_trains(tmp_path):
    source = tmp_path / "uni"
    source.mkdir()
    hist, item2index, features = write_unisrec(source)
    data_path = tmp_path / "data"
    assert convert_main(["unisrec", "--input", str(source), "--dataset", "Sci", "--output", str(data_path / "Sci")]) == 0
    _, rows = read_inter(data_path / "Sci" / "Sci.inter")
    for user, clicks in hist.items():
        assert [row[1] for row in rows if row[0] == user] == [item for item, _ in clicks]
    ids = read_ids(feature_paths(str(data_path / "Sci"), "Sci", "text")[1])
    matrix = np.load(feature_paths(str(data_path / "Sci"), "Sci", "text")[0])
    np.testing.assert_array_equal(matrix[ids.index("B0005")], features[item2index["B0005"]])

    # RecBole's leave-one-out split gives every user UniSRec's test target after its valid target
    config = Config(model="SASRecMM", dataset="Sci", config_file_list=[str(data_path / "Sci" / "Sci.yaml")], config_dict=dict(TINY_RUN, data_path=str(data_path)))
    _, valid, test = create_dataset(config).build()
    for split, offset in ((valid, 2), (test, 1)):
        users = split.id2token("user_id", split.inter_feat["user_id"].numpy())
        targets = split.id2token("item_id", split.inter_feat["item_id"].numpy())
        assert dict(zip(users, targets)) == {user: clicks[-offset][0] for user, clicks in hist.items()}
    result = run_converted(data_path, "Sci")
    assert 0.0 <= result["test_result"]["ndcg@10"] <= 1.0


def test_unisrec_inconsistent_line_is_reported(tmp_path):
    source = tmp_path / "uni"
    source.mkdir()
    write_unisrec(source)
    lines = (source / "Sci.train.inter").read_text().splitlines(keepends=True)
    user, history, target = lines[3].rstrip("\n").split("\t")
    lines[3] = f"{user}\t{history}\t{int(target) + 1}\n"
    (source / "Sci.train.inter").write_text("".join(lines))
    with pytest.raises(ValueError, match=r"Sci\.train\.inter: line \d+: user '0' history/target"):
        convert_main_raising(["unisrec", "--input", str(source), "--dataset", "Sci", "--output", str(tmp_path / "o")])


def test_unisrec_feature_size_is_checked(tmp_path):
    source = tmp_path / "uni"
    source.mkdir()
    write_unisrec(source)
    with open(source / "Sci.feat1CLS", "ab") as handle:
        handle.write(np.zeros(5, dtype=np.float32).tobytes())
    with pytest.raises(ValueError, match=r"Sci\.feat1CLS: .* pass --plm-size"):
        convert_main_raising(["unisrec", "--input", str(source), "--dataset", "Sci", "--output", str(tmp_path / "o")])


def test_cli_exit_code_on_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        convert_main(["mmrec", "--input", str(tmp_path / "none"), "--dataset", "x", "--output", str(tmp_path / "o")])
    assert stop.value.code == 2 and "not found" in capsys.readouterr().err

