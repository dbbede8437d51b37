"""The benchmark protocol: history-excluded ranking (``exclude_history``)."""

import json
import math
import os

import pytest
import torch
from recbole.trainer import Trainer
from recbole.utils import get_trainer

from conftest import build_run
from fake_runs import fake_run_model
from recbole_mm.evaluation import HistoryExclusion, history_mask, with_history_exclusion


def _build(model, config_dict):
    run = build_run(model, config_dict, overall_defaults=True)
    return run.config, run.model, (run.train, run.valid, run.test)


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


# ----- significance ---------------------------------------------------------------------------


def test_paired_bootstrap_finds_a_known_difference_and_calls_zero_a_tie():
    import numpy as np

    from recbole_mm.bench import stats

    rng = np.random.default_rng(3)
    base = rng.random(400)
    better = base + 0.03 + 0.01 * rng.standard_normal(400)
    result = stats.compare_paired(better, base)
    assert result["verdict"] == "better" and result["ci_low"] < 0.03 < result["ci_high"]
    assert result["diff"] == pytest.approx(0.03, abs=0.003) and result["wilcoxon_p"] < 1e-6
    assert stats.compare_paired(base, better)["verdict"] == "worse"
    same = stats.compare_paired(base, base.copy())
    assert (same["verdict"], same["ci_low"], same["ci_high"], same["wilcoxon_p"]) == ("tie", 0.0, 0.0, 1.0)
    noise = stats.compare_paired(base + 0.05 * rng.standard_normal(400), base)
    assert noise["verdict"] == "tie" and noise["ci_low"] < 0 < noise["ci_high"]
    with pytest.raises(ValueError, match="paired"):
        stats.compare_paired([1.0, 2.0], [1.0])


def test_a_claim_needs_three_seeds_of_each_side():
    import numpy as np

    from recbole_mm.bench import stats

    base = np.random.default_rng(4).random(300)
    result = stats.compare_paired(base + 0.05, base)
    assert stats.seed_rule(result, 3)["verdict"] == "better" and stats.verdict_text(stats.seed_rule(result, 3)) == "better"
    short = stats.seed_rule(result, 2)
    assert (short["verdict"], short["ci_verdict"], short["ci_low"]) == ("tie", "better", result["ci_low"])
    assert stats.verdict_text(short) == "tie (2 seeds)" and stats.verdict_text(stats.seed_rule(result, 1)) == "tie (1 seed)"
    level = stats.seed_rule(stats.compare_paired(base, base.copy()), 2)
    assert stats.verdict_text(level) == "tie"  # a CI that includes 0 needs no note
    assert stats.seed_rule(None, 3) is None


def test_seed_average_is_per_user_over_the_users_of_every_seed():
    from recbole_mm.bench import stats

    runs = [{"users": ["a", "b", "c"], "full": [0.0, 1.0, 0.5]}, {"users": ["a", "b"], "full": [1.0, 0.0]}]
    assert stats.seed_average(runs, "full") == {"a": 0.5, "b": 0.5}
    assert stats.seed_average([None], "full") is None
    x, y = stats.paired_arrays({"a": 1.0, "b": 2.0, "c": 3.0}, {"c": 0.0, "a": 1.0})
    assert x.tolist() == [1.0, 3.0] and y.tolist() == [1.0, 0.0]


# ----- the sparse regime's dataset ------------------------------------------------------------


def _write_inter(folder, name, rows):
    folder.mkdir(parents=True, exist_ok=True)
    lines = ["user_id:token\titem_id:token\trating:float\ttimestamp:float"] + ["\t".join(map(str, row)) for row in rows]
    (folder / f"{name}.inter").write_text("\n".join(lines) + "\n")


def test_sparse_builder_is_deterministic_and_meets_its_median(tmp_path):
    import numpy as np

    from recbole_mm.bench import sparse

    rng = np.random.default_rng(0)
    rows = [(user, int(rng.zipf(1.3) % 60) + 1, 4, 1000 * user + step) for user in range(1, 81) for step in range(int(rng.integers(8, 40)))]
    _write_inter(tmp_path / "src" / "toy", "toy", rows)
    (tmp_path / "src" / "toy" / "toy.title.npy").write_bytes(b"features")
    first = sparse.build(str(tmp_path / "a"), source_root=str(tmp_path / "src"), source="toy", name="toy-sparse")
    second = sparse.build(str(tmp_path / "b"), source_root=str(tmp_path / "src"), source="toy", name="toy-sparse")
    assert first == second
    assert (tmp_path / "a" / "toy-sparse" / "toy-sparse.inter").read_bytes() == (tmp_path / "b" / "toy-sparse" / "toy-sparse.inter").read_bytes()
    assert (tmp_path / "a" / "toy-sparse" / "toy-sparse.title.npy").read_bytes() == b"features"
    assert first["median_train_interactions"] <= sparse.MAX_MEDIAN_TRAIN < first["source_interactions"]
    frame = sparse.read_inter(str(tmp_path / "src" / "toy" / "toy.inter"))
    order = sparse.recency_order(frame)
    assert sparse.median_train_interactions(frame, order, first["keep"] + 1) > sparse.MAX_MEDIAN_TRAIN  # the largest such cut
    kept = sparse.read_inter(str(tmp_path / "a" / "toy-sparse" / "toy-sparse.inter"))
    latest = frame.assign(t=frame["timestamp:float"].astype(float)).groupby("user_id:token")["t"].max()
    assert kept.groupby("user_id:token").size().max() == first["keep"]
    assert (kept.assign(t=kept["timestamp:float"].astype(float)).groupby("user_id:token")["t"].max() == latest).all()


