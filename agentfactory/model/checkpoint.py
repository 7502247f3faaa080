"""save_pretrained / load_pretrained: HF DeepseekV3 safetensors directories.

A directory holds config.json, generation_config.json and either model.safetensors or shards
`model-0000i-of-0000n.safetensors` with `model.safetensors.index.json` (the layout transformers and
vLLM read). Tensors keep the model's dtype (the router bias stays fp32), so save -> load -> save is
bit-exact. Loading builds the model on the meta device and fills it once, so a checkpoint never
costs two copies of the weights in memory.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from agentfactory.model.hf_adapter import config_from_hf, config_to_hf, from_hf_state_dict, to_hf_state_dict
from agentfactory.model.model import K2ForCausalLM

INDEX = "model.safetensors.index.json"


def save_pretrained(model: K2ForCausalLM, path: str | Path, max_shard_bytes: int = 4 << 30) -> None:
    """Write `model` (config.json + safetensors) to directory `path` in the HF DeepseekV3 format."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in to_hf_state_dict(model.state_dict()).items()}
    dtype = model.lm_head.weight.dtype
    (path / "config.json").write_text(json.dumps(config_to_hf(model.config, dtype), indent=2) + "\n")
    gen = {k: getattr(model.config, k) for k in ("bos_token_id", "eos_token_id", "pad_token_id")}
    gen = {k: v for k, v in gen.items() if v is not None}
    (path / "generation_config.json").write_text(json.dumps(gen, indent=2) + "\n")

    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for key, tensor in tensors.items():
        nbytes = tensor.numel() * tensor.element_size()
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][key] = tensor
        size += nbytes
    for old in [*path.glob("model*.safetensors"), path / INDEX]:  # never mix with a previous save
        old.unlink(missing_ok=True)
    if len(shards) == 1:
        save_file(shards[0], path / "model.safetensors", metadata={"format": "pt"})
        return
    weight_map = {}
    for i, shard in enumerate(shards, start=1):
        name = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, path / name, metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(shard, name))
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (path / INDEX).write_text(json.dumps(index, indent=2) + "\n")


def read_safetensors(path: str | Path) -> dict[str, torch.Tensor]:
    """All tensors of a checkpoint directory (single file or sharded), by HF key."""
    path = Path(path)
    files = (
        sorted(set(json.loads((path / INDEX).read_text())["weight_map"].values()))
        if (path / INDEX).exists()
        else ["model.safetensors"]
    )
    out = {}
    for name in files:
        with safe_open(path / name, framework="pt") as f:
            for key in f.keys():  # noqa: SIM118 (safe_open is not a dict)
                out[key] = f.get_tensor(key)
    return out


def load_pretrained(
    path: str | Path, dtype: torch.dtype | None = None, device: str | torch.device = "cpu", **overrides: Any
) -> K2ForCausalLM:
    """Load a checkpoint saved by us, by transformers' DeepseekV3, or released as DeepSeek-V3/Kimi-K2.

    `dtype` defaults to the checkpoint's; `overrides` change config fields that do not affect the
    weights' shapes (e.g. `bias_update_speed`, `aux_loss_alpha`).
    """
    path = Path(path)
    config = config_from_hf(json.loads((path / "config.json").read_text()), **overrides)
    state = from_hf_state_dict(read_safetensors(path), config)
    if dtype is None:
        dtype = state["lm_head.weight"].dtype
    with torch.device("meta"):
        model = K2ForCausalLM(config)
    model.to_empty(device=device).to(dtype)  # the router bias stays fp32 (Router._apply)
    model.load_state_dict(state, strict=True)
    model.init_buffers()
    return model
