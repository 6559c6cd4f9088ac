"""GPU benchmark: a BERT-base-sized encoder served through `serve`, against in-process.

The model is build/bench/bert_repository/bert_base (Triton's Python backend,
dynamic batching, KIND_GPU, CUDA graphs per batch-size bucket): a
BERT-base-sized encoder with random weights (12 layers, hidden 768, 12 heads,
intermediate 3072, fp16, sequence 128, plain torch.nn.TransformerEncoder; not
a trained model). wrk posts one sequence per request to `serve`'s
/invocations, as v2 JSON, as Triton's binary+json framing (binary input
and output) and as v2 JSON asking for binary outputs, at several
concurrencies, and the same bodies to Triton's own SageMaker frontend on
the same Triton (the reference). The same module called in-process on
the same GPU with batches of 64 (eager, fp16, timed with
torch.cuda.synchronize) is the ceiling, in sequences per second; each served
row's ratio is its requests (= sequences) per second over it. The ceiling is
measured before and after the served runs, and the higher of the two counts.

Before serving, the in-process section also checks the CUDA-graph replay
against the eager module (padding included) and times both at a few batch
sizes: what graphs buy without any serving around them.

`--bare-proxy` adds a third path, a bare nginx `proxy_pass` to the same Triton
(bare_proxy.py): the one hop any front process adds, with nothing of serve's in it.

`--setup` (repeatable) serves variants of the committed config, e.g.
`--setup instances=4 --setup instances=2,graphs=off,delay_us=2000`: each is a
copy of the repository with those fields changed; the table records which.
`kind=cpu` moves the instances to the CPU and `omp=N` sets OMP_NUM_THREADS
for serve (otherwise serve shares the CPUs out among instances), to measure
that default; `http_threads=N` sets SAGEMAKER_TRITON_THREAD_COUNT (Triton's
HTTP threads, which parse v2 JSON requests; Triton's default is 8). Triton
writes a v2 JSON answer inside the backend's send, on the model instance's
thread: its cost stays on that thread whichever frontend is asked, which the
reference rows show (docs/benchmarks.md).

Run on a GPU host: `python build/bench/gpu_encoder.py` (see build/gpu/run-on-gpu.sh).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import functools
import importlib.util
import json
import shutil
import struct
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import numpy as np
import torch
from bare_proxy import bare_proxy
from grpc_stream import grpc_stream_rate
from load_generators import BINARY_JSON, JSON, Measurement, in_turn, require_wrk, run_wrk
from serve_under_test import serve_with_reference, triton_http_port

from serve.triton import model_config

HERE = Path(__file__).resolve().parent
REPOSITORY = HERE / "bert_repository"
MODEL = "bert_base"
SEQUENCE = 128
GRAPHS_PARAMETER = "CUDA_GRAPH_BATCH_SIZES"
REFERENCE = "Triton's SageMaker frontend"
# --bare-proxy: the floor of any nginx front, the same hop with nothing of serve's in it.
BARE = "a bare nginx proxy_pass"
GRPC = "Triton's gRPC stream"
NUMBER_FIELDS = (
    "instances",
    "delay_us",
    "omp",
    "http_threads",
    "writers",
    "writers_at",
    "nginx_workers",
)
# Rows that exercise padding (5 -> bucket 8, 33 -> 40 with the committed buckets).
CHECKED_ROWS = (1, 5, 33, 64)
TIMED_BATCHES = (1, 8, 16, 32, 64)
# On the CPU (kind=cpu) a batch of 16 sequences takes seconds.
WRK_TIMEOUT_S = 30


def load_encoder() -> ModuleType:
    path = REPOSITORY / MODEL / "1" / "encoder.py"
    spec = importlib.util.spec_from_file_location("bert_bench_encoder", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def token_ids(count: int) -> list[int]:
    return [(101 + 37 * i) % 30000 for i in range(count)]


@dataclasses.dataclass(frozen=True)
class Setup:
    """A served variant: config.pbtxt fields to change (None keeps the committed value)."""

    instances: int | None = None
    graphs: bool | None = None
    delay_us: int | None = None
    # Instances on the CPU (float32, eager) instead of the GPU.
    cpu: bool = False
    # OMP_NUM_THREADS for serve (None: serve's default, CPUs / instances).
    omp: int | None = None
    # SAGEMAKER_TRITON_THREAD_COUNT (None: Triton's default).
    http_threads: int | None = None
    # SERVE_V2_JSON_WRITERS (None: serve's default; 0: Triton writes v2 JSON answers).
    writers: int | None = None
    # SERVE_V2_JSON_WRITERS_AT (None: serve's default; 0: every v2 JSON to the writers).
    writers_at: int | None = None
    # SERVE_NGINX_WORKERS (None: serve's default, the CPUs up to 2).
    nginx_workers: int | None = None

    @classmethod
    def parse(cls, spec: str) -> Setup:
        """`instances=N,graphs=on|off,delay_us=N,kind=cpu,omp=N,http_threads=N,writers=N,
        writers_at=N,nginx_workers=N`, any subset."""
        fields: dict[str, int | bool] = {}
        for item in filter(None, spec.split(",")):
            key, _, value = item.partition("=")
            if key in NUMBER_FIELDS and value.isdigit():
                fields[key] = int(value)
            elif key == "graphs" and value in ("on", "off"):
                fields[key] = value == "on"
            elif key == "kind" and value in ("cpu", "gpu"):
                fields["cpu"] = value == "cpu"
            elif item != "committed":
                raise argparse.ArgumentTypeError(
                    f"{item!r}: use instances=N, graphs=on|off, delay_us=N, kind=cpu|gpu, "
                    "omp=N, http_threads=N, writers=N, writers_at=N or nginx_workers=N"
                )
        return cls(**fields)

    def label(self, committed: model_config.ModelConfig) -> str:
        """The setup's effective values, changed or committed."""
        config = self.apply(committed)
        on_cpu = config.instance_group[0].kind == model_config.InstanceKind.KIND_CPU
        kind = "CPU fp32" if on_cpu else "graphs" if graph_buckets(config) else "eager"
        threads = f", OMP {self.omp}" if self.omp is not None else ""
        if self.http_threads is not None:
            threads += f", {self.http_threads} HTTP threads"
        if self.writers is not None:
            threads += f", {self.writers} v2 JSON writers"
        if self.writers_at is not None:
            threads += f", writers from {self.writers_at} requests"
        if self.nginx_workers is not None:
            threads += f", {self.nginx_workers} nginx workers"
        return (
            f"{config.instance_group[0].count} inst, {kind}, "
            f"{config.dynamic_batching.max_queue_delay_microseconds} us{threads}"
        )

    def environment(self) -> dict[str, str]:
        variables = {
            "OMP_NUM_THREADS": self.omp,
            "SAGEMAKER_TRITON_THREAD_COUNT": self.http_threads,
            "SERVE_V2_JSON_WRITERS": self.writers,
            "SERVE_V2_JSON_WRITERS_AT": self.writers_at,
            "SERVE_NGINX_WORKERS": self.nginx_workers,
        }
        return {name: str(value) for name, value in variables.items() if value is not None}

    def apply(self, committed: model_config.ModelConfig) -> model_config.ModelConfig:
        config = model_config.ModelConfig()
        config.CopyFrom(committed)
        if self.instances is not None:
            config.instance_group[0].count = self.instances
        if self.cpu:
            config.instance_group[0].kind = model_config.InstanceKind.KIND_CPU
        if self.delay_us is not None:
            config.dynamic_batching.max_queue_delay_microseconds = self.delay_us
        if self.graphs is False:
            config.parameters[GRAPHS_PARAMETER].string_value = ""
        return config


