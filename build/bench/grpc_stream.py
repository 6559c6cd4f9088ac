"""A path past Triton's HTTP frontend: binary tensors over Triton's gRPC stream.

Each client process opens one bidirectional `ModelStreamInfer` stream to
Triton's gRPC port and keeps its share of the requests in flight on it
(a new one is sent as each answer arrives), for a fixed time. The figure says
whether Triton's HTTP frontend, rather than the model, its instances or the
batcher, bounds the binary path (docs/benchmarks.md, issue 27). Processes, not
threads: one Python process cannot keep a GPU encoder's thousands of
requests per second in flight.
"""

from __future__ import annotations

import multiprocessing
import queue
import statistics
import threading
import time

import numpy as np
import tritonclient.grpc as grpcclient
from load_generators import Measurement


def _client(
    address: str,
    model: str,
    tensors: dict[str, np.ndarray],
    output: str,
    in_flight: int,
    seconds: float,
    results: multiprocessing.Queue,
) -> None:  # type: ignore[type-arg]
    client = grpcclient.InferenceServerClient(address)
    answered: queue.SimpleQueue[tuple[float, bool]] = queue.SimpleQueue()
    sent: dict[str, float] = {}
    lock = threading.Lock()

    def on_answer(result: grpcclient.InferResult | None, error: Exception | None) -> None:
        request_id = result.get_response().id if result is not None else ""
        with lock:
            started = sent.pop(request_id, None)
        answered.put((time.perf_counter() - (started or time.perf_counter()), error is None))

    inputs = []
    for name, value in tensors.items():
        inputs.append(grpcclient.InferInput(name, list(value.shape), "INT64"))
        inputs[-1].set_data_from_numpy(value)
    outputs = [grpcclient.InferRequestedOutput(output)]
    client.start_stream(callback=on_answer)
    number = 0

    def send() -> None:
        nonlocal number
        number += 1
        with lock:
            sent[str(number)] = time.perf_counter()
        client.async_stream_infer(model, inputs, outputs=outputs, request_id=str(number))

    for _ in range(in_flight):
        send()
    latencies: list[float] = []
    errors = 0
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        try:
            latency, ok = answered.get(timeout=1)
        except queue.Empty:
            continue
        latencies.append(latency)
        errors += not ok
        send()
    client.stop_stream(cancel_requests=True)
    client.close()
    results.put((latencies, errors))


def grpc_stream_rate(
    address: str,
    model: str,
    tensors: dict[str, np.ndarray],
    output: str,
    streams: int,
    seconds: float,
) -> Measurement:
    """Requests/s and latency with `streams` requests in flight over gRPC streams; every
    input INT64, from `tensors`."""
    processes = min(4, streams)
    context = multiprocessing.get_context("spawn")
    results: multiprocessing.Queue = context.Queue()  # type: ignore[type-arg]
    workers = [
        context.Process(
            target=_client,
            args=(
                address,
                model,
                tensors,
                output,
                streams // processes + (n < streams % processes),
                seconds,
                results,
            ),
        )
        for n in range(processes)
    ]
    for worker in workers:
        worker.start()
    latencies: list[float] = []
    errors = 0
    for _ in workers:
        got, failed = results.get(timeout=seconds + 60)
        latencies += got
        errors += failed
    for worker in workers:
        worker.join(30)
    ordered = sorted(latencies) or [0.0]
    return Measurement(
        requests_per_second=len(latencies) / seconds,
        p50_ms=statistics.median(ordered) * 1000,
        p99_ms=ordered[int(0.99 * (len(ordered) - 1))] * 1000,
        errors=errors,
        requests=len(latencies),
    )
