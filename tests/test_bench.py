"""The benchmark harness: profiles, metrics, the report files, failure isolation, the cache, the
synthetic cold-item set."""

import csv
import json
import math
import os
import sys
import time
import types

import numpy as np
import pytest
import torch
import yaml

from recbole_mm.bench import __main__ as cli
from recbole_mm.bench import measure, pipeline, runner, synthetic
from recbole_mm.bench.profiles import CATEGORY_FEATURE_MODELS, get_profile, model_config, protocol_config
from recbole_mm.bench.planted import planted_config, write_planted_dataset

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
    assert cli.parse_overrides(["n_layers=1", "fusion=gated"]) == {"n_layers": 1, "fusion": "gated"}
    with pytest.raises(SystemExit, match="--own-grid tunes"):
        cli.main(["--regime", "sparse", "--own-grid", "--untuned"])


def test_an_interrupted_bench_exits_130_with_a_line_instead_of_a_traceback(monkeypatch, capsys):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "run_regime", interrupted)
    assert cli.run_cli(["--regime", "dense"]) == 130
    assert "the same command continues" in capsys.readouterr().err


# ----- metrics --------------------------------------------------------------------------------


def test_rank_metrics_and_cold_subset():
    import torch

    ranks = torch.tensor([0, 3, 12, 9])
    metrics = measure.rank_metrics(ranks, k=10)
    assert metrics["recall@10"] == pytest.approx(3 / 4)
    assert metrics["ndcg@10"] == pytest.approx((1 + 1 / math.log2(5) + 1 / math.log2(11)) / 4)
    targets = torch.tensor([1, 2, 3, 4])
    counts = torch.tensor([0, 50, 1, 2, 40])  # items 2 and 3 are rare
    cold = measure.cold_metrics(ranks, targets, counts, cold_max_count=2)
    assert cold["cold_users"] == 2
    assert cold["cold_recall@10"] == pytest.approx(0.5)
    assert cold["cold_ndcg@10"] == pytest.approx((1 / math.log2(5)) / 2)
    assert measure.cold_metrics(ranks, targets, counts, cold_max_count=-1)["cold_recall@10"] is None


def test_the_per_user_record_lists_the_cold_users_by_token():
    import torch

    ranks = torch.tensor([0, 3, 12, 9])
    rankings = measure.Rankings(full=ranks, excl=ranks, targets=torch.tensor([1, 2, 3, 4]), users=torch.arange(4),
                                repeats=torch.zeros(4, dtype=torch.bool), history_in_top=torch.zeros(4), seconds=0.0)
    mask = measure.cold_mask(rankings.targets, torch.tensor([0, 50, 1, 2, 40]), cold_max_count=2)
    record = measure.per_user_ndcg(rankings, ["d", "c", "b", "a"], cold=mask)  # users 1 and 2 ("c", "b") are cold
    assert record["users"] == ["a", "b", "c", "d"] and record["full"][1:3] == [0, pytest.approx(1 / math.log2(5), abs=1e-5)]
    assert record[measure.COLD_USERS_KEY] == ["b", "c"]
    assert measure.COLD_USERS_KEY not in measure.per_user_ndcg(rankings, ["d", "c", "b", "a"])


def test_rankings_give_both_protocols_and_count_repeats():
    """One ranking of every item gives RecBole's ranks, the history-excluded ranks (a repeated target
    is a miss there), the repeat flags and the history items in the top k."""
    import torch

    scores = torch.tensor([
        [-float("inf"), 5.0, 4.0, 3.0, 2.0, 1.0],  # history {1, 2}, target 4: two history items above it
        [-float("inf"), 1.0, 2.0, 3.0, 4.0, 5.0],  # history {3, 5}, target 5 repeats the history
    ])
    batch = types.SimpleNamespace(**{"item_id_list": torch.tensor([[0, 1, 2], [3, 5, 0]]), "user_id": torch.tensor([7, 8])})
    interaction = {"item_id_list": batch.item_id_list, "user_id": batch.user_id}
    trainer = types.SimpleNamespace(
        model=types.SimpleNamespace(eval=lambda: None, ITEM_SEQ="item_id_list"), device=torch.device("cpu"),
        config={"USER_ID_FIELD": "user_id"}, exclude_history=True,
        _full_sort_batch_eval=lambda batch: (interaction, scores.clone(), torch.tensor([0, 1]), torch.tensor([4, 5])),
    )
    rankings = measure.rank_test_targets(trainer, [object()], k=2)
    assert trainer.exclude_history is True  # switched off only while ranking
    assert rankings.full.tolist() == [3, 0] and rankings.excl.tolist() == [1, 6]
    assert rankings.repeats.tolist() == [False, True] and rankings.history_in_top.tolist() == [2, 1]
    assert rankings.users.tolist() == [7, 8] and rankings.targets.tolist() == [4, 5]
    metrics = measure.protocol_metrics(rankings, k=2)
    assert metrics["repeat_share"] == 0.5 and metrics["history_in_top2"] == 1.5
    assert metrics["full_recall@2"] == 0.5 and metrics["excl_recall@2"] == 0.5
    assert metrics["excl_ndcg@2"] == pytest.approx(0.5 / math.log2(3)) and metrics["full_ndcg@2"] == pytest.approx(0.5)
    per_user = measure.per_user_ndcg(rankings, ["b", "a"], k=2)
    assert per_user == {"users": ["a", "b"], "full": [1.0, 0.0], "excl": [0.0, round(1 / math.log2(3), 5)]}


# ----- the harness end to end -----------------------------------------------------------------


@pytest.mark.slow
def test_harness_writes_table_csv_plots_and_reports_a_failing_model(tiny_config_file, fake_models, tmp_path, monkeypatch):
    argv = [
        "--dataset", "tiny", "--models", "SASRec,GRU4Rec,Exploding", "--import", fake_models,
        "--config-files", tiny_config_file, "--quick", "--epochs", "1", "--max-len", "10", "--batch-size", "64",
        "--cold-max-count", "1000000", "--in-process", "--out", "results",
    ]
    assert cli.main(argv) == 0
    results = tmp_path / "results" / "tiny"
    markdown = (results / "results.md").read_text()

    header, rows = _table_rows(markdown, "Model | Features | Recall@10")
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
    # ... and the cold users' paired comparison is then the headline one (the runs recorded who the cold users are)
    header, rows = _table_rows(markdown, "Model | Features | Tuned point")
    headline = {row[0]: dict(zip(header, row)) for row in rows}
    header, rows = _table_rows(markdown, "Model | Features | Cold users")
    cold = {row[0]: dict(zip(header, row)) for row in rows}
    assert cold["SASRec"]["Cold Δ vs SASRec [95% CI]"] == "reference"
    assert cold["GRU4Rec"]["Cold Δ vs SASRec [95% CI]"] == f"{headline['GRU4Rec']['Δ vs SASRec [95% CI]']} {headline['GRU4Rec']['Verdict']}"

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
        return dict(pipeline.new_row(model, dataset, seed), error="RuntimeError: still exploding")

    monkeypatch.setattr(runner, "run_model", fake_run_model)
    assert cli.main(argv) == 0
    assert calls == ["Exploding"]
    rerun = {row["model"]: row for row in _read_csv(results / "results.csv")}
    assert rerun["SASRec"]["ndcg@10_mean"] == summary["SASRec"]["ndcg@10_mean"]
    assert "still exploding" in rerun["Exploding"]["error"]


