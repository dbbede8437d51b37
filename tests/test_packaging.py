"""A regular (non-editable) install carries the yaml files and the bundled dataset, and finds them."""

import os
import subprocess
import sys
import zipfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

pytestmark = pytest.mark.slow  # builds a wheel / starts interpreters


@pytest.fixture(scope="module")
def wheel_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), ROOT],
        check=True, capture_output=True, text=True, timeout=600,
    )
    (wheel,) = [name for name in os.listdir(out) if name.endswith(".whl")]
    target = out / "site"
    with zipfile.ZipFile(out / wheel) as archive:
        archive.extractall(target)
        names = archive.namelist()
    return target, names


def test_wheel_contains_properties_and_bundled_dataset(wheel_dir):
    _, names = wheel_dir
    assert "recbole_mm/properties/overall.yaml" in names
    assert "recbole_mm/properties/model/SASRecMM.yaml" in names
    assert any(name.startswith("recbole_mm/dataset/ml-100k-mm/") and name.endswith(".npy") for name in names)


def test_installed_copy_finds_its_own_resources(wheel_dir):
    site, _ = wheel_dir
    code = "from recbole_mm import resources; print(resources.properties_dir()); print(resources.bundled_dataset_root('ml-100k-mm'))"
    env = dict(os.environ, PYTHONPATH=str(site))
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=str(site), timeout=300)
    assert result.returncode == 0, result.stderr
    properties, datasets = result.stdout.split()
    assert properties == os.path.join(str(site), "recbole_mm", "properties")
    assert datasets == os.path.join(str(site), "recbole_mm", "dataset")
