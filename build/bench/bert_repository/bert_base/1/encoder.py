"""A BERT-base-sized encoder in plain PyTorch, random weights from a fixed seed.

Not a trained model: embeddings (token + position), torch.nn.TransformerEncoder
(12 post-norm layers, hidden 768, 12 heads, intermediate 3072, GELU) and
BERT's pooler (dense + tanh on the first token). Shared by the Triton model
beside it and by build/bench/gpu_encoder.py's in-process ceiling, so both run
the very same module.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

VOCAB, HIDDEN, LAYERS, HEADS, INTERMEDIATE, MAX_POSITIONS = 30522, 768, 12, 12, 3072, 512


class Encoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.tokens = nn.Embedding(VOCAB, HIDDEN)
        self.positions = nn.Embedding(MAX_POSITIONS, HIDDEN)
        self.norm = nn.LayerNorm(HIDDEN, eps=1e-12)
        layer = nn.TransformerEncoderLayer(
            HIDDEN, HEADS, INTERMEDIATE, dropout=0.0, activation="gelu", batch_first=True
        )
        self.layers = nn.TransformerEncoder(layer, LAYERS, enable_nested_tensor=False)
        self.pooler = nn.Linear(HIDDEN, HIDDEN)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        hidden = self.norm(self.tokens(input_ids) + self.positions(positions))
        hidden = self.layers(hidden)
        return torch.tanh(self.pooler(hidden[:, 0]))


def build(device: torch.device, dtype: torch.dtype = torch.float16, seed: int = 0) -> Encoder:
    """The encoder on `device` in `dtype`, eval mode, weights drawn from `seed`."""
    torch.manual_seed(seed)
    return Encoder().to(device=device, dtype=dtype).eval()


class GraphedEncoder:
    """The encoder's forward replayed from CUDA graphs, one per batch-size bucket.

    Eager PyTorch launches a dozen or more kernels per layer; at small
    batches the CPU issuing them, not the GPU, sets the pace (on an H200 a
    replayed batch of 1 ran 4x faster than the eager one; README). A graph replays
    all of them in one launch. Graphs have fixed shapes, so each batch is
    padded up to the smallest bucket that holds it: rows are independent, so
    whatever the padding rows hold never reaches the rows returned.

    The graphs share one memory pool. That is safe because they are replayed
    one at a time and each result is copied out before the next replay.
    """

    def __init__(self, model: Encoder, buckets: Iterable[int], sequence: int) -> None:
        self.buckets = sorted(set(buckets))
        if not self.buckets or self.buckets[0] < 1:
            raise ValueError(f"batch-size buckets must be positive, got {self.buckets}")
        device = next(model.parameters()).device
        self._ids = torch.zeros((self.buckets[-1], sequence), dtype=torch.long, device=device)
        self._graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self._pooled: dict[int, torch.Tensor] = {}
        # Warm-up runs on a side stream, as capture requires; they also let
        # cuBLAS and attention pick their kernels before capture freezes them.
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        pool = None
        with torch.inference_mode():
            # Largest first: the pool grows once, to the largest bucket's needs.
            for bucket in reversed(self.buckets):
                ids = self._ids[:bucket]
                with torch.cuda.stream(side):
                    for _ in range(2):
                        model(ids)
                torch.cuda.current_stream(device).wait_stream(side)
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph, pool=pool):
                    self._pooled[bucket] = model(ids).float()
                pool = graph.pool()
                self._graphs[bucket] = graph
        torch.cuda.synchronize(device)

    @property
    def max_batch(self) -> int:
        return self.buckets[-1]

    def __call__(self, ids: torch.Tensor) -> torch.Tensor:
        """Pooled vectors (float32, on the GPU) of `ids` ([rows, sequence], any device).

        Asynchronous on the current stream: the copy of `ids` in (from pinned
        host memory, overlapped) and the replay are queued, not waited for.
        The result is a view of the graph's output, overwritten by the next call.
        """
        rows = ids.shape[0]
        bucket = next((b for b in self.buckets if b >= rows), None)
        if bucket is None:
            raise ValueError(f"a batch of {rows} rows is larger than the largest bucket")
        self._ids[:rows].copy_(ids, non_blocking=True)
        self._graphs[bucket].replay()
        return self._pooled[bucket][:rows]
