"""Each fix in recbole_mm.compat is needed on this stack (it fails without), works (with), is
reverted exactly by ``compat.undo`` and applies only where its version gate says so.

In-process tests undo one fix, show RecBole failing, and re-apply it. Fixes that act at import time
(numpy aliases, anomaly detection, warnings) are shown in a fresh interpreter (slow lane), with
``RECBOLE_MM_SKIP_FIXES=<fix>``, and skipped only where the installed stack is not affected.
"""

import os
import subprocess
import sys
import textwrap
import warnings
from importlib import metadata

import numpy as np
import pandas as pd
import pytest
import torch
from recbole.config import Config
from recbole.data import create_dataset

from conftest import build_run
from recbole_mm import compat

NUMPY2 = compat.numpy_2()
PANDAS3 = compat.pandas_3()
TORCH_WEIGHTS_ONLY = compat.torch_loads_weights_only()


@pytest.fixture
def without(request):
    """``without("fix")`` undoes that fix for the test; every fix is applied again afterwards."""

    def take_out(name):
        compat.undo(name)

    yield take_out
    compat.apply()


def run_python(code, skip_fixes="", folder=None):
    """Run ``code`` in a fresh interpreter (cwd and ``sys.argv[1]`` = ``folder``)."""
    env = dict(os.environ, RECBOLE_MM_SKIP_FIXES=skip_fixes, PYTHONWARNINGS="default")
    args = [sys.executable, "-c", textwrap.dedent(code)] + ([str(folder)] if folder else [])
    return subprocess.run(args, capture_output=True, text=True, env=env, cwd=folder, timeout=300)


# --- bookkeeping: undo, idempotence, gates, RecBole version --------------------------------------

def _patched_objects():
    """The RecBole attributes the fixes replace, as RecBole code sees them now."""
    import recbole.data.dataset.dataset as dataset_module
    import recbole.quick_start.quick_start as quick_start_module
    from recbole.config import configurator
    from recbole.data import utils as data_utils
    from recbole.model.general_recommender import lightgcn
    from recbole.trainer import Trainer, hyper_tuning
    from recbole.trainer import trainer as trainer_module
    from recbole.utils import logger

    return {
        "Trainer.evaluate": Trainer.__dict__["evaluate"],
        "load_data_and_model": quick_start_module.load_data_and_model,
        "Dataset._remap": dataset_module.Dataset.__dict__["_remap"],
        "Dataset._fill_nan": dataset_module.Dataset.__dict__["_fill_nan"],
        "dataset.pd": dataset_module.pd,
        "Config._init_device": configurator.Config.__dict__["_init_device"],
        "DistributedDataParallel": trainer_module.DistributedDataParallel,
        "logger.ensure_dir": logger.ensure_dir,
        "data.utils.ensure_dir": data_utils.ensure_dir,
        "hyper_tuning.np": hyper_tuning.np,
        "lightgcn.sp": lightgcn.sp,
        "np.float_": np.__dict__.get("float_"),
    }


def test_undo_restores_recbole_as_shipped_and_apply_patches_each_name_once():
    compat.undo()
    try:
        shipped = _patched_objects()
        assert shipped["dataset.pd"] is pd and shipped["hyper_tuning.np"] is np
        compat.apply()
        patched = _patched_objects()
        expected_same = set() if NUMPY2 else {"np.float_"}
        if not PANDAS3:
            expected_same |= {"Dataset._remap", "Dataset._fill_nan", "dataset.pd"}
        assert {name for name in shipped if patched[name] is shipped[name]} == expected_same
        compat.apply()  # idempotent: nothing is wrapped twice
        assert _patched_objects() == patched
        assert patched["Trainer.evaluate"].__wrapped__ is shipped["Trainer.evaluate"]
        compat.undo()
        assert _patched_objects() == shipped
    finally:
        compat.apply()


def test_status_names_every_fix_and_its_gate(monkeypatch):
    status = compat.status()
    assert set(status) == set(compat.FIXES)
    assert all(state == "applied" or state.startswith("not needed (") for state in status.values()), status
    monkeypatch.setenv("RECBOLE_MM_SKIP_FIXES", "autograd_anomaly")
    compat.undo("autograd_anomaly")
    try:
        assert compat.status()["autograd_anomaly"] == "skipped (RECBOLE_MM_SKIP_FIXES)"
        assert torch.is_anomaly_enabled()  # as RecBole's sine.py leaves it
    finally:
        monkeypatch.delenv("RECBOLE_MM_SKIP_FIXES")
        compat.apply()
    assert not torch.is_anomaly_enabled()  # applied again after an undo: off again


