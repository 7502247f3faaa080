"""Multi-head Latent Attention (MLA) with YaRN RoPE and per-head max-logit tracking for QK-Clip.

MLA (DeepSeek-V2, https://arxiv.org/abs/2405.04434) compresses keys and values into one small
latent c_kv (kv_lora_rank dims, RMSNormed) that is expanded per head by kv_b_proj; queries may go
through a low-rank latent too (q_lora_rank). Positions enter only through qk_rope_head_dim extra
dims per head, and the rotary key is shared by all heads. The math and the parameter names follow
HF's DeepseekV3Attention, so checkpoints map 1:1; RoPE is the interleaved ("GPT-J") variant that
DeepSeek checkpoints, HF (`rope_interleave=True`) and vLLM (`is_neox_style=False`) all use.

QK-Clip (Kimi K2, https://arxiv.org/abs/2507.20534) needs, per head, the largest pre-softmax logit
seen in the step. Set `track_max_logits = True` on the module (or `model.set_track_max_logits()`)
and `max_logits` holds a running per-head max since the last reset; it costs one extra q·kᵀ
product without grad and is skipped entirely when tracking is off.

Shape suffixes: B batch, T sequence, D hidden, H heads, C kv_lora_rank, Q q_lora_rank,
N qk_nope_head_dim, R qk_rope_head_dim, V v_head_dim.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from agentfactory.devices import chunk_elements
from agentfactory.model.config import K2Config
from agentfactory.model.kv_cache import LayerKV


def yarn_mscale(factor: float, mscale: float = 1.0) -> float:
    """YaRN's attention temperature correction 0.1·mscale·ln(factor) + 1 (1 when not extending)."""
    return 1.0 if factor <= 1 else 0.1 * mscale * math.log(factor) + 1.0