def test_sparse_ml100k_mm_has_a_median_item_of_at_most_five_training_interactions(tmp_path):
    from recbole_mm import resources
    from recbole_mm.bench import sparse

    if resources.bundled_dataset_root(sparse.SOURCE) is None:
        pytest.skip("bundled ml-100k-mm not installed")
    info = sparse.build(str(tmp_path))
    assert info["median_train_interactions"] <= 5 and info["users"] == 943 and info["interactions"] < 20000
    assert sorted(os.listdir(tmp_path / sparse.NAME)) == sorted(
        f"{sparse.NAME}{suffix}" for suffix in (".inter", ".item", ".meta.ids", ".meta.npy", ".title.ids", ".title.npy"))


# ----- tuning, cache, publishing --------------------------------------------------------------


def test_tuning_picks_each_models_best_point_and_seeds_reuse_the_cache(tiny_planted, tmp_path, monkeypatch):
    from recbole_mm.bench import benchmark, runner
    from recbole_mm.bench.profiles import DENSE
    from recbole_mm.bench.planted import planted_config

    planted, data_path = tiny_planted
    calls = []
    monkeypatch.setattr(runner, "run_model", fake_run_model(calls))
    monkeypatch.setattr(benchmark, "PUBLISHED_DIR", str(tmp_path / "published"))
    table = benchmark.make_table("tiny", DENSE, str(tmp_path / "out"), name="dense", data_path=data_path,
                                 base_config=planted_config(planted, data_path), published=True, jobs=2)
    tuning = benchmark.tune(table, ["SASRec", "GRU4Rec"])
    assert len(calls) == 8
    assert tuning["SASRec"]["chosen"] == tuning["GRU4Rec"]["chosen"] == {"learning_rate": 0.003, "dropout": 0.2}
    sasrec = [config for model, _, config in calls if model == "SASRec"]
    assert {(c["learning_rate"], c["hidden_dropout_prob"], c["attn_dropout_prob"]) for c in sasrec} == {
        (0.001, 0.2, 0.2), (0.001, 0.5, 0.5), (0.003, 0.2, 0.2), (0.003, 0.5, 0.5)}
    assert {c["dropout_prob"] for model, _, c in calls if model == "GRU4Rec"} == {0.2, 0.5}
    assert all(c["exclude_history"] is True and c["MAX_ITEM_LIST_LENGTH"] == 50 for _, _, c in calls)
    points = {model: entry["chosen"] for model, entry in tuning.items()}
    paths = benchmark.run_table(table, ["SASRec", "GRU4Rec"], points, tuning=tuning, publish=True)
    assert len(calls) == 8 + 4  # seed 2020 at the chosen point came from the tuning run
    markdown = open(paths["markdown"], encoding="utf-8").read()
    assert "## Tuning grid" in markdown and "**" in markdown and "GRU4Rec" in markdown
    published = os.listdir(tmp_path / "published" / "dense" / "runs")
    assert len(published) == 8 + 4 and all(name.endswith(".json") for name in published)
    # a fresh checkout: no local runs, the published rows give the same table without training
    fresh = benchmark.make_table("tiny", DENSE, str(tmp_path / "elsewhere"), name="dense", data_path=data_path,
                                 base_config=planted_config(planted, data_path), published=True, run_missing=False)
    again = benchmark.tune(fresh, ["SASRec", "GRU4Rec"])
    assert {m: e["chosen"] for m, e in again.items()} == points and len(calls) == 12