@pytest.mark.slow
def test_isolated_run_reports_its_own_metrics_memory_and_progress(tiny_config, capsys, tmp_path):
    state = tmp_path / "state"
    row = runner.run_model("SASRec", "tiny", tiny_config(epochs=1), seed=3, max_batches=2, log_path="sasrec.log", threads=1,
                           state_dir=str(state))
    assert row["status"] == "ok", row["error"]
    # a generic-Trainer baseline runs under the plugin's trainer: its state ends with the finished run's checkpoint
    assert state.is_dir() and pipeline.last_checkpoint(str(state)) is not None
    assert row["threads"] == 1 and row["machine"] == measure.machine_id()
    assert (row["model"], row["seed"], row["train_steps"], row["epochs"], len(row["valid_curve"])) == ("SASRec", 3, 2, 1, 1)
    assert 0.0 <= row["ndcg@10"] <= 1.0 and row["peak_rss_mb"] > 50 and row["params"] > 0
    assert row["infer_ms_per_user"] > 0 and row["test_users"] == 60
    assert 0.0 <= row["history_in_top10"] <= 10.0 and 0.0 < row["repeat_share"] < 1.0 and row["exclude_history"] is False
    assert row["full_ndcg@10"] == pytest.approx(row["ndcg@10"], abs=1e-4)  # our ranking pass agrees with RecBole's
    per_user = row["per_user"]
    assert len(per_user["users"]) == len(per_user["full"]) == len(per_user["excl"]) == 60
    assert per_user["users"] == sorted(per_user["users"])
    assert sum(per_user["excl"]) / 60 == pytest.approx(row["excl_ndcg@10"], abs=1e-4)
    assert "[bench] SASRec seed 3: epoch 1/1" in capsys.readouterr().err
    assert "[bench] SASRec seed 3: done" in open("sasrec.log", encoding="utf-8").read()


@pytest.mark.slow
def test_a_child_that_dies_or_hangs_becomes_a_failed_row(tiny_config, monkeypatch):
    """What the parent sees when a run ends without a result (segfault, OOM kill, os._exit) or hangs."""
    monkeypatch.setattr(runner, "_WORKER_CODE", "import os, sys; print('dying now'); sys.stdout.flush(); os._exit(3)")
    crashed = runner.run_model("SASRec", "tiny", tiny_config(), seed=5)
    assert (crashed["status"], crashed["model"], crashed["seed"]) == ("failed", "SASRec", 5)
    assert crashed["error"] == "WorkerCrash: exit code 3; last output: dying now"
    monkeypatch.setattr(runner, "_WORKER_CODE", "import time; time.sleep(60)")
    hung = runner.run_model("SASRec", "tiny", tiny_config(), seed=5, timeout=1)
    assert hung["status"] == "failed" and hung["error"] == "TimeoutError: killed after 1 s" and hung["wall_s"] < 30


@pytest.mark.slow
@pytest.mark.parametrize("model", ["SASRecMM", "SASRec"])
def test_a_killed_bench_run_continues_from_its_last_epoch_to_the_same_row(model, tiny_config, tmp_path, monkeypatch):
    """A run (a plugin model's, or a RecBole baseline's) killed after its 2nd validation resumes from the
    checkpoint of epoch 1 and ends with the uninterrupted run's curve, metrics and per-user NDCG; keeping
    the state changes nothing."""
    job = dict(model=model, dataset="tiny", config_dict=tiny_config(epochs=3, stopping_step=10), seed=7, data_path=None,
               max_batches=None, cold_max_count=5, imports=(), progress=False, threads=1)
    plain = pipeline.train_and_evaluate(**job)
    straight = pipeline.train_and_evaluate(**job, state_dir=str(tmp_path / "straight"))
    recorded = pipeline._EpochRecorder.on_valid

    def killed_after_second_validation(self, epoch_idx, valid_score):
        recorded(self, epoch_idx, valid_score)
        if epoch_idx == 1:
            raise KeyboardInterrupt  # what a kill looks like from here: nothing after this point runs

    monkeypatch.setattr(pipeline._EpochRecorder, "on_valid", killed_after_second_validation)
    with pytest.raises(KeyboardInterrupt):
        pipeline.train_and_evaluate(**job, state_dir=str(tmp_path / "killed"))
    monkeypatch.undo()
    assert pipeline.last_checkpoint(str(tmp_path / "killed"))
    resumed = pipeline.train_and_evaluate(**job, state_dir=str(tmp_path / "killed"))

    assert plain["status"] == straight["status"] == resumed["status"] == "ok", resumed["error"]
    assert (plain["resumed_at"], straight["resumed_at"], resumed["resumed_at"]) == ([], [], [2])
    assert len(resumed["valid_curve"]) == resumed["epochs"] == len(resumed["epoch_seconds"]) == 3
    assert resumed["epoch_cpu"] == plain["epoch_cpu"] == [measure.cpu_capability()] * 3
    assert resumed["torch"] == plain["torch"] == torch.__version__
    for row in (straight, resumed):
        assert row["valid_curve"] == plain["valid_curve"]
        assert (row["ndcg@10"], row["per_user"]) == (plain["ndcg@10"], plain["per_user"])


def test_a_runs_times_are_medians_over_epochs_so_a_paused_epoch_does_not_skew_them():
    """An epoch stretched 30x (the process was stopped for a while) leaves the per-epoch and per-step
    figures at the typical epoch's; the row still lists every epoch's time."""
    trainer = types.SimpleNamespace(_train_epoch=lambda *args, **kwargs: 0.0)
    recorder = pipeline._EpochRecorder(trainer, None, "x", 4, say=lambda line: None)
    recorder.epoch_seconds, recorder.epoch_steps = [10.0, 12.0, 300.0, 11.0], [5, 5, 5, 5]
    summary = recorder.summary()
    assert summary["train_s_per_epoch"] == 11.5 and summary["train_ms_per_step"] == 2300.0
    assert (summary["epoch_seconds"], summary["epochs"], summary["train_steps"]) == ([10.0, 12.0, 300.0, 11.0], 4, 20)


