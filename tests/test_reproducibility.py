"""``reproducibility: true`` with a fixed seed gives bit-identical results across two CPU runs.

Each run is a fresh interpreter (with a different ``PYTHONHASHSEED``, so nothing may depend on set
or dict-of-str ordering) that trains every plugin model on the same tiny dataset and prints its
metrics and a digest of the best model's weights.
"""

import json
import os
import subprocess
import sys
import textwrap

import pytest
import yaml

from recbole_mm.registry import PLUGIN_MODELS

pytestmark = pytest.mark.slow  # trains every plugin model twice in fresh interpreters

TRAIN_ALL = """
import glob, hashlib, json, sys
import torch
import recbole_mm
import pytest
import yaml
torch.set_num_threads(1)
config = yaml.safe_load(open(sys.argv[1]))
out = {}
for model in sorted(recbole_mm.registry.PLUGIN_MODELS):
    config["checkpoint_dir"] = f"saved-{model}"
    result = recbole_mm.run_recbole_mm(model=model, dataset="tiny", config_dict=config)
    state = torch.load(glob.glob(f"saved-{model}/*.pth")[0], weights_only=False)["state_dict"]
    digest = hashlib.sha256()
    for name in sorted(state):
        digest.update(name.encode() + state[name].numpy().tobytes())
    out[model] = {
        "valid": {k: float(v) for k, v in result["best_valid_result"].items()},
        "test": {k: float(v) for k, v in result["test_result"].items()},
        "weights": digest.hexdigest(),
    }
print("RESULT", json.dumps(out, sort_keys=True))
"""


def _start(config_file, folder, hash_seed):
    folder.mkdir()
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONHASHSEED=str(hash_seed))
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(TRAIN_ALL), str(config_file)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=folder, env=env)


def _result(process):
    stdout, stderr = process.communicate(timeout=300)
    assert process.returncode == 0, stderr[-3000:]
    return json.loads(stdout.split("RESULT", 1)[1])


def test_two_runs_are_bit_identical(tiny_config, tmp_path):
    config_file = tmp_path / "tiny.yaml"
    config_file.write_text(yaml.safe_dump(tiny_config(epochs=2, reproducibility=True, seed=7, learning_rate=0.01)))
    runs = [_start(config_file, tmp_path / "first", 1), _start(config_file, tmp_path / "second", 2)]  # side by side
    first, second = (_result(run) for run in runs)
    assert sorted(first) == sorted(PLUGIN_MODELS)
    assert first == second
    assert len({entry["weights"] for entry in first.values()}) == len(first)  # four different models really trained
