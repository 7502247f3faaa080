"""DeepSeek-V3 / Kimi K2 mixture of experts: sigmoid router, group-limited top-k, sorted grouped matmul.

Routing (DeepSeek-V3 §2.1.2, https://arxiv.org/abs/2412.19437):
  s = sigmoid(x·W_gateᵀ) in fp32 (bf16 would reorder near-tied experts);
  selection uses s + b, where b (`e_score_correction_bias`) is the aux-loss-free balancing bias;
  with n_group > 1 a token first picks its topk_group groups (each scored by its best 2 experts),
  then its top-k experts inside them; the gate weights use s *without* b, renormalized to sum
  to 1 and multiplied by routed_scaling_factor. A shared expert sees every token.

Aux-loss-free balancing: the bias is not learned by gradient. After each optimizer step the
trainer calls `update_router_bias(model)`, which moves b by γ·sign(mean load − load): overloaded
experts become less attractive. The optional sequence-wise balance loss (α·Σ f_i·P_i, averaged over
sequences) is returned by `MoE.forward` when aux_loss_alpha > 0.

Dispatch: the T·K (token, expert) pairs are sorted by expert, so each expert's tokens are one
contiguous block, and the experts run as one grouped matmul over the stacked (E, out, in)
weights (`F.grouped_mm`); there is no loop over experts or tokens in Python.

Shape suffixes: B batch, S sequence, T tokens (B·S), D hidden, E routed experts, K experts per
token, G groups, F expert hidden, M routed (token, expert) pairs = T·K, sorted by expert.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import register_flop_formula

from agentfactory.model.config import K2Config


class MLP(nn.Module):
    """SwiGLU MLP: down(silu(gate(x)) * up(x)). Dense layers and the shared expert."""

    def __init__(self, dim: int, hidden_dim: int):
        super().__init__()
        self.gate_proj = nn.Linear(dim, hidden_dim, bias=False)
        self.up_proj = nn.Linear(dim, hidden_dim, bias=False)
        self.down_proj = nn.Linear(hidden_dim, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Router(nn.Module):
    """Sigmoid top-k router with the selection-only correction bias and group-limited routing."""

    def __init__(self, config: K2Config):
        super().__init__()
        self.n_experts, self.top_k = config.n_routed_experts, config.num_experts_per_tok
        self.n_group, self.topk_group = config.n_group, config.topk_group
        self.norm_topk_prob, self.scaling = config.norm_topk_prob, config.routed_scaling_factor
        self.weight = nn.Parameter(torch.empty(config.n_routed_experts, config.hidden_size))
        # fp32 always (as in HF's _keep_in_fp32_modules): bias steps of 1e-3 vanish in bf16 near 1.
        self.register_buffer(
            "e_score_correction_bias", torch.zeros(config.n_routed_experts, dtype=torch.float32)
        )

    def _apply(self, fn, recurse=True):
        # Keep the bias fp32 under model.to(bfloat16), as HF does with _keep_in_fp32_modules.
        bias_E = self.e_score_correction_bias
        super()._apply(fn, recurse)
        if self.e_score_correction_bias.dtype != torch.float32:
            self.e_score_correction_bias = bias_E.to(self.e_score_correction_bias.device)
        return self

    def forward(self, x_TD: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Returns expert ids (T, K), gate weights (T, K) fp32, and all sigmoid scores (T, E) fp32."""
        scores_TE = F.linear(x_TD.float(), self.weight.float()).sigmoid()
        with torch.no_grad():  # selection is discrete: no gradient flows through it
            choice_TE = scores_TE + self.e_score_correction_bias
            if self.n_group > 1:
                T, G = choice_TE.shape[0], self.n_group
                group_score_TG = choice_TE.view(T, G, -1).topk(2, dim=-1).values.sum(-1)
                group_idx_TG = group_score_TG.topk(self.topk_group, dim=-1, sorted=False).indices
                keep_TG = torch.zeros_like(group_score_TG, dtype=torch.bool).scatter_(1, group_idx_TG, True)
                keep_TE = keep_TG[:, :, None].expand(T, G, self.n_experts // G).reshape(T, -1)
                choice_TE = choice_TE.masked_fill(~keep_TE, float("-inf"))
            idx_TK = choice_TE.topk(self.top_k, dim=-1, sorted=False).indices
        weight_TK = scores_TE.gather(1, idx_TK)
        if self.norm_topk_prob:
            weight_TK = weight_TK / (weight_TK.sum(dim=-1, keepdim=True) + 1e-20)
        return idx_TK, weight_TK * self.scaling, scores_TE


# F.grouped_mm is the public name from torch 2.10 on; the CUDA images of late 2025 have only the private op.
_grouped_mm = getattr(F, "grouped_mm", None) or torch._grouped_mm


# Grouped matmul as custom ops: torch.compile then treats them as opaque (the built-in fake kernel of
# F.grouped_mm accepts only bf16), and the backward accepts non-contiguous grads (the CPU kernel does not).
@torch.library.custom_op("agentfactory::grouped_mm", mutates_args=())
def grouped_mm(x_MI: torch.Tensor, w_EIO: torch.Tensor, offs_E: torch.Tensor) -> torch.Tensor:
    """Rows offs[e-1]:offs[e] of x times w[e]: (M, I) x (E, I, O) -> (M, O)."""
    return _grouped_mm(x_MI, w_EIO, offs=offs_E)


@grouped_mm.register_fake
def _(x_MI, w_EIO, offs_E):
    return x_MI.new_empty(x_MI.shape[0], w_EIO.shape[-1])


@torch.library.custom_op("agentfactory::grouped_mm_wgrad", mutates_args=())
def grouped_mm_wgrad(x_MI: torch.Tensor, grad_MO: torch.Tensor, offs_E: torch.Tensor) -> torch.Tensor:
    """Per group e: x[rows of e]ᵀ · grad[rows of e], i.e. the (E, I, O) weight gradient."""
    return _grouped_mm(x_MI.t(), grad_MO, offs=offs_E)


@grouped_mm_wgrad.register_fake
def _(x_MI, grad_MO, offs_E):
    return x_MI.new_empty(offs_E.shape[0], x_MI.shape[1], grad_MO.shape[1])


def _grouped_mm_setup(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


def _grouped_mm_backward(ctx, grad_MO):
    x_MI, w_EIO, offs_E = ctx.saved_tensors
    grad_MO = grad_MO.contiguous()
    grad_x = grouped_mm(grad_MO, w_EIO.transpose(-1, -2), offs_E) if ctx.needs_input_grad[0] else None
    grad_w = grouped_mm_wgrad(x_MI, grad_MO, offs_E) if ctx.needs_input_grad[1] else None
    return grad_x, grad_w, None


grouped_mm.register_autograd(_grouped_mm_backward, setup_context=_grouped_mm_setup)


# FLOPs of the custom ops, so torch's FlopCounterMode (and MFU tooling on it) sees the experts.
@register_flop_formula(torch.ops.agentfactory.grouped_mm)
def _grouped_mm_flop(x_shape, w_shape, offs_shape, *args, out_shape=None, **kwargs) -> int:
    return 2 * x_shape[0] * x_shape[1] * w_shape[-1]


@register_flop_formula(torch.ops.agentfactory.grouped_mm_wgrad)
def _grouped_mm_wgrad_flop(x_shape, grad_shape, offs_shape, *args, out_shape=None, **kwargs) -> int:
    return 2 * x_shape[0] * x_shape[1] * grad_shape[1]


class Experts(nn.Module):
    """E SwiGLU experts as stacked weights in nn.Linear layout (E, out, in): HF/Muon see E matrices."""

    def __init__(self, config: K2Config):
        super().__init__()
        E, D, F_ = config.n_routed_experts, config.hidden_size, config.moe_intermediate_size
        self.gate_proj = nn.Parameter(torch.empty(E, F_, D))
        self.up_proj = nn.Parameter(torch.empty(E, F_, D))
        self.down_proj = nn.Parameter(torch.empty(E, D, F_))

    def forward(self, x_MD: torch.Tensor, counts_E: torch.Tensor) -> torch.Tensor:
        """x_MD: tokens sorted by expert, counts_E[e] rows each; returns (M, D)."""
        offs_E = counts_E.cumsum(0).to(torch.int32)
        # Custom ops are not covered by autocast: cast by hand, as nn.Linear would be.
        dev = x_MD.device.type
        dtype = torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else x_MD.dtype
        x_MD = x_MD.to(dtype)
        w_gate, w_up, w_down = (
            w.to(dtype).transpose(1, 2) for w in (self.gate_proj, self.up_proj, self.down_proj)
        )
        h_MF = F.silu(grouped_mm(x_MD, w_gate, offs_E)) * grouped_mm(x_MD, w_up, offs_E)
        return grouped_mm(h_MF, w_down, offs_E)


class MoE(nn.Module):
    """Routed experts + shared expert. Names follow HF: `gate`, `experts`, `shared_experts`."""

    def __init__(self, config: K2Config):
        super().__init__()
        self.n_experts, self.top_k = config.n_routed_experts, config.num_experts_per_tok
        self.aux_loss_alpha, self.bias_update_speed = config.aux_loss_alpha, config.bias_update_speed
        self.gate = Router(config)
        self.experts = Experts(config)
        self.shared_experts = (
            MLP(config.hidden_size, config.moe_intermediate_size * config.n_shared_experts)
            if config.n_shared_experts
            else None
        )
        # Tokens routed to each expert since the last `update_router_bias`; the model adds each
        # forward's counts here (not this module, so activation-checkpoint recomputes don't count twice).
        self.register_buffer(
            "tokens_per_expert", torch.zeros(config.n_routed_experts, dtype=torch.long), persistent=False
        )

    def forward(self, x_BSD: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Returns the output (B, S, D), tokens per expert (E,), and the balance loss (or None)."""
        B, S, D = x_BSD.shape
        x_TD = x_BSD.reshape(B * S, D)
        idx_TK, weight_TK, scores_TE = self.gate(x_TD)

        # Sort the T·K (token, expert) pairs by expert; stable keeps token order within an expert.
        idx_M = idx_TK.reshape(-1)
        order_M = idx_M.argsort(stable=True)
        counts_E = torch.bincount(idx_M, minlength=self.n_experts)
        y_MD = self.experts(x_TD[order_M // self.top_k], counts_E)
        # Undo the sort with a gather (cheaper backward than a scatter), then mix the K outputs.
        unsort_M = torch.empty_like(order_M).scatter_(
            0, order_M, torch.arange(order_M.numel(), device=idx_M.device)
        )
        y_TKD = y_MD[unsort_M].view(B * S, self.top_k, D)
        out_TD = torch.bmm(weight_TK.to(y_TKD.dtype)[:, None, :], y_TKD).squeeze(1)

        if self.shared_experts is not None:
            out_TD = out_TD + self.shared_experts(x_TD)
        aux = None
        if self.aux_loss_alpha > 0 and self.training:
            aux = self.aux_loss_alpha * sequence_balance_loss(idx_TK.view(B, S, -1), scores_TE.view(B, S, -1))
        return out_TD.view(B, S, D), counts_E, aux


def sequence_balance_loss(idx_BSK: torch.Tensor, scores_BSE: torch.Tensor) -> torch.Tensor:
    """DeepSeek-V3 eq. 17-20: mean over sequences of Σ_i f_i·P_i (multiply by α outside).

    f_i = E/(K·S) · #tokens of the sequence routed to i; P_i = mean over the sequence of the
    sigmoid scores normalized over all experts. Gradient flows through P only.
    """
    B, S, K = idx_BSK.shape
    E = scores_BSE.shape[-1]
    hits_BE = torch.zeros(B, E, device=idx_BSK.device).scatter_add_(
        1, idx_BSK.reshape(B, S * K), torch.ones(B, S * K, device=idx_BSK.device)
    )
    f_BE = hits_BE * (E / (K * S))
    p_BE = (scores_BSE / scores_BSE.sum(-1, keepdim=True)).mean(1)
    return (f_BE * p_BE).sum(-1).mean()


@torch.no_grad()
def update_router_bias(model: nn.Module, gamma: float | None = None) -> dict[str, float]:
    """Aux-loss-free balancing step for every MoE layer; call after the optimizer step.

    Consumes the tokens-per-expert counts the model accumulated since the last call (over all
    micro-batches), moves each `e_score_correction_bias` by γ·sign(mean load − load), and resets the
    counts. Returns the worst max/mean load ratio seen (a balance metric to log).
    """
    worst = 1.0
    for module in model.modules():
        if not isinstance(module, MoE):
            continue
        load_E = module.tokens_per_expert.float()
        if load_E.sum() == 0:
            continue
        step = module.bias_update_speed if gamma is None else gamma
        module.gate.e_score_correction_bias += step * torch.sign(load_E.mean() - load_E)
        worst = max(worst, (load_E.max() / load_E.mean()).item())
        module.tokens_per_expert.zero_()
    return {"max_over_mean_load": worst}
