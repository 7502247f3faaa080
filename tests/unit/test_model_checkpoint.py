"""Checkpoints in the HF DeepseekV3 format: logits parity with transformers, bit-exact round trips."""

import json

import pytest
import torch

from agentfactory.model import K2Config, K2ForCausalLM
from agentfactory.model.checkpoint import read_safetensors

transformers = pytest.importorskip("transformers")

YARN = dict(
    factor=8.0,
    original_max_position_embeddings=32,
    beta_fast=32.0,
    beta_slow=1.0,
    mscale=0.7,
    mscale_all_dim=0.8,
)
CONFIGS = {
    # group-limited routing (top-2 of 4 groups), a dense first layer, q low-rank
    "grouped-dense-first": dict(preset="debug"),
    # YaRN with mscale ≠ mscale_all_dim, full q_proj, 2 shared experts, no dense layer, no renorm
    "yarn-qproj": dict(
        preset="debug",
        q_lora_rank=None,
        n_group=1,
        topk_group=1,
        num_experts_per_tok=3,
        n_shared_experts=2,
        first_k_dense_replace=0,
        norm_topk_prob=False,
        routed_scaling_factor=1.5,
        max_position_embeddings=256,
        rope_scaling=YARN,
    ),
}


def _model(name: str, seed: int = 0) -> K2ForCausalLM:
    kwargs = dict(CONFIGS[name])
    torch.manual_seed(seed)
    model = K2ForCausalLM(K2Config.preset(kwargs.pop("preset"), **kwargs)).eval()
    with torch.no_grad():  # a non-zero selection bias: it must steer selection but not the weights
        for name_, buf in model.named_buffers():
            if name_.endswith("e_score_correction_bias"):
                buf.normal_(0, 0.05)
    return model


@pytest.mark.parametrize("name", list(CONFIGS))
def test_logits_match_transformers(name, tmp_path):
    model = _model(name)
    model.save_pretrained(tmp_path)
    hf, info = transformers.DeepseekV3ForCausalLM.from_pretrained(
        tmp_path, dtype=torch.float32, output_loading_info=True
    )
    assert not any(info.values()), info  # no missing / unexpected / mismatched keys
    ids = torch.randint(0, model.config.vocab_size, (2, 96), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours, theirs = model(ids).logits, hf.eval()(ids).logits
    diff = (ours - theirs).abs().max().item()
    print(f"{name}: max |logits ours - transformers| = {diff:.2e}")
    assert diff < 1e-4


def test_config_json_is_deepseek_v3(tmp_path):
    _model("yarn-qproj").save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert cfg["model_type"] == "deepseek_v3" and cfg["architectures"] == ["DeepseekV3ForCausalLM"]
    assert (cfg["topk_method"], cfg["scoring_func"], cfg["tie_word_embeddings"]) == (
        "noaux_tc",
        "sigmoid",
        False,
    )
    assert cfg["rope_scaling"]["type"] == "yarn" and cfg["rope_scaling"]["mscale_all_dim"] == 0.8
    keys = read_safetensors(tmp_path)
    assert "model.layers.0.mlp.experts.7.gate_proj.weight" in keys
    assert keys["model.layers.0.mlp.gate.e_score_correction_bias"].dtype == torch.float32
    assert "model.layers.0.self_attn.kv_a_proj_with_mqa.weight" in keys and "lm_head.weight" in keys


def _assert_same_state(a: K2ForCausalLM, b: K2ForCausalLM):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert sa[k].dtype == sb[k].dtype and torch.equal(sa[k], sb[k]), k


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_save_load_is_bit_exact(dtype, tmp_path):
    model = _model("grouped-dense-first").to(dtype)
    assert model.layers[1].mlp.gate.e_score_correction_bias.dtype == torch.float32  # kept fp32
    model.save_pretrained(tmp_path / "a")
    loaded = K2ForCausalLM.from_pretrained(tmp_path / "a")
    _assert_same_state(model, loaded)
    assert loaded.config == model.config
    loaded.save_pretrained(tmp_path / "b")
    for f in ("model.safetensors", "config.json"):
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes()


def test_sharded_save(tmp_path):
    model = _model("yarn-qproj")
    model.save_pretrained(tmp_path, max_shard_bytes=200_000)
    assert len(list(tmp_path.glob("model-*-of-*.safetensors"))) > 1
    assert (tmp_path / "model.safetensors.index.json").exists()
    _assert_same_state(model, K2ForCausalLM.from_pretrained(tmp_path))


def test_reads_checkpoint_saved_by_transformers(tmp_path):
    model = _model("grouped-dense-first")
    model.save_pretrained(tmp_path / "ours")
    hf = transformers.DeepseekV3ForCausalLM.from_pretrained(tmp_path / "ours", dtype=torch.float32)
    hf.save_pretrained(tmp_path / "hf")
    _assert_same_state(model, K2ForCausalLM.from_pretrained(tmp_path / "hf"))


def test_reads_fused_expert_keys():
    """transformers 5 keeps experts fused in memory (gate_up_proj); its state_dict loads too."""
    from agentfactory.model.hf_adapter import from_hf_state_dict

    model = _model("grouped-dense-first")
    hf = transformers.DeepseekV3ForCausalLM(transformers.DeepseekV3Config(**_hf_kwargs(model.config)))
    ours = from_hf_state_dict(hf.state_dict(), model.config)
    fused = hf.state_dict()["model.layers.1.mlp.experts.gate_up_proj"]
    assert torch.equal(ours["layers.1.mlp.experts.up_proj"], fused[:, model.config.moe_intermediate_size :])


def _hf_kwargs(config: K2Config) -> dict:
    from agentfactory.model.hf_adapter import config_to_hf

    out = config_to_hf(config)
    return {k: v for k, v in out.items() if k not in ("architectures", "model_type", "torch_dtype")}