def rope_inv_freq(config: K2Config) -> tuple[torch.Tensor, float]:
    """Inverse RoPE frequencies (R/2,) and the cos/sin scale, with DeepSeek-V3's YaRN if configured."""
    dim, base = config.qk_rope_head_dim, config.rope_theta
    inv_freq_R2 = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))
    yarn = config.rope_scaling
    if yarn is None:
        return inv_freq_R2, 1.0

    def correction_dim(rotations: float) -> float:  # dim index whose wavelength fits `rotations` times
        return (
            dim
            * math.log(yarn.original_max_position_embeddings / (rotations * 2 * math.pi))
            / (2 * math.log(base))
        )

    low = max(math.floor(correction_dim(yarn.beta_fast)), 0)
    high = min(math.ceil(correction_dim(yarn.beta_slow)), dim - 1)
    if low == high:
        high += 0.001  # avoid a zero-width ramp
    ramp_R2 = ((torch.arange(dim // 2, dtype=torch.float32) - low) / (high - low)).clamp(0, 1)
    extrapolate_R2 = 1 - ramp_R2  # 1 = keep the original (high) frequency, 0 = interpolate by `factor`
    inv_freq_R2 = inv_freq_R2 / yarn.factor * (1 - extrapolate_R2) + inv_freq_R2 * extrapolate_R2
    scale = yarn_mscale(yarn.factor, yarn.mscale) / yarn_mscale(yarn.factor, yarn.mscale_all_dim)
    return inv_freq_R2, scale


def softmax_scale(config: K2Config) -> float:
    """1/sqrt(qk_head_dim), times mscale(factor, mscale_all_dim)² under YaRN (DeepSeek-V3)."""
    scale = config.qk_head_dim**-0.5
    if config.rope_scaling is not None and config.rope_scaling.mscale_all_dim:
        m = yarn_mscale(config.rope_scaling.factor, config.rope_scaling.mscale_all_dim)
        scale = scale * m * m
    return scale


def apply_rope(x_BHTR: torch.Tensor, cos_TR2: torch.Tensor, sin_TR2: torch.Tensor) -> torch.Tensor:
    """Rotate interleaved pairs (x0,x1),(x2,x3),… ; output is de-interleaved [evens' | odds'].

    The output permutation is the same for q and k, so q·k is unchanged; it matches HF's
    `apply_rotary_pos_emb_interleave` bit for bit and avoids a strided copy back to pairs.
    """
    x1, x2 = x_BHTR[..., 0::2], x_BHTR[..., 1::2]
    return torch.cat((x1 * cos_TR2 - x2 * sin_TR2, x2 * cos_TR2 + x1 * sin_TR2), dim=-1)


class RotaryEmbedding(nn.Module):
    """cos/sin tables for positions 0..T-1 (computed per call: cheap next to attention)."""

    def __init__(self, config: K2Config):
        super().__init__()
        self.config = config
        self.register_buffer("inv_freq", torch.empty(config.qk_rope_head_dim // 2), persistent=False)
        self.scale = 1.0
        self.reset_parameters()

    def reset_parameters(self) -> None:
        inv_freq, self.scale = rope_inv_freq(self.config)
        if self.inv_freq.device.type != "meta":
            self.inv_freq.copy_(inv_freq)

    def forward(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin of shape (*positions.shape, R/2): positions (T,) in training, (B, T) when decoding."""
        freqs = positions.float()[..., None] * self.inv_freq
        return (freqs.cos() * self.scale).to(dtype), (freqs.sin() * self.scale).to(dtype)


class MLA(nn.Module):
    """Multi-head latent attention, causal, via SDPA; parameter names as in HF DeepseekV3Attention."""

    def __init__(self, config: K2Config):
        super().__init__()
        c = config
        self.n_heads, self.kv_lora_rank = c.num_attention_heads, c.kv_lora_rank
        self.nope_dim, self.rope_dim, self.v_dim = c.qk_nope_head_dim, c.qk_rope_head_dim, c.v_head_dim
        H, D = c.num_attention_heads, c.hidden_size
        if c.q_lora_rank is None:
            self.q_proj = nn.Linear(D, H * c.qk_head_dim, bias=False)
        else:
            self.q_a_proj = nn.Linear(D, c.q_lora_rank, bias=False)
            self.q_a_layernorm = nn.RMSNorm(c.q_lora_rank, eps=c.rms_norm_eps)
            self.q_b_proj = nn.Linear(c.q_lora_rank, H * c.qk_head_dim, bias=False)
        self.kv_a_proj_with_mqa = nn.Linear(D, c.kv_lora_rank + c.qk_rope_head_dim, bias=False)
        self.kv_a_layernorm = nn.RMSNorm(c.kv_lora_rank, eps=c.rms_norm_eps)
        self.kv_b_proj = nn.Linear(c.kv_lora_rank, H * (c.qk_nope_head_dim + c.v_head_dim), bias=False)
        self.o_proj = nn.Linear(H * c.v_head_dim, D, bias=False)
        self.scale = softmax_scale(c)
        self.track_max_logits = False
        self.max_logits: torch.Tensor | None = None  # (H,) fp32 running max since the last reset

    def forward(
        self, x_BTD: torch.Tensor, cos_TR2: torch.Tensor, sin_TR2: torch.Tensor, kv: LayerKV | None = None
    ) -> torch.Tensor:
        """Causal attention over x; with `kv` (decoding) also over the cached keys/values, which then
        hold x's too. cos/sin: (T, R/2), or (B, 1, T, R/2) for per-row positions when decoding."""
        B, T, _ = x_BTD.shape
        H, N, R, V = self.n_heads, self.nope_dim, self.rope_dim, self.v_dim
        if hasattr(self, "q_proj"):
            q_BTHK = self.q_proj(x_BTD)
        else:
            q_BTHK = self.q_b_proj(self.q_a_layernorm(self.q_a_proj(x_BTD)))
        q_BHTK = q_BTHK.view(B, T, H, N + R).transpose(1, 2)
        q_nope_BHTN, q_rope_BHTR = q_BHTK.split([N, R], dim=-1)

        ckv_BTCR = self.kv_a_proj_with_mqa(x_BTD)
        ckv_BTC, k_rope_BTR = ckv_BTCR.split([self.kv_lora_rank, R], dim=-1)
        kv_BTHNV = self.kv_b_proj(self.kv_a_layernorm(ckv_BTC)).view(B, T, H, N + V)
        k_nope_BHTN, v_BHTV = kv_BTHNV.transpose(1, 2).split([N, V], dim=-1)

        q_rope_BHTR = apply_rope(q_rope_BHTR, cos_TR2, sin_TR2)
        k_rope_B1TR = apply_rope(k_rope_BTR[:, None], cos_TR2, sin_TR2)
        q_BHTK = torch.cat((q_nope_BHTN, q_rope_BHTR), dim=-1)
        k_BHTK = torch.cat((k_nope_BHTN, k_rope_B1TR.expand(B, H, T, R)), dim=-1)

        if self.track_max_logits:
            self._record_max_logits(q_BHTK, k_BHTK)
        # v is zero-padded to q/k's head dim: PyTorch's flash kernels need equal dims, and the fallback
        # (the math kernel, which materializes every T×T score) trains 1.3-2.7× slower at T=2048 on CPU
        v_BHTK = F.pad(v_BHTV, (0, N + R - V)) if V < N + R else v_BHTV
        if kv is not None:
            kv.write(k_BHTK, v_BHTK)
        if kv is None or kv.prefill:  # nothing cached before: plain causal attention over x
            out_BHTK = F.scaled_dot_product_attention(
                q_BHTK, k_BHTK, v_BHTK, is_causal=True, scale=self.scale
            )
        else:
            k_BHSK, v_BHSK, visible_B1TS = kv.read()
            out_BHTK = F.scaled_dot_product_attention(
                q_BHTK, k_BHSK, v_BHSK, attn_mask=visible_B1TS, scale=self.scale
            )
        return self.o_proj(out_BHTK[..., :V].transpose(1, 2).reshape(B, T, H * V))

    @torch.no_grad()
    def _record_max_logits(self, q_BHTK: torch.Tensor, k_BHTK: torch.Tensor) -> None:
        """Fold max over causal (i ≥ j) pairs of scale·q_i·k_j, per head, into `max_logits`.

        Query rows go in blocks against only the keys they can see (half the work of the full T×T
        product), each block's fp32 scores bounded to ~64 MiB on a CPU and 512 MiB on a GPU.
        """
        B, H, T, _ = q_BHTK.shape
        budget = chunk_elements(q_BHTK.device, 1 << 24, 1 << 27)
        rows = max(16, budget // (B * H * T))
        pos_T = torch.arange(T, device=q_BHTK.device)
        best_H = torch.full((H,), float("-inf"), device=q_BHTK.device)
        for i in range(0, T, rows):
            j = min(i + rows, T)
            s_BHrj = torch.matmul(q_BHTK[:, :, i:j].float(), k_BHTK[:, :, :j].float().transpose(-1, -2))
            s_BHrj[..., i:].masked_fill_(pos_T[i:j, None] < pos_T[None, i:j], float("-inf"))
            best_H = torch.maximum(best_H, s_BHrj.amax(dim=(0, 2, 3)))
        best_H = best_H * self.scale
        self.max_logits = best_H if self.max_logits is None else torch.maximum(self.max_logits, best_H)
