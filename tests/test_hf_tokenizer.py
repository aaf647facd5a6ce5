"""Hugging Face tokenizer.json without the `tokenizers` package (minimoe/hf_tokenizer/).

The oracle is the `tokenizers` package: tests/fixtures/make_tokenizers.py wrote, for each of seven
real configurations, its ids and decodes of >= 500 strings (expected.json). The first test checks
minimoe against those files (no `tokenizers` needed); the second recomputes them live when
`tokenizers` is importable. The rest are hand-computed cases and error messages.
"""
import json
import os
import shutil

import numpy as np
import pytest

import minimoe
from minimoe.cli import main
from minimoe.hf_tokenizer import HFTokenizer
from minimoe.hf_tokenizer.bpe import BPE, BYTES_TO_CHARS
from minimoe.hf_tokenizer.chat import apply_chat_template, recognize
from minimoe.hf_tokenizer.unicode_regex import compile_regex, translate
from minimoe.tokenizer import TokenizerError

from conftest import FIXTURES

TOKENIZERS = os.path.join(FIXTURES, "tokenizers")
NAMES = ["gpt2", "llama3", "qwen2", "gpt-oss", "deepseek-v3", "llama2", "mixtral"]


def _expected(name):
    with open(os.path.join(TOKENIZERS, name, "expected.json"), encoding="utf-8") as f:
        return json.load(f)


def _mismatches(tok, ref):
    """Every way minimoe's tokenizer differs from the reference, as (what, input, got, want)."""
    bad = []
    for c in ref["cases"]:
        text = c["text"]
        got = tok.encode(text, add_special_tokens=False).tolist()
        if got != c["ids"]:
            bad.append(("encode", text, got, c["ids"]))
        full = tok.encode(text).tolist()
        if full != ref["special_prefix"] + c["ids"] + ref["special_suffix"]:
            bad.append(("encode with special tokens", text, full, ref["special_prefix"] + c["ids"]))
        for key, skip in (("decoded", False), ("decoded_skip", True)):
            got = tok.decode(c["ids"], skip_special_tokens=skip)
            if got != c.get(key, text):
                bad.append((key, c["ids"], got, c.get(key, text)))
    for c in ref["decodes"]:
        for key, skip in (("text", False), ("text_skip", True)):
            got = tok.decode(c["ids"], skip_special_tokens=skip)
            if got != c[key]:
                bad.append(("decode random ids" + (" skipping specials" if skip else ""), c["ids"], got, c[key]))
    return bad


@pytest.mark.parametrize("name", NAMES)
def test_parity_with_the_reference_fixtures(name):
    tok = minimoe.load_tokenizer(os.path.join(TOKENIZERS, name))
    assert isinstance(tok, HFTokenizer)
    ref = _expected(name)
    assert len(ref["cases"]) >= 500
    bad = _mismatches(tok, ref)
    assert not bad, f"{len(bad)} mismatches with tokenizers {ref['tokenizers_version']}, first: {bad[:3]}"


@pytest.mark.parametrize("name", NAMES)
def test_parity_live_against_the_tokenizers_package(name):
    tokenizers = pytest.importorskip("tokenizers")
    path = os.path.join(TOKENIZERS, name, "tokenizer.json")
    ref_tok = tokenizers.Tokenizer.from_file(path)
    ours = minimoe.load_tokenizer(path)
    strings = [c["text"] for c in _expected(name)["cases"]]
    rng = np.random.default_rng(0)
    letters = list("aZé中 \n\t1!😀'") + [c["text"] for c in _expected(name)["cases"][:40]]
    strings += ["".join(rng.choice(letters, size=rng.integers(1, 12))) for _ in range(200)]
    for s in strings:
        assert ours.encode(s, add_special_tokens=False).tolist() == ref_tok.encode(s, add_special_tokens=False).ids, s
        assert ours.encode(s).tolist() == ref_tok.encode(s).ids, s
        ids = ref_tok.encode(s).ids
        assert ours.decode(ids) == ref_tok.decode(ids, skip_special_tokens=False), s
        assert ours.decode(ids, skip_special_tokens=True) == ref_tok.decode(ids, skip_special_tokens=True), s


# ----------------------------------------------------------------------------------------------
# By hand
# ----------------------------------------------------------------------------------------------

