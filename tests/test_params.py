"""Parameter counts, checked by hand."""
import minimoe
from minimoe.params import count_params


def test_dense_preset_counts_by_hand():
    # shakespeare-dense: V=65, C=128, 4 layers, F=344, tied embeddings
    per_layer = 4 * 128 * 128 + 3 * 128 * 344 + 2 * 128   # attention + SwiGLU + two norms
    total = 65 * 128 + 4 * per_layer + 128                 # + embedding + final norm
    c = count_params(minimoe.Config.preset("shakespeare-dense"))
    assert c["total"] == c["active"] == total == 800_000


def test_moe_active_is_k_over_e_of_the_experts():
    cfg = minimoe.Config.preset("shakespeare-moe")
    c = count_params(cfg)
    experts = 4 * 8 * 3 * 128 * 172
    assert c["by_component"]["experts"] == experts
    assert c["total"] - c["active"] == experts - experts * 2 // 8
    dense = count_params(minimoe.Config.preset("shakespeare-dense"))
    assert abs(c["active"] / dense["active"] - 1) < 0.05


def test_model_param_counts_match_its_arrays():
    for name in ("tiny", "tiny-moe"):
        m = minimoe.Model(minimoe.Config.preset(name))
        assert m.param_counts()["total"] == sum(a.size for a in m.params.values())


def test_dense_layers_hold_no_experts():
    cfg = minimoe.Config(n_layers=3, n_experts=4, top_k=1, dense_layers=[0, 2])
    c = count_params(cfg)
    assert c["by_component"]["experts"] == 1 * 4 * 3 * cfg.d_model * cfg.d_expert
    assert c["by_component"]["ffn"] == 2 * 3 * cfg.d_model * cfg.d_ff
