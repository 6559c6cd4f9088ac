"""A BERT-base-sized encoder in plain PyTorch, random weights from a fixed seed.

Not a trained model: embeddings (token + position), torch.nn.TransformerEncoder
(12 post-norm layers, hidden 768, 12 heads, intermediate 3072, GELU) and
BERT's pooler (dense + tanh on the first token). Shared by the Triton model
beside it and by build/bench/gpu_encoder.py's in-process ceiling, so both run
the very same module.
"""

import torch
from torch import nn

VOCAB, HIDDEN, LAYERS, HEADS, INTERMEDIATE, MAX_POSITIONS = 30522, 768, 12, 12, 3072, 512


class Encoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.tokens = nn.Embedding(VOCAB, HIDDEN)
        self.positions = nn.Embedding(MAX_POSITIONS, HIDDEN)
        self.norm = nn.LayerNorm(HIDDEN, eps=1e-12)
        layer = nn.TransformerEncoderLayer(
            HIDDEN, HEADS, INTERMEDIATE, dropout=0.0, activation="gelu", batch_first=True
        )
        self.layers = nn.TransformerEncoder(layer, LAYERS, enable_nested_tensor=False)
        self.pooler = nn.Linear(HIDDEN, HIDDEN)

    def forward(self, input_ids):
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        hidden = self.norm(self.tokens(input_ids) + self.positions(positions))
        hidden = self.layers(hidden)
        return torch.tanh(self.pooler(hidden[:, 0]))


def build(device, dtype=torch.float16, seed=0):
    """The encoder on `device` in `dtype`, eval mode, weights drawn from `seed`."""
    torch.manual_seed(seed)
    return Encoder().to(device=device, dtype=dtype).eval()
