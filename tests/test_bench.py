"""The benchmark harness: profiles, metrics, the report files, failure isolation, the cache, the
synthetic cold-item set."""

import csv
import math
import os
import sys
import types

import numpy as np
import pytest
import yaml

from recbole_mm.bench import __main__ as cli
from recbole_mm.bench import compare, synthetic
from recbole_mm.bench.profiles import CATEGORY_FEATURE_MODELS, get_profile, model_config, protocol_config
from recbole_mm.data.synthetic import planted_config, write_planted_dataset

# Models that fail on purpose, imported by name in the runs (in-process and in child processes).
FAKE_MODELS = '''
from recbole.model.abstract_recommender import SequentialRecommender
from recbole.utils import InputType
from torch import nn

from recbole_mm.registry import register_model


class Exploding(SequentialRecommender):
    """Raises during training."""

    input_type = InputType.POINTWISE

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        self.embedding = nn.Embedding(self.n_items, 8)

    def calculate_loss(self, interaction):
        raise RuntimeError("exploding on purpose")


register_model("Exploding", __name__)
'''

QUALITY_HEADER = ["Recall@10", "Recall@20", "NDCG@10", "NDCG@20", "MRR@10", "Params", "Train s/epoch", "Infer ms/user", "Peak RSS MB"]


@pytest.fixture
def fake_models(tmp_path, monkeypatch):
    """Write the failing models into the test's cwd and make them importable here and in children."""
    (tmp_path / "bench_fake_models.py").write_text(FAKE_MODELS)
    monkeypatch.syspath_prepend(str(tmp_path))
    return "bench_fake_models"


@pytest.fixture
def tiny_config_file(tiny_planted, tmp_path):
    """The tiny planted dataset's settings as a yaml file, as a user would pass with --config-files."""
    planted, data_path = tiny_planted
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(planted_config(planted, data_path)))
    return str(path)


def _table_rows(markdown, first_header):
    """Rows of the markdown table whose header starts with ``| first_header |``, as lists of cells."""
    lines = markdown.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"| {first_header} |"))
    table = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        table.append([cell.strip() for cell in line.strip("|").split(" | ")])
    return table[0], table[2:]


def _read_csv(path):
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


# ----- settings -------------------------------------------------------------------------------


def test_every_model_gets_the_same_protocol():
    profile = get_profile("quick")
    shared = protocol_config(profile)
    for model in ("SASRec", "GRU4Rec", "BERT4Rec", "FDSA", "SASRecF", "SASRecMM"):
        config = model_config(model, profile, features=["class"])
        assert {key: config[key] for key in shared} == shared, model
    assert model_config("GRU4Rec", profile)["embedding_size"] == profile.hidden_size
    for model in CATEGORY_FEATURE_MODELS:
        assert model_config(model, profile, features=["class"])["selected_features"] == ["class"]
        with pytest.raises(ValueError, match="selected_features"):
            model_config(model, profile, features=[])
    assert shared["eval_args"] == {"split": {"LS": "valid_and_test"}, "order": "TO", "mode": "full"}
    assert shared["train_neg_sample_args"] is None and shared["valid_metric"] == "NDCG@10"


def test_cli_overrides_profile():
    args = cli.parse_args(["--dataset", "x", "--quick", "--epochs", "7", "--max-len", "12", "--seeds", "2"])
    profile = cli.build_profile(args)
    assert (profile.name, profile.epochs, profile.max_len, profile.seeds) == ("quick", 7, 12, 2)
    assert profile.seed_list() == [2020, 2021]
    assert cli.build_profile(cli.parse_args(["--dataset", "x"])).name == "full"
    medium = cli.build_profile(cli.parse_args(["--dataset", "x", "--profile", "medium"]))
    assert medium.max_batches is None and medium.epochs > get_profile("quick").epochs  # whole epochs to early stopping
    assert cli._parse_overrides(["n_layers=1", "fusion=gated"]) == {"n_layers": 1, "fusion": "gated"}


