"""Encode item text and images into recbole-mm feature files, offline (the ``embed`` extra).

    python -m recbole_mm.embed text --input items.tsv --id-column item_id --text-columns title \
        --model all-MiniLM-L6-v2 --output dataset/my-ds --dataset my-ds --modality text --normalize
    python -m recbole_mm.embed image --images covers/ --model ./clip-vit-b32 \
        --output dataset/my-ds --dataset my-ds --modality image --normalize
    python -m recbole_mm.embed image --images covers/ --backend timm --model resnet50/model.safetensors \
        --model-arch resnet50.a1_in1k --output dataset/my-ds --dataset my-ds --modality image

Output: ``<output>/<dataset>.<modality>.npy`` + ``.ids`` (:mod:`recbole_mm.feature_files`),
rows in input order; items with empty text or no readable image get no row. Runs are batched and
resumable: finished chunks wait in ``<dataset>.<modality>.partial/`` until the files are assembled.
Models come from local folders or installed packages only; importing this package switches the
Hugging Face libraries to offline mode. The package depends only on :mod:`recbole_mm.feature_files`;
the converters (``recbole_mm.data.convert``, including the bundled MovieLens build) use it.
"""

from recbole_mm.embed.offline import ModelNotFoundError, force_offline

force_offline()

from recbole_mm.embed.runner import EncodeOptions, encode_to_features  # noqa: E402

__all__ = ["EncodeOptions", "ModelNotFoundError", "encode_to_features", "force_offline"]
