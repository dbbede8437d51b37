"""The per-model benchmark scripts' shared machinery (bench.ablation) and the CAMMSR noise copy."""

import os

import pytest

from fake_runs import fake_run_model, tuned_score
from recbole_mm.bench import ablation, cammsr, dmae, mufasa


def _args(suite, tiny_planted, *extra):
    planted, data_path = tiny_planted
    return ablation.parse_args(suite, ["--dataset", "tiny", "--data-path", data_path, "--epochs", "1", "--max-len", "10",
                                       "--hidden-size", "16", "--threads", "1", *extra])


def _tiny_overrides(tiny_config):
    """The tiny dataset's settings as --set pairs (what a user passes for their own dataset)."""
    import yaml

    config = tiny_config()
    keys = ("USER_ID_FIELD", "ITEM_ID_FIELD", "TIME_FIELD", "load_col", "modalities", "category_field")
    return [arg for key in keys for arg in ("--set", f"{key}={yaml.safe_dump(config[key], default_flow_style=True).strip()}")]


@pytest.mark.parametrize("suite", [mufasa.SUITE, dmae.SUITE, cammsr.SUITE], ids=lambda suite: suite.name)
def test_every_variant_config_shares_the_protocol(suite, tiny_planted):
    args = _args(suite, tiny_planted, "--set", "hidden_dropout_prob=0.3", "--set", "modalities=[text, image]")
    chosen, profile = ablation.chosen_variants(suite, args)
    assert [name for name, _, _ in chosen] == list(suite.variants)
    for name, model, config in chosen:
        assert (config["MAX_ITEM_LIST_LENGTH"], config["hidden_size"], config["epochs"]) == (10, 16, 1), name
        assert config["hidden_dropout_prob"] == 0.3
        for key, value in suite.variants[name][1].items():
            assert config[key] == value, (name, key)
    if suite is cammsr.SUITE:
        single = dict((name, config) for name, _, config in chosen)[cammsr.SINGLE]
        assert single["modalities"] == ["text"]


def test_unknown_variant_is_refused(tiny_planted):
    with pytest.raises(SystemExit, match="unknown variant"):
        ablation.chosen_variants(dmae.SUITE, _args(dmae.SUITE, tiny_planted, "--variants", "SASRec,nope"))


def test_perturb_categories_changes_the_share_and_leaves_the_rest(tiny_planted, tmp_path):
    _, data_path = tiny_planted
    source = os.path.join(data_path, "tiny")
    changed = cammsr.perturb_categories(source, str(tmp_path / "tiny"), "tiny", "category", 0.25, seed=3)
    read = lambda folder: open(os.path.join(folder, "tiny.item"), encoding="utf-8").read().splitlines()
    before, after = read(source), read(str(tmp_path / "tiny"))
    assert before[0] == after[0] and len(before) == len(after)
    differing = sum(a != b for a, b in zip(before[1:], after[1:]))
    assert changed == round(0.25 * (len(before) - 1)) and differing == changed
    assert os.path.islink(tmp_path / "tiny" / "tiny.inter")  # everything else is linked, not copied


@pytest.mark.slow
def test_suite_runs_and_tables_the_variants(tiny_planted, tiny_config, tmp_path):
    """Two variants in-process: metrics, speed ratios against SASRec, the noise variant's drop column."""
    args = _args(cammsr.SUITE, tiny_planted, "--variants", "SASRec,CAMMSR,category noise", "--noise", "0.5", *_tiny_overrides(tiny_config))
    rows, table = ablation.run_suite(cammsr.SUITE, args, isolate=False)
    assert all(row["status"] == "ok" for row in rows.values()), rows
    lines = table.splitlines()
    assert lines[0].startswith("| variant | Recall@5 | Recall@10 | NDCG@5 | NDCG@10 | train s/epoch | train vs SASRec")
    sasrec, clean, noisy = lines[2:5]
    assert "| 1.00x |" in sasrec and sasrec.endswith("| ok |")
    assert "%" in noisy.split("|")[-3]  # the drop against clean CAMMSR
    assert "category noise 50%" in table
    ablation.write_outputs(cammsr.SUITE, str(tmp_path / "out"), rows, table)
    assert sorted(os.listdir(tmp_path / "out")) == ["cammsr.md", "cammsr_rows.json"]


