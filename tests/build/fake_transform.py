"""Transform jobs that run: the AWS stand-in does with a job what SageMaker does.

moto 5.2 records CreateTransformJob and calls it Completed at once. Here a
job is InProgress while the stand-in, in a thread of its own:

1. runs the model's container (fake_containers.py) with the job's
   environment and what SageMaker adds (SAGEMAKER_BATCH=true, and
   SAGEMAKER_MAX_PAYLOAD_IN_MB, SAGEMAKER_BATCH_STRATEGY,
   SAGEMAKER_MAX_CONCURRENT_TRANSFORMS for those the job sets), and waits for
   /ping;
2. fills what the job left unset from GET /execution-parameters, else from
   SageMaker's defaults (1 request at a time, 6 MB; SingleRecord is the
   stand-in's choice where neither says);
3. reads every object under the input prefix from its S3, splits it into
   lines (SplitType Line) and packs them into requests (MultiRecord: as many
   lines as fit in MaxPayloadInMB; SingleRecord: one), sends up to
   MaxConcurrentTransforms at once with the job's ContentType and Accept;
4. writes each object's answers, in order (AssembleWith Line: one answer per
   line), to the output prefix at the object's path below the input prefix
   with `.out` added, and ends Completed, or Failed with the reason at the
   first request the container refuses.

Where no real container answers, each request's answer is its body.
"""

from __future__ import annotations

import http.client
import json
import threading
import urllib.parse
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from typing import Any

from moto.sagemaker import models as sagemaker_models

from tests.build.fake_containers import (
    CONTAINERS,
    Container,
    ContainerSpec,
    list_keys,
    read_object,
    wait_ready,
    write_object,
)

MEBIBYTE = 1024 * 1024
DEFAULT_CONCURRENCY = 1
DEFAULT_PAYLOAD_MB = 6
DEFAULT_STRATEGY = "SingleRecord"
READY_TIMEOUT_S = 600.0
_STRATEGY_VARIABLE = {"MultiRecord": "MULTI_RECORD", "SingleRecord": "SINGLE_RECORD"}
_STRATEGY_ANSWER = {"MULTI_RECORD": "MultiRecord", "SINGLE_RECORD": "SingleRecord"}
_JOBS = ThreadPoolExecutor(max_workers=4, thread_name_prefix="transform")
_lock = threading.Lock()


class TransformFailed(Exception):
    """Why a job failed, as DescribeTransformJob's FailureReason says it."""


_original_create = sagemaker_models.SageMakerModelBackend.create_transform_job


def create_transform_job(self: Any, **kwargs: Any) -> Any:
    job = _original_create(self, **kwargs)
    job.transform_job_status = "InProgress"
    job.transform_end_time = None
    _JOBS.submit(_run, self, job)
    return job


def _run(backend: Any, job: Any) -> None:
    owner = f"transform/{job.transform_job_name}"
    try:
        _transform(backend, job, owner)
        status, reason = "Completed", ""
    except TransformFailed as failure:
        status, reason = "Failed", str(failure)
    except Exception as error:  # a bug of the stand-in's: say so rather than hang InProgress
        status, reason = "Failed", f"InternalServerError: {error!r}"
    finally:
        CONTAINERS.release(owner)
    with _lock:
        job.transform_job_status, job.failure_reason = status, reason
        job.transform_end_time = job.last_modified_time = datetime.now(timezone.utc)