def graph_buckets(config: model_config.ModelConfig) -> list[int]:
    """The batch sizes model.py captures CUDA graphs for (none: it runs eagerly)."""
    if GRAPHS_PARAMETER not in config.parameters:
        return []
    return [int(size) for size in config.parameters[GRAPHS_PARAMETER].string_value.split()]


def repository_for(setup: Setup, committed: model_config.ModelConfig, work: Path) -> Path:
    """A copy of the benchmark repository with `setup`'s config (the original if unchanged)."""
    if setup.apply(committed) == committed:
        return REPOSITORY
    copy = Path(tempfile.mkdtemp(prefix="repository-", dir=work))
    shutil.copytree(REPOSITORY, copy, dirs_exist_ok=True)
    model_config.write_config(setup.apply(committed), copy / MODEL / model_config.CONFIG_FILE)
    return copy


def sequences_per_second(
    forward: Callable[[torch.Tensor], torch.Tensor], ids: torch.Tensor, seconds: float
) -> float:
    """Rows of `ids` per second through `forward`, synchronizing every 10 calls."""
    with torch.inference_mode():
        for _ in range(10):
            forward(ids)
        torch.cuda.synchronize()
        iterations, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            for _ in range(10):
                forward(ids)
            torch.cuda.synchronize()
            iterations += 10
        elapsed = time.perf_counter() - start
    return iterations * ids.shape[0] / elapsed


