# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown]
# # 08b · Tokenizers and chat templates: what a real model reads
#
# Tutorial 08 loaded real architectures; a real model also comes with a **tokenizer**, as a
# `tokenizer.json` beside its weights, and a **chat template** that says how a conversation is
# written as text. minimoe reads both in plain Python (`minimoe/hf_tokenizer/`, docs/tokenizers.md),
# with the same ids as Hugging Face's `tokenizers` package. Here we take its steps apart:
#
# 1. load a `tokenizer.json`, encode and decode;
# 2. byte-level BPE (GPT-2, Llama 3, Qwen, gpt-oss, DeepSeek), step by step: the regex split,
#    the byte-to-unicode map, the merges by rank;
# 3. SentencePiece-style BPE with **byte fallback** (Llama 2, Mistral/Mixtral);
# 4. special and added tokens;
# 5. a chat template (ChatML, harmony) rendered by minimoe and encoded.
#
# The tokenizers are the small test fixtures in `tests/fixtures/tokenizers/`: a ~1000-token
# vocabulary trained for each of seven real configurations, with the real file's normalizer,
# pre-tokenizer, decoder and (some of its) added tokens around it. Each folder's `expected.json`
# holds the ids and decodes the `tokenizers` package gave for 645-725 strings: our oracle.
#
# Figures go under `./minimoe_out/08b/` in the working directory (or `$MINIMOE_TUTORIAL_OUT/08b`).
# `MINIMOE_FAST=1` (what the tests run) checks 150 strings of each expected.json instead of all.

# %%
import json
import os

import matplotlib
import matplotlib.pyplot as plt
import numpy as np

import minimoe
from minimoe.hf_tokenizer.bpe import BYTES_TO_CHARS
from minimoe.hf_tokenizer.chat import apply_chat_template, recognize
from minimoe.hf_tokenizer.pipeline import GPT2_PATTERN
from minimoe.hf_tokenizer.unicode_regex import compile_regex

if os.environ.get("MPLBACKEND") is None and not hasattr(__builtins__, "__IPYTHON__"):
    matplotlib.use("Agg")                 # a script saves its figures; a notebook also shows them
FAST = os.environ.get("MINIMOE_FAST") == "1"
OUT = os.path.join(os.environ.get("MINIMOE_TUTORIAL_OUT", os.path.join(os.getcwd(), "minimoe_out")), "08b")
os.makedirs(OUT, exist_ok=True)
# the fixtures sit in the source tree beside the package (a git checkout or an editable install)
TOKENIZERS = os.environ.get("MINIMOE_TOKENIZER_FIXTURES",
                            os.path.join(os.path.dirname(minimoe.__path__[0]), "tests", "fixtures", "tokenizers"))
if not os.path.isdir(TOKENIZERS):
    raise SystemExit(f"{TOKENIZERS}: not found. Run this tutorial from a minimoe checkout, or set "
                     f"MINIMOE_TOKENIZER_FIXTURES to its tests/fixtures/tokenizers folder")
print(sorted(os.listdir(TOKENIZERS)))

# %% [markdown]
# ## 1. Load, encode, decode
#
# `minimoe.load_tokenizer(folder)` reads the folder's `tokenizer.json` (and a chat template from
# `tokenizer_config.json` or `chat_template.jinja`, when there is one). The object's attributes
# are the pipeline's steps: `normalizer`, `pre_tokenizer`, `model` (the BPE), `post_processor`,
# `decoder`, and `added` (the added tokens by id).

# %%
gpt2 = minimoe.load_tokenizer(os.path.join(TOKENIZERS, "gpt2"))
print(gpt2)
text = "Hello world, it's 2024 and café prices rose 12%!"
ids = gpt2.encode(text)                                                      # int64 (n_tokens,)
print(ids.tolist())
print([gpt2.id_to_token[i] for i in ids])
print("decode(encode(text)) == text:", gpt2.decode(ids) == text)

# %% [markdown]
# ## 2. Byte-level BPE, step by step
#
# **Step 1, the regex split.** Merges never cross a word boundary, so the text is first cut into
# words by a regex. GPT-2's keeps a leading space with the word that follows it, cuts numbers,
# punctuation runs and contractions apart, and leaves runs of white space alone. `\p{L}` (any
# letter) and `\p{N}` (any number) are Unicode classes that Python's `re` does not have;
# `compile_regex` spells them out as code-point ranges (docs/tokenizers.md).

# %%
print(GPT2_PATTERN)
words = compile_regex(GPT2_PATTERN).findall(text)
print(words)