@pytest.mark.slow
def test_a_baseline_trains_the_same_under_the_plugin_trainer_as_under_recboles(tiny_config, monkeypatch):
    """The bench runs RecBole's generic-Trainer baselines with the plugin's subclass (for resumable runs):
    the same seed gives the same curve, metrics and per-user NDCG as RecBole's own Trainer."""
    import recbole.trainer

    import recbole_mm.trainer

    job = dict(model="SASRec", dataset="tiny", config_dict=tiny_config(epochs=2, stopping_step=10), seed=3, data_path=None,
               max_batches=None, cold_max_count=5, imports=(), progress=False, threads=1)
    plugin = pipeline.train_and_evaluate(**job)
    monkeypatch.setattr(recbole_mm.trainer, "MultimodalTrainer", recbole.trainer.Trainer)
    recbole_own = pipeline.train_and_evaluate(**job)
    assert plugin["status"] == recbole_own["status"] == "ok"
    assert plugin["valid_curve"] == recbole_own["valid_curve"]
    assert (plugin["ndcg@10"], plugin["per_user"]) == (recbole_own["ndcg@10"], recbole_own["per_user"])


def test_a_run_resumed_from_records_without_cpu_capabilities_marks_those_epochs_unknown(tmp_path, monkeypatch):
    """Each epoch records the capability torch's CPU kernels ran with (runs are bit-identical only where it
    matches); records kept before that key existed give None for their epochs, and the run goes on from there."""
    path = tmp_path / pipeline.RECORDS_FILE
    path.write_text(json.dumps({"epoch_seconds": [100.0, 110.0, 105.0], "epoch_steps": [5, 5, 5],
                                "valid_curve": [0.05, 0.07, 0.06], "resumed_at": []}))
    trainer = types.SimpleNamespace(_train_epoch=lambda *args, **kwargs: 0.0, start_epoch=2, train_loss_dict={})
    recorder = pipeline._EpochRecorder(trainer, None, "x", 4, say=lambda line: None)
    recorder.keep_in(str(path), eval_step=1)
    monkeypatch.setattr(pipeline, "cpu_capability", lambda: "AVX2")
    trainer._train_epoch([], 2)
    recorder.on_valid(2, 0.08)
    assert recorder.summary()["epoch_cpu"] == [None, None, "AVX2"]
    assert json.loads(path.read_text())["epoch_cpu"] == [None, None, "AVX2"]


def test_the_cache_gives_each_run_in_flight_its_own_state_folder_and_a_resumed_run_extends_its_log(tmp_path):
    cache = runner.RunCache(str(tmp_path / "runs"))
    assert cache.state_dir("SASRecMM_seed1_abc") == str(tmp_path / "runs" / "SASRecMM_seed1_abc.resume")
    assert pipeline.last_checkpoint(str(tmp_path)) is None and pipeline.last_checkpoint(str(tmp_path / "none")) is None
    log = tmp_path / "run.log"
    for lines, append in ((["first attempt\n"], False), (["[bench] resumed\n"], True)):
        runner._relay_output(types.SimpleNamespace(stdout=iter(lines)), str(log), progress=False, append=append)
    assert log.read_text() == "first attempt\n[bench] resumed\n"
    runner._relay_output(types.SimpleNamespace(stdout=iter(["fresh\n"])), str(log), progress=False)
    assert log.read_text() == "fresh\n"


def test_a_report_only_invocation_shows_how_far_each_run_in_flight_got(tmp_path, capsys):
    """A run with resumable state but no row is still `missing`, with its progress read from the
    records kept after every validation; the report lists it, and a run that never finished an epoch
    (or left unreadable records) shows no progress."""
    from recbole_mm.bench import report

    cache = runner.RunCache(str(tmp_path / "runs"))
    flying, fresh, broken = (runner.RunSpec("SASRec", "none", {"use_gpu": False}, seed, None, {}) for seed in (2020, 2021, 2022))
    state_dir = cache.state_dir(flying.key(None, 5))
    os.makedirs(state_dir)
    with open(os.path.join(state_dir, pipeline.RECORDS_FILE), "w", encoding="utf-8") as handle:
        json.dump({"epoch_seconds": [100.0, 300.0, 120.0], "epoch_steps": [5, 5, 5], "valid_curve": [0.05, 0.09, 0.09],
                   "resumed_at": [3]}, handle)
    os.makedirs(cache.state_dir(fresh.key(None, 5)))
    os.makedirs(cache.state_dir(broken.key(None, 5)))
    with open(os.path.join(cache.state_dir(broken.key(None, 5)), pipeline.RECORDS_FILE), "w", encoding="utf-8") as handle:
        handle.write("{")
    rows = runner.execute([flying, fresh, broken], cache, {"threads": 1, "cold_max_count": 5}, run_missing=False)

    assert [row["status"] for row in rows] == ["missing"] * 3
    assert rows[0]["in_flight"] == {"epochs": 3, "valid_curve": [0.05, 0.09, 0.09], "best_valid": 0.09, "best_epoch": 3,
                                    "train_s_per_epoch": 120.0}
    assert rows[1]["in_flight"] is None and rows[2]["in_flight"] is None
    assert "in flight: 3 epochs trained, best valid ndcg@10 0.0900 (epoch 3), median 120 s an epoch" in capsys.readouterr().err
    header, table = _table_rows("\n".join(report.in_flight_table(rows)), "Model | Seed | Epochs trained")
    assert table == [["SASRec", "2020", "3", "0.0900 (3)", "120"]]
    assert report.in_flight_table(rows[1:]) == []


USERS = [f"u{index:02d}" for index in range(40)]


def _fake_run(model, seed, ndcg, status="ok", error="", ms_per_step=10.0, excl=None, cold_users=None):
    """A finished run whose per-user NDCG@10 alternates ndcg +- 0.05 over 40 users (mean ``ndcg``);
    ``cold_users``: the tokens its per-user record lists as cold-item users."""
    row = pipeline.new_row(model, "toy", seed)
    row.update(status=status, error=error, uses_features=model != "SASRec", point={"learning_rate": 0.001, "dropout": 0.2})
    if status == "ok":
        excl = ndcg if excl is None else excl
        row.update({key: ndcg for key in measure.METRIC_KEYS}, valid_curve=[ndcg / 2, ndcg], epochs=2, params=1000,
                   train_s_per_epoch=1.0, train_ms_per_step=ms_per_step, infer_ms_per_user=0.5, peak_rss_mb=300.0,
                   cold_users=4, cold_max_count=5, repeat_share=0.0, history_in_top10=1.0,
                   **{"cold_recall@10": ndcg / 2, "cold_ndcg@10": ndcg / 4, "full_ndcg@10": ndcg, "excl_ndcg@10": excl})
        row["per_user"] = {"users": USERS, "full": [ndcg + (0.05 if i % 2 else -0.05) for i in range(40)],
                           "excl": [excl + (0.05 if i % 2 else -0.05) for i in range(40)]}
        if cold_users is not None:
            row["per_user"][measure.COLD_USERS_KEY] = list(cold_users)
    return row


