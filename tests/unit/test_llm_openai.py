"""OpenAIEngine against a tiny local fake OpenAI server: native tool calls, retries with backoff on 5xx
and timeouts, no retry on 4xx, an endpoint that is down, the concurrency limit, token-id prompts."""

from __future__ import annotations

import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from agentfactory.llm import Engine, GenerationRequest, SamplingParams
from agentfactory.llm.openai_engine import OpenAIEngine
from agentfactory.records import Message, ToolSpec

pytestmark = pytest.mark.unit


class FakeOpenAI(BaseHTTPRequestHandler):
    """Behaviour chosen by the user message: flaky (two 500s, then ok), down5xx (always 503),
    bad (400), hang (sleeps past the client timeout), tool / badargs (tool calls), anything else echoes."""

    state: dict = {}
    lock = threading.Lock()

    def log_message(self, *args):  # quiet
        pass

    def _send(self, status, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        st = self.state
        with self.lock:
            st["requests"].append(body)
            st["inflight"] += 1
            st["max_inflight"] = max(st["max_inflight"], st["inflight"])
        try:
            self._handle(body)
        finally:
            with self.lock:
                st["inflight"] -= 1

    def _handle(self, body):
        st = self.state
        if self.path.endswith("/completions") and "prompt" in body:
            ids = body["prompt"]
            text = "<|tool_calls_section_begin|><|tool_call_begin|>functions.f:0<|tool_call_argument_begin|>{}<|tool_call_end|><|tool_calls_section_end|>"
            choice = {"index": 0, "text": text, "finish_reason": "stop", "token_ids": [9, 10, 11, 13, 10, 1]}
            if body.get("logprobs") is not None:
                choice["logprobs"] = {
                    "token_logprobs": [-0.1] * 6,
                    "tokens": [],
                    "top_logprobs": [],
                    "text_offset": [],
                }
            resp = {
                "id": "c",
                "object": "text_completion",
                "created": 0,
                "model": body["model"],
                "choices": [choice],
            }
            resp["usage"] = {"prompt_tokens": len(ids), "completion_tokens": 6, "total_tokens": len(ids) + 6}
            return self._send(200, resp)
        text = body["messages"][-1]["content"]
        with self.lock:
            st["count"][text] = st["count"].get(text, 0) + 1
            count = st["count"][text]
        if (text == "flaky" and count <= 2) or text == "down5xx":
            return self._send(503 if text == "down5xx" else 500, {"error": {"message": "overloaded"}})
        if text == "bad":
            return self._send(400, {"error": {"message": "bad request: unknown field"}})
        if text == "hang":
            time.sleep(1.0)
        if text == "slow":
            time.sleep(0.15)
        message = {"role": "assistant", "content": f"echo {text}"}
        finish = "stop"
        if text in ("tool", "badargs"):
            args = '{"city": "Paris"}' if text == "tool" else "{oops"
            message = {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "functions.get_weather:0",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": args},
                    }
                ],
            }
            finish = "tool_calls"
        choices = []
        for k in range(body.get("n", 1)):
            choice = {"index": k, "message": message, "finish_reason": finish, "logprobs": None}
            if body.get("logprobs"):
                choice["logprobs"] = {
                    "content": [{"token": "e", "logprob": -0.25, "bytes": None, "top_logprobs": []}]
                }
            choices.append(choice)
        usage = {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}
        self._send(
            200,
            {
                "id": "x",
                "object": "chat.completion",
                "created": 0,
                "model": body["model"],
                "choices": choices,
                "usage": usage,
            },
        )


@pytest.fixture
def server():
    FakeOpenAI.state = {"requests": [], "count": {}, "inflight": 0, "max_inflight": 0}
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), FakeOpenAI)
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/v1", FakeOpenAI.state
    httpd.shutdown()
    httpd.server_close()


def _req(text, id="", tools=(), **params):
    return GenerationRequest(
        id=id,
        messages=[Message(role="user", content=text)],
        tools=list(tools),
        params=SamplingParams(**params),
    )


WEATHER = ToolSpec(
    name="get_weather", parameters={"type": "object", "properties": {"city": {"type": "string"}}}
)