# %% [markdown]
# **Step 2, bytes as printable characters.** BPE works on bytes, so any text can be encoded, but a
# vocabulary in JSON needs printable strings. GPT-2's trick: each of the 256 byte values gets one
# printable character. The 188 printable Latin-1 bytes stand for themselves; the other 68 (the
# controls, the space, `\xad`) are mapped in order to `chr(256)`, `chr(257)`, ...: the space (byte
# 32) becomes `Ġ`, the newline `Ċ`. "é" is two UTF-8 bytes, so it becomes two characters.

# %%
def to_byte_chars(word: str) -> str:
    return "".join(BYTES_TO_CHARS[b] for b in word.encode("utf-8"))


byte_words = [to_byte_chars(w) for w in words]
print(byte_words)
print({repr(chr(b)): BYTES_TO_CHARS[b] for b in (32, 10, 9)}, "  'é' ->", to_byte_chars("é"))
print("minimoe's pre-tokenizer gives the same words:",
      [w for _, w in gpt2.pre_tokenizer(text, True)] == byte_words)

# %%
shifted = np.array([BYTES_TO_CHARS[b] != chr(b) for b in range(256)]).reshape(16, 16)   # (16, 16)
fig, ax = plt.subplots(figsize=(4.6, 4.2))
ax.imshow(shifted, cmap="Oranges", vmin=0, vmax=1.6)
for b in range(256):
    ax.text(b % 16, b // 16, BYTES_TO_CHARS[b], ha="center", va="center", fontsize=7)
ax.set_xticks(range(16), [f"{i:X}" for i in range(16)], fontsize=7)
ax.set_yticks(range(16), [f"{i:X}_" for i in range(16)], fontsize=7)
ax.set_title("GPT-2's byte -> character map\n(orange: 68 bytes moved to chr(256+n))", fontsize=9)
fig.tight_layout()
fig.savefig(os.path.join(OUT, "08b_byte_map.png"), dpi=110)
print("saved", os.path.join(OUT, "08b_byte_map.png"))

# %% [markdown]
# **Step 3, the merges by rank.** Each word starts as one symbol per character. The file's
# `merges` list is ordered: its line number is the merge's **rank**. At every step the adjacent
# pair with the lowest rank is joined (the leftmost one if it occurs twice), until no adjacent
# pair is in the list. Here is that loop written plainly, for one word; minimoe's `BPE.merge`
# does the same with a heap, so that long words are not quadratic.

# %%
merges = gpt2.spec["model"]["merges"]                                        # ["a b", ...] or [["a", "b"], ...]
rank = {tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m): r for r, m in enumerate(merges)}
print(len(rank), "merges; the first five:", list(rank)[:5])


def bpe_by_hand(word: str, verbose: bool = False) -> list[str]:
    symbols = list(word)
    while len(symbols) > 1:
        pairs = [(rank.get((a, b), len(rank)), i) for i, (a, b) in enumerate(zip(symbols, symbols[1:]))]
        best, i = min(pairs)                                                 # lowest rank, leftmost
        if best == len(rank):                                                # no pair has a merge
            break
        symbols[i:i + 2] = [symbols[i] + symbols[i + 1]]
        if verbose:
            print(f"  rank {best:4d}: {symbols}")
    return symbols


word = to_byte_chars(" prices")
print(repr(word))
pieces = bpe_by_hand(word, verbose=True)
by_hand = [gpt2.model.vocab[p] for p in pieces]
print("by hand:", by_hand, "  minimoe:", gpt2.model.encode_word(word))

# %% [markdown]
# All the words of the text, by hand, give the ids of `encode`:

# %%
all_by_hand = [gpt2.model.vocab[p] for w in byte_words for p in bpe_by_hand(w)]
print("by hand == gpt2.encode(text):", all_by_hand == gpt2.encode(text).tolist())

# %% [markdown]
# Later byte-level tokenizers change only the split (and a flag). Llama 3 and gpt-oss split with
# longer regexes (numbers in groups of up to 3 digits, case-aware words for o200k) and set
# `ignore_merges`: a word that is in the vocabulary whole is one token, without the merges. Qwen2
# splits single digits and first applies Unicode NFC normalization:

# %%
toks = {name: minimoe.load_tokenizer(os.path.join(TOKENIZERS, name))
        for name in ("gpt2", "llama3", "qwen2", "gpt-oss", "deepseek-v3", "llama2", "mixtral")}
for name in ("llama3", "qwen2", "gpt-oss"):
    t = toks[name]
    print(f"{name:8s} {[p.text for p in t.pieces('In 2024, 12345 people')]}")

