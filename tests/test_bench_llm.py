"""The language-model benchmark (build/bench/llm_stream.py), run short on the model that
answers at once, so a GPU run's scarce time is not spent finding that it breaks."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import REPO_ROOT

BENCH = REPO_ROOT / "build" / "bench" / "llm_stream.py"


def run(*args: str) -> str:
    result = subprocess.run(
        [sys.executable, str(BENCH), *args], capture_output=True, text=True, timeout=240
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    return result.stdout


def test_both_paths_stream_tokens_and_the_ratios_are_printed(tmp_path: Path) -> None:
    run("--build", str(tmp_path), "--instant")
    out = run(
        "--repository", str(tmp_path), "--streams", "1,2", "--rounds", "1",
        "--seconds", "1", "--tokens", "4", "--serve-inputs", "--bare-proxy",
    )  # fmt: skip
    assert "a model that answers at once" in out, out
    for streams in (1, 2):
        paths = ("serve chat", "Triton generate_stream", "generate_stream, serve's inputs")
        for path in (*paths, "generate_stream, a bare nginx proxy_pass"):
            row = re.search(rf"^\| {streams} \| {path} \| ([\d,]+) \| ([\d.]+) \|$", out, re.M)
            assert row is not None, (streams, path, out)
            assert int(row[1].replace(",", "")) > 0 and float(row[2]) > 0, row[0]
        ratio = re.search(rf"^\| {streams} \| ([\d.]+) \| ([+-][\d.]+) \|$", out, re.M)
        assert ratio is not None and float(ratio[1]) > 0, (streams, out)
        # Each path's CPU a token: serve's and nginx's on its chat route, the stub's on all.
        spent = re.search(rf"^  {streams} streams, serve chat: (.*)$", out, re.M)
        assert spent is not None and "nginx" in spent[1] and "tritonserver" in spent[1], out


def test_gpt2_decode_gives_the_same_tokens_chunked_padded_or_one_by_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The benchmark model's cache logic (its layers are checked against transformers'
    GPT-2 when the GPU machine builds it): a prompt of three chunks, the last padded,
    decodes as the same prompt fed one token at a time, and a slot used before decodes
    as a new one."""
    monkeypatch.syspath_prepend(str(BENCH.parent))
    import gpt2_decode

    torch.manual_seed(0)
    width, vocabulary, layers = 32, 97, 2
    shapes = {"wte.weight": (vocabulary, width), "wpe.weight": (gpt2_decode.MAX_LEN, width)}
    shapes |= {"ln_f.weight": (width,), "ln_f.bias": (width,)}
    for i in range(layers):
        for name, shape in {
            "ln_1": (width,), "attn.c_attn": (width, 3 * width), "attn.c_proj": (width, width),
            "ln_2": (width,), "mlp.c_fc": (width, 4 * width), "mlp.c_proj": (4 * width, width),
        }.items():  # fmt: skip
            shapes[f"h.{i}.{name}.weight"] = shape
            shapes[f"h.{i}.{name}.bias"] = (shape[-1],)
    # Layers at a fifth of the embeddings' scale: answers of many tokens that still
    # depend on the whole context (both asserted below).
    scales = {"wte.weight": 1.0, "wpe.weight": 1.0}
    state = {f"transformer.{k}": torch.randn(s) * scales.get(k, 0.2) for k, s in shapes.items()}
    model = gpt2_decode.Gpt2(state, layers, 4, torch.device("cpu"), torch.float32)
    chunk = gpt2_decode.CHUNK
    # Three chunks, the last padded; two, the last of one token; two, nearly full; one token.
    lengths = (2 * chunk + 22, chunk + 1, 2 * chunk - 5, 1)
    prompts = [[(7 * i + n) % vocabulary for i in range(n)] for n in lengths]

    chunked = [list(gpt2_decode.Slot(model).generate(prompt, 12)) for prompt in prompts]
    assert all(len(set(tokens)) > 3 for tokens in chunked), chunked
    # Another first chunk, the rest the same: the answer changes (the context is used).
    other_start = [(i + 50) % vocabulary for i in prompts[0][:chunk]] + prompts[0][chunk:]
    assert list(gpt2_decode.Slot(model).generate(other_start, 12)) != chunked[0]
    used = gpt2_decode.Slot(model)
    assert len(list(used.generate(prompts[0][::-1][:40], 30))) == 30
    again = [list(used.generate(prompt, 12)) for prompt in prompts]
    monkeypatch.setattr(gpt2_decode, "CHUNK", 1)
    one_by_one = [list(gpt2_decode.Slot(model).generate(prompt, 12)) for prompt in prompts]
    assert chunked == again == one_by_one
    with pytest.raises(ValueError, match="tokens in all"):
        next(gpt2_decode.Slot(model).generate(prompts[0], gpt2_decode.MAX_LEN))
