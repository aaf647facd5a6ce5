"""`minimoe generate --recipe`: the packed model generates, and it is the one minimoe.quantize makes."""
import numpy as np

import minimoe
from conftest import FIXTURES
from minimoe.cli import main


def test_generate_recipe_runs_the_quantized_model(capsys):
    argv = ["generate", "--model", str(FIXTURES / "hf_mixtral_mha"), "--prompt-ids", "1,2,3",
            "--max-new-tokens", "12", "--temperature", "0"]
    assert main(argv + ["--recipe", "q4_0"]) == 0
    got = [int(i) for i in capsys.readouterr().out.strip().split(",")]
    model = minimoe.quantize(minimoe.load(str(FIXTURES / "hf_mixtral_mha")), "q4_0")
    want = model.generate(np.array([1, 2, 3]), 12, temperature=0).tolist()
    assert got == want
    float_ids = minimoe.load(str(FIXTURES / "hf_mixtral_mha")).generate(np.array([1, 2, 3]), 12, temperature=0)
    assert got != float_ids.tolist()                     # the 4-bit weights change these greedy tokens


def test_generate_recipe_unknown_is_an_error_naming_it(capsys):
    assert main(["generate", "--preset", "tiny-moe", "--recipe", "q3_x", "--max-new-tokens", "1"]) == 1
    assert "unknown recipe 'q3_x'" in capsys.readouterr().err
