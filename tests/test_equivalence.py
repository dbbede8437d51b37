"""Run keys that survive a bit-identical change: the alias lookup and the equivalence check behind it."""

import json
import os
import shutil
import subprocess

import pytest

from recbole_mm.bench import equivalence, runner


def _ok_row(model, seed):
    return {"model": model, "dataset": "tiny", "seed": seed, "status": "ok", "ndcg@10": 0.1}


def test_a_run_cached_under_a_checked_older_fingerprint_is_found_and_no_other(tmp_path, monkeypatch):
    """Without the alias the run reads as missing; with it the stored row (and its key) comes back. The
    chain is followed (c -> b -> a), and an alias of another model or an unchecked fingerprint finds nothing."""
    monkeypatch.setattr(runner, "ALIASES_PATH", str(tmp_path / "key_aliases.json"))
    cache = runner.RunCache(str(tmp_path / "runs"))
    spec = lambda fp, model="MUFASA": runner.RunSpec(model, "tiny", {"use_gpu": False}, 2020, None, {"model": fp})  # noqa: E731
    stored = spec("a").key(None, 5)
    cache.put(stored, _ok_row("MUFASA", 2020))
    options = {"threads": 1, "cold_max_count": 5}

    assert runner.execute([spec("c")], cache, options, run_missing=False)[0]["status"] == "missing"
    runner.write_aliases([{"model": "MUFASA", "fingerprint": "c", "same_as": "b"},
                          {"model": "MUFASA", "fingerprint": "b", "same_as": "a"},
                          {"model": "DMAE", "fingerprint": "x", "same_as": "a"}])
    assert runner.fingerprint_aliases("MUFASA", "c") == ["b", "a"]
    row = runner.execute([spec("c")], cache, options, run_missing=False)[0]
    assert row["status"] == "ok" and row["key"] == stored
    assert runner.execute([spec("x")], cache, options, run_missing=False)[0]["status"] == "missing"
    assert runner.execute([spec("x", "DMAE")], cache, options, run_missing=False)[0]["status"] == "missing"  # no DMAE row


def _tree(source_root, folder):
    """A copy of the package's code and yaml (not its published runs) as a source tree to probe."""
    shutil.copytree(os.path.join(source_root, "recbole_mm"), os.path.join(folder, "recbole_mm"),
                    ignore=shutil.ignore_patterns("published", "figures", "__pycache__"))
    if os.path.isdir(os.path.join(source_root, "properties")):  # a checkout; an install keeps them in the package
        shutil.copytree(os.path.join(source_root, "properties"), os.path.join(folder, "properties"))
    return str(folder)


def _edit_yaml(tree, old, new):
    path = os.path.join(tree, "properties", "model", "SASRecMM.yaml")
    with open(path, encoding="utf-8") as handle:
        text = handle.read()
    assert old in text
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(text.replace(old, new, 1))


@pytest.mark.slow
def test_the_check_tells_a_comment_edit_from_a_changed_default_and_records_only_the_first(tmp_path):
    """A comment edit changes the fingerprint but not one bit of training: recorded as an alias. A changed
    dropout trains differently: reported, and nothing recorded."""
    root = equivalence._checkout_root()
    base = _tree(root, tmp_path / "base")
    comment = _tree(root, tmp_path / "comment")
    _edit_yaml(comment, "# (float) Dropout", "# (float)  Dropout")
    value = _tree(root, tmp_path / "value")
    _edit_yaml(value, "hidden_dropout_prob: 0.5", "hidden_dropout_prob: 0.4")

    same = equivalence.compare("SASRecMM", base, comment, [{}], epochs=1)
    assert same["equivalent"] and same["old"] != same["new"] and same["differences"] == []
    changed = equivalence.compare("SASRecMM", base, value, [{}], epochs=1)
    assert not changed["equivalent"] and changed["differences"] == ["{}: losses", "{}: parameters", "{}: scores"]

    aliases = str(tmp_path / "key_aliases.json")
    assert equivalence.record("SASRecMM", changed, "HEAD", aliases) is None and not os.path.exists(aliases)
    entry = equivalence.record("SASRecMM", same, "HEAD", aliases)
    assert (entry["fingerprint"], entry["same_as"]) == (same["new"], same["old"])
    assert runner.fingerprint_aliases("SASRecMM", same["new"], aliases) == [same["old"]]
    assert equivalence.record("SASRecMM", same, "HEAD", aliases) is None  # already known
    with open(aliases, encoding="utf-8") as handle:
        assert len(json.load(handle)["aliases"]) == 1


def test_the_probe_configurations_cover_every_benchmark_variant_of_the_model():
    configs = equivalence.probe_configs("MUFASA")
    geometries = equivalence.PROBE_GEOMETRIES["MUFASA"]
    assert len(configs) % len(geometries) == 0
    assert {"sal_branches": ["window"], **geometries[0]} in configs and {"use_mfl": False, **geometries[1]} in configs
    assert not any(key in config for config in configs for key in equivalence.PROTOCOL_KEYS)
    assert equivalence.probe_configs("SASRecMM") == [{}]


@pytest.mark.slow
def test_the_command_compares_the_checkout_with_a_revision(capsys, tmp_path, monkeypatch):
    """End to end against HEAD; SASRecMM's code is HEAD's in a clean checkout, so nothing is recorded."""
    monkeypatch.setattr(runner, "ALIASES_PATH", str(tmp_path / "key_aliases.json"))  # never the shipped file
    root = equivalence._checkout_root()
    if not os.path.isdir(os.path.join(root, ".git")):
        pytest.skip("not a git checkout")
    status = subprocess.run(["git", "-C", root, "status", "--porcelain", "recbole_mm/model", "recbole_mm/data",
                             "properties/model/SASRecMM.yaml"], capture_output=True, text=True).stdout
    if status.strip():
        pytest.skip("SASRecMM's code has uncommitted edits")
    assert equivalence.main(["--model", "SASRecMM", "--epochs", "1", "--record"]) == 0
    out = capsys.readouterr().out
    assert "1 configurations" in out and "bit-identical" in out and "nothing recorded" in out
    with pytest.raises(SystemExit):
        equivalence.main(["--model", "SASRecMM", "--against", "no-such-revision"])
