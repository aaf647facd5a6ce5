"""`minimoe bench` on tiny sizes: every subcommand runs, --json is one parseable object with the
documented fields, the machine-peaks cache round-trips, and bad arguments give clear errors.
(The real figures come from running the benchmarks on a quiet machine; see docs/kernels.md.)"""
import json

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
    assert cache_path() == str(tmp_path / "cache" / "machine.json")
    again = machine_peaks(quick=True)                       # read back, not measured again
    assert again["measured_at"] == r["measured_at"] and again["copy_gbs"] == r["copy_gbs"]
    with open(cache_path()) as f:
        assert json.load(f)["cpu"] == r["cpu"]


def test_bench_kernels_json(capsys):
    r = run_json(capsys, ["bench", "kernels", "--rows", "48", "--cols", "256", "--batch", "8",
                          "--repeat", "1", "--no-compile", "--formats", "q4_0,q8_0"])
    assert r["shape"] == [48, 256] and set(r["formats"]) == {"q4_0", "q8_0"}
    f = r["formats"]["q4_0"]
    for key in ("gemv_ms", "gemv_gbs", "gemv_speedup", "dequant_blas_ms", "prefill_ms", "prefill_speedup",
                "twin_gemv_ms", "numba_vs_twin_gemv", "weight_bytes"):
        assert f[key] > 0
    assert f["weight_bytes"] == 48 * 256 // 32 * 18
    assert set(r["targets"]) == {"q4_0 GEMV >= 3x fp32 BLAS", "q8_0 GEMV >= 2x fp32 BLAS",
                                 "q4_0 prefill (batch 64) within 1.5x of fp32 BLAS"}
    assert main(["bench", "kernels", "--rows", "48", "--cols", "256", "--batch", "8", "--repeat", "1",
                 "--no-compile", "--no-twins", "--formats", "mxfp4"]) == 0
    assert "targets:" in capsys.readouterr().out


def test_bench_decode_json(capsys):
    r = run_json(capsys, ["bench", "decode", "--preset", "tiny-moe", "--recipes", "fp32,q4_0",
                          "--prompt-tokens", "8", "--new-tokens", "3", "--numpy-new-tokens", "2"])
    assert set(r["results"]) == {"fp32", "q4_0"}
    for recipe in ("fp32", "q4_0"):
        for be in ("numba", "numpy"):
            t = r["results"][recipe][be]
            assert t["prefill_tok_s"] > 0 and t["decode_tok_s"] > 0
    assert r["results"]["q4_0"]["numpy"]["new_tokens"] == 2
    assert "q4_0 decode >= 2x HF eager fp32 (134 tok/s)" in r["targets"]


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
