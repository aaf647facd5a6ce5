"""tutorials/09_load_balancing_and_collapse.py in fast mode: the collapse, the three fixes and the
capacity aside, with their figures under ./minimoe_out/09/ of the working directory."""

from conftest import ROOT, run_tutorial_here


def test_tutorial_09_runs_in_its_working_directory(tmp_path):
    stdout = run_tutorial_here("09_load_balancing_and_collapse.py", tmp_path)
    lines = stdout.splitlines()
    table = lines[next(i for i, l in enumerate(lines) if l.split() == ["method", "val", "loss", "busiest"]) + 1:]
    busiest = {l[:15].strip(): float(l.split()[-1].rstrip("%")) for l in table if l.strip()}   # the last table
    assert busiest["no balancing"] > 60
    for fix in ("aux loss", "loss-free bias", "expert choice"):
        assert busiest[fix] < 60, fix
    assert "of the val tokens skip the MoE layers" in stdout
    for fig in ("09_collapse", "09_aux_loss", "09_loss_free", "09_expert_choice", "09_summary"):
        assert (tmp_path / "minimoe_out" / "09" / f"{fig}.png").stat().st_size > 10_000, fig


def test_tutorial_09_is_notebook_safe():
    text = (ROOT / "tutorials" / "09_load_balancing_and_collapse.py").read_text()
    assert "__file__" not in text and text.startswith("# ---\n# jupyter:")
    jupytext = __import__("pytest").importorskip("jupytext")
    nb = jupytext.reads(text, fmt="py:percent")
    assert {c.cell_type for c in nb.cells} == {"markdown", "code"} and len(nb.cells) > 10