def _settings(profile="full", models=("SASRec", "MUFASA")):
    return {"dataset": "toy", "profile": get_profile(profile).as_dict(), "seeds": [1, 2], "models": list(models),
            "features": [], "cold_max_count": 5, "overrides": {}, "isolated": True}


def test_report_aggregates_seeds_tests_against_sasrec_and_reads_results_files(tmp_path):
    from recbole_mm.bench import report

    rows = [
        _fake_run("SASRec", 1, 0.10), _fake_run("SASRec", 2, 0.20), _fake_run("GRU4Rec", 1, 0.15), _fake_run("GRU4Rec", 2, 0.15),
        _fake_run("MUFASA", 1, 0.30, ms_per_step=25.0), _fake_run("MUFASA", 2, 0.0, status="failed", error="OOM | killed"),
    ]
    (tmp_path / "results" / "attention").mkdir(parents=True)
    (tmp_path / "results" / "attention" / "attention.md").write_text("| L | dense ms | SAL ms |\n|---|---|---|\n| 2048 | 9 | 3 |\n")
    models = ["SASRec", "GRU4Rec", "MUFASA"]
    paths = report.write_report(str(tmp_path / "results" / "toy"), rows, models, _settings(models=models))
    markdown = open(paths["markdown"], encoding="utf-8").read()
    header, table = _table_rows(markdown, "Model | Features | Recall@10")
    by_model = {row[0]: dict(zip(header, row)) for row in table}
    assert by_model["SASRec"]["NDCG@10"] == "0.1500 ± 0.0707" and by_model["SASRec"]["Seeds"] == "2/2"
    assert by_model["MUFASA"]["NDCG@10"] == "0.3000" and by_model["MUFASA"]["Status"] == "ok 1/2 seeds; failed: OOM \\| killed"
    header, table = _table_rows(markdown, "Model | Features | Tuned point")
    headline = {row[0]: dict(zip(header, row)) for row in table}
    # its CI excludes 0, but one finished seed cannot carry a claim (the protocol's 3-seed rule)
    assert headline["MUFASA"]["Verdict"] == "tie (1 seed)" and headline["MUFASA"]["Δ vs SASRec [95% CI]"].startswith("+0.1500 [+0.1500")
    assert headline["GRU4Rec"]["Verdict"] == "tie" and headline["SASRec"]["Δ vs SASRec [95% CI]"] == "reference"
    assert headline["MUFASA"]["Tuned point"] == "lr 0.001, dropout 0.2"
    assert "Share of test targets that repeat an item of the user's input history: 0.000" in markdown
    speed_header, speed_rows = _table_rows(markdown, "Model | Train ms/step")
    speed = {row[0]: dict(zip(speed_header, row)) for row in speed_rows}
    assert speed["MUFASA"]["Train x SASRec"] == "2.50x" and speed["MUFASA"]["Infer x SASRec"] == "1.00x"
    assert "| 2048 | 9 | 3 |" in markdown and "cold-user NDCG@10 (seed means, no CI): best with features MUFASA" in markdown
    summary = {row["model"]: row for row in _read_csv(paths["csv"])}
    assert summary["MUFASA"]["full_vs_SASRec_verdict"] == "tie" and summary["MUFASA"]["full_vs_SASRec_ci_verdict"] == "better"
    assert float(summary["MUFASA"]["full_vs_SASRec_diff"]) == pytest.approx(0.15)


def test_report_compares_the_feature_models_with_sasrecmm_too(tmp_path):
    from recbole_mm.bench import report

    rows = [_fake_run(model, seed, score) for model, score in (("SASRec", 0.10), ("SASRecMM", 0.20), ("CAMMSR", 0.15))
            for seed in (1, 2, 3)]
    models = ["SASRec", "SASRecMM", "CAMMSR"]
    markdown = open(report.write_report(str(tmp_path / "toy"), rows, models, _settings(models=models))["markdown"], encoding="utf-8").read()
    section = markdown[markdown.index("### Feature models against SASRecMM"):]
    header, table = _table_rows(section, "Model | Features | Tuned point")
    against = {row[0]: dict(zip(header, row)) for row in table}
    assert sorted(against) == ["CAMMSR", "SASRecMM"]  # ID-only models are not in it
    assert against["SASRecMM"]["Δ vs SASRecMM [95% CI]"] == "reference"
    assert against["CAMMSR"]["Verdict"] == "worse" and against["CAMMSR"]["Δ vs SASRecMM [95% CI]"].startswith("-0.0500 [-0.0500")
    header, table = _table_rows(markdown, "Model | Features | Tuned point")
    assert {row[0]: dict(zip(header, row)) for row in table}["CAMMSR"]["Verdict"] == "better"  # the SASRec table comes first
    without = report.write_report(str(tmp_path / "plain"), rows[:2] + rows[4:], ["SASRec", "CAMMSR"], _settings(models=["SASRec", "CAMMSR"]))
    assert "against SASRecMM" not in open(without["markdown"], encoding="utf-8").read()


def test_report_pairs_the_models_on_the_cold_users_the_runs_recorded(tmp_path):
    from recbole_mm.bench import report

    cold_users = USERS[:10]
    rows = []
    for model, cold_gain in (("SASRec", 0.0), ("SASRecMM", 0.2), ("CAMMSR", 0.2)):
        for seed in (1, 2):
            row = _fake_run(model, seed, 0.10, cold_users=cold_users if (model, seed) == ("CAMMSR", 2) else None)
            row["per_user"]["full"] = [value + (cold_gain if user in cold_users else 0.0)
                                       for user, value in zip(USERS, row["per_user"]["full"])]
            row["cold_ndcg@10"] = 0.1 + cold_gain
            rows.append(row)
    models = ["SASRec", "SASRecMM", "CAMMSR"]
    markdown = open(report.write_report(str(tmp_path / "toy"), rows, models, _settings(models=models))["markdown"], encoding="utf-8").read()
    header, table = _table_rows(markdown, "Model | Features | Cold users")
    cold = {row[0]: dict(zip(header, row)) for row in table}
    # one run listing the cold users is enough: they are the data's, the same for every model
    assert cold["SASRecMM"]["Cold Δ vs SASRec [95% CI]"] == "+0.2000 [+0.2000, +0.2000] tie (2 seeds)"  # CI > 0, 2 seeds
    assert cold["CAMMSR"]["Cold Δ vs SASRecMM [95% CI]"].endswith("tie") and cold["SASRecMM"]["Cold Δ vs SASRecMM [95% CI]"] == "reference"
    assert "Best cold NDCG@10: SASRecMM 0.3000; within its CI (tie): CAMMSR." in markdown
    assert "cold-user NDCG@10 (paired on the cold users): best with features SASRecMM 0.3000 vs best ID-only SASRec 0.1000: tie (2 seeds)" in markdown
    # without any run listing them (older rows), seed means only
    for row in rows:
        row["per_user"].pop(measure.COLD_USERS_KEY, None)
    markdown = open(report.write_report(str(tmp_path / "old"), rows, models, _settings(models=models))["markdown"], encoding="utf-8").read()
    assert "Cold Δ" not in markdown and "Best cold NDCG@10" not in markdown and "cold-user NDCG@10 (seed means, no CI)" in markdown


