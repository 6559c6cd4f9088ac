"""GPU benchmark: serve's chat route against Triton's own generate_stream, on one language model.

The model is GPT-2 small in size and architecture (12 layers, 768 wide, 12
heads, a 50,257-token vocabulary, fp16), built with transformers'
GPT2LMHeadModel from a config with RANDOM weights, and a byte-level BPE
tokenizer made on the spot (trained on generated text, then filled to GPT-2's
vocabulary with added tokens): no model hub is reachable from the GPU machine.
It is served through Triton's Python backend with the vLLM backend's inputs
and outputs (decoupled, one response per token), decoded by gpt2_decode.py
(plain torch with a static KV cache, each step a CUDA-graph replay, since
transformers does not import beside the numpy 1.26 the backend needs there;
the build checks its tokens against transformers' own model); each request
decodes greedily in a thread of its own, for exactly `--tokens` tokens (no
stop at the end-of-text token), so both paths do the same work.

Two paths reach the very same Triton and model instance:
- serve's /invocations with an OpenAI chat body, `"stream": true` (nginx ->
  the payload service -> the chat template -> Triton's generate_stream ->
  `chat.completion.chunk` events);
- Triton's own generate_stream route on its loopback port, with the prompt
  the template renders for the same messages (vLLM's inputs).

`--serve-inputs` adds generate_stream with the very body serve's route sends (what
serve asks the model for, without serve), `--bare-proxy` generate_stream through a bare
nginx `proxy_pass` (bare_proxy.py: one hop, nothing of serve's).

At each concurrency (1, 16, 64 streams by default) each path runs for
`--seconds`, in alternating rounds (the order rotated each round); every
stream sends its next request as soon as the last one ends. Printed per path:
tokens per second (all streams), the median time to the first token, and the
ratios serve / Triton (goal: tokens/s at least 0.97x, time to first token
within 1 ms).

`--build DIR --instant` writes a model that answers every token at once
instead (no torch, no tokenizer, any Python): the same two paths with nothing
of a model's own time or noise in them, so what serve's route adds shows alone.

Steps (build/gpu/run-on-gpu.sh, LLM_BENCH=1, runs both; LLM_INSTANT=1 first
measures the model that answers at once):
  1. `MACHINE_PYTHON build/bench/llm_stream.py --build DIR`: with the machine's
     own Python (transformers 5, numpy 2), write the model repository to DIR.
  2. `python build/bench/llm_stream.py --repository DIR`: with serve's
     environment (numpy 1.26 first, torch through a .pth), serve it and measure.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import http.client
import json
import random
import re
import shutil
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
MODEL = "llm_bench"
# --bare-proxy: generate_stream through a bare nginx, one hop with nothing of serve's in it.
BARE = "generate_stream, a bare nginx proxy_pass"
VOCABULARY = 50257
MESSAGES = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "Tell me about Triton Inference Server on SageMaker."},
]
CHAT_TEMPLATE = (
    "{% for message in messages %}{{ '<|' + message['role'] + '|>' + message['content'] + "
    "eos_token }}{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}"
)

CONFIG = f"""
name: "{MODEL}"
backend: "python"
max_batch_size: 0
model_transaction_policy {{ decoupled: true }}
input [
  {{ name: "text_input", data_type: TYPE_STRING, dims: [ 1 ] }},
  {{ name: "stream", data_type: TYPE_BOOL, dims: [ 1 ], optional: true }},
  {{ name: "sampling_parameters", data_type: TYPE_STRING, dims: [ 1 ], optional: true }},
  {{ name: "exclude_input_in_output", data_type: TYPE_BOOL, dims: [ 1 ], optional: true }},
  {{ name: "return_finish_reason", data_type: TYPE_BOOL, dims: [ 1 ], optional: true }},
  {{ name: "return_num_input_tokens", data_type: TYPE_BOOL, dims: [ 1 ], optional: true }},
  {{ name: "return_num_output_tokens", data_type: TYPE_BOOL, dims: [ 1 ], optional: true }}
]
output [
  {{ name: "text_output", data_type: TYPE_STRING, dims: [ -1 ] }},
  {{ name: "finish_reason", data_type: TYPE_STRING, dims: [ -1 ] }},
  {{ name: "num_input_tokens", data_type: TYPE_UINT32, dims: [ 1 ] }},
  {{ name: "num_output_tokens", data_type: TYPE_UINT32, dims: [ -1 ] }}
]
instance_group [ {{ kind: KIND_GPU, count: 1 }} ]
"""

MODEL_PY = '''
"""GPT-2 small (random weights) behind the vLLM backend's inputs: a thread per request,
greedy decoding in gpt2_decode.py (a static KV cache, each step a CUDA-graph replay on a
GPU), one response per token."""
import json
import os
import queue
import sys
import threading
import time

import numpy as np
import torch
import triton_python_backend_utils as pb_utils

HERE = os.path.dirname(__file__)
sys.path[:0] = [HERE, os.path.join(HERE, "packages")]
from gpt2_decode import Gpt2, Slot  # noqa: E402
from tokenizers import Tokenizer  # noqa: E402

# Requests decoded at once (each holds a slot: its cache and captured steps); more wait.
SLOTS = 64


{RESPONSES}


class TritonPythonModel:
    def initialize(self, args):
        # Requests decode in threads of their own, a few calls a token each, dropping and
        # taking the GIL; Python's 5 ms switch interval made eager steps wait on the
        # stub's own threads (docs/benchmarks.md).
        sys.setswitchinterval(0.0002)
        device = f"cuda:{args['model_instance_device_id']}"
        if args["model_instance_kind"] != "GPU" or not torch.cuda.is_available():
            device = "cpu"
        with open(os.path.join(HERE, "gpt2", "config.json")) as f:
            config = json.load(f)
        state = torch.load(os.path.join(HERE, "gpt2", "weights.pt"), map_location="cpu")
        dtype = torch.float16 if device != "cpu" else torch.float32
        model = Gpt2(state, config["n_layer"], config["n_head"], torch.device(device), dtype)
        started = time.perf_counter()
        self.slots = queue.SimpleQueue()
        for _ in range(SLOTS):
            self.slots.put(Slot(model))
        # The benchmark reads this line: a model left on the CPU measures nothing of serve.
        pb_utils.Logger.log_info(
            f"llm_bench runs on {device}, {dtype}; {SLOTS} slots, steps "
            f"{'captured as CUDA graphs' if device != 'cpu' else 'eager'} in "
            f"{time.perf_counter() - started:.1f} s"
        )
        self.tokenizer = Tokenizer.from_file(os.path.join(HERE, "gpt2", "tokenizer.json"))
        self.lock = threading.Lock()
        self.requests = 0
        # Steps timed here, in the stub's main thread before any request: beside the
        # steps the requests log, they tell the host's own speed from the cost of the
        # stub's threads.
        slot, warm = self.slots.get(), 16
        wall, cpu = time.perf_counter(), time.thread_time()
        for _ in slot.generate([0], warm):
            pass
        self.slots.put(slot)
        pb_utils.Logger.log_info(
            f"llm_bench warm-up in initialize: ms a token: step "
            f"{(time.perf_counter() - wall) / warm * 1000:.2f}, step_cpu "
            f"{(time.thread_time() - cpu) / warm * 1000:.2f}; switch interval "
            f"{sys.getswitchinterval() * 1000:.2f} ms, {torch.get_num_threads()} torch threads"
        )

    def execute(self, requests):
        for request in requests:
            threading.Thread(target=self._generate, args=(request,), daemon=True).start()
        return None

    def _generate(self, request):
        sender = request.get_response_sender()
        slot = None
        try:
            prompt = _value(request, "text_input").decode()
            stream = bool(_value(request, "stream", False))
            sampling = json.loads(_value(request, "sampling_parameters", b"{}").decode() or "{}")
            limit = int(sampling.get("max_tokens", 16))
            flags = _flags(request)
            ids = self.tokenizer.encode(prompt).ids or [0]
            slot = self.slots.get()
            tokens = slot.generate(ids, limit)
            text = ""
            # Where a request's time goes (wall and this thread's CPU), logged for some.
            spent = {"step": 0.0, "step_cpu": 0.0, "decode": 0.0, "send": 0.0}
            started = time.perf_counter()
            for number in range(limit):
                wall, cpu = time.perf_counter(), time.thread_time()
                value = next(tokens)
                spent["step"] += time.perf_counter() - wall
                spent["step_cpu"] += time.thread_time() - cpu
                wall = time.perf_counter()
                piece = self.tokenizer.decode([value])
                spent["decode"] += time.perf_counter() - wall
                wall = time.perf_counter()
                if stream:
                    sender.send(_response(piece, flags, len(ids), 1, number == limit - 1))
                else:
                    text += piece
                spent["send"] += time.perf_counter() - wall
            with self.lock:
                self.requests += 1
                logged = self.requests <= 3 or self.requests % 50 == 0
            if logged and limit:
                per_token = ", ".join(f"{k} {v / limit * 1000:.2f}" for k, v in spent.items())
                pb_utils.Logger.log_info(
                    f"llm_bench request {self.requests}: {limit} tokens in "
                    f"{time.perf_counter() - started:.2f} s; ms a token: {per_token}; "
                    f"{threading.active_count()} threads"
                )
            if not stream:
                sender.send(_response(text, flags, len(ids), limit, True))
        except Exception as exc:
            sender.send(pb_utils.InferenceResponse(error=pb_utils.TritonError(str(exc))))
        finally:
            if slot is not None:
                self.slots.put(slot)
        sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
'''


# Both models' reading of a request's flags and writing of a response, as the vLLM backend's
# additional outputs: each asked for by its flag. The finish reason comes once, with the
# last token (the vLLM backend sets it on every response, "None" until then: a tensor more
# a token for any stream that asks, and serve's streams ask, docs/language-models.md).
RESPONSES_PY = '''
OUTPUTS = ("finish_reason", "num_input_tokens", "num_output_tokens")


def _value(request, name, default=None):
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    return default if tensor is None else tensor.as_numpy().reshape(-1)[0]


def _flags(request):
    """Which additional outputs the request asks for, by output name."""
    return {name: bool(_value(request, "return_" + name, False)) for name in OUTPUTS}


def _response(text, flags, prompt_tokens, tokens, last):
    """One response: `text` (`tokens` of them), the outputs `flags` asks for; the finish
    reason with the `last` one (every request here ends at its token limit)."""
    out = [pb_utils.Tensor("text_output", np.array([text.encode()], dtype=object))]
    if flags["finish_reason"] and last:
        out.append(pb_utils.Tensor("finish_reason", np.array([b"length"], dtype=object)))
    if flags["num_input_tokens"]:
        out.append(pb_utils.Tensor("num_input_tokens", np.array([prompt_tokens], np.uint32)))
    if flags["num_output_tokens"]:
        out.append(pb_utils.Tensor("num_output_tokens", np.array([tokens], np.uint32)))
    return pb_utils.InferenceResponse(out)
'''


INSTANT_PY = '''
"""No model: each request's `max_tokens` responses of one word at once, behind the same
inputs and outputs as the GPT-2 model, so what the benchmark measures is the paths alone."""
import json

import numpy as np
import triton_python_backend_utils as pb_utils


{RESPONSES}


class TritonPythonModel:
    def initialize(self, args):
        pb_utils.Logger.log_info("llm_bench answers at once")

    def execute(self, requests):
        for request in requests:
            sender = request.get_response_sender()
            sampling = json.loads(_value(request, "sampling_parameters", b"{}").decode() or "{}")
            flags = _flags(request)
            limit = int(sampling.get("max_tokens", 16))
            for number in range(limit):
                sender.send(_response(" word", flags, 1, 1, number == limit - 1))
            sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
        return None
'''


def build_instant(folder: Path) -> None:
    """The repository with INSTANT_PY in the model's place (no torch, no tokenizer)."""
    version = folder / MODEL / "1"
    version.mkdir(parents=True, exist_ok=True)
    _model_files(folder, INSTANT_PY, version)
    print(f"wrote a model that answers at once to {folder / MODEL}")


