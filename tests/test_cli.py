"""The command line turns input mistakes into one line on stderr and exit status 2, before training;
``show_progress`` follows whether a person watches."""

import io
import os
import subprocess
import sys

import pytest
from recbole.config import Config

from recbole_mm import cli
from recbole_mm.registry import plugin_overall_defaults, registered_models, watched_by_a_person

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_cli(argv, monkeypatch, capsys):
    """``run_recbole_mm`` in this process: (exit status, stderr lines). RecBole reads sys.argv too."""
    monkeypatch.setattr(sys, "argv", ["run_recbole_mm"] + argv)
    status = cli.run(argv)
    return status, capsys.readouterr().err.strip().splitlines()


def test_unknown_model_lists_plugin_and_recbole_models(monkeypatch, capsys):
    status, err = run_cli(["--model", "NoSuch"], monkeypatch, capsys)
    assert status == 2 and len(err) == 1
    assert err[0].startswith("run_recbole_mm: error: unknown model 'NoSuch'")
    plugin, recbole = err[0].split("plugin models: ")[1].split("; RecBole models: ")
    # every registered plugin model, sorted (other tests may have registered models of their own)
    assert plugin.split(", ") == sorted(registered_models())
    assert {"CAMMSR", "DMAE", "MUFASA", "SASRecMM"} <= set(plugin.split(", "))
    assert {"SASRec", "BPR", "LightGCN", "DeepFM", "KGAT"} <= set(recbole.split(", "))


def test_model_name_in_the_wrong_case_gets_a_suggestion(monkeypatch, capsys):
    status, err = run_cli(["--model", "sasrec"], monkeypatch, capsys)
    assert status == 2 and "did you mean SASRec?" in err[0]


def test_model_whose_library_is_missing_says_which(monkeypatch, capsys):
    monkeypatch.setitem(cli.OPTIONAL_LIBRARY_MODELS, "LightGBM", "no_such_library_for_recbole_mm")
    status, err = run_cli(["--model", "LightGBM"], monkeypatch, capsys)
    assert (status, err) == (2, ["run_recbole_mm: error: model LightGBM needs the package no_such_library_for_recbole_mm, "
                                 "which is not installed (pip install no_such_library_for_recbole_mm)"])


def test_unknown_dataset(monkeypatch, capsys, tmp_path):
    status, err = run_cli(["--model", "SASRec", "--dataset", "nosuch", f"--data_path={tmp_path}"], monkeypatch, capsys)
    assert status == 2 and len(err) == 1
    assert err[0].startswith(f"run_recbole_mm: error: dataset 'nosuch' not found: no nosuch.inter in {tmp_path}")


def test_dataset_folder_without_atomic_files(monkeypatch, capsys, tmp_path):
    (tmp_path / "empty").mkdir()
    status, err = run_cli(["--model", "SASRec", "--dataset", "empty", f"--data_path={tmp_path}"], monkeypatch, capsys)
    assert status == 2 and "dataset 'empty' not found" in err[0]