def test_report_splits_the_headline_by_input_history_length(tmp_path):
    from recbole_mm.bench import report

    lengths = {user: (10 if index < 16 else 30 if index < 30 else 50) for index, user in enumerate(USERS)}  # max_len 50
    short = {user for user, length in lengths.items() if length <= report.mufasa_window()}
    rows = []
    for model, short_gain in (("SASRec", 0.0), ("MUFASA", 0.3)):
        for seed in (1, 2):
            row = _fake_run(model, seed, 0.10)
            row["per_user"]["full"] = [value + (short_gain if user in short else 0.0) for user, value in zip(USERS, row["per_user"]["full"])]
            rows.append(row)
    settings = dict(_settings(), history_lengths=lengths)
    settings["profile"]["max_len"] = 50
    markdown = open(report.write_report(str(tmp_path / "toy"), rows, ["SASRec", "MUFASA"], settings)["markdown"], encoding="utf-8").read()
    header, table = _table_rows(markdown, "Model | Features | 1-32 items (30 users) NDCG@10")
    by_model = {row[0]: dict(zip(header, row)) for row in table}
    assert header[2:] == ["1-32 items (30 users) NDCG@10", "1-32: Δ vs SASRec [95% CI]", "50 items (10 users) NDCG@10",
                          "50: Δ vs SASRec [95% CI]"]  # no user between the window and the full input: no empty group
    assert by_model["MUFASA"]["1-32: Δ vs SASRec [95% CI]"] == "+0.3000 [+0.3000, +0.3000] tie (2 seeds)"  # CI > 0, 2 seeds
    assert by_model["MUFASA"]["50: Δ vs SASRec [95% CI]"] == "+0.0000 [+0.0000, +0.0000] tie"
    assert by_model["SASRec"]["50 items (10 users) NDCG@10"] == "0.1000" and by_model["SASRec"]["1-32: Δ vs SASRec [95% CI]"] == "reference"
    assert "### Feature models against SASRecMM" not in markdown  # no SASRecMM runs: no second table
    assert "## By input history length" not in open(report.write_report(str(tmp_path / "none"), rows, ["SASRec", "MUFASA"], _settings())[
        "markdown"], encoding="utf-8").read()
    # with SASRecMM, the feature models are also compared with it on each group's users
    for seed in (1, 2):
        row = _fake_run("SASRecMM", seed, 0.10)
        row["per_user"]["full"] = [value + (0.1 if user in short else 0.0) for user, value in zip(USERS, row["per_user"]["full"])]
        rows.append(row)
    models = ["SASRec", "SASRecMM", "MUFASA"]
    markdown = open(report.write_report(str(tmp_path / "mm"), rows, models, dict(settings, models=models))["markdown"], encoding="utf-8").read()
    section = markdown[markdown.index("## By input history length"):]
    section = section[section.index("### Feature models against SASRecMM"):]
    header, table = _table_rows(section, "Model | Features | 1-32 items (30 users) NDCG@10")
    against = {row[0]: dict(zip(header, row)) for row in table}
    assert sorted(against) == ["MUFASA", "SASRecMM"]  # ID-only SASRec is not in it
    assert against["SASRecMM"]["1-32: Δ vs SASRecMM [95% CI]"] == "reference"
    assert against["MUFASA"]["1-32: Δ vs SASRecMM [95% CI]"] == "+0.2000 [+0.2000, +0.2000] tie (2 seeds)"
    assert against["MUFASA"]["50: Δ vs SASRecMM [95% CI]"] == "+0.0000 [+0.0000, +0.0000] tie"


def test_input_history_lengths_count_each_users_items_but_the_test_target(tmp_path):
    from recbole_mm.bench.benchmark import input_history_lengths

    rows = ["user_id:token\titem_id:token\ttimestamp:float"] + [f"{user}\t{item}\t{item}" for user, n in (("a", 3), ("b", 60))
                                                              for item in range(n)]
    (tmp_path / "toy.inter").write_text("\n".join(rows) + "\n")
    assert input_history_lengths(str(tmp_path), "toy", "user_id", 50) == {"a": 2, "b": 50}
    assert input_history_lengths(str(tmp_path), "toy", "uid", 50) is None and input_history_lengths(str(tmp_path), "other", "user_id", 50) is None


def test_report_tuning_grid_and_headline_protocol(tmp_path):
    from recbole_mm.bench import report
    from recbole_mm.bench.profiles import grid_points

    rows = [_fake_run("SASRec", 1, 0.10, excl=0.12), _fake_run("SASRecMM", 1, 0.10, excl=0.02)]
    settings = _settings(models=["SASRec", "SASRecMM"])
    settings["profile"]["exclude_history"] = True
    tuning = {model: {"grid": [{"point": p, "best_valid": 0.1 + 0.01 * i, "status": "ok"} for i, p in enumerate(grid_points(model))],
                      "chosen": grid_points(model)[-1]} for model in ("SASRec", "SASRecMM")}
    paths = report.write_report(str(tmp_path / "toy"), rows, ["SASRec", "SASRecMM"], settings, tuning=tuning)
    markdown = open(paths["markdown"], encoding="utf-8").read()
    assert markdown.index("## Headline: NDCG@10, input history left out") < markdown.index("## The other protocol: NDCG@10, all items")
    header, table = _table_rows(markdown, "Model | Features | Tuned point")  # the first one: the headline
    assert dict(zip(header, table[1]))["Verdict"] == "tie (1 seed)" and dict(zip(header, table[1]))["NDCG@10"] == "0.0200"
    header, table = _table_rows(markdown, "Model | lr 0.001, dropout 0.2")
    assert table[0] == ["SASRec", "0.1000", "0.1100", "0.1200", "**0.1300**", "lr 0.003, dropout 0.5"]


