"""DDP through RecBole's own path (``nproc``, ``world_size``, ``ip``, ``port``, ``offset``) on CPU.

Why 2 processes can match 1 process here: each epoch is one full batch (``train_batch_size`` >
the training samples) and every dropout is 0, so each rank's loss is the mean over its half of
the batch and DDP's gradient average is the single-process gradient up to float summation order.
For evaluation each rank ranks half of the 60 users (RecBole's DistributedSampler; 60 is even,
so nothing is padded) and RecBole's ``_map_reduce`` all-gathers per-rank means weighted by their
(equal) batch counts, i.e. the mean over all users. Both sides are rounded to
``metric_decimal_place`` (4) decimals, so the tolerance is one unit in the 4th decimal (plus
float noise): 1.5e-4.
"""

import os
import socket
import subprocess
import sys

import pytest
import yaml

from recbole_mm import run_recbole_mm
from recbole_mm.quick_start import run_distributed

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOLERANCE = 1.5e-4
EXACT_BUDGET = dict(
    epochs=2, train_batch_size=4096, eval_batch_size=64, MAX_ITEM_LIST_LENGTH=10, learning_rate=0.01,
    hidden_dropout_prob=0.0, attn_dropout_prob=0.0, feature_dropout_prob=0.0, id_dropout_prob=0.0,
)


def free_port():
    with socket.socket() as probe:
        probe.bind(("localhost", 0))
        return str(probe.getsockname()[1])


@pytest.mark.slow
def test_two_processes_match_one_process(tiny_config):
    one = run_recbole_mm(model="SASRecMM", dataset="tiny", config_dict=tiny_config(**EXACT_BUDGET))
    two = run_distributed("SASRecMM", "tiny", config_dict=tiny_config(**EXACT_BUDGET), nproc=2, port=free_port())
    assert two is not None and two["model"] == "SASRecMM"
    for part in ("best_valid_result", "test_result"):
        assert set(one[part]) == set(two[part])
        for metric, value in one[part].items():
            assert abs(float(value) - float(two[part][metric])) <= TOLERANCE, (part, metric, value, two[part][metric])


def _cli(tiny_config, tmp_path, model):
    config_file = tmp_path / "tiny.yaml"
    config_file.write_text(yaml.safe_dump(tiny_config(epochs=1, train_batch_size=64, eval_batch_size=64, MAX_ITEM_LIST_LENGTH=10)))
    command = [sys.executable, os.path.join(REPO, "run_recbole_mm.py"), "--model", model, "--dataset", "tiny",
               "--config_files", str(config_file), "--nproc", "2", "--port", free_port()]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300)


@pytest.mark.slow
def test_command_line_mufasa_on_two_cpu_processes(tiny_config, tmp_path):
    run = _cli(tiny_config, tmp_path, "MUFASA")
    assert run.returncode == 0, run.stderr[-3000:]
    assert "best valid: {'recall@10'" in run.stdout and "test:" in run.stdout and "np.float64" not in run.stdout
    saved = os.listdir(tmp_path / "saved")
    assert len(saved) == 1 and saved[0].startswith("MUFASA-")  # both ranks used rank 0's one checkpoint


NCCL_CONFIG = """
import recbole_mm
from recbole.config import Config
Config(model="SASRec", dataset="ml-100k", config_dict={
    "local_rank": 0, "world_size": 1, "nproc": 1, "offset": 0, "ip": "localhost", "port": PORT,
    "train_neg_sample_args": None, "state": "WARNING"})
print("PROCESS-GROUP-OK")
"""


@pytest.mark.slow
@pytest.mark.parametrize("skip", ["distributed_cpu", ""])
def test_distributed_cpu_fix_is_needed(skip):
    """What a DDP rank does first: RecBole alone asks for nccl (configurator.py:497), absent on CPU."""
    import torch

    if torch.cuda.is_available():
        pytest.skip("with CUDA RecBole's own nccl path is used")
    code = NCCL_CONFIG.replace("PORT", repr(free_port()))
    env = dict(os.environ, OMP_NUM_THREADS="1", RECBOLE_MM_SKIP_FIXES=skip)
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    if skip:
        assert run.returncode != 0 and "NCCL" in run.stderr, run.stderr[-2000:]
    else:
        assert run.returncode == 0 and "PROCESS-GROUP-OK" in run.stdout, run.stderr[-2000:]


@pytest.mark.parametrize("gpu_id", ["0,1", ""])
def test_cpu_process_group_without_cuda(gpu_id):
    """The fixed Config picks gloo and the CPU whatever gpu_id says when CUDA is absent."""
    import torch
    import torch.distributed as dist
    from recbole.config import Config

    if torch.cuda.is_available():
        pytest.skip("with CUDA RecBole's own nccl path is used")
    config = Config(model="SASRec", dataset="ml-100k", config_dict={
        "local_rank": 0, "world_size": 1, "nproc": 1, "offset": 0, "ip": "localhost", "port": free_port(), "gpu_id": gpu_id,
        "train_neg_sample_args": None, "state": "WARNING",
    })
    try:
        assert dist.get_backend() == "gloo"
        assert config["device"].type == "cpu" and config["single_spec"] is False
    finally:
        dist.destroy_process_group()