def ceiling(batch: int, seconds: float) -> float:
    """Sequences per second of the plain module called in-process, batches of `batch`."""
    model = load_encoder().build(torch.device("cuda:0"))
    ids = torch.tensor(token_ids(SEQUENCE), device="cuda:0").repeat(batch, 1)
    rate = sequences_per_second(model, ids, seconds)
    del model, ids
    torch.cuda.empty_cache()
    return rate


def graphs_in_process(buckets: list[int]) -> None:
    """Check the graph replay against the eager module, then time both per batch size."""
    encoder = load_encoder()
    device = torch.device("cuda:0")
    model = encoder.build(device)
    started = time.perf_counter()
    graphed = encoder.GraphedEncoder(model, buckets, SEQUENCE)
    print(f"graphs: {len(buckets)} buckets captured in {time.perf_counter() - started:.1f} s")
    with torch.inference_mode():
        for rows in CHECKED_ROWS:
            ids = torch.randint(0, encoder.VOCAB, (rows, SEQUENCE), device=device)
            expected = model(ids).double()
            got = graphed(ids).double()
            error = float(torch.linalg.norm(got - expected) / torch.linalg.norm(expected))
            print(f"  {rows} rows: graphed vs eager, relative error {error:.1e}")
            if not error < 1e-2:
                raise SystemExit(f"graph replay differs from the eager module at {rows} rows")
    print("| batch | eager seq/s | graphed seq/s | graphed / eager |")
    print("|---|---|---|---|")
    for batch in TIMED_BATCHES:
        ids = torch.tensor(token_ids(SEQUENCE), device=device).repeat(batch, 1)
        eager = sequences_per_second(model, ids, 1.0)
        replayed = sequences_per_second(graphed, ids, 1.0)
        print(f"| {batch} | {eager:,.0f} | {replayed:,.0f} | {replayed / eager:.2f} |")
    del model, graphed
    torch.cuda.empty_cache()


def json_body(binary_outputs: bool = False) -> bytes:
    """A v2 JSON request; `binary_outputs` asks for the answer in binary (binary_data_output)."""
    request: dict[str, object] = {
        "inputs": [
            {
                "name": "input_ids",
                "shape": [1, SEQUENCE],
                "datatype": "INT64",
                "data": token_ids(SEQUENCE),
            }
        ]
    }
    if binary_outputs:
        request["parameters"] = {"binary_data_output": True}
    return json.dumps(request).encode()


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


