"""K2ForCausalLM: the Kimi K2 / DeepSeek-V3 decoder (MLA + MoE) as a plain single-device nn.Module.

embed -> [RMSNorm -> MLA -> + -> RMSNorm -> (dense MLP | MoE) -> +] x L -> RMSNorm -> lm_head.
The first `first_k_dense_replace` layers use a dense SwiGLU MLP, the rest a MoE (moe.py). The
lm_head is untied. Module names mirror HF's DeepseekV3ForCausalLM without the `model.` prefix, so
the checkpoint mapping (hf_adapter.py) only has to split the stacked expert weights.

Build big configs on the meta device (`with torch.device("meta"): K2ForCausalLM(cfg)`): nothing is
allocated and `count_params` works for the 1T preset. Otherwise the constructor calls
`init_weights()`, the one place where every tensor is initialized.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from agentfactory.model.attention import MLA, RotaryEmbedding
from agentfactory.model.config import K2Config
from agentfactory.model.kv_cache import KVCache, LayerKV
from agentfactory.model.loss import cross_entropy
from agentfactory.model.moe import MLP, MoE, update_router_bias


@dataclass
class K2Output:
    """What `K2ForCausalLM.forward` returns (attribute names as in transformers' outputs)."""

    logits: torch.Tensor  # (B, T, vocab_size), in the model's dtype
    loss: torch.Tensor | None = None  # mean CE over labels != -100 (+ balance loss when enabled)
    aux_loss: torch.Tensor | None = None  # sequence-wise balance loss (already times alpha), if enabled
    expert_load: torch.Tensor | None = None  # (num_moe_layers, E) tokens routed to each expert, this call


class Block(nn.Module):
    """Pre-norm transformer block: MLA, then a dense MLP or a MoE."""

    def __init__(self, config: K2Config, layer_idx: int):
        super().__init__()
        self.input_layernorm = nn.RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.self_attn = MLA(config)
        self.post_attention_layernorm = nn.RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.is_moe = config.is_moe_layer(layer_idx)
        self.mlp = MoE(config) if self.is_moe else MLP(config.hidden_size, config.intermediate_size)

    def forward(self, x_BTD: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, kv: LayerKV | None = None):
        x_BTD = x_BTD + self.self_attn(self.input_layernorm(x_BTD), cos, sin, kv)
        h_BTD = self.post_attention_layernorm(x_BTD)
        if not self.is_moe:
            return x_BTD + self.mlp(h_BTD), None, None
        out_BTD, counts_E, aux = self.mlp(h_BTD)
        return x_BTD + out_BTD, counts_E, aux


class K2ForCausalLM(nn.Module):
    """The K2 causal LM. `model(input_ids, labels=None)` -> K2Output(logits, loss, ...)."""

    def __init__(self, config: K2Config):
        super().__init__()
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.rotary = RotaryEmbedding(config)
        self.layers = nn.ModuleList(Block(config, i) for i in range(config.num_hidden_layers))
        self.norm = nn.RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.gradient_checkpointing = False
        if not self.lm_head.weight.is_meta:
            self.init_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        """Initialize every tensor (std = config.initializer_range, as HF DeepseekV3):

        | tensor                                               | init          |
        |------------------------------------------------------|---------------|
        | embed_tokens.weight, lm_head.weight                  | normal(0, std) |
        | every nn.Linear weight (MLA projections, MLPs)       | normal(0, std) |
        | experts.gate_proj / up_proj / down_proj (E, out, in) | normal(0, std) |
        | gate.weight (router)                                 | normal(0, std) |
        | gate.e_score_correction_bias                         | 0             |
        | every RMSNorm weight                                 | 1             |
        | rotary.inv_freq (buffer), tokens_per_expert (buffer) | recomputed / 0 |
        """
        std = self.config.initializer_range
        for module in self.modules():
            if isinstance(module, nn.Linear | nn.Embedding):
                nn.init.normal_(module.weight, mean=0.0, std=std)
            elif isinstance(module, nn.RMSNorm):
                nn.init.ones_(module.weight)
            elif isinstance(module, MoE):
                for w in (module.experts.gate_proj, module.experts.up_proj, module.experts.down_proj):
                    nn.init.normal_(w, mean=0.0, std=std)
                nn.init.normal_(module.gate.weight, mean=0.0, std=std)
                module.gate.e_score_correction_bias.zero_()
        self.init_buffers()

    @torch.no_grad()
    def init_buffers(self) -> None:
        """Recompute the non-persistent buffers (after `to_empty` or loading a state dict)."""
        self.rotary.reset_parameters()
        for module in self.modules():
            if isinstance(module, MoE):
                module.tokens_per_expert.zero_()

    def hidden_states(self, input_ids_BT: torch.Tensor) -> tuple[torch.Tensor, list, list]:
        """Final-normed hidden states (B, T, D), per-MoE-layer expert counts and balance losses."""
        x_BTD = self.embed_tokens(input_ids_BT)
        positions_T = torch.arange(input_ids_BT.shape[1], device=input_ids_BT.device)
        cos, sin = self.rotary(positions_T, x_BTD.dtype)
        counts, auxes = [], []
        for layer in self.layers:
            if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
                x_BTD, counts_E, aux = checkpoint(layer, x_BTD, cos, sin, use_reentrant=False)
            else:
                x_BTD, counts_E, aux = layer(x_BTD, cos, sin)
            if counts_E is not None:
                counts.append(counts_E)
                layer.mlp.tokens_per_expert += counts_E  # consumed by update_router_bias
            if aux is not None:
                auxes.append(aux)
        return self.norm(x_BTD), counts, auxes

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor | None = None) -> K2Output:
        """Logits for (B, T) token ids; with `labels` (aligned with input_ids, shifted here as in
        transformers, -100 = ignore) also the mean next-token cross-entropy, computed in fp32."""
        h_BTD, counts, auxes = self.hidden_states(input_ids)
        logits_BTV = self.lm_head(h_BTD)
        aux = torch.stack(auxes).sum() if auxes else None
        loss = None
        if labels is not None:
            # Shift the labels, not the logits: no copy of the (B, T, V) tensor.
            targets_BT = F.pad(labels[:, 1:], (0, 1), value=-100)
            loss = cross_entropy(logits_BTV.flatten(0, 1), targets_BT.flatten(), ignore_index=-100)
            if aux is not None:
                loss = loss + aux
        expert_load = torch.stack(counts) if counts else None
        return K2Output(logits=logits_BTV, loss=loss, aux_loss=aux, expert_load=expert_load)

    # --- aux-loss-free balancing and QK-Clip hooks
    def update_router_bias(self, gamma: float | None = None) -> dict[str, float]:
        """Aux-loss-free bias step from the loads since the last call (see moe.update_router_bias)."""
        return update_router_bias(self, gamma)

    def compile_layers(self) -> None:
        """torch.compile each decoder layer in place (as torchtitan does): the dense and the MoE layer
        compile once each and the rest reuse their graphs; the loss stays eager. On a GPU this fuses
        the elementwise work around the matmuls (bench/mfu.py on an H200: +21% tokens/s)."""
        for layer in self.layers:
            layer.compile()

    def set_track_max_logits(self, enabled: bool = True) -> None:
        """Record per-head max pre-softmax logits in every MLA layer (for QK-Clip); resets them."""
        for layer in self.layers:
            layer.self_attn.track_max_logits = enabled
            layer.self_attn.max_logits = None

    def pop_max_logits(self) -> list[torch.Tensor | None]:
        """Per layer, the (H,) max logits since the last call (None if no forward ran); resets."""
        out = []
        for layer in self.layers:
            out.append(layer.self_attn.max_logits)
            layer.self_attn.max_logits = None
        return out

    # --- inference
    @torch.no_grad()
    def decode(self, input_ids_BT: torch.Tensor, cache: KVCache, new_B: torch.Tensor) -> torch.Tensor:
        """Incremental decoding (llm/torch_engine.py): feed row b the first new_B[b] tokens of the
        right-padded `input_ids_BT` after what `cache` holds, cache them, and return the logits
        (B, V) after each row's last real token. Equals `forward` on the whole sequences up to
        float rounding. Expert loads are not counted (inference must not move the router bias)."""
        B, T = input_ids_BT.shape
        positions_BT = cache.begin(T)
        x_BTD = self.embed_tokens(input_ids_BT)
        cos_BTR2, sin_BTR2 = self.rotary(positions_BT, x_BTD.dtype)
        cos, sin = cos_BTR2[:, None], sin_BTR2[:, None]  # (B, 1, T, R/2): broadcast over heads
        for i, layer in enumerate(self.layers):
            x_BTD = layer(x_BTD, cos, sin, cache.layer(i))[0]
        cache.advance(new_B)
        last_BD = x_BTD[torch.arange(B, device=x_BTD.device), new_B - 1]
        return self.lm_head(self.norm(last_BD))

    # no KV cache: recomputes the prefix each step (tests and baselines)
    @torch.no_grad()
    def generate(
        self,
        input_ids: torch.Tensor,
        max_new_tokens: int,
        temperature: float = 0.0,
        top_k: int | None = None,
        eos_token_id: int | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Greedy (temperature 0) or sampled continuation; returns prompt + new tokens (B, T + n)."""
        ids_BT = input_ids
        done_B = torch.zeros(ids_BT.shape[0], dtype=torch.bool, device=ids_BT.device)
        for _ in range(max_new_tokens):
            context = ids_BT[:, -self.config.max_position_embeddings :]
            logits_BV = self.lm_head(self.hidden_states(context)[0][:, -1]).float()
            if temperature <= 0:
                next_B = logits_BV.argmax(-1)
            else:
                logits_BV = logits_BV / temperature
                if top_k is not None:
                    kth_B1 = logits_BV.topk(min(top_k, logits_BV.shape[-1]), dim=-1).values[:, -1:]
                    logits_BV = logits_BV.masked_fill(logits_BV < kth_B1, float("-inf"))
                next_B = torch.multinomial(logits_BV.softmax(-1), 1, generator=generator).squeeze(1)
            if eos_token_id is not None:
                next_B = next_B.masked_fill(done_B, eos_token_id)
                done_B |= next_B == eos_token_id
            ids_BT = torch.cat((ids_BT, next_B[:, None]), dim=1)
            if eos_token_id is not None and bool(done_B.all()):
                break
        return ids_BT

    # --- checkpoints (HF DeepseekV3 safetensors; see checkpoint.py)
    def save_pretrained(self, path: str | Path, max_shard_bytes: int = 4 << 30) -> None:
        from agentfactory.model.checkpoint import save_pretrained

        save_pretrained(self, path, max_shard_bytes=max_shard_bytes)

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        dtype: torch.dtype | None = None,
        device: str | torch.device = "cpu",
        **overrides: Any,
    ) -> K2ForCausalLM:
        from agentfactory.model.checkpoint import load_pretrained

        return load_pretrained(path, dtype=dtype, device=device, **overrides)


def count_params(config: K2Config) -> tuple[int, int]:
    """(total, active) parameters, counted on the meta device (no memory, any size).

    Active = what one token uses: everything except the routed experts it was not sent to,
    i.e. total − num_moe_layers · (E − K) · params per expert. Embedding and lm_head count.
    """
    with torch.device("meta"):
        model = K2ForCausalLM(config)
    total = sum(p.numel() for p in model.parameters())
    per_expert = 3 * config.hidden_size * config.moe_intermediate_size
    unused = config.num_moe_layers * (config.n_routed_experts - config.num_experts_per_tok) * per_expert
    return total, total - unused