@pytest.mark.parametrize("fix, package, old_version", [
    ("numpy_aliases", "numpy", "1.26.4"),
    ("pandas_fillna", "pandas", "2.2.3"),
    ("pandas_sequence_lengths", "pandas", "2.2.3"),
    ("checkpoint_loading", "torch", "2.5.1"),
    ("hyperopt_exhaustive", "hyperopt", "0.2.5"),
])
def test_version_gates_leave_fixes_out_on_older_releases(monkeypatch, fix, package, old_version):
    real_version = metadata.version

    def fake_version(name):
        return old_version if name == package else real_version(name)

    compat.undo(fix)
    try:
        monkeypatch.setattr(compat.metadata, "version", fake_version)
        assert not compat.FIXES[fix].needed()
        compat.apply()
        assert compat.status()[fix].startswith("not needed ("), compat.status()[fix]
        monkeypatch.setattr(compat.metadata, "version", real_version)
        assert compat.FIXES[fix].needed() == (compat.status()[fix] != "applied")  # needed on this stack?
    finally:
        monkeypatch.setattr(compat.metadata, "version", real_version)
        compat.apply()


def test_version_of_reads_release_numbers():
    assert compat.version_of("no-such-package-for-recbole-mm") is None
    assert compat.version_of("torch")[:2] == tuple(int(p) for p in torch.__version__.split("+")[0].split(".")[:2])


def test_other_recbole_release_is_refused_with_one_clear_error(monkeypatch):
    real_version = metadata.version
    monkeypatch.setattr(compat.metadata, "version", lambda name: "1.1.1" if name == "recbole" else real_version(name))
    with pytest.raises(compat.RecBoleVersionError, match=r"needs RecBole 1\.2\.1 \(found 1\.1\.1\).*pip install recbole==1\.2\.1"):
        compat.apply()


def test_unknown_fix_name_is_rejected(monkeypatch):
    monkeypatch.setenv("RECBOLE_MM_SKIP_FIXES", "no_such_fix")
    with pytest.raises(ValueError, match=r"unknown fixes \['no_such_fix'\]"):
        compat.apply()


# --- scipy dok_matrix._update ----------------------------------------------------------------------

def _graph_adjacency(module):
    matrix = module.sp.dok_matrix((3, 3), dtype=np.float32)
    matrix._update({(0, 1): 1.0, (1, 0): 1.0})
    return matrix.toarray()


@pytest.mark.skipif(not compat.scipy_dok_without_update(), reason="this scipy still has dok_matrix._update")
def test_scipy_dok_update_needed_and_scoped_to_recbole_graph_models(without):
    import scipy.sparse
    from recbole.model.general_recommender import lightgcn, ngcf

    assert _graph_adjacency(ngcf).tolist() == [[0, 1, 0], [1, 0, 0], [0, 0, 0]]
    assert not hasattr(scipy.sparse.dok_matrix, "_update")  # scipy itself is untouched
    without("scipy_dok_update")
    assert lightgcn.sp is scipy.sparse
    with pytest.raises(AttributeError, match="_update"):
        _graph_adjacency(lightgcn)


# --- pandas copy-on-write --------------------------------------------------------------------------

def _dataset_with_gaps(folder):
    data = os.path.join(folder, "gaps")
    os.makedirs(data, exist_ok=True)
    with open(os.path.join(data, "gaps.inter"), "w") as handle:
        handle.write("user_id:token\titem_id:token\ttimestamp:float\n")
        handle.writelines(f"{u}\t{i}\t{u * 10 + i}\n" for u in range(1, 6) for i in range(1, 6))
    with open(os.path.join(data, "gaps.item"), "w") as handle:
        handle.write("item_id:token\tgenres:token_seq\tprice:float\n1\ta b\t1.0\n2\t\t3.0\n3\tb\t\n4\ta\t2.0\n5\tc\t2.0\n")
    config = Config(model="SASRec", dataset="gaps", config_dict={
        "data_path": str(folder), "load_col": None, "train_neg_sample_args": None, "state": "WARNING"})
    return create_dataset(config)


@pytest.mark.skipif(not PANDAS3, reason="pandas < 3 still fills in place (copy-on-write is off)")
def test_pandas_fillna_needed_for_missing_sequence_cells(tmp_path, without):
    without("pandas_fillna")
    with pytest.raises(AttributeError, match="'float' object has no attribute 'split'"):
        _dataset_with_gaps(tmp_path)


@pytest.mark.skipif(not PANDAS3, reason="pandas < 3 applies Series.agg(len) per cell")
def test_pandas_sequence_lengths_needed_for_token_seq_fields(tmp_path, without):
    without("pandas_sequence_lengths")
    with pytest.raises(ValueError, match="does not match length of index"):
        _dataset_with_gaps(tmp_path)