@dataclasses.dataclass(frozen=True)
class TritonTime:
    """Where Triton says a run's requests spent their time (its model statistics, deltas).

    Per request, in ms: waiting in the dynamic batcher's queue, and the model's
    input, execute and output phases; `batch` is requests per execution. What a
    caller waited beyond Triton's `request` time is HTTP and the front's.
    """

    batch: float
    queue_ms: float
    input_ms: float
    infer_ms: float
    output_ms: float
    request_ms: float

    @staticmethod
    def snapshot(triton_http: str) -> dict[str, float]:
        with urllib.request.urlopen(f"http://{triton_http}/v2/models/{MODEL}/stats") as answer:
            stats = json.load(answer)["model_stats"][0]
        phases = stats["inference_stats"]
        counts = {f"{name}_ns": float(phases[name]["ns"]) for name in PHASES}
        return counts | {
            "requests": float(phases["success"]["count"]),
            "executions": float(stats["execution_count"]),
        }

    @classmethod
    def between(cls, before: dict[str, float], after: dict[str, float]) -> TritonTime:
        delta = {key: after[key] - before[key] for key in after}
        requests = max(delta["requests"], 1.0)
        per_request = {name: delta[f"{name}_ns"] / requests / 1e6 for name in PHASES}
        return cls(
            batch=delta["requests"] / max(delta["executions"], 1.0),
            queue_ms=per_request["queue"],
            input_ms=per_request["compute_input"],
            infer_ms=per_request["compute_infer"],
            output_ms=per_request["compute_output"],
            request_ms=per_request["success"],
        )


# Triton's model statistics phases (GET /v2/models/NAME/stats), "success" the whole request.
PHASES = ("success", "queue", "compute_input", "compute_infer", "compute_output")
# A measured row: setup label, payload, connections, wrk's figures, Triton's statistics.
Row = tuple[str, str, int, Measurement, TritonTime]


def in_triton(triton_http: str, run: Callable[[], Measurement]) -> tuple[Measurement, TritonTime]:
    """`run`'s figures, and where Triton says its requests spent their time."""
    before = TritonTime.snapshot(triton_http)
    measured = run()
    return measured, TritonTime.between(before, TritonTime.snapshot(triton_http))


def progress(path: str, connections: int, measured: Measurement, spent: TritonTime) -> None:
    print(
        f"  {path} c{connections}: {measured.requests_per_second:,.0f} req/s, "
        f"p50 {measured.p50_ms:.2f} ms, p99 {measured.p99_ms:.2f} ms, "
        f"errors {measured.errors}; in Triton: batch {spent.batch:.1f}, "
        f"queue {spent.queue_ms:.2f}, input {spent.input_ms:.2f}, execute "
        f"{spent.infer_ms:.2f}, output {spent.output_ms:.2f}, request "
        f"{spent.request_ms:.2f} ms",
        flush=True,
    )


def check(url: str, body: bytes, content_type: str) -> str:
    request = urllib.request.Request(f"{url}/invocations", body, {"Content-Type": content_type})
    with urllib.request.urlopen(request, timeout=60) as response:
        payload = response.read()
        return f"{response.status}, {len(payload)} bytes, {response.headers['Content-Type']}"


def bodies() -> dict[str, tuple[bytes, str]]:
    """The payloads measured, by name: each body and its content type."""
    return {
        "v2 JSON": (json_body(), JSON),
        "binary+json": binary_body(),
        # JSON in, binary out: what Triton's JSON input parsing costs, against binary+json.
        "v2 JSON, binary out": (json_body(binary_outputs=True), JSON),
    }