# ----- --regime: variants at the tuned point, several seeds, paired against the full model ----------


def _without_contrastive_loss_costs(config, seed):
    """The tuned score, 0.05 lower when the contrastive loss is off."""
    return tuned_score(config, seed) - (0.05 if config.get("cl_weight") == 0.0 else 0.0)


def test_regime_variants_reuse_the_tuned_full_model_and_compare_each_change_paired(tiny_planted, tmp_path, monkeypatch):
    import argparse
    import dataclasses

    from recbole_mm.bench import benchmark, runner, variants
    from recbole_mm.bench.planted import planted_config
    from recbole_mm.bench.profiles import DENSE

    planted, data_path = tiny_planted
    calls = []
    monkeypatch.setattr(runner, "run_model", fake_run_model(
        calls, _without_contrastive_loss_costs, users=40, spread=0.01, ms_per_step=lambda c: 8.0 if c.get("cl_weight") == 0.0 else 10.0))
    monkeypatch.setattr(benchmark, "PUBLISHED_DIR", str(tmp_path / "published"))
    table = benchmark.make_table("tiny", DENSE, str(tmp_path / "out"), name="dense", data_path=data_path,
                                 base_config=planted_config(planted, data_path), published=True)
    tuning = benchmark.tune(table, ["CAMMSR"])
    benchmark.run_table(table, ["CAMMSR"], {"CAMMSR": tuning["CAMMSR"]["chosen"]}, tuning=tuning)
    assert len(calls) == 4 + 2

    args = argparse.Namespace(dataset="tiny")
    names = ["CAMMSR", "w/o swap CL"]
    summaries, text = variants.run(cammsr.SUITE, table, dataclasses.replace(table, run_missing=False), names, [2020, 2021], args,
                                   publish=True)
    new = calls[6:]
    assert [(model, seed) for model, seed, _ in new] == [("CAMMSR", 2020), ("CAMMSR", 2021)]  # only the variant trained
    assert all(c["cl_weight"] == 0.0 and c["learning_rate"] == 0.003 and c["hidden_dropout_prob"] == 0.2 for _, _, c in new)
    assert summaries["CAMMSR"]["seeds_ok"] == summaries["w/o swap CL"]["seeds_ok"] == 2
    assert summaries["w/o swap CL"]["ndcg_mean"] == pytest.approx(summaries["CAMMSR"]["ndcg_mean"] - 0.05)
    row = next(line for line in text.splitlines() if line.startswith("| w/o swap CL |"))
    assert "-0.0500 [-0.0500, -0.0500]" in row and "| tie (2 seeds) |" in row and "0.80x" in row  # CI < 0, 2 seeds: no claim
    assert "| CAMMSR | - | 2/2 |" in text and "reference" in text
    assert len(os.listdir(tmp_path / "published" / "dense" / "runs")) == 4  # both variants' rows at seeds 2020-2021

    against_variant = argparse.Namespace(dataset="tiny", reference="w/o swap CL")
    _, text = variants.run(cammsr.SUITE, table, dataclasses.replace(table, run_missing=False), names, [2020, 2021],
                           against_variant)
    row = next(line for line in text.splitlines() if line.startswith("| CAMMSR |"))
    assert "+0.0500 [+0.0500, +0.0500]" in row and "| tie (2 seeds) |" in row and "1.25x" in row
    assert "Δ vs w/o swap CL" in text and variants.table_name(cammsr.SUITE, against_variant) == "cammsr_ablation_vs_w_o_swap_CL.md"
    assert variants.table_name(cammsr.SUITE, args) == "cammsr_ablation.md"
    with pytest.raises(SystemExit, match="--reference 'SASRec' is not among"):
        variants.run(cammsr.SUITE, table, table, names, [2020], argparse.Namespace(dataset="tiny", reference="SASRec"))
    with pytest.raises(SystemExit, match="include 'CAMMSR'"):
        variants.run(cammsr.SUITE, table, table, ["w/o swap CL"], [2020], args)
    with pytest.raises(SystemExit, match="--regime dense --models MUFASA"):
        variants.run(mufasa.SUITE, table, dataclasses.replace(table, run_missing=False), ["MUFASA"], [2020], args)
    with pytest.raises(SystemExit, match=r"--models MUFASA --epochs 60 first \(--epochs 60 look .* give --set epochs=N"):
        variants.run(mufasa.SUITE, table, dataclasses.replace(table, run_missing=False), ["MUFASA"], [2020],
                     argparse.Namespace(dataset="tiny", epochs=60, max_batches=None))