def _model_files(folder: Path, model_py: str, tokenizer_dir: Path) -> None:
    """What both models share: the config, the chat template (in tokenizer_config.json,
    where serve finds it in `tokenizer_dir`), and `model_py` as the version's model.py."""
    (tokenizer_dir / "tokenizer_config.json").write_text(
        json.dumps({"eos_token": "<|endoftext|>", "chat_template": CHAT_TEMPLATE})
    )
    (folder / MODEL / "1" / "model.py").write_text(model_py.replace("{RESPONSES}", RESPONSES_PY))
    (folder / MODEL / "config.pbtxt").write_text(CONFIG)


def _check_against_transformers(model: Any, state: dict[str, Any], prompt: list[int]) -> None:
    """Every token gpt2_decode picks must be transformers' greedy choice, or the build stops.

    On the CPU in float32, with a prompt of more than one chunk, so the chunked
    prefill, its padding and the cache are checked with the layers. Random
    weights make close logits, so a token counts as transformers' choice when
    its logit there is the largest up to rounding.
    """
    import torch
    from gpt2_decode import Gpt2, Slot

    count = 8
    ours = Gpt2(
        state, model.config.n_layer, model.config.n_head, torch.device("cpu"), torch.float32
    )
    decoded = list(Slot(ours).generate(prompt, count))
    with torch.inference_mode():
        logits = model(torch.tensor([prompt + decoded])).logits[0, len(prompt) - 1 : -1]
    best = logits.max(-1).values
    gap = float((best - logits[torch.arange(count), torch.tensor(decoded)]).max())
    if gap > 1e-4 * float(best.abs().max()):
        raise SystemExit(
            f"gpt2_decode.py decoded {decoded}; transformers' greedy choices are "
            f"{logits.argmax(-1).tolist()} (logits {gap:.2e} apart)"
        )
    print(f"gpt2_decode.py: {count} tokens after a {len(prompt)}-token prompt, as transformers")