# %% [markdown]
# ## 3. SentencePiece-style BPE with byte fallback
#
# Llama 2 and Mistral/Mixtral were trained with SentencePiece. Their `tokenizer.json` keeps
# characters as they are (no byte map): a space is written `▁` (U+2581) and one is put before the
# text, by a normalizer (Llama 2's legacy files: `Prepend("▁")`, `Replace(" ", "▁")`) or by the
# `Metaspace` pre-tokenizer (newer files). There is no regex split: merges may cross words.
#
# A character not in the vocabulary is written as its UTF-8 **bytes**, the tokens `<0x00>` to
# `<0xFF>`: that is **byte fallback**. The decoder turns runs of byte tokens back into UTF-8.

# %%
llama2 = toks["llama2"]
print("normalizer:", llama2.normalizer)
s = "Price: 5€, 漢字"
print(repr(llama2.normalizer(s)))
ids = llama2.encode(s)                                                        # BOS, then the text
print([llama2.id_to_token[i] for i in ids])
print("'€' is", [f"0x{b:02X}" for b in "€".encode("utf-8")], "in UTF-8")
print("decoded:", repr(llama2.decode(ids, skip_special_tokens=True)))

# %% [markdown]
# The Mixtral fixture does the same with the `Metaspace` pre-tokenizer (`prepend_scheme="first"`:
# a `▁` only before the start of the input), and gives the same ids on this text:

# %%
print("Mixtral:", toks["mixtral"].pre_tokenizer)
print("same ids as Llama 2's legacy normalizer:", np.array_equal(toks["mixtral"].encode(s), ids))

# %% [markdown]
# Byte fallback is what makes text the vocabulary has not seen expensive: each character of an
# unseen script costs its 2-4 UTF-8 bytes as tokens. Byte-level BPE pays the same price, since its
# vocabulary starts from the bytes. The fixtures' vocabularies were trained on English text (the
# first 300 kB of tinyshakespeare; the five byte-level ones give the same counts on these samples,
# so we plot GPT-2's beside Llama 2's):

# %%
SAMPLES = {"English": "The quick brown fox jumps over the lazy dog near the river bank.",
           "French": "Le cœur a ses raisons que la raison ne connaît point.",
           "Russian": "Съешь же ещё этих мягких французских булок, да выпей чаю.",
           "Chinese": "我能吞下玻璃而不伤身体。",
           "Emoji": "🙂👍🏽 🇫🇷 👩‍💻"}
per_char = {"UTF-8 bytes": [len(s.encode("utf-8")) / len(s) for s in SAMPLES.values()]}
for name in ("gpt2", "llama2"):
    per_char[f"{name} tokens"] = [len(toks[name].encode(s, add_special_tokens=False)) / len(s)
                                  for s in SAMPLES.values()]
for what, row in per_char.items():
    print(f"{what:14s} per character:" + "".join(f"{v:6.2f}" for v in row), " ", list(SAMPLES))

fig, ax = plt.subplots(figsize=(6.4, 3.2))
width = 0.8 / len(per_char)
for k, (what, row) in enumerate(per_char.items()):
    ax.bar(np.arange(len(SAMPLES)) + k * width, row, width, label=what)
ax.set_xticks(np.arange(len(SAMPLES)) + 0.4 - width / 2, list(SAMPLES))
ax.set_ylabel("per character")
ax.set_title("~1000-token vocabularies trained on English: unseen scripts cost their bytes", fontsize=9)
ax.legend(fontsize=8)
fig.tight_layout()
fig.savefig(os.path.join(OUT, "08b_tokens_per_character.png"), dpi=110)
print("saved", os.path.join(OUT, "08b_tokens_per_character.png"))

# %% [markdown]
# ## 4. Special and added tokens
#
# `added_tokens` are strings that must stay one token: control tokens (`<|im_start|>`, `<s>`,
# `<|channel|>`), or plain words someone added to the vocabulary. They are cut out of the raw text
# **before** anything else runs, so `<|im_start|>` typed in the text is one id, never split into
# `<`, `|`, `im`, ... Their flags: `special` (skipped by `decode(..., skip_special_tokens=True)`),
# `lstrip`/`rstrip` (also swallow the white space beside them), `single_word`, `normalized`.

# %%
qwen = toks["qwen2"]
for i, t in qwen.added.items():
    print(f"{i:5d} {t.content!r:16s} special={t.special!s:5s} normalized={t.normalized}")
s = "<|im_start|>user\nHi<|im_end|>"
ids = qwen.encode(s)
print([qwen.id_to_token[i] for i in ids])
print("half a marker is just text:", [qwen.id_to_token[i] for i in qwen.encode("<|im_start")])
print("skip_special_tokens:", repr(qwen.decode(ids, skip_special_tokens=True)))