def test_pandas_fixes_fill_missing_sequences_and_floats(tmp_path):
    dataset = _dataset_with_gaps(tmp_path)
    item2id = dataset.field2token_id["item_id"]
    genres = dataset.item_feat["genres"]
    assert [g for g in genres[item2id["2"]].tolist() if g != 0] == []
    assert sorted(str(dataset.field2id_token["genres"][g]) for g in genres[item2id["1"]].tolist() if g != 0) == ["a", "b"]
    assert float(dataset.item_feat["price"][item2id["3"]]) == pytest.approx(2.0)  # mean of 1, 3, 2, 2
    assert pd.Series([[1, 2], [3]]).agg(len) == 2  # pandas outside those methods: unchanged


# --- torch.load weights_only ------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.skipif(not TORCH_WEIGHTS_ONLY, reason="torch < 2.6 unpickles checkpoints fully by default")
def test_checkpoint_loading_needed_and_restores_best_model(tiny_config, without):
    import glob

    from recbole.quick_start import load_data_and_model, run_recbole

    result = run_recbole(model="SASRecMM", dataset="tiny", config_dict=tiny_config())
    assert set(result["test_result"]) >= {"ndcg@10"}
    _, model, *_ = load_data_and_model(glob.glob("saved/SASRecMM-*.pth")[0])
    assert type(model).__name__ == "SASRecMM"
    without("checkpoint_loading")
    with pytest.raises(Exception, match="Weights only load failed"):
        run_recbole(model="SASRecMM", dataset="tiny", config_dict=tiny_config())


# --- folder creation race -------------------------------------------------------------------------

def test_ensure_dir_race_needed_when_another_process_creates_the_folder(tmp_path, monkeypatch, without):
    """Simulated race: the folder appears between RecBole's ``exists`` check and its ``makedirs``."""
    from recbole.utils import logger

    folder = tmp_path / "log"
    folder.mkdir()
    monkeypatch.setattr(os.path, "exists", lambda path: False)
    logger.ensure_dir(str(folder))  # fixed: no error
    without("ensure_dir_race")
    with pytest.raises(FileExistsError):
        logger.ensure_dir(str(folder))


# --- DDP ---------------------------------------------------------------------------------------------

class _RecordingDDP:
    def __init__(self, module, device_ids=None, **kwargs):
        self.device_ids, self.kwargs = device_ids, kwargs


def test_ddp_builder_drops_device_ids_on_cpu_and_keeps_recbole_models_defaults(tiny_config):
    model = build_run("GRU4Rec", tiny_config()).model
    built = compat._ddp_builder(_RecordingDDP)(model, device_ids=[0])
    assert built.device_ids is None and built.kwargs == {}


def test_ddp_builder_skips_buffer_broadcast_only_for_plugin_models_with_data_buffers(tiny_config):
    from recbole_mm.data.dataset import MultimodalSequentialDataset
    from recbole_mm.model.sasrecmm import SASRecMM

    config = Config(model="SASRecMM", dataset="tiny", config_dict=tiny_config())
    model = SASRecMM(config, MultimodalSequentialDataset(config))
    assert compat.is_plugin_model(model) and list(model.buffers())
    assert compat._ddp_builder(_RecordingDDP)(model).kwargs == {"broadcast_buffers": False}
    model.register_buffer("running_stat", torch.zeros(1))  # persistent: must be broadcast again
    assert compat._ddp_builder(_RecordingDDP)(model).kwargs == {}


# --- hyperopt ----------------------------------------------------------------------------------

@pytest.mark.skipif(not compat.hyperopt_samples_with_generator(), reason="hyperopt absent or < 0.2.7")
def test_hyperopt_exhaustive_needed(without):
    from recbole.trainer import hyper_tuning

    rng = hyper_tuning.np.random.RandomState(0)
    assert hasattr(rng, "integers")  # a Generator, what hyperopt's samplers call
    without("hyperopt_exhaustive")
    assert not hasattr(hyper_tuning.np.random.RandomState(0), "integers")


# --- warnings ------------------------------------------------------------------------------------

def _shown(message, category, module, filename="x.py"):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        restore = compat.quiet_known_warnings()
        try:
            warnings.warn_explicit(message, category, filename, 1, module=module)
        finally:
            restore()
    return [str(w.message) for w in caught]


def test_known_warnings_are_hidden_only_for_ray_and_recbole():
    pkg = "pkg_resources is deprecated as an API."
    assert _shown(pkg, UserWarning, "ray._private.parameter") == []
    assert _shown(pkg, UserWarning, "my_project.setup") == [pkg]
    amp = "`torch.cuda.amp.GradScaler(args...)` is deprecated."
    assert _shown(amp, FutureWarning, "recbole.trainer.trainer") == []
    assert _shown(amp, FutureWarning, "my_project.train") == [amp]