# ----- metrics --------------------------------------------------------------------------------


def test_rank_metrics_and_cold_subset():
    import torch

    ranks = torch.tensor([0, 3, 12, 9])
    metrics = compare.rank_metrics(ranks, k=10)
    assert metrics["recall@10"] == pytest.approx(3 / 4)
    assert metrics["ndcg@10"] == pytest.approx((1 + 1 / math.log2(5) + 1 / math.log2(11)) / 4)
    targets = torch.tensor([1, 2, 3, 4])
    counts = torch.tensor([0, 50, 1, 2, 40])  # items 2 and 3 are rare
    cold = compare.cold_metrics(ranks, targets, counts, cold_max_count=2)
    assert cold["cold_users"] == 2
    assert cold["cold_recall@10"] == pytest.approx(0.5)
    assert cold["cold_ndcg@10"] == pytest.approx((1 / math.log2(5)) / 2)
    assert compare.cold_metrics(ranks, targets, counts, cold_max_count=-1)["cold_recall@10"] is None


def test_history_rankings_count_history_in_the_top_and_rank_without_it():
    import torch

    scores = torch.tensor([
        [-float("inf"), 5.0, 4.0, 3.0, 2.0, 1.0],  # history {1, 2}, target 4: two history items above it
        [-float("inf"), 1.0, 2.0, 3.0, 4.0, 5.0],  # history {3, 5} and the target 5 itself: it stays ranked
    ])
    history = torch.tensor([[0, 1, 2], [3, 5, 0]])
    rows, items = torch.tensor([0, 1]), torch.tensor([4, 5])
    in_top, unseen = compare.history_rankings(scores, rows, items, history, k=2)
    assert in_top.tolist() == [2, 1] and unseen.tolist() == [1, 0]
    assert compare.rank_metrics(torch.tensor([3, 0]), k=2)["ndcg@2"] < compare.rank_metrics(unseen, k=2)["ndcg@2"]
    metrics = compare.history_metrics((in_top, unseen), k=2)
    assert metrics["history_in_top2"] == 1.5 and metrics["unseen_recall@2"] == 1.0
    assert compare.history_metrics(None) == {}


# ----- the harness end to end -----------------------------------------------------------------


