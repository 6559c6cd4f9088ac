"""What every request schema reads into and every model mapping writes from.

A request schema (schemas.py: OpenAI's chat completions and completions,
Hugging Face's TGI) reads its body into a `TextRequest`; a model mapping
(mappings.py: the vLLM backend's inputs, TensorRT-LLM's) turns its
`Generation` into one Triton request per choice; the model's answers come
back as `Delta`s, one per response, and a `Usage` once they end.
"""

from __future__ import annotations

import dataclasses

# OpenAI's finish reasons; the TGI schema names them its own way (schemas.py).
STOP, LENGTH = "stop", "length"


@dataclasses.dataclass(frozen=True)
class Sampling:
    """How to sample, as the request asked; None: the request left it to the model."""

    max_tokens: int
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    stop: tuple[str, ...] = ()
    seed: int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    repetition_penalty: float | None = None
    # Alternatives to report per generated token; None: no log probabilities asked.
    logprobs: int | None = None
    # TGI's do_sample=false: the most likely token each time.
    greedy: bool = False


@dataclasses.dataclass(frozen=True)
class Generation:
    prompt: str
    sampling: Sampling
    # Choices: one Triton request each, run at once.
    n: int = 1
    stream: bool = False
    # What the answer reports besides the text: the token counts (OpenAI's usage, TGI's
    # details) and the finish reason. The model is asked for no more: the vLLM backend sets
    # every output asked for on every response, a cost on every token.
    counts: bool = True
    finish_reason: bool = True


@dataclasses.dataclass(frozen=True)
class TextRequest:
    """A request of one schema, read: the generation and how its answer is written."""

    generation: Generation
    # The `model` the caller named (OpenAI's schemas echo it); None: the endpoint's.
    model: str | None = None
    # OpenAI: stream_options.include_usage.
    include_usage: bool = False
    # OpenAI's completions: `echo`; TGI: `return_full_text`.
    echo: bool = False
    # TGI: `details`.
    details: bool = False


@dataclasses.dataclass(frozen=True)
class TokenLogprob:
    token: str
    logprob: float
    # The most likely tokens at that step (the sampled one may be among them).
    top: tuple[tuple[str, float], ...] = ()
    token_id: int | None = None


@dataclasses.dataclass(frozen=True)
class Delta:
    """What one model response adds to one choice."""

    index: int
    text: str
    logprobs: tuple[TokenLogprob, ...] = ()
    # The model's tokens in this piece, where it reports them.
    tokens: int | None = None
    # Set on the choice's last delta: STOP or LENGTH.
    finish_reason: str | None = None


@dataclasses.dataclass
class Usage:
    """Token counts, where the model reports them (None: it does not)."""

    prompt_tokens: int | None = None
    completion_tokens: int | None = None

    def known(self) -> dict[str, int] | None:
        """OpenAI's usage object, or None when the model does not count its tokens."""
        if self.prompt_tokens is None or self.completion_tokens is None:
            return None
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
        }


@dataclasses.dataclass
class Choice:
    """One choice's answer, put together from its deltas (an answer that is not streamed)."""

    index: int
    text: str = ""
    logprobs: list[TokenLogprob] = dataclasses.field(default_factory=list)
    # The pieces of text the model sent for it: its tokens when it reports none.
    pieces: list[str] = dataclasses.field(default_factory=list)
    finish_reason: str = STOP

    def add(self, delta: Delta) -> None:
        self.text += delta.text
        self.logprobs.extend(delta.logprobs)
        if delta.text:
            self.pieces.append(delta.text)
        if delta.finish_reason is not None:
            self.finish_reason = delta.finish_reason


@dataclasses.dataclass
class Result:
    choices: list[Choice]
    usage: Usage