def _escape_warnings_compiling(filename):
    """Warnings Python raises while compiling a source with an invalid escape, as if from ``filename``."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        restore = compat.quiet_known_warnings()
        try:
            compile('pattern = "\\d"\n', filename, "exec")
        finally:
            restore()
    return [str(w.message) for w in caught if "invalid escape sequence" in str(w.message)]


@pytest.mark.skipif(sys.version_info < (3, 12), reason="Python < 3.12 raises a DeprecationWarning, hidden by default")
def test_invalid_escape_warnings_hidden_only_while_compiling_recbole():
    assert _escape_warnings_compiling("/venv/site-packages/recbole/model/sequential_recommender/dien.py") == []
    assert len(_escape_warnings_compiling("/home/me/project/model.py")) == 1


@pytest.mark.slow
@pytest.mark.skipif(compat.version_of("ray") is None, reason="the warning checked comes from importing ray 2.6.3")
def test_known_warnings_are_quiet_in_a_fresh_interpreter():
    code = "import recbole_mm\nfrom recbole.quick_start import run_recbole"
    noisy = run_python(code, "quiet_known_warnings")
    quiet = run_python(code)
    assert "pkg_resources is deprecated" in noisy.stderr
    assert "pkg_resources is deprecated" not in quiet.stderr, quiet.stderr


# --- import-time fixes (fresh interpreter) -----------------------------------------------------------

CONFIG_SNIPPET = """
from recbole.config import Config
config = Config(model="SASRec", dataset="ml-100k", config_dict={"train_neg_sample_args": None, "state": "WARNING"})
print("CONFIG-OK", config["model"])
"""


@pytest.mark.slow
@pytest.mark.skipif(not NUMPY2, reason="numpy < 2 still has the aliases RecBole uses")
def test_numpy_aliases_needed_for_recbole_config():
    without_fix = run_python("import recbole_mm\n" + CONFIG_SNIPPET, "numpy_aliases")
    assert without_fix.returncode != 0
    last_line = without_fix.stderr.strip().splitlines()[-1]
    assert last_line.startswith("AttributeError") and any(f"'{alias}'" in last_line or f"np.{alias}" in last_line
                                                          for alias in compat.NUMPY2_ALIASES), last_line


@pytest.mark.slow
def test_numpy_aliases_make_config_and_quick_start_import_work():
    with_fix = run_python("import recbole_mm\nfrom recbole.quick_start import run_recbole\n" + CONFIG_SNIPPET)
    assert with_fix.returncode == 0, with_fix.stderr
    assert "CONFIG-OK SASRec" in with_fix.stdout


RAY_SNIPPET = """
import sys
sys.modules["ray"] = None  # ray cannot be imported, as on Python >= 3.12
import recbole_mm
from recbole.quick_start import run_recbole
from recbole_mm import compat
print("STATUS", compat.status()["ray_stand_in"])
from ray import tune
print("REPORT", tune.report(ndcg=0.5))  # what RecBole's objective_function calls: a no-op outside Ray
try:
    tune.run(lambda config: None)  # ray's own tuning
except ModuleNotFoundError as error:
    print("CLEAR", error)
"""


@pytest.mark.slow
def test_ray_stand_in_lets_quick_start_import_without_ray():
    with_fix = run_python(RAY_SNIPPET)
    assert with_fix.returncode == 0, with_fix.stderr[-2000:]
    assert "STATUS applied" in with_fix.stdout
    assert "REPORT None" in with_fix.stdout and "CLEAR ray is not installed" in with_fix.stdout
    without_fix = run_python(RAY_SNIPPET, "ray_stand_in")
    assert without_fix.returncode != 0 and "from ray import tune" in without_fix.stderr
    assert without_fix.stderr.strip().splitlines()[-1].startswith("ModuleNotFoundError")


ANOMALY_SNIPPET = """
import recbole_mm
import torch
from recbole.quick_start import run_recbole  # imports every RecBole model, sine.py among them
from recbole.utils import get_model
get_model("SINE")
print("ANOMALY", torch.is_anomaly_enabled())
"""


@pytest.mark.slow
def test_autograd_anomaly_left_on_by_recbole_without_the_fix():
    without_fix = run_python(ANOMALY_SNIPPET, skip_fixes="autograd_anomaly")
    assert "ANOMALY True" in without_fix.stdout, without_fix.stderr[-2000:]


@pytest.mark.slow
def test_autograd_anomaly_is_off_after_import():
    with_fix = run_python(ANOMALY_SNIPPET)
    assert "ANOMALY False" in with_fix.stdout, with_fix.stderr[-2000:]
