"""`minimoe bench` on tiny sizes: every subcommand runs, --json is one parseable object with the
documented fields, the machine-peaks cache round-trips, and bad arguments give clear errors.
(The real figures come from running the benchmarks on a quiet machine; see docs/kernels.md.)"""
import json
import os

import pytest

from minimoe.cli import main


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MINIMOE_CACHE", str(tmp_path / "cache"))


def run_json(capsys, argv):
    assert main(argv + ["--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_machine_peaks_are_measured_once_and_cached(tmp_path, capsys):
    from minimoe.bench import cache_path, machine_peaks
    r = run_json(capsys, ["bench", "machine", "--quick"])
    assert r["copy_gbs"] > 0 and r["read_gbs"] > 0 and r["sgemm_gflops"] > 0 and r["quick"]
    assert set(r["read_gbs_by_mib"]) == {"1", "16"} and min(r["read_gbs_by_mib"].values()) > 0
    assert cache_path() == str(tmp_path / "cache" / "machine.json")
    again = machine_peaks(quick=True)                       # read back, not measured again
    assert again["measured_at"] == r["measured_at"] and again["copy_gbs"] == r["copy_gbs"]
    with open(cache_path()) as f:
        assert json.load(f)["cpu"] == r["cpu"]


def test_read_gbs_for_picks_the_smallest_measured_size_that_holds_the_model():
    from minimoe.bench.machine import read_gbs_for
    peaks = {"read_gbs": 9.0, "read_gbs_by_mib": {"1": 50.0, "32": 30.0, "64": 12.0}}
    assert read_gbs_for(peaks, 1000) == 50.0
    assert read_gbs_for(peaks, 2**20) == 50.0                 # exactly 1 MiB still fits
    assert read_gbs_for(peaks, 2**20 + 1) == 30.0
    assert read_gbs_for(peaks, 40 * 2**20) == 12.0
    assert read_gbs_for(peaks, 65 * 2**20) == 9.0              # beyond the curve: the big-array read
    assert read_gbs_for({"read_gbs": 9.0}, 10) == 9.0          # a cache file from before the curve


def test_bench_kernels_json(capsys):
    r = run_json(capsys, ["bench", "kernels", "--rows", "48", "--cols", "256", "--batch", "8",
                          "--repeat", "1", "--no-compile", "--formats", "q4_0,q8_0"])
    assert r["shape"] == [48, 256] and set(r["formats"]) == {"q4_0", "q8_0"}
    f = r["formats"]["q4_0"]
    for key in ("gemv_ms", "gemv_gbs", "gemv_speedup", "dequant_blas_ms", "prefill_ms", "prefill_speedup",
                "twin_gemv_ms", "numba_vs_twin_gemv", "weight_bytes", "gemv_1core_ms", "gemv_cores_speedup",
                "fp32_gemv_1thread_ms", "gemv_1core_speedup"):
        assert f[key] > 0
    assert f["weight_bytes"] == 48 * 256 // 32 * 18
    assert set(r["targets"]) == {"q4_0 GEMV >= 3x fp32 BLAS", "q8_0 GEMV >= 2x fp32 BLAS",
                                 "q4_0 prefill (batch 64) within 1.5x of fp32 BLAS"}
    assert main(["bench", "kernels", "--rows", "48", "--cols", "256", "--batch", "8", "--repeat", "1",
                 "--no-compile", "--no-twins", "--formats", "mxfp4"]) == 0
    assert "targets:" in capsys.readouterr().out


def test_bench_decode_json(capsys):
    r = run_json(capsys, ["bench", "decode", "--preset", "tiny-moe", "--recipes", "fp32,q4_0",
                          "--prompt-tokens", "8", "--new-tokens", "3", "--numpy-new-tokens", "2", "--quick-peaks"])
    assert set(r["results"]) == {"fp32", "q4_0"}
    for recipe in ("fp32", "q4_0"):
        for be in ("numba", "numpy"):
            t = r["results"][recipe][be]
            assert t["prefill_tok_s"] > 0 and t["decode_tok_s"] > 0
    assert r["results"]["q4_0"]["numpy"]["new_tokens"] == 2
    assert r["targets"] == {}                      # issue 7's targets are for mixtral-mini only
    # the roofline ceiling: bytes a decode token reads, by hand for fp32 tiny-moe (C 32, 2 layers,
    # GQA 2 kv heads of 8, top-2 of 4 experts of width 32, vocab 256): every active weight once,
    # one embedding row, and K and V of the 8 + 3 + 1 cached positions
    from minimoe import Config
    from minimoe.params import count_params
    cfg = Config.preset("tiny-moe")
    n = count_params(cfg)
    kv = cfg.n_layers * 2 * cfg.n_kv_heads * cfg.head_dim * (8 + 3 + 1)
    t = r["results"]["fp32"]["numba"]
    assert t["bytes_per_token"] == 4 * (n["active"] - n["embedding"] + cfg.d_model + kv)
    assert t["model_bytes"] == 4 * (n["total"] - n["embedding"])
    assert t["ceiling_tok_s"] == pytest.approx(t["read_gbs_at_size"] * 1e9 / t["bytes_per_token"])
    assert t["of_ceiling"] == pytest.approx(t["decode_tok_s"] / t["ceiling_tok_s"])
    q = r["results"]["q4_0"]["numba"]                # experts and attention at 18 bytes per 32 weights
    assert q["bytes_per_token"] < t["bytes_per_token"] / 2


def test_bench_moe_scaling_json_and_plot(tmp_path, capsys):
    png = tmp_path / "scaling.png"
    r = run_json(capsys, ["bench", "moe-scaling", "--models", "small", "--experts", "4,8,64",
                          "--prompt-tokens", "4", "--new-tokens", "3", "--plot", str(png)])
    rows = r["models"]["small"]["rows"]
    assert [x["experts"] for x in rows] == [4, 8, 64]
    assert rows[-1]["active_params"] < 1.05 * rows[0]["active_params"]    # active fixed (but the router's E x C) ...
    assert rows[-1]["total_params"] > 5 * rows[0]["total_params"]         # ... total grows
    assert r["models"]["small"]["growth_8_to_64"] > 0
    assert png.stat().st_size > 10_000


def test_bench_bad_arguments(capsys):
    assert main(["bench", "kernels", "--formats", "nf4"]) == 1
    assert "no fused kernel for nf4" in capsys.readouterr().err
    assert main(["bench", "kernels", "--cols", "100"]) == 1
    assert "--cols a multiple of 32" in capsys.readouterr().err
    assert main(["bench", "moe-scaling", "--experts", "4,eight"]) == 1
    assert "--experts must be integers" in capsys.readouterr().err


@pytest.mark.skipif(not os.path.exists("/proc/self/stat"), reason="reads process states from /proc")
def test_load_competitors_run_only_inside_their_blocks():
    """bench load alternates quiet and loaded blocks: a competitor is paused (state T) outside its
    block and running inside it, so the quiet calls really are quiet."""
    from minimoe.bench.load import paused_competitors

    def state(pid, want="T"):
        """The process's state letter, once it is `want` (signals arrive asynchronously) or after 2 s."""
        import time
        for _ in range(200):
            s = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0]
            if s in want:
                return s
            time.sleep(0.01)
        return s

    with paused_competitors(["quiet", "busy"]) as switches:
        pid = switches["busy"].pid
        assert state(pid) == "T"
        with switches["quiet"]():
            assert state(pid) == "T"
        with switches["busy"]():
            assert state(pid, "RS") in "RS"
        assert state(pid) == "T"
    assert not os.path.exists(f"/proc/{pid}") or state(pid, "ZX") in "ZX"   # killed at the end


def test_bench_load_reports_against_the_quiet_median():
    from minimoe.bench.load import bench_load
    r = bench_load(["tiny-moe"], ["quiet", "busy"], calls=4, rounds=2)["tiny-moe"]
    for op in ("prefill", "decode"):
        q = r["quiet"][op]
        assert q["median_x"] == 1.0 and q["worst_x"] >= 1.0
        b = r["busy"][op]
        assert b["median_x"] == pytest.approx(b["median_ms"] / q["median_ms"])
