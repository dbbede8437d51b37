"""A regular (non-editable) install carries the yaml files, the bundled dataset and the benchmark's
published runs, and finds them."""

import os
import shutil
import subprocess
import sys
import zipfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# What setup.py reads to build the package.
SOURCES = ("setup.py", "README.md", "recbole_mm", "properties", "dataset")
PUBLISHED_RUN = "recbole_mm/bench/published/dense/runs/0123abcd.json"

pytestmark = pytest.mark.slow  # builds a wheel / starts interpreters


def copy_sources(target, published):
    """The files the build reads, copied to ``target``; the published cache holds one run file or
    does not exist."""
    skip = shutil.ignore_patterns("__pycache__", "*.egg-info", "published")
    os.makedirs(target)
    for name in SOURCES:
        source = os.path.join(ROOT, name)
        if os.path.isdir(source):
            shutil.copytree(source, os.path.join(target, name), ignore=skip)
        else:
            shutil.copy(source, target)
    if published:
        os.makedirs(os.path.dirname(os.path.join(target, PUBLISHED_RUN)))
        with open(os.path.join(target, PUBLISHED_RUN), "w", encoding="utf-8") as handle:
            handle.write('{"model": "SASRec"}\n')


@pytest.fixture(scope="module", params=[True, False], ids=["published-runs", "no-published-folder"])
def wheel_dir(request, tmp_path_factory):
    out = tmp_path_factory.mktemp("wheel")
    source = out / "source"
    copy_sources(str(source), published=request.param)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(source)],
        check=True, capture_output=True, text=True, timeout=600,
    )
    (wheel,) = [name for name in os.listdir(out) if name.endswith(".whl")]
    target = out / "site"
    with zipfile.ZipFile(out / wheel) as archive:
        archive.extractall(target)
        names = archive.namelist()
    return target, names, request.param


def test_wheel_contains_properties_and_bundled_dataset(wheel_dir):
    _, names, _ = wheel_dir
    assert "recbole_mm/properties/overall.yaml" in names
    assert "recbole_mm/properties/uv-overrides.txt" not in names  # an install-time file
    assert "recbole_mm/properties/model/SASRecMM.yaml" in names
    assert any(name.startswith("recbole_mm/dataset/ml-100k-mm/") and name.endswith(".npy") for name in names)


def test_installed_copy_finds_its_own_resources(wheel_dir):
    site, _, _ = wheel_dir
    code = "from recbole_mm import resources; print(resources.properties_dir()); print(resources.bundled_dataset_root('ml-100k-mm'))"
    env = dict(os.environ, PYTHONPATH=str(site))
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=str(site), timeout=300)
    assert result.returncode == 0, result.stderr
    properties, datasets = result.stdout.split()
    assert properties == os.path.join(str(site), "recbole_mm", "properties")
    assert datasets == os.path.join(str(site), "recbole_mm", "dataset")


def test_wheel_carries_the_published_runs_when_there_are_any(wheel_dir):
    site, names, published = wheel_dir
    assert [name for name in names if "/published/" in name] == ([PUBLISHED_RUN] if published else [])
    code = "from recbole_mm.bench import runner; print(runner.PUBLISHED_DIR)"
    env = dict(os.environ, PYTHONPATH=str(site))
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=str(site), timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == os.path.join(str(site), "recbole_mm", "bench", "published")