# %% [markdown]
# The **post-processor** adds the template's special tokens around the ids. Llama 3 puts its BOS
# `<|begin_of_text|>` first; GPT-2, Qwen and gpt-oss add nothing. `add_special_tokens=False`
# leaves it out (use it for text that already holds its special tokens, such as a chat prompt).

# %%
llama3 = toks["llama3"]
print([llama3.id_to_token[i] for i in llama3.encode("Hi there")])
print([llama3.id_to_token[i] for i in llama3.encode("Hi there", add_special_tokens=False)])

# %% [markdown]
# ### Checked against `tokenizers`
#
# Each fixture's `expected.json` holds what `tokenizers` 0.23.3 gave for hundreds of strings
# (20 scripts, combining marks, white-space runs, emoji with joiners, every added token alone and
# cut in half, ...). minimoe gives the same ids on every one:

# %%
agree = {}
for name, t in toks.items():
    with open(os.path.join(TOKENIZERS, name, "expected.json"), encoding="utf-8") as f:
        cases = json.load(f)["cases"][:150 if FAST else None]
    agree[name] = (sum(t.encode(c["text"], add_special_tokens=False).tolist() == c["ids"] for c in cases), len(cases))
    print(f"{name:12s} {agree[name][0]}/{agree[name][1]} strings: the same ids as tokenizers")
print("all equal:", all(a == n for a, n in agree.values()))

# %% [markdown]
# With the `tokenizers` package installed (`pip install tokenizers`), compare live on any text:

# %%
try:
    import tokenizers
except ImportError:
    tokenizers = None
    print("tokenizers is not installed: skipped. To run this cell: pip install tokenizers")
if tokenizers is not None:
    probe = "Ünïcödé 𝔘𝔫𝔦𝔠𝔬𝔡𝔢\u3000  <|im_start|>assistant\n 12345 don'T 🙂"
    for name, t in toks.items():
        ref = tokenizers.Tokenizer.from_file(os.path.join(TOKENIZERS, name, "tokenizer.json"))
        print(f"{name:12s} live, the same ids:", ref.encode(probe).ids == t.encode(probe).tolist())

# %% [markdown]
# ## 5. Chat templates
#
# A chat model was trained on conversations written in one exact text format. The model folder
# ships that format as a **Jinja template** (in `tokenizer_config.json` or `chat_template.jinja`).
# minimoe has no Jinja engine: `apply_chat_template` recognizes the common formats by their markers
# and renders them in Python (minimoe/hf_tokenizer/chat.py). The fixtures carry no template, so we
# attach one: Qwen's **ChatML**, as a short Jinja text.

# %%
qwen.chat_template = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content']"
    " + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")
print("recognized as:", recognize(qwen.chat_template))
messages = [{"role": "system", "content": "Be brief."},
            {"role": "user", "content": "What is 2+2?"}]
prompt = apply_chat_template(qwen, messages)
print(prompt)
ids = qwen.encode(prompt, add_special_tokens=False)
print(f"{len(ids)} tokens; the markers are single ids:",
      [(qwen.id_to_token[i]) for i in ids if i in qwen.added])

# %% [markdown]
# gpt-oss's **harmony** format has more structure: a fixed system message (identity, knowledge
# cutoff, the date, the reasoning effort, the channels), the user's system prompt as the
# developer's `# Instructions`, and the assistant answers on **channels** (`analysis` for its
# reasoning, `final` for the answer). minimoe recognizes it by `<|start|>`, `<|channel|>` and
# `<|message|>` in the template (here a stand-in holding only those markers; the real template is
# several hundred lines). The date is fixed so that the output does not change from day to day.

# %%
harmony = toks["gpt-oss"]
harmony.chat_template = "{{- '<|start|>' }} ... {{- '<|channel|>' }} ... {{- '<|message|>' }}"
prompt = apply_chat_template(harmony, messages, date="2025-08-05", reasoning_effort="low")
print(prompt.replace("<|end|>", "<|end|>\n"))
ids = harmony.encode(prompt, add_special_tokens=False)
n_special = int(np.isin(ids, list(harmony.special_ids)).sum())
print(f"{len(ids)} tokens, {n_special} of them special")
print("decode(encode(prompt)) == prompt:", harmony.decode(ids) == prompt)

# %% [markdown]
# After `<|start|>assistant` the model writes its channel (`<|channel|>analysis<|message|>...`),
# and ends its turn with `<|return|>` (or `<|call|>` for a tool call). `minimoe generate --model
# HFDIR --prompt "..." --chat` renders the prompt this way and prints the reply with its special
# tokens, so both channels are visible.