def _check_graphs(state: dict[str, Any], layers: int, heads: int, prompt: list[int]) -> None:
    """On a GPU: capture and replay the steps once, and print their tokens and speed
    beside the eager steps'; then step 8 slots at once and require each one's tokens
    alone.

    A capture that fails stops the build on the GPU machine rather than the served
    model. Graphed and eager tokens are printed, not required equal: with random
    weights the top logits lie close, so another kernel's rounding may part them (the
    layers are checked against transformers on the CPU). Slots at once replay the very
    same graphs as alone, so there any difference is a buffer they share.
    """
    import torch
    from gpt2_decode import Gpt2, Slot

    model = Gpt2(state, layers, heads, torch.device("cuda:0"), torch.float16)
    count, tokens, speed = 32, {}, {}
    for graphs in (False, True):
        slot = Slot(model, graphs=graphs)
        list(slot.generate(prompt, 4))
        started = time.perf_counter()
        tokens[graphs] = list(slot.generate(prompt, count))
        speed[graphs] = (time.perf_counter() - started) / count * 1000
    same = sum(a == b for a, b in zip(tokens[True], tokens[False], strict=True))
    print(
        f"gpt2_decode.py on the GPU: {same} of {count} tokens as the eager steps'; ms a token "
        f"(the prompt's prefill included): graphed {speed[True]:.2f}, eager {speed[False]:.2f}"
    )
    # Slots stepping at once, each in a thread and on a stream of its own, must give the
    # tokens each gives alone (a buffer two slots shared would part them); the time says
    # what their overlap on the GPU buys.
    prompts = [prompt[i:] + prompt[:i] for i in range(8)]
    slots = [Slot(model) for _ in prompts]
    alone = [list(slot.generate(p, count)) for slot, p in zip(slots, prompts, strict=True)]
    together: list[list[int]] = [[] for _ in prompts]

    def decode(index: int) -> None:
        together[index] = list(slots[index].generate(prompts[index], count))

    threads = [threading.Thread(target=decode, args=(i,)) for i in range(len(slots))]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    rate = len(slots) * count / (time.perf_counter() - started)
    print(
        f"gpt2_decode.py on the GPU: {len(slots)} slots at once, {rate:,.0f} tokens/s (one "
        f"alone {1000 / speed[True]:,.0f}); the same tokens as each alone: {together == alone}"
    )
    if together != alone:
        raise SystemExit("gpt2_decode.py: slots stepping at once gave other tokens than alone")


