"""Image backbones for ``python -m recbole_mm.embed image``, each loaded from local files only.

A backend turns ``--model`` (and ``--model-arch``) into an :class:`ImageTower`: the network, the
preprocessing of a batch of PIL images into pixels, and the call that maps pixels to one vector
per image. Everything else (batching, resume, row order, normalisation, dtype) is shared by
:class:`recbole_mm.embed.image.ImageEncoder` and the runner.

- ``transformers``: a folder written by ``save_pretrained`` (a CLIP-style model with
  ``get_image_features``, or a ``CLIPVisionModelWithProjection``) plus its
  ``preprocessor_config.json``. Needs no torchvision.
- ``open_clip``: a checkpoint file (``.pt`` / ``.pth`` / ``.bin`` / ``.safetensors``) with
  ``--model-arch`` naming its open_clip architecture (``ViT-B-32``, or a model config ``.json``),
  or a folder holding ``open_clip_config.json`` and the weights. Vectors: ``encode_image``.
- ``timm``: a timm-format state dict file with ``--model-arch`` naming the timm architecture
  (``vit_small_patch14_dinov2``, ``resnet50.a1_in1k``, ...). Vectors: the pooled features
  (classifier removed); preprocessing follows the architecture's data config.

open_clip and timm need a torchvision built for the installed torch. Nothing is downloaded: a
name that only a hub could resolve is refused before the library sees it.
"""

import os
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional

from recbole_mm.embed.offline import ModelNotFoundError, require

NEVER_DOWNLOADS = "recbole_mm.embed never downloads models"
CHECKPOINT_SUFFIXES = (".safetensors", ".bin", ".pth")  # what open_clip looks for in a local-dir folder


@dataclass
class ImageTower:
    """What one backend provides; the encoder moves ``network`` to the device and runs it in eval mode."""

    network: Any  # torch.nn.Module
    preprocess: Callable[[List[Any]], Any]  # PIL RGB images -> pixel tensor [B, C, H, W]
    forward: Callable[[Any], Any]  # pixel tensor -> embeddings [B, d]


@dataclass
class Backend:
    load: Callable[[str, Optional[str]], ImageTower]
    how_to: str  # what --model / --model-arch must be, shown with every loading error
    needs_arch: Callable[[str], bool]  # whether --model-arch is required for this --model
    folder_only: bool = False  # --model must be a folder (else a file or, where supported, a folder)


def stack(transform: Callable[[Any], Any]) -> Callable[[List[Any]], Any]:
    """Apply a per-image torchvision transform and stack the results into one batch."""

    def preprocess(images: List[Any]):
        import torch

        return torch.stack([transform(image) for image in images])

    return preprocess


# --- transformers ------------------------------------------------------------------------------


def image_features(outputs):
    """The projected image embedding, whichever output type this transformers version returns."""
    for name in ("image_embeds", "pooler_output"):
        if hasattr(outputs, name):
            return getattr(outputs, name)
    return outputs


def load_transformers(model: str, arch: Optional[str]) -> ImageTower:
    transformers = require("transformers")
    processor = transformers.AutoImageProcessor.from_pretrained(model)
    if transformers.AutoConfig.from_pretrained(model).model_type == "clip_vision_model":
        network = transformers.CLIPVisionModelWithProjection.from_pretrained(model)
        forward = lambda pixels: image_features(network(pixel_values=pixels))  # noqa: E731
    else:
        network = transformers.AutoModel.from_pretrained(model)
        if not hasattr(network, "get_image_features"):
            raise ValueError(f"{type(network).__name__} has no image tower (get_image_features)")
        forward = lambda pixels: image_features(network.get_image_features(pixel_values=pixels))  # noqa: E731
    return ImageTower(network, lambda images: processor(images=images, return_tensors="pt")["pixel_values"], forward)


# --- open_clip ---------------------------------------------------------------------------------


def open_clip_arch(open_clip, arch: str) -> str:
    """A registered open_clip architecture name; a config ``.json`` is registered under its file stem."""
    if arch.lower().endswith(".json") and os.path.isfile(arch):
        open_clip.add_model_config(arch)
        return os.path.splitext(os.path.basename(arch))[0]
    if arch not in open_clip.list_models():
        raise ValueError(f"'{arch}' is no open_clip architecture (see open_clip.list_models()) and no model config .json file")
    return arch


