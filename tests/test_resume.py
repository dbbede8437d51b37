"""Checkpoint resume: RecBole's save / resume for every plugin model on torch >= 2.6, and a training
process killed mid-epoch that resumes from its last checkpoint and ends exactly like an
uninterrupted run with the same seed."""

import glob
import os
import re
import signal
import subprocess
import sys
import textwrap

import pytest
import torch
import yaml

import recbole_mm
from recbole_mm.trainer import load_checkpoint, resume_file_for

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PLUGIN_MODELS = ["SASRecMM", "MUFASA", "DMAE", "CAMMSR"]
# Dropout stays on (the models' defaults): an exact resume needs the random generators restored.
BUDGET = dict(train_batch_size=64, eval_batch_size=64, MAX_ITEM_LIST_LENGTH=10, learning_rate=0.01, stopping_step=10, checkpoint_every_epoch=True)


def _run(model, config):
    return recbole_mm.run_recbole_mm(model=model, dataset="tiny", config_dict=config)


def _last_file(folder):
    files = glob.glob(os.path.join(folder, "*-last.pth"))
    assert len(files) == 1, files
    return files[0]


@pytest.mark.slow
@pytest.mark.parametrize("model", PLUGIN_MODELS)
def test_resume_continues_exactly(model, tiny_config, tmp_path):
    """2 epochs straight == 1 epoch, then resume from its ``-last.pth`` up to 2 epochs."""
    straight = _run(model, tiny_config(epochs=2, checkpoint_dir=str(tmp_path / "a"), **BUDGET))
    _run(model, tiny_config(epochs=1, checkpoint_dir=str(tmp_path / "b"), **BUDGET))
    last = _last_file(tmp_path / "b")
    assert load_checkpoint(last)["epoch"] == 0
    resumed = _run(model, tiny_config(epochs=2, checkpoint_dir=str(tmp_path / "b"), resume_file=last, **BUDGET))
    assert resumed["best_valid_score"] == straight["best_valid_score"]
    assert resumed["best_valid_result"] == straight["best_valid_result"]
    assert resumed["test_result"] == straight["test_result"]
    assert load_checkpoint(last)["epoch"] == 1  # the resumed run kept writing the same -last file


@pytest.mark.slow
def test_resume_file_records_what_an_exact_resume_needs(tiny_config, tmp_path):
    _run("SASRecMM", tiny_config(epochs=2, checkpoint_dir=str(tmp_path), **BUDGET))
    best = [path for path in glob.glob(str(tmp_path / "SASRecMM-*.pth")) if not path.endswith("-last.pth")]
    checkpoint = load_checkpoint(_last_file(tmp_path))
    assert resume_file_for(best[0]) == _last_file(tmp_path)
    assert checkpoint["resumable"] and checkpoint["best_model_file"] == os.path.abspath(best[0])
    assert set(checkpoint["rng_states"][0]) >= {"torch", "numpy", "random", "loader"}
    assert checkpoint["best_valid_result"] is not None and "optimizer" in checkpoint


@pytest.mark.slow
def test_resume_after_the_last_epoch_only_tests_again(tiny_config, tmp_path):
    first = _run("SASRecMM", tiny_config(epochs=2, checkpoint_dir=str(tmp_path), **BUDGET))
    best_file = load_checkpoint(_last_file(tmp_path))["best_model_file"]
    best_weights = load_checkpoint(best_file)["state_dict"]
    again = _run("SASRecMM", tiny_config(epochs=2, checkpoint_dir=str(tmp_path), resume_file=_last_file(tmp_path), **BUDGET))
    assert again["best_valid_result"] == first["best_valid_result"] and again["test_result"] == first["test_result"]
    for name, tensor in load_checkpoint(best_file)["state_dict"].items():  # the best-model file is untouched
        assert torch.equal(tensor, best_weights[name])


# ----- a killed process ------------------------------------------------------------------------

