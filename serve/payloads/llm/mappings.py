"""How a text-generation request reaches a Triton model: one declared mapping per kind of model.

Triton's language models take one of two sets of inputs, and Python-backend
models written to be called like them take the same:

- `vllm`, the vLLM backend's: `text_input`, `stream`, `sampling_parameters`
  (a JSON string of vLLM's SamplingParams), `exclude_input_in_output`, and the
  flags of its additional outputs (`return_num_input_tokens`, ...);
- `tensorrt_llm`, TensorRT-LLM's ensemble (and BLS) inputs: `text_input`,
  `max_tokens`, `temperature`, `top_p`, `top_k`, `stop_words`, `random_seed`,
  `stream`, `exclude_input_in_output`, ...

Both answer `text_output`; the vLLM backend also answers token counts
(`num_input_tokens`, `num_output_tokens`), `finish_reason` and `logprobs` when
asked, and those become the answer's usage, finish reason and log
probabilities. Which mapping a model gets is SERVE_TEXT_GENERATION_INPUTS
(`auto`: the first whose inputs the model has, TensorRT-LLM's first since its
`max_tokens` tells it apart). A model that fits none is refused naming the
inputs it lacks. Decoupled models stream through Triton's generate_stream
route, one response per piece of text; others answer once through infer.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from serve.errors import ModelMisconfigured, PayloadError
from serve.payloads.llm.request import LENGTH, STOP, Generation, TokenLogprob
from serve.payloads.signature import ModelSignature, TensorSpec

TEXT_INPUT, TEXT_OUTPUT = "text_input", "text_output"
AUTO = "auto"

# (inputs by name, Triton request parameters) for one choice's request.
Request = tuple[dict[str, object], dict[str, object]]


@dataclasses.dataclass(frozen=True)
class InputMapping:
    """One kind of text-generation model: the inputs it needs and how a request fills them."""

    name: str
    # Whose inputs these are, for messages.
    described: str
    inputs: tuple[str, ...]
    build: Callable[[Generation, ModelSignature], Request]

    def missing(self, signature: ModelSignature) -> list[str]:
        names = {spec.name for spec in signature.inputs}
        outputs = {spec.name for spec in signature.outputs}
        lacking = [f"input {n}" for n in self.inputs if n not in names]
        return lacking + ([f"output {TEXT_OUTPUT}"] if TEXT_OUTPUT not in outputs else [])


def _optional(
    signature: ModelSignature, values: dict[str, object], name: str, value: object
) -> None:
    if value is not None and signature.input(name) is not None:
        values[name] = value


def _taken(
    signature: ModelSignature, values: dict[str, object], name: str, value: object, asked: str
) -> None:
    """`value` into input `name`; a request that asked for it from a model without it is refused."""
    if value is None:
        return
    if signature.input(name) is None:
        raise PayloadError(
            f"model {signature.name!r} takes no input {name!r}, so it cannot honour {asked}; "
            "leave it out of the request"
        )
    values[name] = value


def _common(generation: Generation, signature: ModelSignature) -> dict[str, object]:
    """Inputs both kinds share: the prompt, streaming, and the prompt left out of the answer."""
    values: dict[str, object] = {TEXT_INPUT: generation.prompt}
    _optional(signature, values, "stream", generation.stream and signature.decoupled)
    _optional(signature, values, "exclude_input_in_output", True)
    return values


def _vllm(generation: Generation, signature: ModelSignature) -> Request:
    sampling = generation.sampling
    chosen = {
        "max_tokens": sampling.max_tokens,
        "temperature": 0.0 if sampling.greedy else sampling.temperature,
        "top_p": sampling.top_p,
        "top_k": sampling.top_k,
        "stop": list(sampling.stop) or None,
        "seed": sampling.seed,
        "presence_penalty": sampling.presence_penalty,
        "frequency_penalty": sampling.frequency_penalty,
        "repetition_penalty": sampling.repetition_penalty,
        "logprobs": sampling.logprobs,
    }
    parameters: dict[str, object] = {k: v for k, v in chosen.items() if v is not None}
    values = _common(generation, signature)
    # Without the model's finish reason, its count of tokens against max_tokens tells it.
    count_for_finish = generation.finish_reason and not signature.input("return_finish_reason")
    _optional(signature, values, "return_num_input_tokens", generation.counts or None)
    _optional(
        signature, values, "return_num_output_tokens", generation.counts or count_for_finish or None
    )
    _optional(signature, values, "return_finish_reason", generation.finish_reason or None)
    if sampling.logprobs is not None:
        _taken(signature, values, "return_logprobs", True, "logprobs")
    if signature.input("sampling_parameters") is not None:
        values["sampling_parameters"] = json.dumps(parameters)
        return values, {}
    # The vLLM backend reads request parameters when the input is absent; they hold scalars.
    if "stop" in parameters:
        raise PayloadError(
            f"model {signature.name!r} takes no sampling_parameters input, and Triton's "
            "request parameters cannot carry a list of stop sequences; leave stop out"
        )
    return values, parameters


def _tensorrt_llm(generation: Generation, signature: ModelSignature) -> Request:
    sampling = generation.sampling
    values = _common(generation, signature)
    values["max_tokens"] = sampling.max_tokens
    _taken(signature, values, "temperature", sampling.temperature, "temperature")
    _taken(signature, values, "top_p", sampling.top_p, "top_p")
    _taken(signature, values, "top_k", 1 if sampling.greedy else sampling.top_k, "top_k")
    _taken(signature, values, "random_seed", sampling.seed, "seed")
    _taken(signature, values, "stop_words", list(sampling.stop) or None, "stop")
    _taken(signature, values, "presence_penalty", sampling.presence_penalty, "presence_penalty")
    _taken(signature, values, "frequency_penalty", sampling.frequency_penalty, "frequency_penalty")
    _taken(
        signature, values, "repetition_penalty", sampling.repetition_penalty, "repetition_penalty"
    )
    if sampling.logprobs is not None:
        raise PayloadError(
            f"model {signature.name!r} takes TensorRT-LLM's inputs, whose log probabilities "
            "carry no token text; leave logprobs out"
        )
    return values, {}


class Mappings:
    """The mappings, each registered once, in the order `auto` tries them."""

    def __init__(self) -> None:
        self._mappings: dict[str, InputMapping] = {}

    def register(self, mapping: InputMapping) -> InputMapping:
        if mapping.name in self._mappings or mapping.name == AUTO:
            raise ValueError(f"mapping {mapping.name} is registered already")
        self._mappings[mapping.name] = mapping
        return mapping

    def names(self) -> tuple[str, ...]:
        return (AUTO, *self._mappings)

    def choose(self, signature: ModelSignature, declared: str = AUTO) -> InputMapping:
        """The mapping for a model; ModelMisconfigured naming what it lacks when none fits."""
        candidates = list(self._mappings.values())
        if declared != AUTO:
            candidates = [self._mappings[declared]]
        for mapping in candidates:
            if not mapping.missing(signature):
                return mapping
        lacks = "; ".join(
            f"{m.described} (it lacks {', '.join(m.missing(signature))})" for m in candidates
        )
        setting = (
            f"SERVE_TEXT_GENERATION_INPUTS={declared}"
            if declared != AUTO
            else "SERVE_TEXT_GENERATION_MODELS"
        )
        raise ModelMisconfigured(
            f"model {signature.name!r} is declared a text-generation model ({setting}) but "
            f"does not take {lacks}; give it those inputs, or take it out of "
            "SERVE_TEXT_GENERATION_MODELS"
        )


MAPPINGS = Mappings()
# TensorRT-LLM's first: its required max_tokens tells it apart from vLLM's inputs.
TENSORRT_LLM = MAPPINGS.register(
    InputMapping(
        "tensorrt_llm",
        "TensorRT-LLM's ensemble inputs",
        (TEXT_INPUT, "max_tokens"),
        _tensorrt_llm,
    )
)
VLLM = MAPPINGS.register(InputMapping("vllm", "the vLLM backend's inputs", (TEXT_INPUT,), _vllm))


# --- one response's outputs ----------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Piece:
    """What one model response says, read from its outputs."""

    text: str
    finish_reason: str | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    logprobs: tuple[TokenLogprob, ...] = ()


# The vLLM backend's finish reasons, and TensorRT-LLM's; the rest (abort) read as stop.
_FINISH = {"length": LENGTH, "stop": STOP, "eos": STOP, "end_id": STOP}


def read_piece(outputs: Mapping[str, object]) -> Piece:
    """A response's outputs (values as Triton's generate route writes them, or arrays)."""
    texts = _strings(outputs.get(TEXT_OUTPUT))
    reasons = [r for r in _strings(outputs.get("finish_reason")) if r not in ("", "None")]
    logprobs = _strings(outputs.get("logprobs"))
    return Piece(
        text=texts[0] if texts else "",
        finish_reason=_FINISH.get(reasons[0], STOP) if reasons else None,
        input_tokens=_first_int(outputs.get("num_input_tokens")),
        output_tokens=_first_int(outputs.get("num_output_tokens")),
        logprobs=_vllm_logprobs(logprobs[0]) if logprobs else (),
    )


def _flat(value: object) -> list[object]:
    if value is None:
        return []
    if isinstance(value, np.ndarray):
        return list(value.reshape(-1))
    if isinstance(value, list):
        return [item for part in value for item in _flat(part)]
    return [value]


def _strings(value: object) -> list[str]:
    return [
        item.decode("utf-8", "replace") if isinstance(item, bytes) else str(item)
        for item in _flat(value)
    ]


def _first_int(value: object) -> int | None:
    for item in _flat(value):
        try:
            return int(item)  # type: ignore[call-overload]
        except (TypeError, ValueError):
            return None
    return None


def _vllm_logprobs(text: str) -> tuple[TokenLogprob, ...]:
    """The vLLM backend's `logprobs` output: a JSON list, per token, of
    {token_id: {logprob, rank, decoded_token}}, the sampled token first."""
    try:
        steps = json.loads(text)
    except json.JSONDecodeError:
        return ()
    found = []
    for step in steps if isinstance(steps, list) else []:
        if not isinstance(step, dict) or not step:
            continue
        entries = [
            (key, value)
            for key, value in step.items()
            if isinstance(value, dict) and isinstance(value.get("logprob"), int | float)
        ]
        if not entries:
            continue
        token_id, sampled = entries[0]
        ranked = sorted(entries, key=lambda entry: entry[1].get("rank") or math.inf)
        top = tuple((str(v.get("decoded_token") or ""), float(v["logprob"])) for _, v in ranked)
        found.append(
            TokenLogprob(
                token=str(sampled.get("decoded_token") or ""),
                logprob=float(sampled["logprob"]),
                top=top,
                token_id=int(token_id) if str(token_id).isdigit() else None,
            )
        )
    return tuple(found)


# --- the infer route's tensors -------------------------------------------------------------


def tensors(values: Mapping[str, object], signature: ModelSignature) -> dict[str, np.ndarray]:
    """Input values as tensors of the model's types and ranks (a batch of one where it batches)."""
    found = {}
    for name, value in values.items():
        spec = signature.input(name)
        assert spec is not None, f"mappings fill only the model's inputs ({name})"
        found[name] = _tensor(spec, value, signature.batched)
    return found


def _tensor(spec: TensorSpec, value: object, batched: bool) -> np.ndarray:
    items: Sequence[object] = value if isinstance(value, list) else [value]
    if spec.is_bytes:
        array = np.array([str(item).encode("utf-8") for item in items], dtype=object)
    else:
        array = np.array(items, dtype=spec.dtype)
    shape = [1] * max(len(spec.dims) - 1, 0) + [len(items)]
    return array.reshape(([1] if batched else []) + shape)
