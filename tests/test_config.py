import json

import pytest

import minimoe
from minimoe import Config, ConfigError
from minimoe.presets import PRESETS


def test_json_round_trip_every_preset(tmp_path):
    for name in PRESETS:
        cfg = Config.preset(name)
        assert Config.from_json(cfg.to_json()) == cfg
        cfg.save(tmp_path / "c.json")
        assert Config.load(tmp_path / "c.json") == cfg


def test_preset_names_are_case_insensitive():
    assert Config.preset("Shakespeare-MoE") == Config.preset("shakespeare-moe")


def test_derived_defaults():
    c = Config(d_model=64, n_heads=4, d_ff=100, n_experts=4, top_k=2)
    assert (c.head_dim, c.n_kv_heads, c.d_expert) == (16, 4, 100)


def test_explicit_head_dim_need_not_divide_the_width():
    c = Config(d_model=2880, n_heads=64, n_kv_heads=8, head_dim=64)  # gpt-oss-style
    assert c.head_dim * c.n_heads != c.d_model


@pytest.mark.parametrize("kwargs, words", [
    (dict(n_experts=4, top_k=5), "top_k"),
    (dict(n_experts=0, top_k=2), "top_k"),
    (dict(d_model=30, n_heads=4), "does not divide d_model"),
    (dict(n_heads=4, n_kv_heads=3), "n_kv_heads=3 does not divide n_heads=4"),
    (dict(d_model=0), "d_model must be a positive integer"),
    (dict(n_layers=-1), "n_layers must be a positive integer"),
    (dict(vocab_size=2.5), "vocab_size must be a positive integer"),
    (dict(router="bogus", n_experts=2, top_k=1), "router must be one of"),
    (dict(qk_norm="sometimes"), "qk_norm must be one of"),
    (dict(n_layers=2, n_experts=2, top_k=1, dense_layers=[5]), "dense_layers has layer indices [5]"),
    (dict(rope_theta=-1.0), "rope_theta must be a positive finite number"),
    (dict(rope_scaling={"type": "ntk", "factor": 2}), "rope_scaling.type"),
    (dict(n_shared_experts=1), "n_shared_experts > 0 needs n_experts > 0"),
])
def test_invalid_configs_name_the_problem(kwargs, words):
    with pytest.raises(ConfigError) as e:
        Config(**kwargs)
    assert words in str(e.value)


def test_unknown_field_and_preset(tmp_path):
    with pytest.raises(ConfigError, match="unknown config field"):
        Config.from_dict({"d_model": 64, "colour": "blue"})
    with pytest.raises(ConfigError, match="unknown preset 'nope'"):
        Config.preset("nope")
    p = tmp_path / "bad.json"
    p.write_text("{not json")
    with pytest.raises(ConfigError, match="bad.json: not valid JSON"):
        Config.load(p)
    p.write_text(json.dumps({"d_model": 64, "n_heads": 5}))
    with pytest.raises(ConfigError, match="bad.json: n_heads=5 does not divide"):
        Config.load(p)


def test_layer_kinds():
    c = Config(n_layers=4, n_experts=4, top_k=2, dense_layers=[0], sliding_window=8, sliding_layers=[1, 3])
    assert [c.is_moe_layer(i) for i in range(4)] == [False, True, True, True]
    assert [c.window(i) for i in range(4)] == [0, 8, 0, 8]
    assert minimoe.Config(sliding_window=8).window(1) == 8  # no sliding_layers: every layer