def test_a_variant_that_moves_a_grid_key_runs_and_records_its_own_point():
    import argparse

    from recbole_mm.bench import variants

    class Table:  # what variant_specs reads of a regime table
        dataset, data_fingerprint = "tiny", "data"

        @staticmethod
        def config(model, point):
            return {"learning_rate": point["learning_rate"], "hidden_dropout_prob": point["dropout"]}

    tuning = {"CAMMSR": {"chosen": {"learning_rate": 0.001, "dropout": 0.2}}}
    names = ["LayerNorm (no DyT)", "LayerNorm at lr 0.003", "LayerNorm at lr 0.003 dropout 0.5"]
    specs = dict(variants.variant_specs(cammsr.SUITE, Table, tuning, names, [2020], argparse.Namespace()))
    inherited, moved, both = (specs[name] for name in names)
    assert inherited.point == {"learning_rate": 0.001, "dropout": 0.2} and inherited.config["learning_rate"] == 0.001
    assert moved.point == {"learning_rate": 0.003, "dropout": 0.2} and moved.config["learning_rate"] == 0.003
    assert both.point == {"learning_rate": 0.003, "dropout": 0.5} and both.config["hidden_dropout_prob"] == 0.5
    assert "dropout" not in both.config  # a grid key reaches the config as the model's own keys only
    assert moved.config["norm"] == inherited.config["norm"] == both.config["norm"] == "layernorm"
    assert tuning["CAMMSR"]["chosen"]["learning_rate"] == 0.001  # the tuned point itself is untouched


def test_set_under_regime_applies_to_every_variant_and_moves_the_point():
    """``--set`` reaches every variant under --regime (it was ignored there): a grid key moves each
    variant's point, any other key joins its config; without --set nothing changes."""
    import argparse

    from recbole_mm.bench import variants

    class Table:
        dataset, data_fingerprint = "tiny", "data"

        @staticmethod
        def config(model, point):
            return {"learning_rate": point["learning_rate"], "hidden_dropout_prob": point["dropout"]}

    tuning = {"CAMMSR": {"chosen": {"learning_rate": 0.001, "dropout": 0.2}}}
    names = ["CAMMSR", "w/o swap CL"]
    args = argparse.Namespace(overrides=["learning_rate=0.003", "dropout=0.5", "stopping_step=10"])
    moved = dict(variants.variant_specs(cammsr.SUITE, Table, tuning, names, [2020], args))
    plain = dict(variants.variant_specs(cammsr.SUITE, Table, tuning, names, [2020], argparse.Namespace(overrides=[])))
    for name in names:
        assert moved[name].point == {"learning_rate": 0.003, "dropout": 0.5} and moved[name].config["stopping_step"] == 10
        assert moved[name].config["hidden_dropout_prob"] == 0.5 and "dropout" not in moved[name].config
        assert plain[name].point == {"learning_rate": 0.001, "dropout": 0.2} and "stopping_step" not in plain[name].config
    assert moved["w/o swap CL"].config["cl_weight"] == 0.0  # the variant's own change stays
    assert "with learning_rate=0.003, dropout=0.5, stopping_step=10 for every variant" in variants.markdown(
        cammsr.SUITE, {}, "CAMMSR", "cold-valid", [2020], args)