def build(folder: Path) -> None:
    """The repository: GPT-2 small with random weights, a tokenizer made here, the config."""
    import tokenizers
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GPT2Config, GPT2LMHeadModel

    version = folder / MODEL / "1"
    weights = version / "gpt2"
    weights.mkdir(parents=True, exist_ok=True)
    rng = random.Random(0)
    letters = "etaoinshrdlucmfwypvbgkjqxz"
    words = ["".join(rng.choice(letters) for _ in range(rng.randint(2, 9))) for _ in range(5000)]
    corpus = [" ".join(rng.choice(words) for _ in range(30)) for _ in range(4000)]
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.train_from_iterator(
        corpus,
        trainers.BpeTrainer(
            vocab_size=8000,
            special_tokens=["<|endoftext|>"],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        ),
    )
    # GPT-2's vocabulary size, so the output layer costs what GPT-2's does; every id decodes.
    tokenizer.add_tokens([f" w{i}" for i in range(VOCABULARY - tokenizer.get_vocab_size())])
    tokenizer.save(str(weights / "tokenizer.json"))
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=VOCABULARY, n_positions=1024, n_embd=768, n_layer=12, n_head=12)
    model = GPT2LMHeadModel(config).eval()
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("lm_head")}
    prompt = tokenizer.encode(corpus[0] * 3).ids[:100]
    _check_against_transformers(model, state, prompt)
    if torch.cuda.is_available():
        _check_graphs(state, config.n_layer, config.n_head, prompt)
    torch.save(state, weights / "weights.pt")
    (weights / "config.json").write_text(json.dumps(config.to_dict()))
    shutil.copy(HERE / "gpt2_decode.py", version / "gpt2_decode.py")
    # The stub runs beside numpy 1.26 and torch alone: the tokenizer's package is linked in.
    packages = version / "packages"
    packages.mkdir(exist_ok=True)
    link = packages / "tokenizers"
    if not link.exists():
        link.symlink_to(Path(tokenizers.__file__).parent)
    _model_files(folder, MODEL_PY, weights)
    print(
        f"wrote GPT-2 small ({sum(v.numel() for v in state.values()) / 1e6:.0f}M parameters, "
        f"random weights) and a {VOCABULARY}-token tokenizer to {folder / MODEL}"
    )


