"""GPT-2 decoding in plain torch with a static KV cache: the language-model benchmark's model.

llm_stream.py serves GPT-2 small through Triton's Python backend, where
transformers does not import beside the numpy 1.26 the backend needs, so the
model is written out here. Every step has fixed shapes (a chunk of CHUNK
prompt tokens, or one new token, against a cache of MAX_LEN positions, the
positions past the current one masked), so on a GPU each step is captured
once as a CUDA graph and then replayed: one launch a token instead of the
few hundred an eager step makes, which on some hosts cost 50-65 ms a token
in launches alone (docs/benchmarks.md, language models). On the CPU the same
steps run eagerly.

`llm_stream.py --build` copies this file beside the model's model.py and
checks its tokens against transformers' own GPT2LMHeadModel.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn.functional as F

# Positions a request may use, prompt and answer together.
MAX_LEN = 512
# Prompt tokens a prefill step takes (the last chunk padded).
CHUNK = 64


class Gpt2:
    """The weights (GPT-2's state dict without `transformer.`), on one device and dtype."""

    def __init__(
        self,
        state: dict[str, torch.Tensor],
        layers: int,
        heads: int,
        device: torch.device,
        dtype: torch.dtype,
    ) -> None:
        self.w = {k.removeprefix("transformer."): v.to(device, dtype) for k, v in state.items()}
        self.layers, self.heads = layers, heads
        self.width = self.w["wte.weight"].shape[1]
        self.device, self.dtype = device, dtype
        if self.w["wpe.weight"].shape[0] < MAX_LEN:
            raise ValueError(f"the model has fewer than {MAX_LEN} positions")

    def _norm(self, x: torch.Tensor, name: str) -> torch.Tensor:
        return F.layer_norm(x, (self.width,), self.w[name + ".weight"], self.w[name + ".bias"])

    def _linear(self, x: torch.Tensor, name: str) -> torch.Tensor:
        flat = torch.addmm(
            self.w[name + ".bias"], x.reshape(-1, x.shape[-1]), self.w[name + ".weight"]
        )
        return flat.reshape(*x.shape[:-1], -1)

    @torch.inference_mode()
    def step(self, slot: Slot, size: int) -> None:
        """One step of `slot` with fixed shapes: its `size` ids at positions `start`...,
        their keys and values written into its cache, the greedy next token after the
        id at index `last` written to its `token`."""
        ids, positions = slot.ids[size], slot.start + slot.offsets[size]
        positions = positions.clamp(max=MAX_LEN - 1)
        # Each query sees the keys at its own position and before (the cache past
        # them holds earlier requests' or padding's values).
        visible = slot.key_positions[None, :] <= positions[:, None]
        x = self.w["wte.weight"][ids] + self.w["wpe.weight"][positions]
        head = self.width // self.heads
        for i in range(self.layers):
            h = self._norm(x, f"h.{i}.ln_1")
            q, k, v = (
                t.view(1, size, self.heads, head).transpose(1, 2)
                for t in self._linear(h, f"h.{i}.attn.c_attn").split(self.width, -1)
            )
            slot.keys[i].index_copy_(2, positions, k)
            slot.values[i].index_copy_(2, positions, v)
            a = F.scaled_dot_product_attention(q, slot.keys[i], slot.values[i], attn_mask=visible)
            x = x + self._linear(
                a.transpose(1, 2).reshape(1, size, self.width), f"h.{i}.attn.c_proj"
            )
            h = self._norm(x, f"h.{i}.ln_2")
            x = x + self._linear(
                F.gelu(self._linear(h, f"h.{i}.mlp.c_fc"), approximate="tanh"), f"h.{i}.mlp.c_proj"
            )
        x = self._norm(x.index_select(1, slot.last), "ln_f")
        slot.token.copy_((x[:, 0] @ self.w["wte.weight"].T).argmax(-1))


class Slot:
    """One request's place: a static cache, the step's inputs and output, and on a GPU
    the two steps (a prompt chunk, one token) captured as graphs.

    On a GPU each slot steps on a stream of its own, its inputs staged through pinned
    memory in one copy, and its token waited for on an event that sleeps: the requests'
    threads then overlap on the GPU instead of queueing on its default stream, and a
    thread waiting for its token leaves the CPUs to the others (serve's front among
    them) instead of spinning (docs/benchmarks.md, language models).
    """

    def __init__(self, model: Gpt2, graphs: bool = True) -> None:
        """`graphs`: capture the steps where the model is on a GPU (else eager there too)."""
        self.model = model
        device = model.device
        cuda = device.type == "cuda"
        shape = (1, model.heads, MAX_LEN, model.width // model.heads)
        self.keys = [
            torch.zeros(shape, device=device, dtype=model.dtype) for _ in range(model.layers)
        ]
        self.values = [torch.zeros_like(k) for k in self.keys]
        # A step's inputs in one tensor: CHUNK ids (the one-token step reads the first),
        # the first id's position, the index of the id whose next token is wanted.
        self.inputs = torch.zeros(CHUNK + 2, dtype=torch.long, device=device)
        self.ids = {size: self.inputs[:size].view(1, size) for size in (CHUNK, 1)}
        self.start = self.inputs[CHUNK]
        self.last = self.inputs[CHUNK + 1 :]
        self.offsets = {size: torch.arange(size, device=device) for size in (CHUNK, 1)}
        self.key_positions = torch.arange(MAX_LEN, device=device)
        self.token = torch.zeros(1, dtype=torch.long, device=device)
        self.staged = torch.zeros(CHUNK + 2, dtype=torch.long, pin_memory=cuda)
        self.answer = torch.zeros(1, dtype=torch.long, pin_memory=cuda)
        self.stream = torch.cuda.Stream(device) if cuda else None
        self.done = torch.cuda.Event(blocking=True) if cuda else None
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}
        if graphs and cuda:
            self._capture()

    def _capture(self) -> None:
        # Warm-up and capture on the slot's own stream: cuBLAS keeps a workspace per
        # stream, and graphs captured on one shared stream would share it when their
        # slots replay at once. The warm-up lets cuBLAS and attention pick their kernels
        # before the capture freezes them.
        stream = self.stream
        assert stream is not None
        stream.wait_stream(torch.cuda.current_stream(self.model.device))
        with torch.cuda.stream(stream):
            for size in (CHUNK, 1):
                for _ in range(2):
                    self.model.step(self, size)
        # One memory pool for both: a slot's steps never run at once (one request's thread).
        pool = None
        for size in (CHUNK, 1):
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=pool, stream=stream):
                self.model.step(self, size)
            pool = graph.pool()
            self.graphs[size] = graph
        stream.synchronize()

    def _run(self, ids: list[int], start: int) -> int:
        size = CHUNK if len(ids) > 1 else 1
        staged = self.staged.numpy()
        staged[: len(ids)] = ids
        staged[len(ids) : CHUNK] = 0
        staged[CHUNK], staged[CHUNK + 1] = start, len(ids) - 1
        with torch.cuda.stream(self.stream):
            # The pinned buffers are reused only after `done`: no copy is in flight then.
            self.inputs.copy_(self.staged, non_blocking=True)
            if size in self.graphs:
                self.graphs[size].replay()
            else:
                self.model.step(self, size)
            self.answer.copy_(self.token, non_blocking=True)
            if self.done is not None:
                self.done.record()
        if self.done is not None:
            self.done.synchronize()
        return int(self.answer[0])

    def generate(self, prompt: list[int], count: int) -> Iterator[int]:
        """`count` greedy tokens after `prompt`, one at a time."""
        if not prompt or len(prompt) + count > MAX_LEN:
            raise ValueError(f"prompt and answer must hold 1 to {MAX_LEN} tokens in all")
        for start in range(0, len(prompt), CHUNK):
            token = self._run(prompt[start : start + CHUNK], start)
        for position in range(len(prompt), len(prompt) + count):
            yield token
            if position + 1 < len(prompt) + count:
                token = self._run([token], position)
