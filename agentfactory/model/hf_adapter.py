"""Mapping between our state dict / K2Config and the Hugging Face DeepseekV3 checkpoint format.

The HF format is the one DeepSeek-V3 and Kimi K2 ship and that `transformers` and vLLM load:
keys under `model.` (except `lm_head.weight`), one `nn.Linear` per expert
(`model.layers.{i}.mlp.experts.{e}.gate_proj.weight`), the router as `mlp.gate.weight` plus the fp32
buffer `mlp.gate.e_score_correction_bias`, and a config.json with `model_type: deepseek_v3`,
`topk_method: noaux_tc`, `scoring_func: sigmoid`. Our module names already match, so the only real
work is stacking / unstacking the experts. transformers 5 keeps experts fused in memory
(`mlp.experts.gate_up_proj` (E, 2F, D), `mlp.experts.down_proj` (E, D, F)); we read that too.
"""

from __future__ import annotations

import re
from typing import Any

import torch

from agentfactory.model.config import K2Config, YaRNConfig

_EXPERT = re.compile(r"^layers\.(\d+)\.mlp\.experts\.(gate_proj|up_proj|down_proj)$")
_HF_EXPERT = re.compile(r"^layers\.(\d+)\.mlp\.experts\.(\d+)\.(gate_proj|up_proj|down_proj)\.weight$")
_HF_FUSED = re.compile(r"^layers\.(\d+)\.mlp\.experts\.(gate_up_proj|down_proj)$")
_HF_LAYER = re.compile(r"^layers\.(\d+)\.")

# K2Config fields stored under the same name in config.json.
_SAME_NAME = (
    "vocab_size", "hidden_size", "intermediate_size", "moe_intermediate_size", "num_hidden_layers",
    "num_attention_heads", "n_shared_experts", "n_routed_experts", "routed_scaling_factor", "kv_lora_rank",
    "q_lora_rank", "qk_rope_head_dim", "v_head_dim", "qk_nope_head_dim", "n_group", "topk_group",
    "num_experts_per_tok", "first_k_dense_replace", "norm_topk_prob", "max_position_embeddings",
    "initializer_range", "rms_norm_eps", "rope_theta", "aux_loss_alpha", "bias_update_speed",
    "bos_token_id", "eos_token_id", "pad_token_id",
)  # fmt: skip


def config_to_hf(config: K2Config, dtype: torch.dtype = torch.float32) -> dict[str, Any]:
    """config.json content that transformers' DeepseekV3Config and vLLM's DeepseekV3 accept."""
    out: dict[str, Any] = {
        "architectures": ["DeepseekV3ForCausalLM"],
        "model_type": "deepseek_v3",
        **{name: getattr(config, name) for name in _SAME_NAME},
        "num_key_value_heads": config.num_attention_heads,
        "topk_method": "noaux_tc",  # sigmoid scores + selection bias (vLLM reads this to load the bias)
        "scoring_func": "sigmoid",
        "seq_aux": True,
        "hidden_act": "silu",
        "moe_layer_freq": 1,
        "ep_size": 1,
        "rope_scaling": None,
        "rope_interleave": True,
        "attention_bias": False,
        "attention_dropout": 0.0,
        "tie_word_embeddings": False,
        "num_nextn_predict_layers": 0,
        "use_cache": True,
        "torch_dtype": str(dtype).removeprefix("torch."),
    }
    if config.rope_scaling is not None:
        out["rope_scaling"] = {"type": "yarn", **config.rope_scaling.model_dump()}
    return out


def config_from_hf(hf: dict[str, Any], **overrides: Any) -> K2Config:
    """K2Config from a config.json dict (ours, DeepSeek's, Moonshot's, or one saved by transformers)."""
    if hf.get("model_type") not in ("deepseek_v3", "kimi_k2"):
        raise ValueError(f"expected model_type deepseek_v3 or kimi_k2, got {hf.get('model_type')!r}")
    for key, want in (("topk_method", "noaux_tc"), ("scoring_func", "sigmoid"), ("hidden_act", "silu")):
        if hf.get(key, want) != want:
            raise ValueError(f"unsupported {key}={hf[key]!r} (K2 uses {want!r})")
    if hf.get("tie_word_embeddings"):
        raise ValueError("tied embeddings are not supported (K2 unties lm_head)")
    kwargs = {name: hf[name] for name in _SAME_NAME if name in hf}
    # transformers >= 5 writes `rope_parameters` (with rope_theta inside); older files `rope_scaling`.
    rope = dict(hf.get("rope_parameters") or hf.get("rope_scaling") or {})
    if "rope_theta" in rope:
        kwargs["rope_theta"] = rope["rope_theta"]
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type == "yarn":
        kwargs["rope_scaling"] = YaRNConfig(**{k: rope[k] for k in YaRNConfig.model_fields if k in rope})
    elif rope_type != "default":
        raise ValueError(f"unsupported rope type {rope_type!r} (K2 uses yarn or none)")
    for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
        if isinstance(kwargs.get(name), list):  # HF allows a list of eos ids; keep the first
            kwargs[name] = kwargs[name][0] if kwargs[name] else None
    return K2Config(**{**kwargs, **overrides})


def to_hf_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our state dict -> HF keys, one tensor per expert (fresh contiguous copies: safetensors
    refuses tensors that share storage)."""
    out = {}
    for key, tensor in state.items():
        if key.startswith("rotary.") or key.endswith("tokens_per_expert"):
            continue
        m = _EXPERT.match(key)
        if m:
            layer, proj = m.groups()
            for e, w in enumerate(tensor.unbind(0)):
                out[f"model.layers.{layer}.mlp.experts.{e}.{proj}.weight"] = w.clone()
        elif key == "lm_head.weight":
            out[key] = tensor
        else:
            out[f"model.{key}"] = tensor
    return out


def from_hf_state_dict(hf: dict[str, torch.Tensor], config: K2Config) -> dict[str, torch.Tensor]:
    """HF keys (per-expert or transformers-5 fused experts) -> our state dict.

    Layers past num_hidden_layers (DeepSeek-V3's MTP module) and RoPE buffers are dropped.
    """
    out: dict[str, torch.Tensor] = {}
    experts: dict[tuple[int, str], dict[int, torch.Tensor]] = {}
    for hf_key, tensor in hf.items():
        key = hf_key.removeprefix("model.")
        layer = _HF_LAYER.match(key)
        if (layer and int(layer.group(1)) >= config.num_hidden_layers) or key.endswith("rotary_emb.inv_freq"):
            continue
        if m := _HF_EXPERT.match(key):
            i, e, proj = m.groups()
            experts.setdefault((int(i), proj), {})[int(e)] = tensor
        elif m := _HF_FUSED.match(key):
            i, proj = m.groups()
            if proj == "gate_up_proj":
                gate, up = tensor.chunk(2, dim=1)
                out[f"layers.{i}.mlp.experts.gate_proj"] = gate.contiguous()
                out[f"layers.{i}.mlp.experts.up_proj"] = up.contiguous()
            else:
                out[f"layers.{i}.mlp.experts.down_proj"] = tensor
        else:
            out[key] = tensor
    for (i, proj), by_expert in experts.items():
        if sorted(by_expert) != list(range(config.n_routed_experts)):
            raise KeyError(f"layer {i} {proj}: expected experts 0..{config.n_routed_experts - 1}")
        out[f"layers.{i}.mlp.experts.{proj}"] = torch.stack([by_expert[e] for e in range(len(by_expert))])
    return out
