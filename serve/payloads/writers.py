"""v2 JSON answers and language-model streams written by serve, in payload services of
their own processes.

Triton 2.51 writes a v2 JSON answer on the model instance's thread, after each
batch, while the next batch waits: on a GPU model with large outputs that,
not the GPU, sets the pace (docs/benchmarks.md, v2 JSON on the GPU). For the
models `writes_json` picks, nginx sends v2 JSON invocations to these
processes instead of Triton once the front holds SERVE_V2_JSON_WRITERS_AT
requests at once (with fewer the instances have time to spare and the hop
costs more than the JSON; FP16 and BF16 answers always come here); each runs
the payload service (service.py), which asks Triton for binary outputs and
writes the JSON itself (v2.py).

The declared text-generation models' schema requests (SERVE_TEXT_GENERATION_MODELS:
OpenAI's chat and completions, TGI's) come here too, but for a stateful session's:
every token of every stream is a chunk of Python to write, and through serve's one
service the chat route fell behind Triton's generate_stream at 16 and 64 streams of a
GPU model (docs/benchmarks.md, language models).

They are processes, not threads of `serve`: one payload service carries
about 5,000 requests/s with the GIL to itself, and such a model answers
twice that. They keep no state (no sessions, no multi-model registry; those
stay with serve's own payload service), so nginx spreads requests over them.
`serve` opens each one's socket before nginx starts (no request meets a
socket nobody listens on), starts and watches them with the other children
(runtime/processes.py), and stops them after nginx.
"""

from __future__ import annotations

import argparse
import enum
import json
import logging
import os
import signal
import socket
import sys
from collections.abc import Mapping
from pathlib import Path

from tritonclient.grpc import model_config_pb2

from serve.machine.sockets import restrict_socket
from serve.payloads.body import Spool
from serve.payloads.limits import PayloadLimits
from serve.payloads.llm.generate import text_models
from serve.payloads.service import LISTEN_BACKLOG, PayloadService
from serve.settings import Settings
from serve.triton.model_config import ModelConfig

# One writer per this many CPUs by default (SERVE_V2_JSON_WRITERS): none below 4 CPUs,
# where the CPU, not the model's thread, is the limit, and a writer's Python costs more
# than Triton's JSON (on two cores, 5,584 against 6,890 req/s for 768 floats an
# answer; docs/benchmarks.md).
CPUS_PER_WRITER = 4
# Output types Triton refuses to write as JSON; serve writes them.
_UNWRITABLE_BY_TRITON = (model_config_pb2.TYPE_FP16, model_config_pb2.TYPE_BF16)


def writer_count(setting: int | None, cpus: int) -> int:
    """How many writer processes: SERVE_V2_JSON_WRITERS, else one per CPUS_PER_WRITER CPUs."""
    return setting if setting is not None else cpus // CPUS_PER_WRITER


class JsonWriter(enum.IntEnum):
    """Who writes a model's v2 JSON answers (nginx's template routes by the number)."""

    # Small outputs: Triton's JSON costs less than a hop to a writer.
    TRITON = 0
    # Large outputs: Triton while the front holds fewer than SERVE_V2_JSON_WRITERS_AT
    # requests at once (the hop costs more than the JSON then); the writers from there.
    WHEN_BUSY = 1
    # FP16 or BF16 outputs, which Triton refuses to write as JSON.
    ALWAYS = 2


def writes_json(config: ModelConfig | None, min_values: int) -> JsonWriter:
    """Who writes the model's v2 JSON answers: Triton, or serve's writers.

    The writers when an output is FP16 or BF16, and while the front is busy
    (SERVE_V2_JSON_WRITERS_AT) when one request's outputs hold `min_values`
    numbers or more (SERVE_V2_JSON_MIN_VALUES; a variable dimension counts
    as 1). Text (BYTES) outputs are not counted: Triton copies them without
    formatting. A model without a config is Triton's.
    """
    if config is None:
        return JsonWriter.TRITON
    if any(output.data_type in _UNWRITABLE_BY_TRITON for output in config.output):
        return JsonWriter.ALWAYS
    values = 0
    for output in config.output:
        if output.data_type != model_config_pb2.TYPE_STRING:
            count = 1
            for dim in output.dims:
                count *= max(dim, 1)
            values += count
    return JsonWriter.WHEN_BUSY if values >= min_values else JsonWriter.TRITON


def listening_socket(path: Path) -> socket.socket:
    """A writer's unix socket, listening, for nginx's unprivileged workers alone."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    path.unlink(missing_ok=True)
    listener.bind(str(path))
    restrict_socket(path)
    listener.listen(LISTEN_BACKLOG)
    return listener


def writer_argv(
    listener: socket.socket,
    path: Path,
    triton_port: int,
    spool: Path,
    text_folders: Mapping[str, Path],
) -> list[str]:
    """The command of one writer process, given `listener` (inherited by its number) and
    the declared text-generation models' folders by name."""
    return [
        sys.executable,
        "-m",
        __name__,
        f"--fd={listener.fileno()}",
        f"--socket={path}",
        f"--triton-port={triton_port}",
        f"--spool={spool}",
        f"--text-models={json.dumps({name: str(p) for name, p in text_folders.items()})}",
    ]


def main(argv: list[str] | None = None) -> int:
    """One writer: the payload service on an inherited socket until SIGTERM."""
    parser = argparse.ArgumentParser(prog="serve-v2-json-writer")
    parser.add_argument("--fd", type=int, required=True)
    parser.add_argument("--socket", type=Path, required=True)
    parser.add_argument("--triton-port", type=int, required=True)
    parser.add_argument("--spool", type=Path, required=True)
    parser.add_argument("--text-models", type=json.loads, default={})
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO,
        format=f"%(asctime)s %(levelname)s writer {os.getpid()} %(name)s: %(message)s",
        stream=sys.stderr,
    )
    stop = {signal.SIGTERM, signal.SIGINT}
    signal.pthread_sigmask(signal.SIG_BLOCK, stop)
    settings = Settings.from_environ(os.environ)
    service = PayloadService(
        args.socket,
        args.triton_port,
        Spool(args.spool, settings.body_buffer_bytes),
        timeout=settings.invocation_timeout,
        listener=socket.socket(fileno=args.fd),
        limits=PayloadLimits.of(settings),
        text_models=text_models({k: Path(v) for k, v in args.text_models.items()}, settings),
        max_tokens=settings.text_generation_max_tokens,
    )
    service.start()
    signal.sigwait(stop)
    service.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
