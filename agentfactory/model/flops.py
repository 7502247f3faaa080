"""Model FLOPs per token, for MFU: what the architecture needs, not what a kernel happens to do.

Counted as 2 FLOPs per multiply-add of every matmul a token goes through in the forward pass: the MLA
projections, the dense MLP or the router + its top-k routed experts + the shared expert(s), and the
lm_head (the embedding is a lookup). Attention adds 2·H·T·(qk_head_dim + v_head_dim) per token and
layer for a context of T, counted over the full T×T (the PaLM / nanochat convention: causal kernels
skip about half, and MFU figures from different codebases stay comparable). The v padding our CPU
flash path uses (v zero-padded to the q/k head dim) is kernel overhead and not counted. Training
is 3× the forward (backward = 2×).
"""

from __future__ import annotations

from agentfactory.model.config import K2Config


def matmul_params_per_token(c: K2Config) -> int:
    """Weights one token multiplies by in the forward pass (active experts only, no embedding)."""
    H, D = c.num_attention_heads, c.hidden_size
    if c.q_lora_rank is None:
        q = D * H * c.qk_head_dim
    else:
        q = D * c.q_lora_rank + c.q_lora_rank * H * c.qk_head_dim
    kv = D * (c.kv_lora_rank + c.qk_rope_head_dim) + c.kv_lora_rank * H * (c.qk_nope_head_dim + c.v_head_dim)
    attention = q + kv + H * c.v_head_dim * D
    dense_mlp = 3 * D * c.intermediate_size
    expert = 3 * D * c.moe_intermediate_size
    moe = D * c.n_routed_experts + (c.num_experts_per_tok + c.n_shared_experts) * expert
    dense_layers = c.num_hidden_layers - c.num_moe_layers
    return (
        c.num_hidden_layers * attention + dense_layers * dense_mlp + c.num_moe_layers * moe + D * c.vocab_size
    )


def attention_flops_per_token(c: K2Config, seq_len: int) -> int:
    """Forward FLOPs of the score and value products for one token in a context of `seq_len`."""
    return 2 * c.num_hidden_layers * c.num_attention_heads * seq_len * (c.qk_head_dim + c.v_head_dim)


def forward_flops_per_token(c: K2Config, seq_len: int) -> int:
    return 2 * matmul_params_per_token(c) + attention_flops_per_token(c, seq_len)


def train_flops_per_token(c: K2Config, seq_len: int) -> int:
    """Forward + backward (twice the forward: gradients for activations and for weights)."""
    return 3 * forward_flops_per_token(c, seq_len)
