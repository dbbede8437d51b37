"""Item images -> feature files, with an image backbone loaded from local files.

Backends (:mod:`recbole_mm.embed.image_models`): ``transformers`` (default; a CLIP-style folder
written by ``save_pretrained``, no torchvision needed), ``open_clip`` (a checkpoint file plus its
architecture) and ``timm`` (a state dict plus its architecture). Images come from a folder of
``<token>.<ext>`` files or from a table column of paths.
"""

import logging
import os
from typing import List, Optional, Tuple

import numpy as np

from recbole_mm.embed.image_models import load_image_tower
from recbole_mm.embed.offline import default_device, require
from recbole_mm.embed.runner import EncodeOptions, encode_to_features
from recbole_mm.embed.table import read_table, require_columns, unique_ids

logger = logging.getLogger(__name__)

DEFAULT_BACKEND = "transformers"
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")


def images_from_folder(folder: str) -> Tuple[List[str], List[str]]:
    """``(tokens, paths)`` of the image files in ``folder``, sorted by token; a token may have one file."""
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"image folder not found: {folder}")
    found = {}
    for name in sorted(os.listdir(folder)):
        token, extension = os.path.splitext(name)
        if name.startswith(".") or extension.lower() not in IMAGE_EXTENSIONS:
            continue
        if token in found:
            raise ValueError(f"{folder}: item '{token}' has two images, {os.path.basename(found[token])} and {name}")
        found[token] = os.path.join(folder, name)
    tokens = sorted(found)
    return tokens, [found[token] for token in tokens]


def images_from_table(path: str, id_column: str, path_column: str, image_root: Optional[str] = None, sep: Optional[str] = None) -> Tuple[List[str], List[str]]:
    """``(tokens, paths)`` in table order; relative paths start at ``image_root`` (default: the table's folder)."""
    table = read_table(path, sep)
    require_columns(table, [id_column, path_column], path)
    root = image_root or os.path.dirname(os.path.abspath(path))
    paths = [os.path.join(root, value.strip()) if value.strip() else "" for value in table[path_column]]
    return unique_ids(table, id_column, path), paths


class ImageEncoder:
    """An image backbone behind the runner's ``prepare`` / ``encode`` interface.

    The backend (:mod:`recbole_mm.embed.image_models`) only decides how the network is loaded,
    how a batch of images becomes pixels and how pixels become vectors; reading the files and the
    batched, resumable, ordered run are the same for all of them.
    """

    def __init__(self, model: str, device: Optional[str] = None, backend: str = DEFAULT_BACKEND, arch: Optional[str] = None):
        self.tower = load_image_tower(backend, model, arch)
        self.identity = ":".join([backend, arch or "", os.path.abspath(model)])  # names the model in the resume fingerprint
        self.image = require("PIL.Image")
        self.device = device or default_device()
        self.tower.network.to(self.device).eval()

    def prepare(self, path: str):
        """The image as RGB, or None when the file is missing or unreadable."""
        if not path:
            return None
        try:
            with self.image.open(path) as image:
                return image.convert("RGB")
        except (OSError, ValueError) as error:
            logger.debug("skipping image %s: %s", path, error)
            return None

    def encode(self, images: list) -> np.ndarray:
        import torch

        pixels = self.tower.preprocess(images).to(self.device)
        with torch.inference_mode():
            features = self.tower.forward(pixels)
        return features.float().cpu().numpy()


def embed_images(
    tokens: List[str],
    paths: List[str],
    encoder: ImageEncoder,
    folder: str,
    dataset: str,
    modality: str,
    options: Optional[EncodeOptions] = None,
) -> Tuple[str, str]:
    """Write ``<folder>/<dataset>.<modality>.npy/.ids``; missing or unreadable images become missing rows."""
    return encode_to_features(encoder, tokens, paths, folder, dataset, modality, options)
