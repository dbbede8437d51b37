"""Each fix in recbole_mm.compat is needed on this stack (it fails without) and works (with).

The "without" half runs in a fresh interpreter with ``RECBOLE_MM_SKIP_FIXES=<fix>`` (or without
importing recbole_mm at all) and is skipped only where the installed stack is not affected.
"""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pandas as pd
import pytest
import torch

from recbole_mm import compat

NUMPY2 = int(np.__version__.split(".")[0]) >= 2
PANDAS3 = int(pd.__version__.split(".")[0]) >= 3
TORCH_WEIGHTS_ONLY = tuple(int(part) for part in torch.__version__.split("+")[0].split(".")[:2]) >= (2, 6)


def run_python(code, skip_fixes="", folder=None):
    """Run ``code`` in a fresh interpreter (cwd and ``sys.argv[1]`` = ``folder``)."""
    env = dict(os.environ, RECBOLE_MM_SKIP_FIXES=skip_fixes, PYTHONWARNINGS="default")
    args = [sys.executable, "-c", textwrap.dedent(code)] + ([str(folder)] if folder else [])
    return subprocess.run(args, capture_output=True, text=True, env=env, cwd=folder, timeout=300)


def _run_with_folder(code, folder, skip_fixes):
    return run_python(code, skip_fixes, folder)


CONFIG_SNIPPET = """
from recbole.config import Config
config = Config(model="SASRec", dataset="ml-100k", config_dict={"train_neg_sample_args": None, "state": "WARNING"})
print("CONFIG-OK", config["model"])
"""


@pytest.mark.skipif(not NUMPY2, reason="numpy < 2 still has the aliases RecBole uses")
def test_numpy_aliases_needed_for_recbole_config():
    without = run_python(CONFIG_SNIPPET)
    assert without.returncode != 0 and "np.float_" in without.stderr


def test_numpy_aliases_make_config_and_quick_start_import_work():
    with_fix = run_python("import recbole_mm\nfrom recbole.quick_start import run_recbole\n" + CONFIG_SNIPPET)
    assert with_fix.returncode == 0, with_fix.stderr
    assert "CONFIG-OK SASRec" in with_fix.stdout
    for alias in compat.NUMPY2_ALIASES:
        assert hasattr(np, alias)


DATASET_WITH_GAPS = """
import sys, os
import recbole_mm
from recbole.config import Config
from recbole.data import create_dataset
folder = os.path.join(sys.argv[1], "gaps")
os.makedirs(folder, exist_ok=True)
with open(os.path.join(folder, "gaps.inter"), "w") as f:
    f.write("user_id:token\\titem_id:token\\ttimestamp:float\\n")
    f.writelines(f"{u}\\t{i}\\t{u * 10 + i}\\n" for u in range(1, 6) for i in range(1, 6))
with open(os.path.join(folder, "gaps.item"), "w") as f:
    f.write("item_id:token\\tgenres:token_seq\\tprice:float\\n1\\ta b\\t1.0\\n2\\t\\t3.0\\n3\\tb\\t\\n4\\ta\\t2.0\\n5\\tc\\t2.0\\n")
config = Config(model="SASRec", dataset="gaps", config_dict={
    "data_path": sys.argv[1], "load_col": None, "train_neg_sample_args": None, "state": "WARNING"})
dataset = create_dataset(config)
item2id = dataset.field2token_id["item_id"]
genres = dataset.item_feat["genres"]
print("EMPTY-GENRES", len([g for g in genres[item2id["2"]] if g != 0]))
print("GENRES-OF-1", sorted(str(dataset.field2id_token["genres"][g]) for g in genres[item2id["1"]] if g != 0))
print("PRICE", float(dataset.item_feat["price"][item2id["3"]]))
"""


@pytest.mark.skipif(not PANDAS3, reason="pandas < 3 still fills in place (copy-on-write is off)")
def test_pandas_fillna_needed_for_missing_sequence_cells(tmp_path):
    without = _run_with_folder(DATASET_WITH_GAPS, tmp_path, "pandas_fillna")
    assert without.returncode != 0 and "'float' object has no attribute 'split'" in without.stderr