class Stream(threading.Thread):
    """One stream: requests back to back until the deadline; first-token times and tokens."""

    def __init__(self, host: str, port: int, path: str, body: bytes, deadline: float):
        super().__init__(daemon=True)
        self.host, self.port, self.path, self.body, self.deadline = host, port, path, body, deadline
        self.first: list[float] = []
        self.tokens = 0
        self.error: str | None = None

    def run(self) -> None:
        connection = http.client.HTTPConnection(self.host, self.port, timeout=120)
        try:
            while time.perf_counter() < self.deadline:
                started = time.perf_counter()
                connection.request(
                    "POST", self.path, body=self.body, headers={"Content-Type": "application/json"}
                )
                response = connection.getresponse()
                if response.status != 200:
                    self.error = (
                        f"{self.path} answered {response.status}: {response.read()[:300]!r}"
                    )
                    return
                pending, first = b"", None
                while chunk := response.read1(65536):
                    pending += chunk
                    *events, pending = pending.split(b"\n\n")
                    for event in events:
                        if _has_token(event):
                            first = first or time.perf_counter() - started
                            self.tokens += 1
                if first is not None:
                    self.first.append(first)
        except OSError as exc:
            self.error = f"{self.path}: {exc}"
        finally:
            connection.close()


def _has_token(event: bytes) -> bool:
    """Whether a server-sent event carries a token: a chat chunk's content, or text_output."""
    data = event.strip().removeprefix(b"data:").strip()
    if not data or data == b"[DONE]":
        return False
    fields = json.loads(data)
    if "choices" in fields:
        return any(c.get("delta", {}).get("content") for c in fields["choices"])
    return bool(fields.get("text_output"))


@dataclasses.dataclass(frozen=True)
class Run:
    """One path at one concurrency for one round."""

    rate: float  # tokens a second, all streams
    first: float  # median time to the first token (s)
    # CPU microseconds a token, by process name (serve, nginx, tritonserver, the stub).
    cpu: dict[str, float]