def test_regime_noise_variant_trains_on_its_own_copy_paired_with_the_clean_model(tiny_planted, tmp_path, monkeypatch):
    """Under --regime the category-noise variant gets a kept copy of the regime's data (its runs read
    that folder and are keyed by its fingerprint), and pairs with clean CAMMSR on the same users."""
    import argparse

    from recbole_mm.bench import benchmark, runner, variants
    from recbole_mm.bench.planted import planted_config
    from recbole_mm.bench.profiles import DENSE

    planted, data_path = tiny_planted
    calls, folders = [], []
    fake = fake_run_model(calls, users=40, spread=0.01)

    def recording(model, dataset, config, seed=2020, data_path=None, **options):
        folders.append(data_path)
        return fake(model, dataset, config, seed, data_path, **options)

    monkeypatch.setattr(runner, "run_model", recording)
    monkeypatch.setattr(benchmark, "PUBLISHED_DIR", str(tmp_path / "published"))
    table = benchmark.make_table("tiny", DENSE, str(tmp_path / "out"), name="dense", data_path=data_path,
                                 base_config=planted_config(planted, data_path), published=True)
    tuning = benchmark.tune(table, ["CAMMSR"])
    benchmark.run_table(table, ["CAMMSR"], {"CAMMSR": tuning["CAMMSR"]["chosen"]}, tuning=tuning)
    args = argparse.Namespace(dataset="tiny", noise=0.5, seed=2020)
    names, seeds = ["CAMMSR", cammsr.NOISY], [2020, 2021]
    del folders[:]
    summaries, text = variants.run(cammsr.SUITE, table, dataclasses_replace(table), names, seeds, args)
    copy = os.path.join(table.results_dir, variants.OWN_DATA_FOLDER, "category_noise")
    assert folders == [copy, copy]  # only the noise variant trained, on the kept copy
    clean = open(os.path.join(data_path, "tiny", "tiny.item"), encoding="utf-8").read()
    noisy = open(os.path.join(copy, "tiny", "tiny.item"), encoding="utf-8").read()
    assert noisy != clean and len(noisy.splitlines()) == len(clean.splitlines())
    assert summaries[cammsr.NOISY]["seeds_ok"] == 2 and "| category noise | category noise 50% | 2/2 |" in text
    own_data = variants.own_data_paths(cammsr.SUITE, table, names, args)  # a second invocation
    specs = variants.variant_specs(cammsr.SUITE, table, benchmark.tuned_points(table, ["CAMMSR"]), names, seeds, args, own_data)
    keys = [row["key"] for row in variants.execute_specs(dataclasses_replace(table), specs, own_data)]
    assert len(set(keys)) == 4  # the noisy runs have keys of their own (the copy's fingerprint) ...
    assert len(folders) == 2  # ... which a second invocation finds cached: the kept copy did not change
    assert sorted(os.listdir(os.path.join(table.results_dir, variants.OWN_DATA_FOLDER))) == ["category_noise"]


def dataclasses_replace(table, run_missing=False):
    import dataclasses

    return dataclasses.replace(table, run_missing=run_missing)


def _cold_row(values, cold_users=None, cold_ndcg=0.1):
    users = [f"u{index}" for index in range(len(values))]
    per_user = {"users": users, "full": list(values)}
    if cold_users is not None:
        per_user["cold"] = cold_users
    return {"status": "ok", "exclude_history": False, "full_ndcg@10": sum(values) / len(values), "train_ms_per_step": 10.0,
            "cold_max_count": 5, "cold_ndcg@10": cold_ndcg, "per_user": per_user}