def test_chat_and_native_tool_calls(server):
    url, state = server
    engine = OpenAIEngine(url, "m", backoff=0.01)
    assert isinstance(engine, Engine)
    plain, tool, bad = engine.generate(
        [
            _req("hi", "a", seed=3, logprobs=True, n=2),
            _req("tool", "b", tools=[WEATHER]),
            _req("badargs", "c"),
        ]
    )
    assert [c.text for c in plain] == ["echo hi", "echo hi"] and plain[1].index == 1
    assert plain[0].logprobs == [-0.25] and plain[0].prompt_tokens == 7
    assert tool[0].tool_calls[0].model_dump() == {
        "id": "functions.get_weather:0",
        "name": "get_weather",
        "arguments": {"city": "Paris"},
    }
    assert tool[0].finish_reason == "stop" and tool[0].request_id == "b"
    assert bad[0].tool_calls == [] and "not valid JSON" in bad[0].parse_error
    sent = {r["messages"][0]["content"]: r for r in state["requests"]}
    assert sent["tool"]["tools"] == [WEATHER.to_openai()]
    assert sent["hi"]["seed"] == 3 and sent["hi"]["n"] == 2 and sent["hi"]["max_completion_tokens"] == 512
    engine.close()


def test_5xx_is_retried_with_backoff_then_succeeds(server):
    url, state = server
    engine = OpenAIEngine(url, "m", max_retries=3, backoff=0.05)
    t0 = time.perf_counter()
    (out,) = engine.generate([_req("flaky")])
    assert out[0].text == "echo flaky" and state["count"]["flaky"] == 3 and engine.retries == 2
    assert time.perf_counter() - t0 >= 0.05 * (0.5 + 1.0)  # slept 0.05·2^0 and 0.05·2^1, jittered ×[0.5, 1.5)


def test_persistent_5xx_and_4xx_become_error_records(server):
    url, state = server
    engine = OpenAIEngine(url, "m", max_retries=2, backoff=0.01)
    down, bad = engine.generate([_req("down5xx", "d", n=2), _req("bad", "b")])
    assert [c.finish_reason for c in down] == ["error", "error"] and [c.index for c in down] == [0, 1]
    assert "503" in down[0].error and state["count"]["down5xx"] == 3  # 1 try + 2 retries
    assert bad[0].finish_reason == "error" and "400" in bad[0].error and state["count"]["bad"] == 1


def test_timeout_is_retried_then_an_error_record(server):
    url, state = server
    engine = OpenAIEngine(url, "m", timeout=0.3, max_retries=1, backoff=0.01)
    (out,) = engine.generate([_req("hang")])
    assert out[0].finish_reason == "error" and "Timeout" in out[0].error
    assert state["count"]["hang"] == 2


def test_endpoint_down_is_an_error_record():
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    engine = OpenAIEngine(f"http://127.0.0.1:{port}/v1", "m", max_retries=2, backoff=0.01)
    t0 = time.perf_counter()
    (out,) = engine.generate([_req("hello", "x")])
    assert out[0].finish_reason == "error" and "Connection" in out[0].error and out[0].request_id == "x"
    assert engine.retries == 2 and time.perf_counter() - t0 < 10


def test_concurrency_limit(server):
    url, state = server
    engine = OpenAIEngine(url, "m", concurrency=3)
    t0 = time.perf_counter()
    outs = engine.generate([_req("slow", str(i)) for i in range(9)])
    elapsed = time.perf_counter() - t0
    assert [o[0].request_id for o in outs] == [str(i) for i in range(9)]  # order kept
    assert state["max_inflight"] == 3
    assert elapsed >= 3 * 0.15 * 0.9  # 9 requests, 3 at a time


def test_prompt_ids_use_the_completions_api(server):
    url, state = server
    engine = OpenAIEngine(url, "m")
    req = GenerationRequest(prompt_ids=[5, 6, 7], params=SamplingParams(logprobs=True, temperature=0))
    (out,) = engine.generate([req])
    assert out[0].token_ids == [9, 10, 11, 13, 10, 1] and out[0].logprobs == [-0.1] * 6
    assert out[0].tool_calls[0].name == "f" and out[0].parse_error is None
    sent = state["requests"][0]
    assert sent["prompt"] == [5, 6, 7] and sent["return_token_ids"] and sent["skip_special_tokens"] is False


def test_update_weights_is_refused(server):
    url, _ = server
    with pytest.raises(NotImplementedError, match="fixed weights"):
        OpenAIEngine(url, "m").update_weights({}, 1)