def test_bpe_merges_lowest_rank_first():
    vocab = {"l": 0, "o": 1, "w": 2, "lo": 3, "low": 4, "ow": 5}
    bpe = BPE(vocab, ["l o", "lo w", "o w"])
    assert bpe.encode_word("low") == [4]                   # l+o (rank 0) before o+w (rank 2)
    assert bpe.encode_word("ow") == [5]
    assert bpe.encode_word("lol") == [3, 0]                # no merge for (lo, l)
    bpe = BPE(vocab, [["o", "w"], ["l", "o"], ["lo", "w"]])   # the newer [a, b] form; o+w first now
    assert bpe.encode_word("low") == [0, 5]


def test_bpe_byte_fallback_and_unk():
    vocab = {"<unk>": 0, "a": 1, **{f"<0x{b:02X}>": 2 + b for b in range(256)}}
    bpe = BPE(vocab, [], unk_token="<unk>", byte_fallback=True, fuse_unk=True)
    assert bpe.encode_word("a€") == [1, 2 + 0xE2, 2 + 0x82, 2 + 0xAC]    # "€" is E2 82 AC in UTF-8
    no_bytes = BPE({"<unk>": 0, "a": 1}, [], unk_token="<unk>", fuse_unk=True)
    assert no_bytes.encode_word("a€€a") == [1, 0, 1]                     # one unk for the run
    assert BPE({"<unk>": 0, "a": 1}, [], unk_token="<unk>").encode_word("€€") == [0, 0]


def test_ignore_merges_takes_a_whole_word_from_the_vocabulary():
    vocab = {"a": 0, "b": 1, "ab": 2, "abb": 3}
    assert BPE(vocab, ["a b"]).encode_word("abb") == [2, 1]
    assert BPE(vocab, ["a b"], ignore_merges=True).encode_word("abb") == [3]


def test_gpt2_byte_alphabet():
    assert BYTES_TO_CHARS[ord(" ")] == "Ġ" and BYTES_TO_CHARS[ord("\n")] == "Ċ" and BYTES_TO_CHARS[ord("A")] == "A"
    assert len(set(BYTES_TO_CHARS.values())) == 256


def test_unicode_classes_follow_unicodedata():
    letters = compile_regex(r"\p{L}+")
    assert letters.fullmatch("Straße中文ǅ") and not letters.match("1")
    assert compile_regex(r"\p{N}+").fullmatch("12½Ⅻ٣")
    upper = compile_regex(r"[\p{Lu}\p{Lt}]+")
    assert upper.fullmatch("ABǅ") and not upper.match("a")
    # Oniguruma's \s is White_Space: \x1c is not space there, although Python's \s matches it
    assert compile_regex(r"\s").match("\u3000") and not compile_regex(r"\s").match("\x1c")
    assert compile_regex(r"[^\s\p{L}]+").fullmatch("!\x1c?")


@pytest.mark.parametrize("pattern, words", [
    (r"[\p{Han}]+", "not supported"), (r"[\p{L}&&[^a]]", "intersections"), (r"\w+", "\\w"),
    (r"a$", "end of line"), (r"[^\S]", "negated class")])
def test_untranslatable_regexes_are_refused(pattern, words):
    with pytest.raises(TokenizerError, match=words.replace("\\", "\\\\")):
        translate(pattern)


def test_added_token_flags(tmp_path):
    tok = minimoe.load_tokenizer(os.path.join(TOKENIZERS, "gpt2"))
    ids = {t.content: i for i, t in tok.added.items()}
    assert tok.encode("a <mask> b").tolist() == tok.encode("a").tolist() + [ids["<mask>"]] + tok.encode(" b").tolist()
    assert tok.encode("x [R]  y").tolist() == tok.encode("x ").tolist() + [ids["[R]"]] + tok.encode("y").tolist()
    assert ids["<sw>"] in tok.encode("a <sw> b").tolist()
    assert ids["<sw>"] not in tok.encode("a<sw>b").tolist()          # single_word: not inside a word


def test_decode_skips_special_tokens_on_request_and_unknown_ids():
    tok = minimoe.load_tokenizer(os.path.join(TOKENIZERS, "llama2"))
    ids = tok.encode("Hello")
    assert ids[0] == 1                                                # BOS from the template
    assert tok.decode(ids) == "<s> Hello"
    assert tok.decode(ids, skip_special_tokens=True) == "Hello"
    assert tok.decode([*ids, 10**6]) == "<s> Hello"                   # no such id: skipped
    assert tok.encode("Hello", add_special_tokens=False).tolist() == ids[1:].tolist()


