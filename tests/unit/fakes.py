"""Test doubles for unit tests only: an Engine whose replies a test scripts."""

from collections.abc import Callable, Sequence

from agentfactory.llm.base import Completion, GenerationRequest
from agentfactory.model.chat import IM_END, parse_assistant


class ScriptedEngine:
    """Answers each request with `reply(request)`; text is parsed like a real engine's output.

    With `tokenizer`, a completion's ids are the canonical tokenization of its text plus `<|im_end|>`
    (as a real engine stops), each with logprob -0.5, and `prompt_text` decodes an id prompt."""

    name = "scripted"
    policy_version = 0

    def __init__(self, reply: Callable[[GenerationRequest], str], tokenizer=None):
        self.reply = reply
        self.tokenizer = tokenizer
        self.requests: list[GenerationRequest] = []

    def prompt_text(self, request: GenerationRequest) -> str:
        return self.tokenizer.decode(request.prompt_ids, skip_special_tokens=False)

    def _ids(self, text: str) -> tuple[list[int], list[float] | None]:
        if self.tokenizer is None:
            return list(range(len(text.split()))), None
        ids = self.tokenizer.encode(text + IM_END, add_special_tokens=False)
        return ids, [-0.5] * len(ids)

    def generate(self, requests: Sequence[GenerationRequest]) -> list[list[Completion]]:
        out = []
        for r in requests:
            self.requests.append(r)
            text = self.reply(r)
            parsed = parse_assistant(text)
            calls = [{"id": c.id, "name": c.name, "arguments": c.arguments} for c in parsed.tool_calls]
            ids, logprobs = self._ids(text)
            out.append(
                [
                    Completion(
                        request_id=r.id,
                        text=text,
                        content=parsed.content if parsed.ok else text,
                        tool_calls=calls,
                        parse_error=parsed.error,
                        token_ids=ids,
                        logprobs=logprobs,
                        policy_version=self.policy_version,
                    )
                ]
                * r.params.n
            )
        return out

    def update_weights(self, weights, version: int) -> None:
        self.policy_version = version

    def sleep(self) -> None: ...

    def wake_up(self) -> None: ...

    def close(self) -> None: ...


class ToyTokenEngine:
    """A deterministic token-in-token-out engine for partial-rollout bookkeeping tests.

    The next token is a pure function of the whole context, so continuing from `prompt + generated`
    gives exactly what one uninterrupted generation gives (as greedy decoding with fixed weights does).
    A prompt `[L, P, ...]` of length P stops after L generated tokens with `stop_id` (`toy_prompt`
    builds one). The logprob of each token is `-(version + 1) / 10`, so a test can see which policy
    version sampled it.
    """

    name = "toy"

    def __init__(self, stop_id: int = 1, vocab: int = 97):
        self.stop_id = stop_id
        self.vocab = vocab
        self.policy_version = 0
        self.requests: list = []

    def _next(self, ctx: list[int]) -> int:
        if len(ctx) - ctx[1] >= ctx[0]:
            return self.stop_id
        return 2 + (ctx[-1] * 31 + len(ctx) * 17 + ctx[2]) % (self.vocab - 2)

    def generate(self, requests):
        out = []
        for r in requests:
            self.requests.append(r)
            ctx = list(r.prompt_ids)
            ids = []
            reason = "length"
            for _ in range(r.params.max_tokens):
                tok = self._next(ctx)
                ids.append(tok)
                ctx.append(tok)
                if tok == self.stop_id:
                    reason = "stop"
                    break
            lp = [-(self.policy_version + 1) / 10] * len(ids)
            text = " ".join(f"t{t}" for t in ids)
            comp = Completion(
                request_id=r.id, text=text, content=text, token_ids=ids, logprobs=lp,
                finish_reason=reason, policy_version=self.policy_version, completion_tokens=len(ids),
            )  # fmt: skip
            out.append([comp] * r.params.n)
        return out

    def update_weights(self, weights, version: int) -> None:
        self.policy_version = version

    def sleep(self) -> None: ...

    def wake_up(self) -> None: ...

    def close(self) -> None: ...


def toy_prompt(length: int, salt: int, size: int = 4) -> list[int]:
    """A ToyTokenEngine prompt whose response is `length` tokens plus the stop token."""
    return [length, size, salt, *range(size - 3)]


def tiny_math_checkpoint(path):
    """A random `debug`-preset K2 checkpoint + a tokenizer trained on tiny sums, saved to `path`."""
    import random

    import torch

    from agentfactory.model import K2Config, K2ForCausalLM, train_tokenizer
    from agentfactory.model.tokenizer import save_tokenizer

    rng = random.Random(0)
    texts = [
        f"Compute {rng.randint(1, 9)} + {rng.randint(1, 9)}. \\boxed{{{rng.randint(2, 18)}}}"
        for _ in range(300)
    ]
    tok = train_tokenizer(texts, 400)
    torch.manual_seed(0)
    cfg = K2Config.preset("debug", vocab_size=len(tok), bos_token_id=0, eos_token_id=1, pad_token_id=3)
    K2ForCausalLM(cfg).save_pretrained(path)
    save_tokenizer(tok, path)
    return path