def run_path(
    url: str, path: str, body: bytes, streams: int, seconds: float, running: Any = None
) -> Run:
    """The streams' tokens a second and median first token; with `running` (a RunningServe),
    what each of its processes spent on a token meanwhile."""
    host, port = url.removeprefix("http://").split(":")
    before = running.cpu_seconds_by_name() if running else {}
    started = time.perf_counter()
    deadline = started + seconds
    threads = [Stream(host, int(port), path, body, deadline) for _ in range(streams)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    errors = [t.error for t in threads if t.error]
    if errors:
        raise SystemExit(errors[0])
    tokens = sum(t.tokens for t in threads)
    after = running.cpu_seconds_by_name() if running else {}
    cpu = {
        name: (used - before.get(name, 0.0)) / max(tokens, 1) * 1e6 for name, used in after.items()
    }
    firsts = [f for t in threads for f in t.first]
    return Run(tokens / elapsed, statistics.median(firsts), cpu)


def model_lines(log: Path) -> None:
    """The model's own account of its device, warm-up and some requests (MODEL_PY logs them)."""
    for line in log.read_text().splitlines():
        found = re.search(r"llm_bench (runs on|request|warm-up)", line)
        if found:
            print("  log:", line[found.start() :][:300], flush=True)


def inputs_serve_sends(triton: str, chat: bytes, template: Any) -> bytes:
    """The generate_stream body serve's chat route sends for `chat`, built by serve's own
    schema and input mapping from the model's config (the counts it asks for included)."""
    from serve.payloads.llm.mappings import MAPPINGS
    from serve.payloads.llm.schemas import SCHEMAS, Context
    from serve.payloads.signature import ModelSignature

    with urllib.request.urlopen(f"{triton}/v2/models/{MODEL}/config", timeout=30) as answer:
        signature = ModelSignature.from_triton_json(answer.read())
    document = json.loads(chat)
    request = SCHEMAS.for_body(document, MODEL).read(document, Context(MODEL, template, 1 << 20))
    values, parameters = MAPPINGS.choose(signature).build(request.generation, signature)
    return json.dumps({**values, **({"parameters": parameters} if parameters else {})}).encode()


def measure(
    repository: Path,
    concurrencies: list[int],
    tokens: int,
    seconds: float,
    rounds: int,
    serve_inputs: bool = False,
    bare: bool = False,
) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bare_proxy import bare_proxy
    from load_generators import in_turn
    from serve_under_test import serve_with_reference

    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from serve.payloads.llm.templates import find_chat_template

    template = find_chat_template(repository / MODEL)
    assert template is not None
    prompt = template.render(MESSAGES)
    chat = json.dumps({"messages": MESSAGES, "max_tokens": tokens, "stream": True}).encode()
    generate = json.dumps(
        {
            "text_input": prompt,
            "stream": True,
            "exclude_input_in_output": True,
            "sampling_parameters": json.dumps({"max_tokens": tokens}),
        }
    ).encode()
    work = Path(tempfile.mkdtemp(prefix="bench-llm-"))
    try:
        env = {"SERVE_TEXT_GENERATION_MODELS": MODEL, "SAGEMAKER_TRITON_LOG_VERBOSE": "false"}
        with contextlib.ExitStack() as stack:
            running = stack.enter_context(
                serve_with_reference(work, MODEL, repository, env, timeout=600)
            )
            generate_url = f"http://{running.triton_http}"
            generate_path = f"/v2/models/{MODEL}/generate_stream"
            paths = {
                "serve chat": (running.url, "/invocations", chat),
                "Triton generate_stream": (generate_url, generate_path, generate),
            }
            if serve_inputs:
                paths["generate_stream, serve's inputs"] = (
                    generate_url,
                    generate_path,
                    inputs_serve_sends(generate_url, chat, template),
                )
            if bare:
                # One nginx hop and nothing of serve's: the floor of any front's first token.
                proxy = bare_proxy(work / "bare", running.triton_http, MODEL, "generate_stream")
                paths[BARE] = (stack.enter_context(proxy)[0], "/invocations", generate)
            for url, path, body in paths.values():  # warm-up, and a check of each path
                run_path(url, path, body, 1, 2)
            log = running.log.read_text()
            placed = re.search(r"llm_bench runs on (\S+), ([^;\s]+)", log)
            instant = "llm_bench answers at once" in log
            where = f"{placed[1]}, {placed[2]}" if placed else "an unknown device"
            if not instant and (not placed or placed[1] == "cpu"):
                # Why not the GPU: serve's and the stub's lines about GPUs and instance kinds.
                for line in running.log.read_text().splitlines():
                    if re.search(r"GPU|KIND_|cuda", line):
                        print("  log:", line[:300])
            model_lines(running.log)
            # serve's chat route runs in its writers where it starts some (4 CPUs or more).
            writers = len(set(re.findall(r"starting (v2 JSON writer \d+)", log)))
            print(f"serve's schema requests answered by {writers or 'no'} writer processes")
            model = (
                "a model that answers at once (the paths alone)"
                if instant
                else f"GPT-2 small, random weights, on {where}"
            )
            print(
                f"{model}; {tokens} tokens a request; {seconds:g} s a path per round, "
                f"{rounds} rounds"
            )
            print("| streams | path | tokens/s | first token (ms, median) |")
            print("|---|---|---|---|")
            summary = []
            cpu_lines = []
            for streams in concurrencies:
                results: dict[str, list[Run]] = {name: [] for name in paths}
                for turn in range(rounds):
                    for name in in_turn(list(paths), turn):
                        results[name].append(run_path(*paths[name], streams, seconds, running))
                medians = {
                    name: (
                        statistics.median(r.rate for r in rows),
                        statistics.median(r.first for r in rows),
                    )
                    for name, rows in results.items()
                }
                for name, (rate, first) in medians.items():
                    print(f"| {streams} | {name} | {rate:,.0f} | {first * 1000:.2f} |")
                    spent = {
                        process: statistics.median(r.cpu.get(process, 0.0) for r in results[name])
                        for process in results[name][0].cpu
                    }
                    shown = ", ".join(f"{p} {us:.0f}" for p, us in sorted(spent.items()) if us >= 1)
                    cpu_lines.append(f"  {streams} streams, {name}: {shown}")
                (serve_rate, serve_first), (triton_rate, triton_first) = list(medians.values())[:2]
                summary.append(
                    (streams, serve_rate / triton_rate, (serve_first - triton_first) * 1000)
                )
            print()
            print("CPU microseconds a token by process (medians of the rounds):")
            print("\n".join(cpu_lines))
            print()
            model_lines(running.log)
            print()
            goals = "tokens/s serve / Triton (goal >= 0.97)"
            print(f"| streams | {goals} | first token serve - Triton (ms, goal <= 1) |")
            print("|---|---|---|")
            for streams, ratio, delta in summary:
                print(f"| {streams} | {ratio:.3f} | {delta:+.2f} |")
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--build", type=Path, help="write the model repository here, and stop")
    parser.add_argument(
        "--instant",
        action="store_true",
        help="with --build: a model that answers at once instead of GPT-2 (the paths alone)",
    )
    parser.add_argument("--repository", type=Path, help="the repository --build wrote")
    parser.add_argument("--streams", default="1,16,64", help="concurrencies, comma-separated")
    parser.add_argument("--tokens", type=int, default=128, help="tokens a request")
    parser.add_argument("--seconds", type=float, default=15, help="per path per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--serve-inputs",
        action="store_true",
        help="a third path: generate_stream with the inputs serve sends (token counts included)",
    )
    parser.add_argument(
        "--bare-proxy",
        action="store_true",
        help="another path: generate_stream through a bare nginx proxy_pass (one hop, no serve)",
    )
    args = parser.parse_args()
    if args.build is not None:
        (build_instant if args.instant else build)(args.build)
        return
    if args.repository is None:
        raise SystemExit("give --build DIR (machine Python) or --repository DIR (serve's)")
    concurrencies = [int(n) for n in args.streams.split(",")]
    measure(
        args.repository,
        concurrencies,
        args.tokens,
        args.seconds,
        args.rounds,
        args.serve_inputs,
        args.bare_proxy,
    )


if __name__ == "__main__":
    main()
