"""The labs' published parameter counts, and the conventions that reproduce them from our exact counts."""
import json
import math

import pytest

import minimoe
from minimoe.inspect import published as pub
from minimoe.params import count_params

from conftest import FIXTURES

HF = json.loads((FIXTURES / "hf_param_counts.json").read_text())["models"]


def _by_hand(name: str) -> dict[str, int]:
    """The counts the conventions are made of, from the transformers-recorded total and the config."""
    cfg = minimoe.Config.preset(name)
    c = count_params(cfg)
    assert c["total"] == HF[name]["total"]
    table = cfg.vocab_size * cfg.d_model
    return {"total": c["total"], "active": c["active"], "table": table,
            "head": 0 if cfg.tie_embeddings else table, "mtp": c["mtp"], "mtp_active": c["mtp_active"]}


def test_figures_are_read_to_their_significant_digits():
    assert pub.parse("116.8B") == (116.8, 1e9, 1)
    assert pub.parse("355B") == (355, 1e9, 0)
    assert pub.parse("400B") == (400, 1e9, -2)       # a round number: one significant digit
    assert pub.parse("800M") == (800, 1e6, -2)
    assert pub.parse("1T") == (1, 1e12, 0)
    assert pub.matches(116_829_156_672, "116.8B") and not pub.matches(116_870_000_000, "116.8B")
    assert pub.matches(449_000_000_000, "400B") and not pub.matches(451_000_000_000, "400B")
    assert pub.matches(3_353_000_000, "3.3B", cut=True) and not pub.matches(3_353_000_000, "3.3B")


def test_every_published_figure_is_reproduced_by_some_convention():
    for name in pub.PUBLISHED:
        for row in pub.reproduce(name):
            assert row["how"] in ("rounded", "cut"), (name, row["figure"], row["ours"])
            for convention in row["matches"]:
                assert pub.matches(row["ours"][convention], row["figure"], cut=row["how"] == "cut")


def _matches(name: str) -> dict[str, list[str]]:
    return {r["quantity"]: r["matches"] for r in pub.reproduce(name)}


@pytest.mark.parametrize("name", ["llama-4-scout", "llama-4-maverick", "mixtral-8x7b",
                                  "mixtral-8x22b-instruct", "qwen1.5-moe-a2.7b", "phi-3.5-moe"])
def test_active_figures_that_count_the_embedding_and_the_head(name):
    assert _matches(name)["active"][0] == "active"


@pytest.mark.parametrize("name", ["glm-4.5", "glm-4.5-air", "qwen3-next-80b-a3b"])
def test_active_figures_without_the_embedding_and_the_head(name):
    """GLM's 32B and 12B, and Qwen3-Next's 3B, leave out the embedding table and the head."""
    h = _by_hand(name)
    assert _matches(name)["active"][0] == "active - embedding - head"
    figure = pub.PUBLISHED[name].figures["active"]
    assert pub.matches(h["active"] - h["table"] - h["head"], figure)
    assert not pub.matches(h["active"], figure) and not pub.matches(h["active"] - h["table"], figure)


def test_qwen15_quotes_both_ways():
    """Qwen1.5-MoE: "2.7B activated" counts everything; its "2.0B non-embedding" leaves out the
    embedding and the head (2.07B, printed cut)."""
    h = _by_hand("qwen1.5-moe-a2.7b")
    rows = {r["quantity"]: r for r in pub.reproduce("qwen1.5-moe-a2.7b")}
    assert rows["active"]["matches"][0] == "active" and rows["active"]["how"] == "rounded"
    assert rows["active non-embedding"]["matches"] == ["active - embedding - head"]
    assert rows["active non-embedding"]["how"] == "cut"
    assert math.floor((h["active"] - 2 * h["table"]) / 1e8) == 20


def test_deepseek_v2_lite_and_granite_leave_out_the_embedding():
    # DeepSeek-V2-Lite: 2.45B without the embedding, printed "2.4B" (cut)
    row = pub.reproduce("deepseek-v2-lite")[1]
    assert (row["matches"], row["how"]) == (["active - embedding"], "cut")
    # Granite ties its embedding: leaving the table out takes the head with it (807M -> "800M")
    h = _by_hand("granite-3.1-3b-a800m")
    assert _matches("granite-3.1-3b-a800m")["active"] == ["active - embedding (tied: the head too)"]
    assert h["head"] == 0 and round((h["active"] - h["table"]) / 1e8) == 8


def test_kimi_k2_active_depends_on_rounding():
    """Kimi K2's "32B activated": 31.69B without the embedding rounds to it; 32.86B with it only
    cuts to it. Both readings are reported, the rounded one first."""
    h = _by_hand("kimi-k2")
    assert _matches("kimi-k2")["active"] == ["active - embedding"]
    assert pub.matches(h["active"], "32B", cut=True) and not pub.matches(h["active"], "32B")
    assert pub.matches(h["total"], "1T")


def test_the_mtp_layer_explains_glm_45s_total():
    """GLM-4.5's 355B is the model (352.80B) plus its MTP layer (3.99B), less the embedding and the
    head; GLM-4.5-Air's 106B leaves the MTP layer out."""
    h = _by_hand("glm-4.5")
    row = pub.reproduce("glm-4.5")[0]
    assert row["matches"] == ["total + MTP - embedding - head"] and row["mtp_explains_gap"]
    assert round((h["total"] + h["mtp"] - 2 * h["table"]) / 1e9) == 355
    assert round(h["total"] / 1e9) == 353 and h["mtp"] == HF["glm-4.5"]["mtp"]
    air = pub.reproduce("glm-4.5-air")[0]
    assert not air["mtp_explains_gap"] and "total - embedding - head" in air["matches"]


def test_llama_4_scouts_total_includes_the_vision_encoder():
    """Meta's 109B for Scout counts the vision encoder transformers builds (0.87B); its 400B for
    Maverick is the text model alone (400.71B)."""
    assert pub.PUBLISHED["llama-4-scout"].vision == HF["llama-4-scout"]["vision"]
    assert pub.PUBLISHED["llama-4-maverick"].vision == HF["llama-4-maverick"]["vision"]
    assert _matches("llama-4-scout")["total"] == ["total + vision encoder"]
    assert _matches("llama-4-maverick")["total"][0] == "total"


def test_the_compare_table_names_conventions_and_the_mtp_gap(capsys):
    from minimoe.cli import main
    assert main(["estimate", "--compare"]) == 0
    out = capsys.readouterr().out
    assert "published figures beside ours" in out
    assert "the MTP layer explains the gap: without it the total is 352.80B" in out
    assert "total + vision encoder" in out and "(printed cut, not rounded)" in out
    assert "NOT reproduced" not in out
    for name in pub.PUBLISHED:
        assert name in out