def test_report_checks_each_verdict_seed_by_seed(tmp_path):
    from recbole_mm.bench import report

    # SASRec has two good seeds and one slow one; Lucky is "better" only through the slow seed,
    # Steady beats every seed, Level ties the mean (3 seeds a side: enough for a claim)
    scores = {"SASRec": (0.20, 0.05, 0.20), "Lucky": (0.17, 0.17, 0.17), "Steady": (0.30, 0.31, 0.30), "Level": (0.15, 0.15, 0.15)}
    rows = [_fake_run(model, seed, score) for model, triple in scores.items() for seed, score in zip((1, 2, 3), triple)]
    summaries = report.summarize(rows, list(scores))
    lines = report.seed_check_lines(summaries, "excl")
    by_model = {line.split()[1]: line for line in lines if line.startswith("- ")}
    assert sorted(by_model) == ["Lucky", "Steady"]  # a tie needs no check
    assert by_model["Lucky"].startswith("- Lucky better than SASRec over the seed means, but not seed by seed: against SASRec seed 1 alone -0.0300")
    assert "(worse)" in by_model["Lucky"] and "seed 2 alone" not in by_model["Lucky"]
    assert by_model["Steady"].endswith("and better with either side cut to any one of its seeds (6 checks).")
    two = report.summarize([row for row in rows if row["seed"] != 3], list(scores))
    assert report.seed_check_lines(two, "excl") == []  # two seeds a side: every CI excluding 0 is a tie already
    single = report.summarize([row for row in rows if row["seed"] == 1], list(scores))
    assert report.seed_check_lines(single, "excl") == []  # one seed a side: nothing to cut
    markdown = open(report.write_report(str(tmp_path / "toy"), rows, list(scores), _settings(models=list(scores)))["markdown"],
                    encoding="utf-8").read()
    assert "Verdicts against SASRec seed by seed" in markdown


def test_report_lists_each_run_seed_by_seed(tmp_path):
    from recbole_mm.bench import report

    rows = [_fake_run("SASRec", 1, 0.20), _fake_run("SASRec", 2, 0.05), _fake_run("MUFASA", 1, 0.30),
            _fake_run("MUFASA", 2, 0.0, status="failed", error="OOM"), pipeline.new_row("MUFASA", "toy", 3)]
    rows[1].update(best_valid=0.0612, best_epoch=9, epochs=13)
    rows[-1].update(status="missing", in_flight={"epochs": 4, "best_valid": 0.1, "best_epoch": 4, "train_s_per_epoch": 9.0})
    lines = report.seed_table(rows, ["SASRec", "MUFASA"], "excl")
    header, table = _table_rows("\n".join(lines), "Model | seed 1")
    assert header == ["Model", "seed 1", "seed 2", "seed 3"]
    assert table[0] == ["SASRec", "0.2000", "0.0500 (valid 0.0612, epoch 9 of 13)", "-"]
    assert table[1] == ["MUFASA", "0.3000", "failed", "in flight (4 epochs)"]
    assert report.seed_table(rows[:1], ["SASRec"], "excl") == []  # one seed: nothing to list
    paths = report.write_report(str(tmp_path / "toy"), rows[:-1], ["SASRec", "MUFASA"], _settings())
    markdown = open(paths["markdown"], encoding="utf-8").read()
    assert "## Per seed" in markdown
    assert "CPU kernels" not in "\n".join(lines)  # nothing recorded: no note


def test_the_seed_table_names_runs_whose_epochs_ran_on_other_cpu_kernels():
    from recbole_mm.bench import report

    rows = [_fake_run("SASRec", 1, 0.20), _fake_run("SASRec", 2, 0.05), _fake_run("MUFASA", 1, 0.30), _fake_run("MUFASA", 2, 0.3)]
    for row in rows:
        row["epoch_cpu"] = ["AVX512"] * 3
    assert report.cpu_kernel_note(rows) == []  # one kind of kernels: nothing to say
    rows[1]["epoch_cpu"] = ["AVX2", "AVX2", "AVX512"]  # resumed on another machine
    rows[2]["epoch_cpu"] = [None, None, "AVX512"]  # resumed from records kept before the key existed
    lines = report.seed_table(rows, ["SASRec", "MUFASA"], "excl")
    assert lines[-2] == ("Epochs ran on different CPU kernels (a run resumed on another machine can appear twice; seeded runs "
                         "are bit-identical only on the same kernels): AVX2: SASRec seed 2; AVX512: SASRec seed 1, SASRec seed 2, "
                         "MUFASA seed 1, MUFASA seed 2.")


def test_features_verdict_comes_from_the_paired_ci():
    from recbole_mm.bench.report import features_verdict, summarize

    def verdict(feature_ndcg, id_ndcg, seeds=(1, 2, 3)):
        rows = [_fake_run(model, seed, ndcg) for seed in seeds for model, ndcg in (("MM", feature_ndcg), ("SASRec", id_ndcg))]
        for row in rows[1::2]:
            row["uses_features"] = False
        return features_verdict(summarize(rows, ["MM", "SASRec"]))[0]

    assert "feature model better" in verdict(0.30, 0.20)
    assert "ID-only model better" in verdict(0.10, 0.20)
    assert verdict(0.20, 0.20).endswith(": tie (Δ +0.0000 [+0.0000, +0.0000]).")
    assert verdict(0.30, 0.20, seeds=(1,)).endswith(": tie (1 seed: too few for a claim) (Δ +0.1000 [+0.1000, +0.1000]).")


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


def test_cold_validation_set_changes_only_validation_targets(tmp_path):
    """`planted-cold-valid`: the training sequences and test targets of `planted-cold`, with cold
    validation targets of the planted cluster for about half the users (fails without the option)."""
    small = dict(n_users=200, n_items=80, n_clusters=10, seq_len=(6, 12))
    plain, _, _ = synthetic.build(str(tmp_path / "plain"), generator=small)
    valid, _, info = synthetic.build(str(tmp_path / "valid"), name=synthetic.VALID_NAME, generator=small)

    def histories(planted):
        _, rows = synthetic._read_histories(os.path.join(planted.folder, f"{planted.name}.inter"))
        return {user: [int(row[1]) - 1 for row in user_rows] for user, user_rows in rows.items()}

    old, new = histories(plain), histories(valid)
    assert all(new[user][:-2] == old[user][:-2] and new[user][-1] == old[user][-1] for user in old)
    original = write_planted_dataset(str(tmp_path / "orig"), name=synthetic.NAME, **dict(synthetic.GENERATOR, **small))
    cold = set(int(i) for items in synthetic._cold_items(original, synthetic.COLD_SPLIT["cold_per_cluster"]).values() for i in items)
    changed = [user for user in old if new[user][-2] != old[user][-2]]
    assert all(new[user][-2] in cold and valid.item_cluster[new[user][-2]] == valid.item_cluster[old[user][-2]] for user in changed)
    cold_valid = sum(new[user][-2] in cold for user in new)
    assert cold_valid >= info["cold_valid_users"] >= len(changed) > 0.3 * len(new)
    assert sum(old[user][-2] in cold for user in old) < 0.2 * len(old)
    assert "validation targets replaced" in synthetic.describe(info)[0]


