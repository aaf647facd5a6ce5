"""tutorials/13_serving_and_batches.py in fast mode: the distinct-experts table against the formula,
the estimator's batch table, measured decode, and the offload answer; its figures saved."""
import re

from conftest import run_tutorial


def test_tutorial_13_runs_and_its_tables_hold(tmp_path):
    out = run_tutorial("13_serving_and_batches.py", tmp_path, timeout=300)
    table = re.findall(r"^\s+(\d+)\s+([\d.]+)\s+([\d.]+)$", out, re.M)       # B measured formula
    rows = {int(b): (float(m), float(f)) for b, m, f in table}
    assert rows[1] == (2.0, 2.0)                         # one token: exactly its K experts
    assert all(m <= f + 0.3 for m, f in rows.values())    # a trained router touches no more than uniform
    assert rows[128][0] > rows[8][0] > rows[1][0]
    assert "MoE / dense" in out and "decode B= 8" in out and "with the experts on the CPU" in out
    for fig in ("13_distinct_experts", "13_moe_vs_dense", "13_prefill_decode"):
        assert (tmp_path / f"{fig}.png").stat().st_size > 10_000, fig
