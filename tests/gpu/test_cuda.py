"""The CUDA paths: the model, MuonClip and the trainer on a GPU agree with the CPU they were built on.

Skipped without a CUDA device (CI has none); `make test-gpu` runs them on a GPU machine. The CPU is the
reference: every kernel here has a CPU test suite behind it, so a GPU result that matches the CPU's
on the same weights and batch is right.
"""

import copy
import json

import pytest
import torch

from agentfactory.model import K2Config, K2ForCausalLM
from agentfactory.optim import OptimizerConfig, build_optimizer
from agentfactory.train import pretrain
from tests.unit.test_train import _losses, _pretrain_config, corpus  # noqa: F401 (a fixture)

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _twins(**overrides) -> tuple[K2ForCausalLM, K2ForCausalLM, torch.Tensor]:
    """One debug model on the CPU, its copy on the GPU, and a batch."""
    torch.manual_seed(0)
    cpu = K2ForCausalLM(K2Config.preset("debug", **overrides)).train()
    ids = torch.randint(0, cpu.config.vocab_size, (4, 64), generator=torch.Generator().manual_seed(1))
    return cpu, copy.deepcopy(cpu).cuda(), ids


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().float().cpu(), b.detach().float().cpu()
    return float((a - b).norm() / b.norm().clamp_min(1e-12))


def _grads(model: K2ForCausalLM) -> dict[str, torch.Tensor]:
    return {n: p.grad for n, p in model.named_parameters() if p.grad is not None}


def test_float32_loss_and_every_gradient_match_the_cpu():
    cpu, gpu, ids = _twins()
    loss_cpu = cpu(ids, labels=ids).loss
    loss_gpu = gpu(ids.cuda(), labels=ids.cuda()).loss
    loss_cpu.backward()
    loss_gpu.backward()
    assert loss_gpu.item() == pytest.approx(loss_cpu.item(), rel=1e-5)
    g_cpu, g_gpu = _grads(cpu), _grads(gpu)
    assert g_cpu.keys() == g_gpu.keys() and len(g_cpu) > 30
    for name, g in g_cpu.items():
        assert _rel(g_gpu[name], g) < 1e-3, name


def test_bfloat16_autocast_matches_float32_to_bf16_precision():
    cpu, gpu, ids = _twins()
    loss_cpu = cpu(ids, labels=ids).loss
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss_gpu = gpu(ids.cuda(), labels=ids.cuda()).loss
    loss_cpu.backward()
    loss_gpu.backward()
    assert loss_gpu.item() == pytest.approx(loss_cpu.item(), rel=2e-2)
    g_cpu, g_gpu = _grads(cpu), _grads(gpu)
    flat = [torch.cat([g[n].float().cpu().flatten() for n in g_cpu]) for g in (g_gpu, g_cpu)]
    assert _rel(*flat) < 0.1  # bf16 matmuls, and a few tokens routed to another expert
    assert torch.nn.functional.cosine_similarity(*flat, dim=0) > 0.99


@pytest.mark.parametrize("ns_dtype", ["float32", "bfloat16"])
def test_muonclip_step_on_the_gpu_matches_the_cpu(ns_dtype):
    cpu, gpu, ids = _twins()
    for model, x in ((cpu, ids), (gpu, ids.cuda())):
        model.set_track_max_logits(True)
        model(x, labels=x).loss.backward()
    before = {n: p.detach().clone() for n, p in cpu.named_parameters()}
    config = OptimizerConfig(lr=0.02, ns_dtype=ns_dtype, qk_clip_tau=0.01)  # τ low: every head clips
    clipped = [build_optimizer(m, config).step(m.pop_max_logits()) for m in (cpu, gpu)]
    assert clipped[0] == clipped[1] and sum(map(len, clipped[0])) > 0
    tol = 1e-4 if ns_dtype == "float32" else 2e-2  # bf16 Newton–Schulz: other accumulation orders
    for (name, p_cpu), p_gpu in zip(cpu.named_parameters(), gpu.parameters(), strict=True):
        step_cpu, step_gpu = p_cpu - before[name], p_gpu.cpu() - before[name]
        if step_cpu.norm() > 0:
            assert _rel(step_gpu, step_cpu) < tol, name