def serve_setup(
    label: str,
    repository: Path,
    environment: dict[str, str],
    run_dir: Path,
    concurrency: list[int],
    seconds: int,
    payloads: list[str],
    rounds: int = 1,
    reference_first: bool = False,
    bare: bool = False,
) -> list[Row]:
    """Start serve on `repository`; run wrk at each concurrency for each of `payloads`,
    through serve and through Triton's own SageMaker frontend on the same Triton (the
    reference), and with `bare` through a bare nginx proxy_pass to it, `rounds` times
    each, the order turned round each round (serve first in the first, or with
    `reference_first` the reference), and keep each path's median round; with
    binary+json, Triton's gRPC stream too."""
    rows: list[Row] = []
    started = time.perf_counter()
    with contextlib.ExitStack() as stack:
        serve = stack.enter_context(
            serve_with_reference(run_dir, MODEL, repository, environment, timeout=300)
        )
        print(f"{label}: ready after {time.perf_counter() - started:.0f} s")
        paths = {"serve": serve.url, REFERENCE: serve.reference_url}
        if bare:
            paths[BARE] = stack.enter_context(
                bare_proxy(run_dir / "bare", serve.triton_http, MODEL)
            )[0]
        if reference_first:
            paths = dict(reversed(paths.items()))
        for name, (body, content_type) in bodies().items():
            if name not in payloads:
                continue
            body_file = run_dir / f"body-{len(rows)}.bin"
            body_file.write_bytes(body)
            for path, base in paths.items():
                print(f"{label}, {name}, {path}: {check(base, body, content_type)}")
                run_wrk(
                    f"{base}/invocations",
                    body_file,
                    16,
                    2,
                    content_type,
                    2,
                    timeout_s=WRK_TIMEOUT_S,
                )
            for connections in concurrency:
                runs: dict[str, list[tuple[Measurement, TritonTime]]] = {path: [] for path in paths}
                for turn in range(rounds):
                    for path, base in in_turn(list(paths.items()), turn):
                        measured, spent = in_triton(
                            serve.triton_http,
                            functools.partial(
                                run_wrk,
                                f"{base}/invocations",
                                body_file,
                                connections,
                                seconds,
                                content_type,
                                threads=min(4, connections),
                                timeout_s=WRK_TIMEOUT_S,
                            ),
                        )
                        runs[path].append((measured, spent))
                        progress(path, connections, measured, spent)
                for path, measured_rounds in runs.items():
                    ranked = sorted(measured_rounds, key=lambda run: run[0].requests_per_second)
                    row_label = label if path == "serve" else f"{label}, {path}"
                    rows.append((row_label, name, connections, *ranked[len(ranked) // 2]))
        if "binary+json" not in payloads:
            return rows
        # A path past Triton's HTTP frontend: binary over its gRPC stream, no front.
        grpc = f"127.0.0.1:{triton_http_port(serve.log.read_text(), 'grpc')}"
        ids = np.array([token_ids(SEQUENCE)], dtype=np.int64)
        for connections in concurrency:
            measured, spent = in_triton(
                serve.triton_http,
                functools.partial(
                    grpc_stream_rate,
                    grpc,
                    MODEL,
                    {"input_ids": ids},
                    "pooled",
                    connections,
                    seconds,
                ),
            )
            rows.append((f"{label}, {GRPC}", "binary", connections, measured, spent))
            progress(GRPC, connections, measured, spent)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=6, help="per wrk run")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument(
        "--setup",
        type=Setup.parse,
        action="append",
        help="a served variant (repeatable): instances=N,graphs=on|off,delay_us=N,"
        "kind=cpu|gpu,omp=N,http_threads=N,writers=N,writers_at=N,nginx_workers=N; "
        "default: the committed config",
    )
    parser.add_argument(
        "--payload",
        choices=list(bodies()),
        type=lambda name: name.replace("_", " "),
        action="append",
        help="a payload to measure (repeatable; '_' for a space, as in v2_JSON, so it "
        "passes through ENCODER_ARGS); default: all three",
    )
    parser.add_argument(
        "--rounds", type=int, default=1, help="runs per path and concurrency (the median kept)"
    )
    parser.add_argument(
        "--bare-proxy",
        action="store_true",
        help="a third path: a bare nginx proxy_pass to the same Triton (any front's floor)",
    )
    parser.add_argument("--ceiling-batch", type=int, default=64)
    parser.add_argument("--commit", default="?")
    args = parser.parse_args()
    require_wrk()
    committed = model_config.read_config(REPOSITORY / MODEL / model_config.CONFIG_FILE)
    setups = args.setup or [Setup()]

    gpu = torch.cuda.get_device_name(0)
    date = datetime.date.today().isoformat()
    before = ceiling(args.ceiling_batch, seconds=5)
    print(f"ceiling: in-process, batch {args.ceiling_batch}, fp16: {before:,.0f} sequences/s")
    try:
        graphs_in_process(graph_buckets(committed))
    except RuntimeError as exc:
        # Keep going: the eager setups still measure; graphed ones fail to load.
        print(f"graphs: capture or replay failed in-process: {exc}")

    work = Path(tempfile.mkdtemp(prefix="bench-encoder-"))
    rows: list[Row] = []
    try:
        for number, setup in enumerate(setups):
            label = setup.label(committed)
            run_dir = work / f"setup-{number}"
            run_dir.mkdir()
            repository = repository_for(setup, committed, work)
            try:
                # Every other setup measures the reference first: the same setup given
                # twice tells the order's effect from the path's.
                rows += serve_setup(
                    label,
                    repository,
                    setup.environment(),
                    run_dir,
                    args.concurrency,
                    args.seconds,
                    args.payload or list(bodies()),
                    rounds=args.rounds,
                    reference_first=number % 2 == 1,
                    bare=args.bare_proxy,
                )
            except SystemExit as exc:
                # serve_with_reference's way of saying serve never became ready.
                print(f"{label}: not measured: {exc} (see {run_dir / 'serve.log'})")
    finally:
        print(f"\nlogs under {work}")

    after = ceiling(args.ceiling_batch, seconds=5)
    best = max(before, after)
    print(f"\n{gpu}, commit {args.commit}, {date}; ceiling {best:,.0f} sequences/s")
    print(f"(in-process, batch {args.ceiling_batch}, fp16, eager; {before:,.0f} before the")
    print(f"served runs, {after:,.0f} after); one sequence of 128 tokens per request\n")
    print(
        "| GPU, commit, date | setup | payload | concurrency | served req/s | "
        "p50 ms | p99 ms | errors | served / ceiling |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for label, name, connections, m, _ in rows:
        print(
            f"| {gpu.replace('NVIDIA ', '')}, {args.commit}, {date} | {label} | {name} | "
            f"{connections} | {m.requests_per_second:,.0f} | {m.p50_ms:.2f} | {m.p99_ms:.2f} | "
            f"{m.errors} | {m.requests_per_second / best:.3f} |"
        )
    by_key = {(label, name, connections): m for label, name, connections, m, _ in rows}
    print(
        "\n| setup | payload | concurrency | serve / ceiling (goal >= 0.6 at c=64) "
        f"| serve / {REFERENCE} | {BARE} / {REFERENCE} |"
    )
    print("|---|---|---|---|---|---|")
    for (label, name, connections), m in by_key.items():
        reference = by_key.get((f"{label}, {REFERENCE}", name, connections))
        if label.endswith((REFERENCE, BARE)) or reference is None:
            continue
        floor = by_key.get((f"{label}, {BARE}", name, connections))
        shown = f"{floor.requests_per_second / reference.requests_per_second:.3f}" if floor else "-"
        print(
            f"| {label} | {name} | {connections} | {m.requests_per_second / best:.3f} | "
            f"{m.requests_per_second / reference.requests_per_second:.3f} | {shown} |"
        )
    print(
        "\nWhere the time goes (Triton's model statistics, ms a request; the rest of p50 is "
        "HTTP and the front's)\n\n| setup | payload | concurrency | p50 | Triton's request "
        "| queue | input | execute | output | batch |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for label, name, connections, m, t in rows:
        print(
            f"| {label} | {name} | {connections} | {m.p50_ms:.2f} | {t.request_ms:.2f} | "
            f"{t.queue_ms:.2f} | {t.input_ms:.2f} | {t.infer_ms:.2f} | {t.output_ms:.2f} | "
            f"{t.batch:.1f} |"
        )


if __name__ == "__main__":
    main()