def test_harness_writes_table_csv_plots_and_reports_a_failing_model(tiny_config_file, fake_models, tmp_path, monkeypatch):
    argv = [
        "--dataset", "tiny", "--models", "SASRec,GRU4Rec,Exploding", "--import", fake_models,
        "--config-files", tiny_config_file, "--quick", "--epochs", "1", "--max-len", "10", "--batch-size", "64",
        "--cold-max-count", "1000000", "--in-process", "--out", "results",
    ]
    assert cli.main(argv) == 0
    results = tmp_path / "results" / "tiny"
    markdown = (results / "results.md").read_text()

    header, rows = _table_rows(markdown, "Model | Features")
    for column in QUALITY_HEADER:
        assert column in header
    by_model = {row[0]: dict(zip(header, row)) for row in rows}
    assert list(by_model) == ["SASRec", "GRU4Rec", "Exploding"]
    for model in ("SASRec", "GRU4Rec"):
        assert by_model[model]["Status"] == "ok"
        assert 0.0 <= float(by_model[model]["NDCG@10"]) <= 1.0
        assert int(by_model[model]["Params"].replace(",", "")) > 0
    assert by_model["Exploding"]["Status"] == "failed: RuntimeError: exploding on purpose"
    assert by_model["Exploding"]["NDCG@10"] == "-"

    speed_header, speed_rows = _table_rows(markdown, "Model | Train ms/step")
    speed = {row[0]: dict(zip(speed_header, row)) for row in speed_rows}
    assert speed["SASRec"]["Train x SASRec"] == speed["SASRec"]["Infer x SASRec"] == "1.00x"
    assert speed["GRU4Rec"]["Infer x SASRec"].endswith("x") and speed["Exploding"]["Train x SASRec"] == "-"

    summary = {row["model"]: row for row in _read_csv(results / "results.csv")}
    assert list(summary) == ["SASRec", "GRU4Rec", "Exploding"]
    for column in ("recall@10_mean", "recall@20_mean", "ndcg@10_mean", "ndcg@20_mean", "mrr@10_mean", "params_mean",
                   "train_s_per_epoch_mean", "infer_ms_per_user_mean", "peak_rss_mb_mean", "cold_ndcg@10_mean"):
        assert float(summary["SASRec"][column]) >= 0.0, column
        assert summary["Exploding"][column] == "", column
    assert summary["Exploding"]["status"] == "failed" and "exploding on purpose" in summary["Exploding"]["error"]
    # every test user is "cold" under this threshold: our own ranking pass must agree with RecBole's evaluator
    for model in ("SASRec", "GRU4Rec"):
        assert float(summary[model]["cold_recall@10_mean"]) == pytest.approx(float(summary[model]["recall@10_mean"]), abs=1e-4)
        assert float(summary[model]["cold_ndcg@10_mean"]) == pytest.approx(float(summary[model]["ndcg@10_mean"]), abs=1e-4)

    runs = _read_csv(results / "runs.csv")
    assert [(row["model"], row["status"]) for row in runs] == [("SASRec", "ok"), ("GRU4Rec", "ok"), ("Exploding", "failed")]
    assert len(runs[0]["valid_curve"].split(";")) == 1 and int(runs[0]["epochs"]) == 1
    assert len(list((results / "runs").glob("*.json"))) == 3

    pytest.importorskip("matplotlib")
    for name in ("valid_ndcg10.png", "quality_vs_time.png"):
        data = (results / name).read_bytes()
        assert data.startswith(b"\x89PNG") and len(data) > 5000, name
        assert f"({name})" in markdown

    # Rerun: finished runs come from the cache, the failed one is tried again.
    calls = []

    def fake_run_model(model, dataset, config_dict, seed=2020, data_path=None, **options):
        calls.append(model)
        return dict(compare.new_row(model, dataset, seed), error="RuntimeError: still exploding")

    monkeypatch.setattr(compare, "run_model", fake_run_model)
    assert cli.main(argv) == 0
    assert calls == ["Exploding"]
    rerun = {row["model"]: row for row in _read_csv(results / "results.csv")}
    assert rerun["SASRec"]["ndcg@10_mean"] == summary["SASRec"]["ndcg@10_mean"]
    assert "still exploding" in rerun["Exploding"]["error"]


def test_isolated_run_reports_its_own_metrics_memory_and_progress(tiny_config, capsys):
    row = compare.run_model("SASRec", "tiny", tiny_config(epochs=1), seed=3, max_batches=2, log_path="sasrec.log", threads=1)
    assert row["status"] == "ok", row["error"]
    assert row["threads"] == 1
    assert (row["model"], row["seed"], row["train_steps"], row["epochs"], len(row["valid_curve"])) == ("SASRec", 3, 2, 1, 1)
    assert 0.0 <= row["ndcg@10"] <= 1.0 and row["peak_rss_mb"] > 50 and row["params"] > 0
    assert row["infer_ms_per_user"] > 0 and row["test_users"] == 60
    assert 0.0 <= row["history_in_top10"] <= 10.0 and row["unseen_ndcg@10"] >= row["ndcg@10"]
    assert "[bench] SASRec seed 3: epoch 1/1" in capsys.readouterr().err
    assert "[bench] SASRec seed 3: done" in open("sasrec.log", encoding="utf-8").read()


