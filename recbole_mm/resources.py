"""Where the plugin's yaml property files and bundled datasets live, in a checkout or an install.

A source checkout (and an editable install) keeps them at the repository's top level
(``properties/``, ``dataset/``); a regular install carries copies inside the package
(``recbole_mm/properties``, ``recbole_mm/dataset``), put there by ``setup.py``.
"""

import os

PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
BUNDLED_DATASETS = ("ml-100k-mm",)


def _first_existing(name):
    for candidate in (os.path.join(PACKAGE_DIR, name), os.path.join(os.path.dirname(PACKAGE_DIR), name)):
        if os.path.isdir(candidate):
            return candidate
    raise FileNotFoundError(f"recbole_mm installation is missing its '{name}' folder (looked beside {PACKAGE_DIR})")


def properties_dir():
    """Folder holding ``overall.yaml``, ``model/<Model>.yaml`` and ``dataset/<ds>.yaml``."""
    return _first_existing("properties")


def datasets_dir():
    """Folder holding the bundled datasets (one sub-folder each)."""
    return _first_existing("dataset")


def overall_yaml():
    return os.path.join(properties_dir(), "overall.yaml")


def model_yaml(model_name):
    """The plugin's defaults file for ``model_name``, or None when it ships none."""
    path = os.path.join(properties_dir(), "model", f"{model_name}.yaml")
    return path if os.path.isfile(path) else None


def dataset_yaml(dataset_name):
    """The plugin's yaml for ``dataset_name``, or None when it ships none."""
    path = os.path.join(properties_dir(), "dataset", f"{dataset_name}.yaml")
    return path if os.path.isfile(path) else None


def bundled_dataset_root(dataset_name):
    """Parent folder of a bundled dataset (what RecBole calls ``data_path``), or None."""
    if dataset_name not in BUNDLED_DATASETS:
        return None
    root = datasets_dir()
    return root if os.path.isdir(os.path.join(root, dataset_name)) else None
