"""``python -m recbole_mm.tune``: RecBole's HyperTuning with the plugin's objective, all three
algorithms on the installed hyperopt, a results table, a search space file per plugin model."""

import json
import os
import subprocess
import sys
import textwrap

import pytest
import yaml

from recbole_mm.registry import PLUGIN_MODELS
from recbole_mm import resources, tune

hyperopt = pytest.importorskip("hyperopt")

HYPER_KEYS_OUTSIDE_MODEL_YAML = {"learning_rate", "train_batch_size", "weight_decay"}


@pytest.fixture
def tiny_yaml(tiny_config, tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(tiny_config(epochs=1, train_batch_size=64, eval_batch_size=64, MAX_ITEM_LIST_LENGTH=10)))
    return str(path)


@pytest.mark.slow
@pytest.mark.parametrize("algo", ["exhaustive", "random", "bayes"])
def test_cammsr_search_two_evals_writes_a_table(algo, tiny_yaml, tmp_path):
    params_file = os.path.join(resources.properties_dir(), "hyper", "CAMMSR.hyper")
    trials, tuner = tune.main([
        "--model", "CAMMSR", "--dataset", "tiny", "--params-file", params_file, "--algo", algo,
        "--max-evals", "2", "--config_files", tiny_yaml, "--output", str(tmp_path / "out"),
    ])
    assert len(trials) == 2
    space = tuner._build_space_from_file(params_file)
    for params, result in trials:
        assert set(params) == set(space)
        assert result["model"] == "CAMMSR" and "ndcg@10" in result["test_result"]
    if algo == "exhaustive":
        assert trials[0][0] != trials[1][0]  # without repetition
    table = (tmp_path / "out" / f"CAMMSR-tiny-{algo}.md").read_text()
    rows = [line for line in table.splitlines() if line.startswith("| ") and not line.startswith("| #")]
    assert len(rows) == 2 and sum("**best** (NDCG@10)" in row for row in rows) == 1
    assert "valid ndcg@10" in table and "test ndcg@10" in table and "cl_weight" in table
    saved = json.loads((tmp_path / "out" / f"CAMMSR-tiny-{algo}.json").read_text())
    scores = [trial["best_valid_score"] for trial in saved["trials"]]
    assert saved["best"] == scores.index(max(scores))
    assert f"{scores[saved['best']]:.4f}" in rows[saved["best"]]


def test_command_line_overrides_reach_every_trial(tiny_yaml, tmp_path):
    """Extra ``--key=value`` arguments are RecBole config overrides (here: a hidden size)."""
    hyper = tmp_path / "lr.hyper"
    hyper.write_text("learning_rate choice [0.01]\n")
    tune.main(["--model", "SASRecMM", "--dataset", "tiny", "--params-file", str(hyper), "--algo", "exhaustive",
               "--config_files", tiny_yaml, "--output", str(tmp_path / "out"), "--hidden_size=24"])
    from recbole_mm.trainer import load_checkpoint

    saved = [name for name in os.listdir("saved") if name.startswith("SASRecMM-")]
    checkpoint = load_checkpoint(os.path.join("saved", saved[0]))
    assert checkpoint["config"]["hidden_size"] == 24 and checkpoint["config"]["learning_rate"] == 0.01


def test_exhaustive_search_needs_a_discrete_space(tiny_yaml, tmp_path):
    from recbole.trainer.hyper_tuning import ExhaustiveSearchError

    hyper = tmp_path / "continuous.hyper"
    hyper.write_text("learning_rate loguniform -8,-4\n")
    with pytest.raises(ExhaustiveSearchError):
        tune.main(["--model", "SASRecMM", "--dataset", "tiny", "--params-file", str(hyper), "--algo", "exhaustive",
                   "--config_files", tiny_yaml, "--output", str(tmp_path / "out")])


@pytest.mark.parametrize("model", sorted(PLUGIN_MODELS))
def test_each_plugin_model_has_a_search_space_of_its_own_keys(model):
    from recbole.trainer import HyperTuning

    path = tune.default_params_file(model)
    space = HyperTuning._build_space_from_file(path)
    with open(resources.model_yaml(model), encoding="utf-8") as handle:
        model_keys = set(yaml.safe_load(handle))
    assert space and set(space) <= model_keys | HYPER_KEYS_OUTSIDE_MODEL_YAML, set(space) - model_keys
    assert all(line.split()[1] == "choice" for line in open(path) if line.strip())  # exhaustive works on it too


# ----- the compat fix ------------------------------------------------------------------------------

EXHAUSTIVE = """
from recbole_mm.registry import PLUGIN_MODELS
from recbole.trainer import HyperTuning

def objective(config_dict, config_files):
    score = config_dict["a"] + config_dict["b"]
    return {"model": "x", "best_valid_score": score, "valid_score_bigger": True,
            "best_valid_result": {"s": score}, "test_result": {"s": score}}

tuner = HyperTuning(objective, params_dict={"choice": {"a": [1, 2], "b": [10, 20]}}, algo="exhaustive")
tuner.run()
print("TRIALS", sorted(tuner.params2result))
"""


def _hyperopt_uses_generators():
    version = tuple(int(part) for part in hyperopt.__version__.split(".")[:3] if part.isdigit())
    return version >= (0, 2, 7)


@pytest.mark.slow
@pytest.mark.skipif(not _hyperopt_uses_generators(), reason="hyperopt < 0.2.7 samples with RandomState")
def test_hyperopt_exhaustive_fix_is_needed():
    env = dict(os.environ, RECBOLE_MM_SKIP_FIXES="hyperopt_exhaustive")
    run = subprocess.run([sys.executable, "-c", textwrap.dedent(EXHAUSTIVE)], capture_output=True, text=True, env=env, timeout=120)
    assert run.returncode != 0 and "RandomState' object has no attribute 'integers'" in run.stderr


@pytest.mark.slow
def test_hyperopt_exhaustive_visits_every_combination_once():
    run = subprocess.run([sys.executable, "-c", textwrap.dedent(EXHAUSTIVE)], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "TRIALS ['a:1, b:10', 'a:1, b:20', 'a:2, b:10', 'a:2, b:20']" in run.stdout
