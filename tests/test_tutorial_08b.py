"""tutorials/08b_tokenizers_and_chat_templates.py runs top to bottom in fast mode from the working
directory, with no `tokenizers` package needed: the hand-written BPE loop gives encode's ids, byte
fallback decodes back, the fixtures' expected.json ids agree, the ChatML and harmony prompts keep
their markers as single tokens, and it saves its figures."""
import pytest

from conftest import check_notebook, run_tutorial

NAME = "08b_tokenizers_and_chat_templates.py"


def test_tutorial_08b_runs(tmp_path):
    out = run_tutorial(NAME, tmp_path)
    assert "decode(encode(text)) == text: True" in out
    assert "minimoe's pre-tokenizer gives the same words: True" in out
    assert "by hand: [284, 357, 737]   minimoe: [284, 357, 737]" in out
    assert "by hand == gpt2.encode(text): True" in out
    assert "'<0xE2>', '<0x82>', '<0xAC>'" in out and "decoded: 'Price: 5€, 漢字'" in out
    assert "same ids as Llama 2's legacy normalizer: True" in out
    assert "half a marker is just text: ['<', '|', 'im'" in out
    for name in ("gpt2", "llama3", "qwen2", "gpt-oss", "deepseek-v3", "llama2", "mixtral"):
        assert f"{name:12s} 150/150 strings: the same ids as tokenizers" in out
    assert "recognized as: chatml" in out
    assert "the markers are single ids: ['<|im_start|>', '<|im_end|>', '<|im_start|>', '<|im_end|>', '<|im_start|>']" in out
    assert "<|start|>user<|message|>What is 2+2?<|end|>\n<|start|>assistant" in out
    assert "decode(encode(prompt)) == prompt: True" in out
    for fig in ("08b_byte_map", "08b_tokens_per_character"):
        assert (tmp_path / "08b" / f"{fig}.png").stat().st_size > 10_000, fig


def test_tutorial_08b_is_a_jupytext_percent_notebook():
    check_notebook(NAME)
