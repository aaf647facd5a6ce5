"""tutorials/12_debugger_day.py in fast mode: its three pdb sessions stop where they say."""
from conftest import run_tutorial


def test_tutorial_12_runs_its_debugger_sessions(tmp_path):
    out = run_tutorial("12_debugger_day.py", tmp_path, timeout=300)
    assert "forward passes x 2 MoE layers" in out
    assert "dequantize_blocks()" in out and "gemv_q4_0()" in out
    assert "((2, 32), (" in out                         # x: the 2 prompt tokens of width 32, in the kernel run as Python