def test_a_child_that_dies_or_hangs_becomes_a_failed_row(tiny_config, monkeypatch):
    """What the parent sees when a run ends without a result (segfault, OOM kill, os._exit) or hangs."""
    monkeypatch.setattr(compare, "_WORKER_CODE", "import os, sys; print('dying now'); sys.stdout.flush(); os._exit(3)")
    crashed = compare.run_model("SASRec", "tiny", tiny_config(), seed=5)
    assert (crashed["status"], crashed["model"], crashed["seed"]) == ("failed", "SASRec", 5)
    assert crashed["error"] == "WorkerCrash: exit code 3; last output: dying now"
    monkeypatch.setattr(compare, "_WORKER_CODE", "import time; time.sleep(60)")
    hung = compare.run_model("SASRec", "tiny", tiny_config(), seed=5, timeout=1)
    assert hung["status"] == "failed" and hung["error"] == "TimeoutError: killed after 1 s" and hung["wall_s"] < 30


def _fake_run(model, seed, ndcg, status="ok", error="", ms_per_step=10.0):
    row = compare.new_row(model, "toy", seed)
    row.update(status=status, error=error, uses_features=model != "SASRec")
    if status == "ok":
        row.update({key: ndcg for key in compare.METRIC_KEYS}, valid_curve=[ndcg / 2, ndcg], epochs=2, params=1000,
                   train_s_per_epoch=1.0, train_ms_per_step=ms_per_step, infer_ms_per_user=0.5, peak_rss_mb=300.0,
                   cold_users=4, **{"cold_recall@10": ndcg / 2, "cold_ndcg@10": ndcg / 4})
    return row


def test_report_aggregates_seeds_and_includes_the_attention_table(tmp_path, monkeypatch):
    from recbole_mm.bench import report

    rows = [
        _fake_run("SASRec", 1, 0.10), _fake_run("SASRec", 2, 0.20),
        _fake_run("MUFASA", 1, 0.30, ms_per_step=25.0), _fake_run("MUFASA", 2, 0.0, status="failed", error="OOM | killed"),
    ]
    (tmp_path / "results" / "attention").mkdir(parents=True)
    (tmp_path / "results" / "attention" / "scaling.md").write_text("| L | dense ms | SAL ms |\n|---|---|---|\n| 2048 | 9 | 3 |\n")
    monkeypatch.setitem(sys.modules, "recbole_mm.bench.attention", types.SimpleNamespace())  # module without the reader
    settings = {"dataset": "toy", "profile": get_profile("full").as_dict(), "seeds": [1, 2], "models": ["SASRec", "MUFASA"],
                "features": [], "cold_max_count": 5, "overrides": {}, "isolated": True}
    paths = report.write_report(str(tmp_path / "results" / "toy"), rows, ["SASRec", "MUFASA"], settings)
    markdown = open(paths["markdown"], encoding="utf-8").read()
    header, table = _table_rows(markdown, "Model | Features")
    by_model = {row[0]: dict(zip(header, row)) for row in table}
    assert by_model["SASRec"]["NDCG@10"] == "0.1500 ± 0.0707" and by_model["SASRec"]["Seeds"] == "2/2"
    assert by_model["MUFASA"]["NDCG@10"] == "0.3000" and by_model["MUFASA"]["Status"] == "ok 1/2 seeds; failed: OOM \\| killed"
    speed_header, speed_rows = _table_rows(markdown, "Model | Train ms/step")
    assert dict(zip(speed_header, speed_rows[1]))["Train x SASRec"] == "2.50x"
    assert dict(zip(speed_header, speed_rows[1]))["Infer x SASRec"] == "1.00x"
    assert "| 2048 | 9 | 3 |" in markdown and "cold-user NDCG@10: best with features MUFASA" in markdown

    reader = types.SimpleNamespace(scaling_table_markdown=lambda: "| L | from the module |")
    monkeypatch.setitem(sys.modules, "recbole_mm.bench.attention", reader)
    assert report.attention_section(paths["csv"]) == "| L | from the module |"