def load_open_clip(model: str, arch: Optional[str]) -> ImageTower:
    open_clip = require("open_clip")
    if os.path.isdir(model):  # open_clip_config.json + weights, as open_clip's push_to_hf_hub writes them
        if not any(name.endswith(CHECKPOINT_SUFFIXES) for name in os.listdir(model)):
            # open_clip would only warn and return random weights
            raise ValueError(f"no weights file ({', '.join(CHECKPOINT_SUFFIXES)}) in the folder")
        network, _, transform = open_clip.create_model_and_transforms(f"local-dir:{os.path.abspath(model)}")
    else:
        network, _, transform = open_clip.create_model_and_transforms(open_clip_arch(open_clip, arch), pretrained=os.path.abspath(model))
    return ImageTower(network, stack(transform), network.encode_image)


# --- timm --------------------------------------------------------------------------------------


def classifier_keys(network) -> List[str]:
    """State-dict keys of the architecture's classifier head, which ``num_classes=0`` removes."""
    names = network.pretrained_cfg.get("classifier") or ()
    names = (names,) if isinstance(names, str) else names
    return [f"{name}.{part}" for name in names for part in ("weight", "bias")]


def load_timm(model: str, arch: Optional[str]) -> ImageTower:
    """The architecture without classifier, and every one of its weights from the file (strict).

    Equivalent to ``timm.create_model(arch, pretrained=True, pretrained_cfg_overlay=dict(file=model),
    num_classes=0)``, except that a checkpoint lacking weights of ``arch`` is an error here, where
    timm would silently keep them random.
    """
    timm = require("timm")
    if not timm.is_model(arch):
        raise ValueError(f"'{arch}' is no timm architecture (see timm.list_models())")
    network = timm.create_model(arch, pretrained=False, num_classes=0)
    state = timm.models.load_state_dict(model)  # .safetensors or torch.save; unwraps 'state_dict' / 'module.'
    for key in classifier_keys(network):
        state.pop(key, None)
    missing, unexpected = network.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(f"the checkpoint does not fit {arch}: {len(missing)} weights missing (e.g. {missing[:3]}), {len(unexpected)} unexpected (e.g. {unexpected[:3]})")
    config = timm.data.resolve_model_data_config(network)
    return ImageTower(network, stack(timm.data.create_transform(**config, is_training=False)), network)


BACKENDS: Dict[str, Backend] = {
    "transformers": Backend(
        load_transformers,
        "give --model a local folder of a transformers CLIP-style model written by save_pretrained, with its preprocessor_config.json",
        needs_arch=lambda model: False,
        folder_only=True,
    ),
    "open_clip": Backend(
        load_open_clip,
        "give --model a local open_clip checkpoint file (.pt, .pth, .bin or .safetensors) and --model-arch its architecture "
        "(an open_clip.list_models() name such as ViT-B-32, or a model config .json), or --model a folder with open_clip_config.json and the weights",
        needs_arch=lambda model: not os.path.isdir(model),
    ),
    "timm": Backend(
        load_timm,
        "give --model a local timm checkpoint file (model.safetensors or pytorch_model.bin / .pth state dict) "
        "and --model-arch its timm architecture (a timm.list_models() name such as resnet50.a1_in1k)",
        needs_arch=lambda model: True,
    ),
}


def check_model_path(backend: str, model: str, arch: Optional[str]) -> None:
    """Refuse, with the backend's how-to, a model path that does not exist or lacks its architecture."""
    spec = BACKENDS[backend]
    if not (os.path.isdir(model) if spec.folder_only else os.path.exists(model)):
        kind = "folder" if spec.folder_only else "file"
        raise ModelNotFoundError(f"image model {kind} not found: {model}; {spec.how_to} ({NEVER_DOWNLOADS})")
    if spec.needs_arch(model) and not arch:
        raise ModelNotFoundError(f"the {backend} backend needs --model-arch for {model}; {spec.how_to} ({NEVER_DOWNLOADS})")
    if arch and not spec.needs_arch(model):
        raise ValueError(f"--model-arch does not apply to the {backend} backend with --model {model}")


def load_image_tower(backend: str, model: str, arch: Optional[str] = None) -> ImageTower:
    """Load one backend's tower from local files, or fail with one message saying what to provide."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown image backend '{backend}'; choose one of {sorted(BACKENDS)}")
    check_model_path(backend, model, arch)
    require(backend)  # a missing library is an ImportError with the install command, not a model error
    try:
        return BACKENDS[backend].load(model, arch)
    # Third-party checkpoint loaders fail with many exception types (OSError, RuntimeError on a
    # shape mismatch, UnpicklingError, SafetensorError, ...); each means "not a usable model here".
    except Exception as error:  # noqa: BLE001
        raise ModelNotFoundError(f"cannot load a {backend} image model from {model} ({type(error).__name__}: {error}); {BACKENDS[backend].how_to} ({NEVER_DOWNLOADS})") from error