def _transform(backend: Any, job: Any, owner: str) -> None:
    model = backend._models[job.model_name]
    definition = model.primary_container or (model.containers or [{}])[0]
    extra = {"SAGEMAKER_BATCH": "true", **(job.environment or {})}
    if job.max_payload_in_mb is not None:
        extra["SAGEMAKER_MAX_PAYLOAD_IN_MB"] = str(job.max_payload_in_mb)
    if job.batch_strategy:
        extra["SAGEMAKER_BATCH_STRATEGY"] = _STRATEGY_VARIABLE[job.batch_strategy]
    if job.max_concurrent_transforms:
        extra["SAGEMAKER_MAX_CONCURRENT_TRANSFORMS"] = str(job.max_concurrent_transforms)
    container = CONTAINERS.acquire(owner, ContainerSpec.of(definition, extra))
    if container is not None and wait_ready(container, READY_TIMEOUT_S) != "ready":
        raise TransformFailed(
            f"AlgorithmError: the container did not pass the ping health check: "
            f"{container.failure()}"
        )
    concurrency, strategy, payload_mb = _parameters(job, container)
    transform_input, transform_output = job.transform_input, job.transform_output
    prefix = transform_input["DataSource"]["S3DataSource"]["S3Uri"]
    keys = list_keys(prefix)
    if not keys:
        raise TransformFailed(f"ClientError: no objects under {prefix}")
    bucket_prefix = prefix[: prefix.index("/", len("s3://")) + 1]
    input_root = prefix if prefix.endswith("/") else prefix.rsplit("/", 1)[0] + "/"
    headers = {"Content-Type": transform_input.get("ContentType") or "application/octet-stream"}
    if transform_output.get("Accept"):
        headers["Accept"] = transform_output["Accept"]
    by_line = transform_input.get("SplitType") == "Line"
    output = transform_output["S3OutputPath"].rstrip("/")
    for key in keys:
        uri = bucket_prefix + key
        data = read_object(uri)
        requests = _mini_batches(data, strategy, payload_mb * MEBIBYTE, uri) if by_line else [data]
        with ThreadPoolExecutor(max_workers=concurrency) as pool:
            sends = [pool.submit(_send, container, body, headers, uri) for body in requests]
            answers = [sent.result() for sent in sends]
        if transform_output.get("AssembleWith") == "Line":
            assembled = b"".join(a if a.endswith(b"\n") else a + b"\n" for a in answers if a)
        else:
            assembled = b"".join(answers)
        write_object(f"{output}/{uri[len(input_root) :]}.out", assembled)


def _parameters(job: Any, container: Container | None) -> tuple[int, str, int]:
    """The job's concurrency, strategy and payload limit: its own, else the container's."""
    asked: dict[str, Any] = {}
    unset = not job.max_concurrent_transforms or not job.batch_strategy
    if container is not None and (unset or job.max_payload_in_mb is None):
        parsed = urllib.parse.urlsplit(container.url)
        connection = http.client.HTTPConnection(parsed.hostname, parsed.port, timeout=30)
        try:
            connection.request("GET", "/execution-parameters")
            reply = connection.getresponse()
            if reply.status == 200:
                asked = json.loads(reply.read())
        finally:
            connection.close()
    concurrency = job.max_concurrent_transforms or asked.get("MaxConcurrentTransforms")
    strategy = job.batch_strategy or _STRATEGY_ANSWER.get(asked.get("BatchStrategy", ""))
    payload = job.max_payload_in_mb
    if payload is None:
        payload = asked.get("MaxPayloadInMB", DEFAULT_PAYLOAD_MB)
    return int(concurrency or DEFAULT_CONCURRENCY), strategy or DEFAULT_STRATEGY, int(payload)


def _mini_batches(data: bytes, strategy: str, limit: int, uri: str) -> list[bytes]:
    """Lines packed into requests: one each (SingleRecord), or as many as fit (MultiRecord)."""
    lines = [line for line in data.splitlines(keepends=True) if line.strip()]
    batches: list[bytes] = []
    current = b""
    for line in lines:
        if limit and len(line) > limit:
            raise TransformFailed(
                f"ClientError: a record of {uri} is {len(line)} bytes, more than MaxPayloadInMB"
            )
        if strategy == "SingleRecord" or (current and limit and len(current) + len(line) > limit):
            if current:
                batches.append(current)
            current = b""
        current += line
    if current:
        batches.append(current)
    return batches


def _send(container: Container | None, body: bytes, headers: dict[str, str], uri: str) -> bytes:
    if container is None:
        return body
    parsed = urllib.parse.urlsplit(container.url)
    connection = http.client.HTTPConnection(parsed.hostname, parsed.port, timeout=3600)
    try:
        connection.request("POST", "/invocations", body=body, headers=headers)
        reply = connection.getresponse()
        answer = reply.read()
    finally:
        connection.close()
    if reply.status >= 400:
        raise TransformFailed(
            f"ClientError: the container answered {reply.status} for a request of {uri}: "
            f"{answer.decode('utf-8', 'replace')[:500]}"
        )
    return answer


def install() -> None:
    sagemaker_models.SageMakerModelBackend.create_transform_job = create_transform_job