def test_cache_key_ignores_folders_and_follows_plugin_source(monkeypatch):
    from recbole_mm.bench import runner

    spec = runner.RunSpec("SASRecMM", "d", {"data_path": "/a", "learning_rate": 0.001}, 2020, None, {"data": "x", "model": "m1"})
    moved = spec._replace(config={"data_path": "/b", "learning_rate": 0.001})
    assert spec.key(None, 5) == moved.key(None, 5)
    assert spec.key(None, 5) != spec._replace(fingerprints={"data": "x", "model": "m2"}).key(None, 5)
    assert spec.key(None, 5) != spec._replace(fingerprints={"data": "y", "model": "m1"}).key(None, 5)
    assert runner.model_fingerprint("SASRec") is None and len(runner.model_fingerprint("SASRecMM")) == 12
    original = runner.model_fingerprint("SASRecMM")
    monkeypatch.setattr(runner, "source_fingerprint", lambda module, prefixes=(): "edited")  # an edited model file
    assert runner.model_fingerprint("SASRecMM") != original


def test_source_fingerprint_follows_the_models_local_imports():
    from recbole_mm.bench import runner

    path = runner._module_file("recbole_mm.model.sasrecmm")
    imports = runner._local_imports(path, ("recbole_mm.model", "recbole_mm.data"))
    assert any(name.startswith("recbole_mm.model.abstract") for name in imports)
    assert runner._module_file("recbole_mm.model.abstract").endswith("abstract.py")
    assert runner._module_file("torch") is None


def test_a_regime_without_the_tuning_regimes_grid_says_what_to_run(tmp_path, monkeypatch):
    from recbole_mm.bench import benchmark

    monkeypatch.setattr(benchmark, "PUBLISHED_DIR", str(tmp_path / "published"))
    with pytest.raises(benchmark.MissingTuning, match="--regime dense --stage tune"):
        benchmark.run_regime("cold", ["SASRec"], str(tmp_path / "out"), run_missing=False, progress=False)
    with pytest.raises(ValueError, match="stage"):
        benchmark.run_regime("cold", ["SASRec"], str(tmp_path / "out"), stage="everything")


def test_own_grid_tunes_a_regime_on_its_own_validation_set_and_reports_beside_its_runs(tmp_path, monkeypatch):
    from recbole_mm.bench import benchmark, runner

    calls = []
    monkeypatch.setattr(runner, "run_model", fake_run_model(calls))
    monkeypatch.setattr(benchmark, "PUBLISHED_DIR", str(tmp_path / "published"))
    out = str(tmp_path / "out")
    with pytest.raises(benchmark.MissingTuning, match="--regime cold --own-grid --stage tune"):
        benchmark.run_regime("cold", ["GRU4Rec"], out, stage="seeds", own_grid=True, progress=False)
    assert calls == []  # no dense grid was needed, and nothing ran for the missing one
    paths = benchmark.run_regime("cold", ["GRU4Rec"], out, own_grid=True, progress=False)
    grid = {(config["learning_rate"], config["dropout_prob"]) for _, seed, config in calls if seed == 2020}
    assert grid == {(0.001, 0.2), (0.001, 0.5), (0.003, 0.2), (0.003, 0.5)}
    assert len(calls) == 4 + 2 and all(config["learning_rate"] == 0.003 for _, seed, config in calls if seed != 2020)
    assert paths["markdown"] == os.path.join(out, "cold", benchmark.OWN_GRID_FOLDER, "results.md")
    assert "own grid" in open(paths["markdown"], encoding="utf-8").read()
    with pytest.raises(benchmark.MissingTuning, match="--regime dense --stage tune"):  # the default protocol is unchanged
        benchmark.run_regime("cold", ["GRU4Rec"], out, run_missing=False, progress=False)


def test_a_report_marks_an_unfinished_grid_provisional_and_an_unrun_one_not_run(tmp_path, monkeypatch):
    from recbole_mm.bench import benchmark, runner

    calls = []
    monkeypatch.setattr(runner, "run_model", fake_run_model(calls))
    monkeypatch.setattr(benchmark, "PUBLISHED_DIR", str(tmp_path / "published"))
    out = str(tmp_path / "out")
    benchmark.run_regime("cold", ["GRU4Rec"], out, own_grid=True, stage="tune", progress=False)
    runs = tmp_path / "out" / "cold" / "runs"
    weakest = min(os.listdir(runs), key=lambda name: json.loads((runs / name).read_text())["best_valid"])
    (runs / weakest).unlink()  # lr 0.001 with dropout 0.5: the chosen point stays
    paths = benchmark.run_regime("cold", ["GRU4Rec", "SASRec"], out, own_grid=True, run_missing=False, progress=False)
    markdown = open(paths["markdown"], encoding="utf-8").read()
    assert "GRU4Rec: provisional point, 3 of 4 grid points run so far" in markdown
    assert "missing: grid not run yet" in markdown and "failed" not in markdown