def test_malformed_yaml_names_file_and_line(monkeypatch, capsys, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("epochs: 3\nmetrics: [Recall, NDCG\nlearning_rate: 0.1\n")
    status, err = run_cli(["--config_files", str(bad)], monkeypatch, capsys)
    assert status == 2 and len(err) == 1
    assert err[0].startswith(f"run_recbole_mm: error: malformed yaml in {bad}, line 3, column 14:")


def test_missing_config_file(monkeypatch, capsys, tmp_path):
    status, err = run_cli(["--config_files", str(tmp_path / "none.yaml")], monkeypatch, capsys)
    assert (status, err) == (2, [f"run_recbole_mm: error: config file not found: {tmp_path / 'none.yaml'}"])


def test_config_file_that_is_not_a_mapping(monkeypatch, capsys, tmp_path):
    listing = tmp_path / "list.yaml"
    listing.write_text("- epochs\n- 3\n")
    status, err = run_cli(["--config_files", str(listing)], monkeypatch, capsys)
    assert status == 2 and "must hold key: value pairs, found a list" in err[0]


@pytest.mark.parametrize("flag, message", [
    ("--epochs=abc", "epochs='abc' (from the command line); expected a number, like the default 30"),
    ("--show_progress=maybe", "show_progress='maybe' (from the command line); expected True or False"),
    ("--load_col=5", "load_col=5 (from the command line); expected a mapping"),
])
def test_value_of_the_wrong_type_names_key_value_and_type(monkeypatch, capsys, flag, message):
    status, err = run_cli(["--model", "SASRec", flag], monkeypatch, capsys)
    assert status == 2 and len(err) == 1
    assert err[0].startswith("run_recbole_mm: error: config value of the wrong type: " + message), err[0]


def test_values_recbole_itself_rejects_are_one_line_too(monkeypatch, capsys):
    status, err = run_cli(["--model", "SASRec", "--eval_args=full"], monkeypatch, capsys)
    assert status == 2 and len(err) == 1
    assert err[0].startswith("run_recbole_mm: error: invalid configuration: ") and "eval_args" in err[0]


def test_wrong_type_in_a_config_file(monkeypatch, capsys, tmp_path):
    config = tmp_path / "mine.yaml"
    config.write_text("learning_rate: fast\n")
    status, err = run_cli(["--model", "SASRec", "--config_files", str(config)], monkeypatch, capsys)
    assert status == 2 and "learning_rate='fast' (from the config files); expected a number" in err[0]


def test_checks_pass_for_valid_input_and_numbers_fit_float_keys(monkeypatch, tiny_planted):
    planted, data_path = tiny_planted
    monkeypatch.setattr(sys, "argv", ["run_recbole_mm", "--learning_rate=1", "--epochs=2"])
    args = cli.parse_args(["--model", "SASRecMM", "--dataset", "tiny"])
    config = cli.check_inputs(args, [], {"data_path": data_path})
    assert config["learning_rate"] == 1 and config["epochs"] == 2


def test_missing_checkpoint(monkeypatch, capsys, tmp_path):
    status, err = run_cli(["--resume", str(tmp_path / "none.pth")], monkeypatch, capsys)
    assert (status, err) == (2, [f"run_recbole_mm: error: checkpoint not found: {tmp_path / 'none.pth'}"])


@pytest.mark.slow
def test_script_exit_status_and_no_traceback(tmp_path):
    result = subprocess.run([sys.executable, os.path.join(REPO, "run_recbole_mm.py"), "--model", "NoSuch"],
                            capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert result.returncode == 2
    assert result.stderr.startswith("run_recbole_mm: error: unknown model 'NoSuch'")
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1


# --- progress bars ----------------------------------------------------------------------------------

class _Stream(io.StringIO):
    def __init__(self, tty):
        super().__init__()
        self._tty = tty

    def isatty(self):
        return self._tty


@pytest.mark.parametrize("stdout_tty, stderr_tty, ci, shown", [
    (True, True, None, True),
    (True, True, "true", False),
    (True, True, "0", True),
    (False, True, None, False),
    (True, False, None, False),
])
def test_progress_shown_only_when_a_person_watches(monkeypatch, stdout_tty, stderr_tty, ci, shown):
    monkeypatch.setattr(sys, "stdout", _Stream(stdout_tty))
    monkeypatch.setattr(sys, "stderr", _Stream(stderr_tty))
    if ci is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", ci)
    assert watched_by_a_person() is shown


def _show_progress(tiny_config, monkeypatch, tty, **user):
    monkeypatch.setattr(sys, "stdout", _Stream(tty))
    monkeypatch.setattr(sys, "stderr", _Stream(tty))
    monkeypatch.delenv("CI", raising=False)
    values = tiny_config(**user)
    values.pop("show_progress", None)
    values.update(user)
    with plugin_overall_defaults():
        return Config(model="SASRecMM", dataset="tiny", config_dict=values)["show_progress"]


def test_run_recbole_mm_progress_default_follows_the_terminal_and_the_user_wins(tiny_config, monkeypatch):
    assert _show_progress(tiny_config, monkeypatch, tty=True) is True
    assert _show_progress(tiny_config, monkeypatch, tty=False) is False
    assert _show_progress(tiny_config, monkeypatch, tty=True, show_progress=False) is False
    assert _show_progress(tiny_config, monkeypatch, tty=False, show_progress=True) is True