def test_unsupported_files_get_a_clear_error(tmp_path):
    spec = {"model": {"type": "Unigram", "vocab": []}}
    path = tmp_path / "tokenizer.json"
    path.write_text(json.dumps(spec))
    with pytest.raises(TokenizerError, match="Unigram"):
        minimoe.load_tokenizer(str(path))
    with open(os.path.join(TOKENIZERS, "gpt2", "tokenizer.json"), encoding="utf-8") as f:
        spec = json.load(f)
    spec["pre_tokenizer"] = {"type": "BertPreTokenizer"}
    path.write_text(json.dumps(spec))
    with pytest.raises(TokenizerError, match=f"{path}.*pre-tokenizer 'BertPreTokenizer'"):
        minimoe.load_tokenizer(str(tmp_path))
    path.write_text("{not json")
    with pytest.raises(TokenizerError, match="not valid JSON"):
        minimoe.load_tokenizer(str(path))
    with pytest.raises(TokenizerError, match="no such tokenizer"):
        minimoe.load_tokenizer(str(tmp_path / "missing"))


def test_round_trip_through_to_json():
    tok = minimoe.load_tokenizer(os.path.join(TOKENIZERS, "qwen2"))
    again = minimoe.tokenizer.tokenizer_from_dict(json.loads(tok.to_json()))
    text = "Hello <|im_start|>café 123"
    assert again.encode(text).tolist() == tok.encode(text).tolist()


# ----------------------------------------------------------------------------------------------
# Chat templates
# ----------------------------------------------------------------------------------------------

class _Tok:
    source = "test"

    def __init__(self, template, bos=None, eos=None):
        self.chat_template, self.bos_token, self.eos_token = template, bos, eos


HARMONY_MARKERS = '{{- "<|start|>system<|message|>" }} ... "<|channel|>final<|message|>" ... <|start|>assistant'


def test_harmony_prompt_by_hand():
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    text = apply_chat_template(_Tok(HARMONY_MARKERS), msgs, date="2025-08-05")
    assert text == ("<|start|>system<|message|>You are ChatGPT, a large language model trained by OpenAI.\n"
                    "Knowledge cutoff: 2024-06\nCurrent date: 2025-08-05\n\nReasoning: medium\n\n"
                    "# Valid channels: analysis, commentary, final. Channel must be included for every message."
                    "<|end|><|start|>developer<|message|># Instructions\n\nBe brief.<|end|>"
                    "<|start|>user<|message|>Hi<|end|><|start|>assistant")
    history = msgs + [{"role": "assistant", "content": "Hello."}, {"role": "user", "content": "Bye"}]
    text = apply_chat_template(_Tok(HARMONY_MARKERS), history, reasoning_effort="low", date="2025-08-05")
    assert "Reasoning: low" in text
    assert text.endswith("<|start|>assistant<|channel|>final<|message|>Hello.<|end|>"
                         "<|start|>user<|message|>Bye<|end|><|start|>assistant")


def test_harmony_prompt_encodes_its_markers_as_single_tokens():
    tok = minimoe.load_tokenizer(os.path.join(TOKENIZERS, "gpt-oss"))
    tok.chat_template = HARMONY_MARKERS
    ids = tok.encode(apply_chat_template(tok, [{"role": "user", "content": "Hi"}], date="2025-08-05"),
                     add_special_tokens=False)
    start, message = tok.token_to_id("<|start|>"), tok.token_to_id("<|message|>")
    assert ids[0] == start and (ids == start).sum() == 3 and (ids == message).sum() == 2
    assert tok.decode(ids).endswith("<|start|>user<|message|>Hi<|end|><|start|>assistant")


def test_other_chat_formats_by_hand():
    user = [{"role": "user", "content": "Hi"}]
    qwen25 = "{{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\\n' }}<|im_end|>"
    assert apply_chat_template(_Tok(qwen25), user) == (
        "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")
    assert apply_chat_template(_Tok("<|im_start|>{{ role }}<|im_end|>"), user) == \
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    llama = "<|start_header_id|> <|end_header_id|> <|eot_id|>"
    assert apply_chat_template(_Tok(llama, bos="<|begin_of_text|>"), [{"role": "user", "content": " Hi \n"}]) == (
        "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n")
    assert apply_chat_template(_Tok(llama + " Cutting Knowledge Date"), user).startswith(
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nCutting Knowledge Date: December 2023\n"
        "Today Date: 26 Jul 2024\n\n<|eot_id|><|start_header_id|>user")
    mistral = _Tok("{{ bos_token }}[INST] x [/INST]", bos="<s>", eos="</s>")
    assert apply_chat_template(mistral, user + [{"role": "assistant", "content": "Yo"}] + user) == \
        "<s>[INST] Hi [/INST]Yo</s>[INST] Hi [/INST]"
    with pytest.raises(TokenizerError, match="alternate"):
        apply_chat_template(mistral, [{"role": "system", "content": "s"}] + user)
    deepseek = _Tok("'<｜User｜>' '<｜Assistant｜>'", bos="<｜begin▁of▁sentence｜>")
    assert apply_chat_template(deepseek, [{"role": "system", "content": "S"}] + user) == \
        "<｜begin▁of▁sentence｜>S<｜User｜>Hi<｜Assistant｜>"