@pytest.mark.skipif(not PANDAS3, reason="pandas < 3 applies Series.agg(len) per cell")
def test_pandas_sequence_lengths_needed_for_token_seq_fields(tmp_path):
    without = _run_with_folder(DATASET_WITH_GAPS, tmp_path, "pandas_sequence_lengths")
    assert without.returncode != 0 and "does not match length of index" in without.stderr


def test_pandas_fillna_fills_missing_sequences_and_floats(tmp_path):
    with_fix = _run_with_folder(DATASET_WITH_GAPS, tmp_path, "")
    assert with_fix.returncode == 0, with_fix.stderr
    assert "EMPTY-GENRES 0" in with_fix.stdout
    assert "GENRES-OF-1 ['a', 'b']" in with_fix.stdout
    price = float(with_fix.stdout.split("PRICE")[1].split()[0])
    assert not np.isnan(price)


RUN_AND_RELOAD = """
import sys, glob
import recbole_mm
from recbole.quick_start import run_recbole, load_data_and_model
from recbole_mm.data.synthetic import write_planted_dataset, planted_config
planted = write_planted_dataset(sys.argv[1], name="ckpt", n_users=30, n_items=20, n_clusters=4, seq_len=(5, 7))
sys.argv = sys.argv[:1]
result = run_recbole(model="SASRecMM", dataset="ckpt", config_dict=planted_config(planted, planted.folder.rsplit("/", 1)[0], epochs=1))
print("TEST-RESULT", dict(result["test_result"]))
config, model, dataset, train, valid, test = load_data_and_model(glob.glob("saved/SASRecMM-*.pth")[0])
print("RELOADED", type(model).__name__)
"""


def _run_and_reload(tmp_path, skip):
    return run_python(RUN_AND_RELOAD.replace("sys.argv[1]", "sys.argv[1] + '/data'", 1), skip, tmp_path)


@pytest.mark.skipif(not TORCH_WEIGHTS_ONLY, reason="torch < 2.6 unpickles checkpoints fully by default")
def test_checkpoint_loading_needed_for_best_model_reload(tmp_path):
    without = _run_and_reload(tmp_path, "checkpoint_loading")
    assert without.returncode != 0 and "Weights only load failed" in without.stderr


def test_checkpoint_loading_restores_best_model_and_load_data_and_model(tmp_path):
    with_fix = _run_and_reload(tmp_path, "")
    assert with_fix.returncode == 0, with_fix.stderr[-3000:]
    assert "TEST-RESULT" in with_fix.stdout and "RELOADED SASRecMM" in with_fix.stdout


def test_known_warnings_are_quiet():
    noisy = run_python("import recbole_mm", "quiet_known_warnings")
    quiet = run_python("import recbole_mm")
    assert "pkg_resources is deprecated" in noisy.stderr
    assert "pkg_resources is deprecated" not in quiet.stderr, quiet.stderr


def test_unknown_fix_name_is_rejected():
    result = run_python("import recbole_mm", "no_such_fix")
    assert result.returncode != 0 and "unknown fixes ['no_such_fix']" in result.stderr


def test_apply_is_idempotent():
    assert compat.apply() == compat.apply()


ANOMALY_SNIPPET = """
import recbole_mm
import torch
from recbole.quick_start import run_recbole  # imports every RecBole model, sine.py among them
from recbole.utils import get_model
get_model("SINE")
print("ANOMALY", torch.is_anomaly_enabled())
"""


def test_autograd_anomaly_left_on_by_recbole_without_the_fix():
    without = run_python(ANOMALY_SNIPPET, skip_fixes="autograd_anomaly")
    assert "ANOMALY True" in without.stdout, without.stderr[-2000:]


def test_autograd_anomaly_is_off_after_import():
    with_fix = run_python(ANOMALY_SNIPPET)
    assert "ANOMALY False" in with_fix.stdout, with_fix.stderr[-2000:]
