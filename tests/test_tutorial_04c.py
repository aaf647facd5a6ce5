"""tutorials/04c_export_hf_and_gguf.py runs top to bottom in fast mode: minimoe -> HF -> minimoe
and minimoe -> GGUF (f32, q8_0, q4_0) -> minimoe are exact, the CLI writes the same folder, the
GGUF bytes are minimoe's packed blocks, and it saves its figure. The transformers and llama.cpp
cells skip when those packages are absent. Needs the `gguf` package (test extra)."""
import pytest

from conftest import check_notebook, run_tutorial

NAME = "04c_export_hf_and_gguf.py"


def test_tutorial_04c_round_trips_are_exact(tmp_path):
    pytest.importorskip("gguf")
    out = run_tutorial(NAME, tmp_path)
    assert "minimoe -> HF -> minimoe, every tensor bit for bit: True" in out
    assert "same logits: True" in out and "same token ids: True" in out
    assert "save_hf and `minimoe export --to hf` wrote identical files: True" in out
    for recipe in ("f32", "q8_0", "q4_0"):
        assert (f"minimoe -> GGUF {recipe} -> minimoe, every tensor exact: True; config fields that differ: "
                f"{{'name': ('tiny-moe', 'tiny-{recipe}')}}") in out
    assert "f32 file: same logits as the trained model: True" in out
    assert "file bytes == minimoe's packed blocks: True" in out
    assert "decoded by hand == minimoe's first 32 weights: True" in out
    assert "D = 8: file row 1 == minimoe row 4: True" in out
    assert (tmp_path / "04c" / "04c_recipes_and_margins.png").stat().st_size > 10_000
    assert (tmp_path / "04c" / "tiny-q4_0.gguf").stat().st_size < (tmp_path / "04c" / "tiny-f32.gguf").stat().st_size / 3


def test_tutorial_04c_is_a_jupytext_percent_notebook():
    check_notebook(NAME)