def test_features_verdict_says_when_the_gap_is_within_seed_noise():
    from recbole_mm.bench.report import features_verdict

    def summary(model, features, mean, std, seeds):
        return {"model": model, "uses_features": features, "seeds_ok": seeds, "ndcg@10_mean": mean, "ndcg@10_std": std}

    clear = features_verdict([summary("MM", True, 0.30, 0.01, 3), summary("ID", False, 0.20, 0.01, 3)])
    assert clear == ["- NDCG@10: best with features MM 0.3000 vs best ID-only ID 0.2000: feature model wins."]
    noisy = features_verdict([summary("MM", True, 0.21, 0.03, 3), summary("ID", False, 0.20, 0.04, 3)])
    assert noisy[0].endswith("within seed noise (gap 0.0100 <= 0.0500).")
    single = features_verdict([summary("MM", True, 0.10, 0.0, 1), summary("ID", False, 0.20, 0.0, 1)])
    assert single[0].endswith("ID-only model wins (one seed: no noise estimate).")
    nothing = features_verdict([summary("MM", True, 0.0, 0.0, 2), summary("ID", False, 0.0, 0.0, 2)])
    assert nothing[0].endswith(": tie.")


# ----- the synthetic set ----------------------------------------------------------------------


def test_synthetic_cold_split_keeps_the_planted_walk(tmp_path):
    small = dict(n_users=200, n_items=80, n_clusters=10, seq_len=(6, 12))
    planted, config, info = synthetic.build(str(tmp_path / "data"), generator=small)
    original = write_planted_dataset(str(tmp_path / "orig"), name=synthetic.NAME, **dict(synthetic.GENERATOR, **small))

    def histories(folder):
        _, rows = synthetic._read_histories(os.path.join(folder, f"{synthetic.NAME}.inter"))
        return {user: [int(row[1]) - 1 for row in user_rows] for user, user_rows in rows.items()}

    new, old = histories(planted.folder), histories(original.folder)
    assert new.keys() == old.keys()
    clusters = planted.item_cluster
    for user in new:  # every replacement stays in the cluster the walk planted there
        assert [clusters[i] for i in new[user]] == [clusters[i] for i in old[user]]
    cold = set(int(i) for items in synthetic._cold_items(original, synthetic.COLD_SPLIT["cold_per_cluster"]).values() for i in items)
    before_last = np.bincount([i for h in new.values() for i in h[:-1]], minlength=len(clusters))
    assert all(before_last[i] <= synthetic.COLD_SPLIT["cold_cap"] for i in cold)
    cold_targets = sum(h[-1] in cold for h in new.values())
    assert cold_targets >= info["cold_test_users"] > 0.3 * len(new)
    assert config["modalities"] == list(synthetic.GENERATOR["modalities"]) and config["category_field"] == "category"
    assert "MAX_ITEM_LIST_LENGTH" not in config and "topk" not in config  # the profile sets the protocol
    assert len(info["fingerprint"]) == 12


def test_attention_scaling_script_writes_its_table(tmp_path, capsys):
    """The scaling benchmark end to end at toy sizes: one subprocess per (implementation, length)."""
    from recbole_mm.bench import attention

    attention.main(["--lengths", "16,32", "--batch", "2", "--hidden", "8", "--window", "4", "--block", "4", "--top", "1",
                    "--repeats", "1", "--threads", "1", "--impls", "sdpa,sal", "--out", str(tmp_path / "attention")])
    written = (tmp_path / "attention" / "attention.md").read_text()
    assert written.strip() == capsys.readouterr().out.strip()
    rows = [line for line in written.splitlines() if line.startswith("| 16 ") or line.startswith("| 32 ")]
    assert len(rows) == 2 and all(len(row.split("|")) == len(written.splitlines()[2].split("|")) for row in rows)
    assert "SAL faster than sdpa from L =" in written