KILLED_CHILD = """
import sys, time
sys.path.insert(0, {repo!r})
import run_recbole_mm
from recbole_mm.trainer import MultimodalTrainer

KILL_AFTER_EPOCH = {epoch}
armed, batches = [False], [0]
save = MultimodalTrainer._save_resumable
finite = MultimodalTrainer._finite_loss

def save_and_arm(self, epoch, train_data):
    save(self, epoch, train_data)
    armed[0] = armed[0] or epoch == KILL_AFTER_EPOCH

def hang_mid_epoch(self, loss_func, epoch_idx):
    checked = finite(self, loss_func, epoch_idx)
    def loss(interaction):
        value = checked(interaction)
        if armed[0]:
            batches[0] += 1
            if batches[0] == 2:  # the second batch of the next epoch: the process is mid-epoch
                print("MID-EPOCH", flush=True)
                time.sleep(300)
        return value
    return loss

MultimodalTrainer._save_resumable = save_and_arm
MultimodalTrainer._finite_loss = hang_mid_epoch
sys.argv = ["run_recbole_mm.py"] + sys.argv[1:]
run_recbole_mm.main(sys.argv[1:])
"""


def _cli(args, cwd):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONHASHSEED="0")
    return [sys.executable, os.path.join(REPO, "run_recbole_mm.py")] + args, dict(cwd=cwd, env=env)


def _best_valid_line(stdout):
    return re.search(r"^best valid: (.*)$", stdout, re.M).group(1), re.search(r"^test: +(.*)$", stdout, re.M).group(1)


@pytest.mark.slow
def test_killed_training_resumes_to_the_same_result(tiny_config, tmp_path):
    model, epochs, kill_after = "MUFASA", 3, 1
    config_file = tmp_path / "tiny.yaml"
    config_file.write_text(yaml.safe_dump(tiny_config(epochs=epochs, **BUDGET)))
    args = ["--model", model, "--dataset", "tiny", "--config_files", str(config_file)]
    for folder in ("straight", "killed"):
        (tmp_path / folder).mkdir()

    command, options = _cli(args, tmp_path / "straight")
    straight = subprocess.run(command, capture_output=True, text=True, timeout=300, **options)
    assert straight.returncode == 0, straight.stderr[-3000:]

    child = [sys.executable, "-c", textwrap.dedent(KILLED_CHILD.format(repo=REPO, epoch=kill_after))] + args
    killed = subprocess.Popen(child, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, **_cli(args, tmp_path / "killed")[1])
    try:
        for line in killed.stdout:
            if line.strip() == "MID-EPOCH":
                break
        else:
            pytest.fail(f"the training process ended before epoch {kill_after + 1} (rc {killed.wait()})")
        killed.send_signal(signal.SIGKILL)
    finally:
        killed.kill()
        killed.wait()
    last = _last_file(tmp_path / "killed" / "saved")
    assert load_checkpoint(last)["epoch"] == kill_after

    command, options = _cli(args + ["--resume", last, "--state=INFO"], tmp_path / "killed")
    resumed = subprocess.run(command, capture_output=True, text=True, timeout=300, **options)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"Resume training from epoch {kill_after + 1}" in resumed.stdout + resumed.stderr
    assert _best_valid_line(resumed.stdout) == _best_valid_line(straight.stdout)


@pytest.mark.slow
def test_resume_flag_takes_model_and_dataset_from_the_checkpoint(tiny_config, tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(REPO)
    import run_recbole_mm

    _run("DMAE", tiny_config(epochs=1, checkpoint_dir=str(tmp_path), **BUDGET))
    args = run_recbole_mm.parse_args(["--resume", _last_file(tmp_path)])
    assert (args.model, args.dataset) == ("DMAE", "tiny")
    with pytest.raises(run_recbole_mm.InputError, match="--resume needs a plugin model"):
        run_recbole_mm.parse_args(["--model", "SASRec", "--resume", _last_file(tmp_path)])