RACE = """
import os, tempfile
import recbole_mm
from recbole.utils.logger import ensure_dir  # one of the names RecBole imports it under
folder = tempfile.mkdtemp()
real_exists = os.path.exists
os.path.exists = lambda path: False if path == folder else real_exists(path)  # rank 1 made it just after our check
ensure_dir(folder)
print("ENSURE-DIR-OK")
"""


@pytest.mark.slow
@pytest.mark.parametrize("skip", ["ensure_dir_race", ""])
def test_ensure_dir_race_fix(skip):
    """Two ranks creating ./log at once: RecBole's check-then-create loses the race (FileExistsError)."""
    env = dict(os.environ, RECBOLE_MM_SKIP_FIXES=skip)
    run = subprocess.run([sys.executable, "-c", RACE], capture_output=True, text=True, env=env, timeout=120)
    if skip:
        assert run.returncode != 0 and "FileExistsError" in run.stderr, run.stderr[-2000:]
    else:
        assert run.returncode == 0 and "ENSURE-DIR-OK" in run.stdout, run.stderr[-2000:]


def test_with_cuda_recbole_own_nccl_path_is_taken(monkeypatch):
    """With CUDA present the fix steps aside: RecBole's code asks for nccl and puts the rank on its GPU.

    CUDA is faked (no GPU here); ``init_process_group`` and ``set_device`` only record their calls.
    """
    import torch
    import torch.distributed as dist
    from recbole.config import Config

    calls = {}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "set_device", lambda index: calls.setdefault("set_device", index))
    monkeypatch.setattr(dist, "init_process_group", lambda **kwargs: calls.setdefault("group", kwargs))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    config = Config(model="SASRec", dataset="ml-100k", config_dict={
        "local_rank": 0, "world_size": 1, "nproc": 1, "offset": 0, "ip": "localhost", "port": "5678", "gpu_id": "0",
        "train_neg_sample_args": None, "state": "WARNING",
    })
    assert calls["group"]["backend"] == "nccl" and calls["group"]["init_method"] == "tcp://localhost:5678"
    assert calls["set_device"] == 0
    assert config["device"] == torch.device("cuda", 0) and config["single_spec"] is False


class _RecordingDDP:
    """Stands in for DistributedDataParallel: keeps what it was built with."""

    def __init__(self, module, device_ids=None, **kwargs):
        self.module, self.device_ids, self.kwargs = module, device_ids, kwargs


@pytest.mark.parametrize("device, expected_ids", [("cpu", None), ("meta", [0])])
def test_ddp_wrapper_drops_device_ids_only_on_cpu(device, expected_ids):
    """RecBole passes ``device_ids=[local_rank]``: kept for accelerator modules (``meta`` stands in for
    a GPU here), dropped for CPU ones, which torch would reject; a module that is not one of the
    plugin's models keeps DDP's other defaults (buffers broadcast)."""
    import torch
    from torch import nn

    from recbole_mm.compat import _ddp_builder

    module = nn.Linear(2, 2, device=device)
    module.register_buffer("features", torch.zeros(3, 2, device=device), persistent=False)
    wrapped = _ddp_builder(_RecordingDDP)(module, device_ids=[0], find_unused_parameters=True)
    assert wrapped.device_ids == expected_ids and wrapped.kwargs == {"find_unused_parameters": True}


def _nccl_ready():
    import torch
    import torch.distributed as dist

    return torch.cuda.is_available() and dist.is_nccl_available()


@pytest.mark.slow
@pytest.mark.skipif(not _nccl_ready(), reason="needs a CUDA GPU and nccl")
def test_command_line_mufasa_with_nccl_on_one_gpu(tiny_config, tmp_path):
    """On a GPU machine: one nccl rank per GPU through RecBole's own path (``--gpu_id`` names them)."""
    config_file = tmp_path / "tiny.yaml"
    config_file.write_text(yaml.safe_dump(tiny_config(epochs=1, train_batch_size=64, eval_batch_size=64, MAX_ITEM_LIST_LENGTH=10)))
    command = [sys.executable, os.path.join(REPO, "run_recbole_mm.py"), "--model", "MUFASA", "--dataset", "tiny",
               "--config_files", str(config_file), "--nproc", "1", "--world_size", "1", "--gpu_id=0", "--port", free_port()]
    run = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "best valid: {'recall@10'" in run.stdout and "test:" in run.stdout