def test_regime_table_compares_cold_item_users_paired():
    """Cold-item columns: the variant's seed-mean cold NDCG@10 and its paired difference on the cold
    users only (taken from whichever run lists them: the reference's rows predate the list here)."""
    from recbole_mm.bench import variants

    cold = ["u0", "u1", "u2", "u3"]
    reference = variants.summarize_variant([_cold_row([0.5] * 10, cold_ndcg=0.30)])
    variant = variants.summarize_variant([_cold_row([0.6] * 4 + [0.4] * 6, cold, 0.35), _cold_row([0.6] * 4 + [0.4] * 6, cold, 0.45)])
    text = variants.markdown(cammsr.SUITE, {"CAMMSR": reference, "w/o swap CL": variant}, "CAMMSR", "cold", [2020, 2021])
    header, _, ref_line, line = text.splitlines()[:4]
    assert header.endswith("| Cold-item NDCG@10 | cold Δ vs CAMMSR [95% CI] |")
    assert ref_line.endswith("| 0.3000 | reference |")
    assert "| -0.0200 [" in line and "| tie |" in line  # all users: a tie
    assert line.endswith("| 0.4000 | +0.1000 [+0.1000, +0.1000] tie (1 seed) |")  # the cold users only: CI above 0
    assert "on the 4 test users" in text
    plain = variants.summarize_variant([dict(_cold_row([0.5] * 10), per_user={"users": ["u0"], "full": [0.5]})])
    assert "Cold-item" not in variants.markdown(cammsr.SUITE, {"CAMMSR": plain}, "CAMMSR", "cold", [2020])


class _UnhandledSigterm(RuntimeError):
    pass


def test_kill_stops_a_suite_and_its_worker_like_ctrl_c(tiny_planted, tmp_path, monkeypatch):
    """``kill`` of a suite's command (SIGTERM) while a worker trains: the worker is killed with it (none
    is left orphaned), the command ends with status 130, and the caller's own SIGTERM handler is back."""
    import signal
    import time

    from recbole_mm.bench import runner

    pid_file = tmp_path / "worker.pid"
    worker = (f"import os, signal, time; open({str(pid_file)!r}, 'w').write(str(os.getpid())); "
              "os.kill(os.getppid(), signal.SIGTERM); time.sleep(120)")
    monkeypatch.setattr(runner, "_WORKER_CODE", worker)

    def unhandled(signum, frame):
        raise _UnhandledSigterm("the suite left SIGTERM to the caller")

    previous = signal.signal(signal.SIGTERM, unhandled)
    try:
        start = time.monotonic()
        status = ablation.main(cammsr.SUITE, ["--dataset", "tiny", "--data-path", tiny_planted[1], "--variants", "SASRec",
                                              "--epochs", "1", "--threads", "1"])
        assert signal.getsignal(signal.SIGTERM) is unhandled
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert status == 130 and time.monotonic() - start < 60  # not the worker's 120 s sleep
    with pytest.raises(ProcessLookupError):
        os.kill(int(pid_file.read_text()), 0)


def test_a_variant_that_restates_a_default_shares_the_full_models_runs():
    from recbole_mm.bench import variants

    assert variants.effective_overrides("DMAE", {"dmae_mode": "lite", "dmae_hard_negs": 0}) == {"dmae_hard_negs": 0}
    assert variants.effective_overrides("SASRec", {"learning_rate": 0.01}) == {"learning_rate": 0.01}


def test_regime_mode_refuses_its_own_data_and_sizes(tiny_planted):
    from recbole_mm.bench import variants

    args = _args(cammsr.SUITE, tiny_planted, "--regime", "dense", "--variants", "CAMMSR")
    assert args.regime == "dense" and args.seeds is None and not args.publish
    with pytest.raises(SystemExit, match="--regime fixes the dataset"):
        variants.main(cammsr.SUITE, args)


def test_step_ratio_only_between_runs_of_one_machine():
    from recbole_mm.bench import variants

    def summary(ms, *machines):
        return {"ms_per_step": ms, "machines": set(machines)}

    assert variants.step_ratio_text(summary(3.0, "a"), summary(2.0, "a")) == "1.50x"
    assert variants.step_ratio_text(summary(3.0, None), summary(2.0, None)) == "1.50x"  # both predate the record
    assert variants.step_ratio_text(summary(3.0, "a"), summary(2.0, "b")) == "other machine"
    assert variants.step_ratio_text(summary(3.0, "a"), summary(2.0, None)) == "other machine"
    assert variants.step_ratio_text(summary(3.0, "a", "b"), summary(2.0, "a")) == "other machine"
    assert variants.step_ratio_text(summary(3.0, "a"), {}) == "-"
