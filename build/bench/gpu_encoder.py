"""GPU benchmark: a BERT-base-sized encoder served through `serve`, against in-process.

The model is build/bench/bert_repository/bert_base (Triton's Python backend,
dynamic batching, KIND_GPU): a BERT-base-sized encoder with random weights
(12 layers, hidden 768, 12 heads, intermediate 3072, fp16, sequence 128,
plain torch.nn.TransformerEncoder; not a trained model). wrk posts one
sequence per request to `serve`'s /invocations, as v2 JSON and as Triton's
binary+json framing (binary input and output), at several concurrencies. The
same module called in-process on the same GPU with batches of 64 (fp16, timed
with torch.cuda.synchronize) is the ceiling, in sequences per second; each
served row's ratio is its requests (= sequences) per second over it.

`--instances 1 2` measures each instance count in turn (a copy of the
repository with the count changed), the tuning knob the table records.

Run on a GPU host: `python build/bench/gpu_encoder.py` (see build/gpu/run-on-gpu.sh).
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import shutil
import struct
import tempfile
import time
import urllib.request
from pathlib import Path

import torch
from load_generators import BINARY_JSON, JSON, require_wrk, run_wrk
from serve_under_test import serve_with_reference

HERE = Path(__file__).resolve().parent
REPOSITORY = HERE / "bert_repository"
MODEL = "bert_base"
SEQUENCE = 128


def load_encoder():
    path = REPOSITORY / MODEL / "1" / "encoder.py"
    spec = importlib.util.spec_from_file_location("bert_bench_encoder", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def token_ids(count: int) -> list[int]:
    return [(101 + 37 * i) % 30000 for i in range(count)]


def ceiling(batch: int, seconds: float) -> float:
    """Sequences per second of the module called in-process, batches of `batch`."""
    model = load_encoder().build(torch.device("cuda:0"))
    ids = torch.tensor(token_ids(SEQUENCE), device="cuda:0").repeat(batch, 1)
    with torch.inference_mode():
        for _ in range(10):
            model(ids)
        torch.cuda.synchronize()
        iterations, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            for _ in range(10):
                model(ids)
            torch.cuda.synchronize()
            iterations += 10
        elapsed = time.perf_counter() - start
    del model, ids
    torch.cuda.empty_cache()
    return iterations * batch / elapsed


def json_body() -> bytes:
    return json.dumps(
        {
            "inputs": [
                {
                    "name": "input_ids",
                    "shape": [1, SEQUENCE],
                    "datatype": "INT64",
                    "data": token_ids(SEQUENCE),
                }
            ]
        }
    ).encode()


def binary_body() -> tuple[bytes, str]:
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "input_ids",
                    "shape": [1, SEQUENCE],
                    "datatype": "INT64",
                    "parameters": {"binary_data_size": 8 * SEQUENCE},
                }
            ],
            "outputs": [{"name": "pooled", "parameters": {"binary_data": True}}],
        }
    ).encode()
    data = struct.pack(f"<{SEQUENCE}q", *token_ids(SEQUENCE))
    return header + data, BINARY_JSON.format(size=len(header))


def check(url: str, body: bytes, content_type: str) -> str:
    request = urllib.request.Request(f"{url}/invocations", body, {"Content-Type": content_type})
    with urllib.request.urlopen(request, timeout=60) as response:
        payload = response.read()
        return f"{response.status}, {len(payload)} bytes, {response.headers['Content-Type']}"


def repository_with(instances: int, work: Path) -> Path:
    if instances == 1:
        return REPOSITORY
    copy = work / f"repository-{instances}"
    shutil.copytree(REPOSITORY, copy)
    config = copy / MODEL / "config.pbtxt"
    text = config.read_text()
    config.write_text(text.replace("count: 1", f"count: {instances}"))
    return copy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=6, help="per wrk run")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--instances", type=int, nargs="+", default=[1])
    parser.add_argument("--ceiling-batch", type=int, default=64)
    parser.add_argument("--commit", default="?")
    args = parser.parse_args()
    require_wrk()

    gpu = torch.cuda.get_device_name(0)
    date = datetime.date.today().isoformat()
    best = ceiling(args.ceiling_batch, seconds=5)
    print(f"ceiling: in-process, batch {args.ceiling_batch}, fp16: {best:,.0f} sequences/s")

    work = Path(tempfile.mkdtemp(prefix="bench-encoder-"))
    bodies = {"v2 JSON": (json_body(), JSON), "binary+json": binary_body()}
    rows = []
    try:
        for instances in args.instances:
            run_dir = work / f"instances-{instances}"
            run_dir.mkdir()
            repository = repository_with(instances, work)
            with serve_with_reference(run_dir, MODEL, repository, timeout=300) as serve:
                for name, (body, content_type) in bodies.items():
                    print(f"instances {instances}, {name}: {check(serve.url, body, content_type)}")
                    body_file = run_dir / f"body-{len(rows)}.bin"
                    body_file.write_bytes(body)
                    run_wrk(f"{serve.url}/invocations", body_file, 16, 2, content_type, 2)
                    for connections in args.concurrency:
                        measured = run_wrk(
                            f"{serve.url}/invocations",
                            body_file,
                            connections,
                            args.seconds,
                            content_type,
                            threads=min(4, connections),
                        )
                        rows.append((instances, name, connections, measured))
                        print(
                            f"  c{connections}: {measured.requests_per_second:,.0f} req/s, "
                            f"p50 {measured.p50_ms:.2f} ms, p99 {measured.p99_ms:.2f} ms, "
                            f"errors {measured.errors}",
                            flush=True,
                        )
    finally:
        print(f"\nlogs under {work}")

    print(f"\n{gpu}, commit {args.commit}, {date}; ceiling {best:,.0f} sequences/s")
    print("(in-process, batch 64, fp16); one sequence of 128 tokens per request\n")
    print(
        "| GPU, commit, date | instances | payload | concurrency | served req/s | "
        "p50 ms | p99 ms | errors | served / ceiling |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for instances, name, connections, m in rows:
        print(
            f"| {gpu.replace('NVIDIA ', '')}, {args.commit}, {date} | {instances} | {name} | "
            f"{connections} | {m.requests_per_second:,.0f} | {m.p50_ms:.2f} | {m.p99_ms:.2f} | "
            f"{m.errors} | {m.requests_per_second / best:.3f} |"
        )
    top = max(rows, key=lambda row: row[3].requests_per_second)
    print(
        f"\nbest served: {top[3].requests_per_second:,.0f} req/s (instances {top[0]}, "
        f"{top[1]}, c{top[2]}); ratio to ceiling {top[3].requests_per_second / best:.3f} "
        f"(goal >= 0.6)"
    )


if __name__ == "__main__":
    main()
