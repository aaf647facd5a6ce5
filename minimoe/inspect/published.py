"""What the labs say: each model's published parameter counts, and which way of counting gives each.

Labs count differently. "Active" may or may not include the embedding table (looked up, one row
per token) and the output head (multiplied in full by every token); a total may or may not include
a multi-token-prediction (MTP) layer the checkpoint stores, or a vision encoder. So the same model
can be quoted as 37B or 38B. Rather than assert one reading, `reproduce` tries every convention
below on our exact counts (minimoe.params.count_params) and names those that give the printed
figure.

A figure "matches" when our count, rounded to the figure's significant digits, is the figure:
"116.8B" has four (116.8), "355B" three, "32B" two, and "400B", "800M" and "1T" one, because the
trailing zeros of a round number carry no information. If no convention matches when rounded, one
that matches when cut (3.35B printed as "3.3B") is reported as such.

    reproduce("glm-4.5")
    -> [{"quantity": "total", "figure": "355B", "matches": ["total + MTP - embedding - head"],
         "how": "rounded", "mtp_explains_gap": True, ...}, ...]
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from minimoe.config import Config
from minimoe.inspect.estimate import _b
from minimoe.params import count_params


@dataclass(frozen=True)
class Published:
    figures: dict[str, str]        # the lab's words -> its figure as printed: {"total": "355B", ...}
    source: str                    # where the lab says it
    vision: int = 0                # parameters of a vision encoder that a total may include (from
                                   # transformers, tests/fixtures/hf_param_counts.json)
    note: str = ""


PUBLISHED: dict[str, Published] = {
    "gpt-oss-120b": Published({"total": "116.8B", "active": "5.1B"},
                              "huggingface.co/openai/gpt-oss-120b (model card)"),
    "gpt-oss-20b": Published({"total": "20.9B", "active": "3.6B"},
                             "huggingface.co/openai/gpt-oss-20b (model card)"),
    "mixtral-8x7b": Published({"total": "46.7B", "active": "12.9B"}, "mistral.ai/news/mixtral-of-experts"),
    "mixtral-8x22b": Published({"total": "141B", "active": "39B"}, "mistral.ai/news/mixtral-8x22b"),
    "mixtral-8x22b-instruct": Published({"total": "141B", "active": "39B"},
                                        "mistral.ai/news/mixtral-8x22b"),
    "deepseek-v3": Published({"total": "671B", "active": "37B"},
                             "huggingface.co/deepseek-ai/DeepSeek-V3 (model card)",
                             note="DeepSeek's README counts 685B in the checkpoint: 671B and 14B of MTP "
                                  "module, which is the MTP layer plus its own copies of the embedding "
                                  "and the head"),
    "qwen3-30b-a3b": Published({"total": "30.5B", "active": "3.3B"},
                               "huggingface.co/Qwen/Qwen3-30B-A3B (model card)"),
    "qwen3-235b-a22b": Published({"total": "235B", "active": "22B"},
                                 "huggingface.co/Qwen/Qwen3-235B-A22B (model card)"),
    "olmoe-1b-7b": Published({"total": "6.9B", "active": "1.3B"},
                             "huggingface.co/allenai/OLMoE-1B-7B-0924 (model card)"),
    "kimi-k2": Published({"total": "1T", "active": "32B"},
                         "huggingface.co/moonshotai/Kimi-K2-Instruct (model card)"),
    "llama-4-scout": Published({"total": "109B", "active": "17B"},
                               "huggingface.co/meta-llama/Llama-4-Scout-17B-16E (model card)",
                               vision=871_932_416),
    "llama-4-maverick": Published({"total": "400B", "active": "17B"},
                                  "huggingface.co/meta-llama/Llama-4-Maverick-17B-128E (model card)",
                                  vision=871_932_416),
    "qwen3-next-80b-a3b": Published({"total": "80B", "active": "3B"},
                                    "huggingface.co/Qwen/Qwen3-Next-80B-A3B-Instruct (model card)"),
    "glm-4.5": Published({"total": "355B", "active": "32B"}, "github.com/zai-org/GLM-4.5 (README)"),
    "glm-4.5-air": Published({"total": "106B", "active": "12B"}, "github.com/zai-org/GLM-4.5 (README)"),
    "deepseek-v2-lite": Published({"total": "15.7B", "active": "2.4B"},
                                  "arxiv.org/abs/2405.04434 (DeepSeek-V2 paper, appendix B)"),
    "qwen1.5-moe-a2.7b": Published({"total": "14.3B", "active": "2.7B", "active non-embedding": "2.0B"},
                                   "qwenlm.github.io/blog/qwen-moe"),
    "granite-3.1-3b-a800m": Published({"total": "3.3B", "active": "800M"},
                                      "huggingface.co/ibm-granite/granite-3.1-3b-a800m-instruct "
                                      "(model card)"),
    "phi-3.5-moe": Published({"total": "42B", "active": "6.6B"},
                             "huggingface.co/microsoft/Phi-3.5-MoE-instruct (model card)"),
}

UNITS = {"T": 1e12, "B": 1e9, "M": 1e6, "K": 1e3}


def parse(figure: str) -> tuple[float, float, int]:
    """'116.8B' -> (116.8, 1e9, 1): the number, its unit, and the decimal place it is rounded to
    (negative for round numbers: '400B' -> -2, '1T' -> 0)."""
    number, unit = figure[:-1], UNITS[figure[-1]]
    if "." in number:
        return float(number), unit, len(number.split(".")[1])
    return float(number), unit, -(len(number) - len(number.rstrip("0")))


def matches(value: int, figure: str, cut: bool = False) -> bool:
    """Is `value` parameters what `figure` says, to its printed digits (rounded, or cut)?"""
    number, unit, places = parse(figure)
    x = value / unit
    shown = math.floor(x * 10**places) / 10**places if cut else round(x, places)
    return math.isclose(shown, number, rel_tol=1e-12)


def conventions(cfg: Config, published: Published | None = None) -> dict[str, dict[str, int]]:
    """{"total": {name: count}, "active": {name: count}}: our counts in every way labs count.

    The embedding table is V*C; the head is V*C too unless tied (then one table is both, and
    "without the embedding" already takes the head with it). MTP: the model's multi-token-prediction
    layers (minimoe.params.mtp_shapes), only for models that declare them."""
    c = count_params(cfg)
    table = c["embedding"]
    head = 0 if cfg.tie_embeddings else c["by_component"]["head"]
    out: dict[str, dict[str, int]] = {"total": {}, "active": {}}
    for quantity, n, mtp in (("total", c["total"], c["mtp"]), ("active", c["active"], c["mtp_active"])):
        variants = {"": n, " + MTP": n + mtp} if mtp else {"": n}
        for plus, m in variants.items():
            out[quantity][f"{quantity}{plus}"] = m
            tied = "" if head else " (tied: the head too)"
            out[quantity][f"{quantity}{plus} - embedding{tied}"] = m - table
            if head:
                out[quantity][f"{quantity}{plus} - embedding - head"] = m - table - head
        if quantity == "total" and published is not None and published.vision:
            out[quantity]["total + vision encoder"] = n + published.vision
    return out


def reproduce(name: str, cfg: Config | None = None) -> list[dict]:
    """For each figure the lab published for preset `name`: the conventions that reproduce it.

    Each entry: quantity (the lab's words), figure, source, ours ({convention: count}), matches
    (the conventions giving the figure), how ("rounded", "cut" or "none"), mtp_explains_gap (only
    conventions with the MTP layer give it), note."""
    pub = PUBLISHED.get(name)
    if pub is None:
        return []
    cfg = Config.preset(name) if cfg is None else cfg
    conv = conventions(cfg, pub)
    rows = []
    for quantity, figure in pub.figures.items():
        ours = conv["active" if quantity.startswith("active") else "total"]
        how, found = "none", []
        for cut, label in ((False, "rounded"), (True, "cut")):
            found = [k for k, v in ours.items() if matches(v, figure, cut)]
            if found:
                how = label
                break
        rows.append({"quantity": quantity, "figure": figure, "source": pub.source, "ours": ours,
                     "matches": found, "how": how,
                     "mtp_explains_gap": bool(found) and all("MTP" in k for k in found),
                     "note": pub.note})
    return rows


def table(names=None) -> str:
    """The published figures beside ours: which convention reproduces each, and where an MTP layer
    (or a vision encoder) explains a gap."""
    names = [n for n in (PUBLISHED if names is None else names) if n in PUBLISHED]
    head = f"{'model':<24}{'quantity':<22}{'published':>10}{'ours':>10}  convention that reproduces it"
    lines = ["published figures beside ours (B = 10^9 parameters); a figure is reproduced when our "
             "count, rounded to its printed digits, is the figure", head, "-" * len(head)]
    for name in names:
        for i, r in enumerate(reproduce(name)):
            first = r["matches"][0] if r["matches"] else next(iter(r["ours"]))
            how = {"rounded": "", "cut": " (printed cut, not rounded)", "none": "  NOT reproduced"}[r["how"]]
            also = f"; also {', '.join(r['matches'][1:])}" if len(r["matches"]) > 1 else ""
            lines.append(f"{name if i == 0 else '':<24}{r['quantity']:<22}{r['figure']:>10}"
                         f"{_b(r['ours'][first]):>10}  {first if r['matches'] else '-'}{how}{also}")
            if r["mtp_explains_gap"]:
                base = r["ours"][r["quantity"].split()[0]]
                lines.append(f"{'':<56}  the MTP layer explains the gap: without it "
                             f"the {r['quantity']} is {_b(base)}")
            elif r["how"] == "none":
                lines.append(f"{'':<56}  ours: " + ", ".join(f"{k} {_b(v)}" for k, v in r["ours"].items()))
        if PUBLISHED[name].note:
            lines.append(f"{'':<56}  ({PUBLISHED[name].note})")
    return "\n".join(lines)