def test_grouped_matmul_handles_experts_without_tokens():
    """Routing to 2 of 8 experts leaves 6 empty groups; the grouped kernel must skip them."""
    cpu, gpu, ids = _twins()
    for model in (cpu, gpu):
        for layer in model.layers[model.config.first_k_dense_replace :]:
            bias = layer.mlp.gate.e_score_correction_bias
            bias.fill_(-100.0)
            bias[:2] = 100.0
    loss_cpu = cpu(ids, labels=ids).loss
    loss_gpu = gpu(ids.cuda(), labels=ids.cuda()).loss
    loss_cpu.backward()
    loss_gpu.backward()
    assert loss_gpu.item() == pytest.approx(loss_cpu.item(), rel=1e-5)
    expert_grad = gpu.layers[-1].mlp.experts.gate_proj.grad
    assert expert_grad[2:].abs().max() == 0 and expert_grad[:2].abs().max() > 0


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_pretrain_on_cuda_learns_and_resumes(corpus, tmp_path, dtype):  # noqa: F811
    """The trainer end to end on the GPU: loss falls, checkpoints restore onto the GPU."""
    cfg = _pretrain_config(corpus, tmp_path / "run", device="cuda", dtype=dtype, steps=6)

    def crash_after_4(row):
        if row["step"] == 4:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        pretrain(cfg, on_step=crash_after_4)
    resumed = pretrain(cfg)
    losses = _losses(resumed.metrics_path)
    steps = [json.loads(r)["step"] for r in resumed.metrics_path.read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]
    assert losses[-1] < losses[0]
    straight = pretrain(cfg.model_copy(update={"output_dir": str(tmp_path / "straight")}))
    # cuBLAS picks kernels per shape and run; the CPU suite asserts bit-exact resume.
    assert _losses(straight.metrics_path)[-2:] == pytest.approx(losses[-2:], rel=1e-3)


def test_compiled_layers_train_like_eager_on_cuda(corpus, tmp_path):  # noqa: F811
    cfg = _pretrain_config(corpus, tmp_path / "eager", device="cuda", dtype="bfloat16", steps=3)
    eager = pretrain(cfg)
    compiled = pretrain(cfg.model_copy(update={"output_dir": str(tmp_path / "compiled"), "compile": True}))
    # Inductor fuses bf16 elementwise ops (fewer roundings): equal to bf16 precision, not bit for bit.
    assert _losses(compiled.metrics_path) == pytest.approx(_losses(eager.metrics_path), rel=2e-2)


def test_torch_engine_on_cuda_samples_like_the_cpu(tmp_path):
    """TorchEngine (the rollout engine where vLLM is absent) on the GPU: the same greedy ids and
    seeded samples as on the CPU, logprobs equal to fp32 rounding, weights pushed from a CUDA model."""
    from agentfactory.llm import GenerationRequest, SamplingParams, TorchEngine
    from tests.unit.fakes import tiny_math_checkpoint

    path = tiny_math_checkpoint(tmp_path / "model")
    cpu, gpu = TorchEngine(path, device="cpu"), TorchEngine(path, device="cuda")
    requests = [
        GenerationRequest(prompt_ids=[5, 6, 7 + i], params=SamplingParams(max_tokens=16, logprobs=True, **p))
        for i, p in enumerate([{"temperature": 0.0}, {"seed": 3, "n": 4}, {"seed": 4, "top_p": 0.8}])
    ]
    for a, b in zip(cpu.generate(requests), gpu.generate(requests), strict=True):
        assert [c.token_ids for c in a] == [c.token_ids for c in b]
        for x, y in zip(a, b, strict=True):
            assert max(abs(p - q) for p, q in zip(x.logprobs, y.logprobs, strict=True)) < 1e-3
    torch.manual_seed(5)
    trained = K2ForCausalLM(cpu.model.config).cuda()
    gpu.update_weights(trained.state_dict(), version=2)
    cpu.update_weights(trained.state_dict(), version=2)
    assert gpu.generate(requests[:1])[0][0].token_ids == cpu.generate(requests[:1])[0][0].token_ids