def test_generated_sets_are_not_rewritten_under_running_jobs(tmp_path):
    """A second build of the same set leaves the installed files alone (another invocation's runs may
    be reading them: an in-place rewrite once let a run load 425 of 1,500 users); a changed set replaces
    them whole. Fails with the former in-place writes (the files' inodes and mtimes change)."""
    from recbole_mm.bench import sparse
    from recbole_mm.bench.folders import install_folder

    small = dict(n_users=60, n_items=40, n_clusters=5, seq_len=(6, 9))
    planted, _, _ = synthetic.build(str(tmp_path / "data"), generator=small)
    inter = os.path.join(planted.folder, f"{synthetic.NAME}.inter")
    before = os.stat(inter)
    again, _, _ = synthetic.build(str(tmp_path / "data"), generator=small)
    after = os.stat(inter)
    assert again.folder == planted.folder and (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert sorted(os.listdir(tmp_path / "data")) == [synthetic.NAME]  # no staging folder left behind
    changed, _, _ = synthetic.build(str(tmp_path / "data"), generator=dict(small, seed=8))
    assert os.stat(inter).st_ino != before.st_ino and changed.folder == planted.folder

    sparse.build(str(tmp_path / "sparse"))
    cut = os.path.join(tmp_path, "sparse", sparse.NAME, f"{sparse.NAME}.inter")
    first = os.stat(cut)
    sparse.build(str(tmp_path / "sparse"))
    assert (os.stat(cut).st_ino, os.stat(cut).st_mtime_ns) == (first.st_ino, first.st_mtime_ns)

    built = tmp_path / "built" / "set"
    built.mkdir(parents=True)
    (built / "a.txt").write_text("new")
    kept = tmp_path / "kept"
    assert install_folder(str(tmp_path / "built"), str(kept), compare="set") and (kept / "set" / "a.txt").read_text() == "new"


def test_cold_valid_regime_builds_its_own_set(tmp_path):
    """``--regime cold-valid`` builds `planted-cold-valid` under the results folder, beside `cold`'s set."""
    from recbole_mm.bench import benchmark
    from recbole_mm.bench.profiles import REGIMES

    regime = REGIMES["cold-valid"]
    assert regime.dataset == synthetic.VALID_NAME and regime.profile.max_len == REGIMES["cold"].profile.max_len
    data_path, config, notes, fingerprint = benchmark.prepare_data(regime.dataset, str(tmp_path), None, {})
    assert os.path.isfile(os.path.join(data_path, synthetic.VALID_NAME, f"{synthetic.VALID_NAME}.inter"))
    assert "validation targets replaced" in notes[0] and fingerprint


@pytest.mark.slow
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


def test_interleaved_timing_divides_by_units_and_takes_the_median():
    from recbole_mm.bench import speed

    calls = []

    def busy(units):
        def run():
            calls.append(units)
            end = time.process_time() + 0.002 * units
            while time.process_time() < end:
                pass
            return units
        return run

    times = speed.interleaved_cpu_ms({"a": busy(1), "b": busy(4)}, rounds=2)
    assert calls == [1, 4] * 3  # a warm-up round, then two timed rounds, the tasks alternating
    assert set(times) == {"a", "b"} and all(1.5 <= value <= 20 for value in times.values())  # ~2 ms per unit each
    table = speed.markdown({"SASRec": {"params": 10, "train_ms": 2.0, "infer_ms_per_user": 0.5},
                            "MUFASA": {"params": 20, "train_ms": 3.0, "infer_ms_per_user": 0.25}})
    assert "| MUFASA | 20 | 3.0 | 1.50x | 0.250 | 0.50x |" in table


@pytest.mark.slow
def test_speed_bench_times_each_model_on_a_regimes_data(tmp_path):
    from recbole_mm.bench import speed

    results = speed.measure("cold", ["SASRec", "SASRecMM"], str(tmp_path), steps=1, eval_batches=1, rounds=1, overrides={})
    assert list(results) == ["SASRec", "SASRecMM"]
    assert all(row["train_ms"] > 0 and row["infer_ms_per_user"] > 0 and row["params"] > 0 for row in results.values())


def test_sharing_warnings_name_what_parallel_runs_contend_for():
    """More threads than cores, or several runs on one GPU, each get one warning line; a budget that
    fits gets none."""
    assert runner.sharing_warnings(2, 1, on_gpu=False, cores=2) == []
    assert runner.sharing_warnings(1, None, on_gpu=True, cores=2) == []
    [cpu] = runner.sharing_warnings(2, 2, on_gpu=False, cores=2)
    assert "exceed this machine's 2 cores" in cpu and "--jobs <= 2" in cpu
    [gpu] = runner.sharing_warnings(18, 1, on_gpu=True, cores=16)
    assert "18 runs share one GPU" in gpu and "MPS" in gpu


def _ok_row(model, seed, value):
    return dict(pipeline.new_row(model, "none", seed), status="ok", wall_s=0.0, **{"ndcg@10": value})


def test_two_invocations_sharing_a_cache_never_train_one_run_twice(tmp_path, monkeypatch, capsys):
    """While another process holds a run (its lock), an invocation trains the rest first, then waits and
    takes that process's row; a report-only invocation says the run is being trained elsewhere."""
    import threading

    cache = runner.RunCache(str(tmp_path))
    assert not cache.held_elsewhere("never-run") and not os.path.exists(tmp_path / "never-run.lock")  # asking leaves no file
    held, free = (runner.RunSpec("SASRec", "none", {"use_gpu": False}, seed, None, {}) for seed in (2020, 2021))
    held_key = held.key(None, 5)
    trained, free_done = [], threading.Event()

    def fake_run(model, dataset, config, seed=2020, **options):
        trained.append(seed)
        free_done.set()
        return _ok_row(model, seed, 0.2)

    monkeypatch.setattr(runner, "run_model", fake_run)
    monkeypatch.setattr(runner, "CLAIM_POLL_S", 0.01)
    result = {}
    with cache.claim(held_key) as mine:  # this test plays the other process
        assert mine and cache.held_elsewhere(held_key)
        runner.execute([held], cache, {"cold_max_count": 5}, run_missing=False)
        assert "training in another process" in capsys.readouterr().err
        worker = threading.Thread(target=lambda: result.update(rows=runner.execute([held, free], cache, {"cold_max_count": 5})))
        worker.start()
        assert free_done.wait(30)
        cache.put(held_key, _ok_row("SASRec", 2020, 0.7))  # the other process finishes its run
    worker.join(30)
    assert not worker.is_alive() and not cache.held_elsewhere(held_key)
    assert trained == [2021]
    assert [row["ndcg@10"] for row in result["rows"]] == [0.7, 0.2]
    err = capsys.readouterr().err
    assert "another process is training it" in err and "waiting for the other process" in err
    assert not os.path.exists(cache.lock_path(free.key(None, 5)))  # its row written, the lock file goes


def test_a_run_whose_other_process_died_is_trained_by_the_waiting_one(tmp_path, monkeypatch):
    cache = runner.RunCache(str(tmp_path))
    spec = runner.RunSpec("SASRec", "none", {"use_gpu": False}, 2020, None, {})
    trained = []
    monkeypatch.setattr(runner, "run_model", lambda model, dataset, config, seed=2020, **options:
                        trained.append(seed) or _ok_row(model, seed, 0.3))
    with cache.claim(spec.key(None, 5)) as mine:
        assert mine
        with cache.claim(spec.key(None, 5)) as second:
            assert not second  # a second holder (another open file) is refused while the first holds it
    [row] = runner.execute([spec], cache, {"cold_max_count": 5})  # nobody holds it now, and it has no row
    assert trained == [2020] and row["ndcg@10"] == 0.3


def test_without_fcntl_every_claim_succeeds(tmp_path, monkeypatch):
    """Windows has no ``fcntl``: no lock files, no waiting (one invocation per cache there)."""
    monkeypatch.setattr(runner, "fcntl", None)
    cache = runner.RunCache(str(tmp_path))
    with cache.claim("k") as first, cache.claim("k", wait=True) as second:
        assert first and second and not cache.held_elsewhere("k")
    assert not os.path.exists(tmp_path / "k.lock")


def test_a_filesystem_without_locks_runs_unguarded(tmp_path, monkeypatch):
    """flock can fail with ENOLCK on some network mounts: the run goes ahead rather than failing."""
    def no_locks(handle, operation):
        raise OSError(37, "No locks available")

    monkeypatch.setattr(runner, "fcntl", types.SimpleNamespace(flock=no_locks, LOCK_EX=2, LOCK_NB=4, LOCK_UN=8))
    with runner.RunCache(str(tmp_path)).claim("k") as held:
        assert held


def test_stopping_an_invocation_ends_its_wait_for_another_process(tmp_path, monkeypatch):
    """Ctrl-C stops the runs in flight and also a thread waiting on another process's lock (a blocking
    wait would keep the pool, and so the invocation, alive until that process finished)."""
    import threading

    cache = runner.RunCache(str(tmp_path))
    monkeypatch.setattr(runner, "CLAIM_POLL_S", 0.01)
    outcome = []

    def wait():
        try:
            with cache.claim("k", wait=True):
                outcome.append("claimed")
        except KeyboardInterrupt:
            outcome.append("stopped")

    with cache.claim("k"):
        waiter = threading.Thread(target=wait)
        waiter.start()
        time.sleep(0.1)
        assert waiter.is_alive() and not outcome
        runner.stop_live_runs()
        waiter.join(5)
    assert outcome == ["stopped"]
    runner._STOPPING.clear()


def test_execute_warns_before_running_oversubscribed_jobs(tmp_path, monkeypatch, capsys):
    """The warning comes once, from the runner, before any run; with nothing to run it stays quiet."""
    monkeypatch.setattr(runner.os, "cpu_count", lambda: 1)
    spec = runner.RunSpec("SASRec", "none", {"use_gpu": False}, 2020, None, {})
    cache = runner.RunCache(str(tmp_path))
    runner.execute([spec, spec], cache, {"threads": 1}, jobs=2, run_missing=False)
    assert "warning" not in capsys.readouterr().err
    monkeypatch.setattr(runner, "run_model", lambda *a, **k: dict(pipeline.new_row("SASRec", "none", 2020), status="failed",
                                                                 error="stub", wall_s=0.0))
    runner.execute([spec], cache, {"threads": 1}, jobs=2)
    err = capsys.readouterr().err
    assert err.count("warning:") == 1 and "exceed this machine's 1 cores" in err


def test_settings_name_every_device_the_cached_runs_trained_on():
    """A table may mix runs from a CPU machine and a GPU lease: the settings line counts each device."""
    from recbole_mm.bench.report import devices_text

    assert devices_text([{"device": "cpu"}, {"device": "cpu"}]) == "cpu"
    assert devices_text([{"device": "cpu"}, {"device": "cuda"}, {"device": "cpu"}, {}]) == "cpu (2 runs), cuda (1 run)"
    assert devices_text([{}]) == "-"


def test_speed_ratios_only_between_runs_of_one_machine():
    from recbole_mm.bench import report

    def run(model, seed, machine, ms):
        return dict(_fake_run(model, seed, 0.1, ms_per_step=ms), machine=machine)

    same = report.summarize([run("SASRec", 1, "a", 10.0), run("MUFASA", 1, "a", 25.0)], ["SASRec", "MUFASA"])
    assert same[1]["train_step_ratio"] == pytest.approx(2.5) and same[1]["infer_ratio"] == pytest.approx(1.0)
    other = report.summarize([run("SASRec", 1, "a", 10.0), run("MUFASA", 1, "b", 25.0)], ["SASRec", "MUFASA"])
    assert other[1]["train_step_ratio"] is None and other[1]["infer_ratio"] is None
    assert other[0]["train_step_ratio"] == pytest.approx(1.0)  # the reference against itself
    unrecorded = report.summarize([run("SASRec", 1, None, 10.0), run("MUFASA", 1, None, 25.0)], ["SASRec", "MUFASA"])
    assert unrecorded[1]["train_step_ratio"] == pytest.approx(2.5)  # rows that predate the record compare as before


def test_the_best_epoch_is_the_one_recbole_keeps_also_among_ties():
    """RecBole's early stopping replaces the best on an equal score, so a row names the last tied maximum."""
    from recbole.utils import early_stopping

    for curve in ([0.5, 0.75, 0.7, 0.75, 0.74], [0.3, 0.2], [0.1, 0.1, 0.1], [0.2]):
        best, kept = -math.inf, None
        for epoch, score in enumerate(curve, 1):
            best, _, _, updated = early_stopping(score, best, 0, max_step=100)
            kept = epoch if updated else kept
        assert pipeline.best_epoch(curve) == kept
    assert pipeline.best_epoch([]) is None
