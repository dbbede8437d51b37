"""Item images -> feature files, with a CLIP image tower loaded from a local folder.

The model folder is one written by transformers' ``save_pretrained``: a ``CLIPModel`` (or any
model with ``get_image_features``, e.g. SigLIP) or a ``CLIPVisionModelWithProjection``, together
with its ``preprocessor_config.json``. Preprocessing uses transformers' PIL image processor, so
torchvision is not needed (open_clip and timm need it, which is why they are not used here).
Images come from a folder of ``<token>.<ext>`` files or from a table column of paths.
"""

import logging
import os
from typing import List, Optional, Tuple

import numpy as np

from recbole_mm.embed.offline import ModelNotFoundError, default_device, require
from recbole_mm.embed.runner import EncodeOptions, encode_to_features
from recbole_mm.embed.table import read_table, require_columns, unique_ids

logger = logging.getLogger(__name__)

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


def image_features(outputs):
    """The projected image embedding, whichever output type this transformers version returns."""
    for name in ("image_embeds", "pooler_output"):
        if hasattr(outputs, name):
            return getattr(outputs, name)
    return outputs


class ImageEncoder:
    """A CLIP-style image tower behind the runner's ``prepare`` / ``encode`` interface."""

    def __init__(self, model: str, device: Optional[str] = None):
        if not os.path.isdir(model):
            raise ModelNotFoundError(f"image model folder not found: {model}; give --model a local CLIP folder saved with transformers' save_pretrained (recbole_mm.embed never downloads models)")
        self.identity = os.path.abspath(model)
        self.device = device or default_device()
        transformers = require("transformers")
        self.image = require("PIL.Image")
        try:
            self.processor = transformers.AutoImageProcessor.from_pretrained(model)
            self.model, self.forward = self.load_tower(transformers, model)
        except (OSError, ValueError) as error:
            raise ModelNotFoundError(f"cannot load an image model from {model} ({error})") from None
        self.model.to(self.device).eval()

    @staticmethod
    def load_tower(transformers, model: str):
        """The network and the call that maps pixel values to image embeddings."""
        if transformers.AutoConfig.from_pretrained(model).model_type == "clip_vision_model":
            network = transformers.CLIPVisionModelWithProjection.from_pretrained(model)
            return network, lambda pixels: network(pixel_values=pixels)
        network = transformers.AutoModel.from_pretrained(model)
        if not hasattr(network, "get_image_features"):
            raise ValueError(f"{type(network).__name__} has no image tower (get_image_features)")
        return network, lambda pixels: network.get_image_features(pixel_values=pixels)

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

        pixels = self.processor(images=images, return_tensors="pt")["pixel_values"].to(self.device)
        with torch.inference_mode():
            features = image_features(self.forward(pixels))
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