def test_unrecognized_or_missing_templates_say_so():
    assert recognize("{% for m in messages %}{{ m.content }}{% endfor %}") is None
    with pytest.raises(TokenizerError, match="needs a Jinja engine"):
        apply_chat_template(_Tok("{% for m in messages %}{{ m.content }}{% endfor %}"), [])
    with pytest.raises(TokenizerError, match="no chat template"):
        apply_chat_template(_Tok(None), [])


# ----------------------------------------------------------------------------------------------
# Wired into minimoe.load and `minimoe generate`
# ----------------------------------------------------------------------------------------------

def _hf_mixtral_folder(folder, tokenizer_name, V=1024):
    """A tiny random-weight Hugging Face Mixtral folder whose vocabulary fits a fixture tokenizer."""
    from safetensors.numpy import save_file
    C, F, E, L = 16, 24, 2, 1
    config = {"model_type": "mixtral", "vocab_size": V, "hidden_size": C, "intermediate_size": F,
              "num_hidden_layers": L, "num_attention_heads": 2, "num_key_value_heads": 1,
              "num_local_experts": E, "num_experts_per_tok": 1, "max_position_embeddings": 64,
              "rms_norm_eps": 1e-5, "rope_theta": 1e4, "tie_word_embeddings": False}
    os.makedirs(folder)
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(config, f)
    rng = np.random.default_rng(0)
    w = lambda *s: rng.normal(0, 0.2, s).astype(np.float32)        # noqa: E731
    t = {"model.embed_tokens.weight": w(V, C), "model.norm.weight": np.ones(C, np.float32), "lm_head.weight": w(V, C),
         "model.layers.0.input_layernorm.weight": np.ones(C, np.float32),
         "model.layers.0.post_attention_layernorm.weight": np.ones(C, np.float32),
         "model.layers.0.self_attn.q_proj.weight": w(C, C), "model.layers.0.self_attn.k_proj.weight": w(C // 2, C),
         "model.layers.0.self_attn.v_proj.weight": w(C // 2, C), "model.layers.0.self_attn.o_proj.weight": w(C, C),
         "model.layers.0.block_sparse_moe.gate.weight": w(E, C)}
    for e in range(E):
        p = f"model.layers.0.block_sparse_moe.experts.{e}."
        t.update({p + "w1.weight": w(F, C), p + "w3.weight": w(F, C), p + "w2.weight": w(C, F)})
    save_file(t, os.path.join(folder, "model.safetensors"))
    shutil.copy(os.path.join(TOKENIZERS, tokenizer_name, "tokenizer.json"), folder)
    return folder


def test_load_gives_a_hf_folder_its_tokenizer_and_generate_takes_text(tmp_path, capsys):
    folder = _hf_mixtral_folder(str(tmp_path / "m"), "mixtral")
    model = minimoe.load(folder)
    assert isinstance(model.tokenizer, HFTokenizer)
    assert model.tokenizer.encode("Hello world").tolist()[0] == 1
    assert main(["generate", "--model", folder, "--prompt", "Hello world", "--max-new-tokens", "4",
                 "--temperature", "0"]) == 0
    assert capsys.readouterr().out.startswith("Hello world")
    assert main(["generate", "--model", folder, "--prompt", "Hi", "--chat"]) == 1   # no chat template here
    assert "no chat template" in capsys.readouterr().err


def test_generate_chat_applies_harmony(tmp_path, capsys):
    folder = _hf_mixtral_folder(str(tmp_path / "m"), "gpt-oss")
    with open(os.path.join(folder, "chat_template.jinja"), "w") as f:
        f.write(HARMONY_MARKERS)
    assert minimoe.load_tokenizer(folder).chat_template == HARMONY_MARKERS
    assert main(["generate", "--model", folder, "--prompt", "Hi", "--chat", "--system", "Be brief.",
                 "--max-new-tokens", "3", "--temperature", "0"]) == 0
    assert capsys.readouterr().out.strip() != ""
