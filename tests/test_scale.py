"""Large catalogues: block-wise alignment of memory-mapped files, and the scale benchmark end to end (tiny)."""

import numpy as np
import pytest

from recbole_mm.bench import scale
from recbole_mm.data import features


@pytest.mark.parametrize("dtype,fortran", [(np.float32, False), (np.float16, False), (np.float32, True)])
def test_blockwise_alignment_of_a_mapped_file(tmp_path, monkeypatch, dtype, fortran):
    """Rows read in many small blocks (straight from the file, or through the mapping for Fortran
    order) land on the right internal ids; mean and normalisation work block-wise too."""
    monkeypatch.setattr(features, "ROW_BLOCK_BYTES", 96)  # a few rows per block
    monkeypatch.setattr(features, "MMAP_THRESHOLD_BYTES", 0)  # memory-map even this small file
    rng = np.random.default_rng(0)
    matrix = rng.normal(size=(500, 6)).astype(dtype)
    np.save(tmp_path / "ds.text.npy", np.asfortranarray(matrix) if fortran else matrix)
    (tmp_path / "ds.text.ids").write_text("".join(f"t{i}\n" for i in range(500)))
    mapped, tokens, source = features.read_feature_file(str(tmp_path), "ds", "text")
    assert isinstance(mapped, np.memmap)
    order = rng.permutation(500)[:300]
    item_tokens = ["[PAD]"] + [f"t{i}" for i in order] + ["absent"]
    aligned = features.align_features("text", mapped, tokens, item_tokens, source, "mean", normalize=True)
    expected = matrix[order].astype(np.float32)
    expected /= np.linalg.norm(expected, axis=1, keepdims=True)
    np.testing.assert_allclose(aligned.matrix[1:301], expected, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(aligned.matrix[301], expected.mean(axis=0), rtol=1e-5, atol=1e-6)
    assert aligned.matrix[0].tolist() == [0.0] * 6 and aligned.matched == 300 and aligned.filled == 1


def test_nan_row_found_in_a_later_block(tmp_path, monkeypatch):
    monkeypatch.setattr(features, "ROW_BLOCK_BYTES", 64)
    monkeypatch.setattr(features, "MMAP_THRESHOLD_BYTES", 0)
    matrix = np.ones((50, 4), np.float32)
    matrix[37, 2] = np.nan
    np.save(tmp_path / "ds.text.npy", matrix)
    (tmp_path / "ds.text.ids").write_text("".join(f"t{i}\n" for i in range(50)))
    with pytest.raises(ValueError, match=r"row 37 \(token 't37'\) contains NaN"):
        features.read_feature_file(str(tmp_path), "ds", "text")


@pytest.mark.slow
def test_scale_benchmark_runs_on_a_small_catalogue(tmp_path, capsys):
    """Both models score the catalogue in their own subprocess; DMAE with its shortlist, a ratio row."""
    result = scale.main(["--items", "2000", "--dim", "16", "--users", "60", "--batch", "4", "--chunk", "300",
                         "--hidden", "8", "--repeats", "1", "--set", "dmae_shortlist=20", "--json", str(tmp_path / "scale.json")])
    out = capsys.readouterr().out
    assert "| align: extra RSS" in out and "| SASRecMM: throughput" in out and "| DMAE vs SASRecMM" in out
    assert result["align"]["rows_correct"] and result["score"]["n_items"] == 2000
    assert result["align"]["align_s"] > 0 and set(result["scores"]) == {"SASRecMM", "DMAE"}
    assert all(score["scores_per_s"] > 0 and score["n_items"] == 2000 for score in result["scores"].values())
    assert (tmp_path / "scale.json").is_file()
