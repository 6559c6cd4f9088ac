"""Batch transform: what `GET /execution-parameters` answers SageMaker.

SageMaker asks once, before a transform job's first request, how to call the
container: how many requests at a time (MaxConcurrentTransforms), one record
or many per request (BatchStrategy), and how large a request may be
(MaxPayloadInMB). Without an answer it sends one request at a time, which
leaves Triton idle while each answer travels back and the next request is
read. What the job sets itself wins; SageMaker passes those settings as
SAGEMAKER_* variables, so they are answered as they are. The rest comes from
the default model as Triton serves it (instances counted on this host's
GPUs, auto-completed fields included):

- BatchStrategy MULTI_RECORD: serve splits any number of records into the
  model's batches (serve/payloads/batching.py), so each request should carry
  as many as fit; SINGLE_RECORD for a model that streams (decoupled) or an
  endpoint on a generate route, which take one record a request.
- MaxPayloadInMB: SageMaker's default, 6, or the body limit when lower. A
  6 MB request holds thousands of records, many of the model's batches.
- MaxConcurrentTransforms: a request for each model instance to work on
  plus one being read, decoded and answered, so no instance waits between
  requests (the chunks of each request keep the batcher busy within it); at
  least 2; at most what keeps concurrency x payload within SageMaker's
  100 MB.
"""

from __future__ import annotations

from urllib.parse import quote

from serve.errors import Unavailable
from serve.payloads.signature import ModelSignature
from serve.settings import MEBIBYTE, Settings
from serve.triton.client import TritonClient, error_message

# SageMaker refuses MaxPayloadInMB over 100, and MaxConcurrentTransforms x MaxPayloadInMB too.
PLATFORM_LIMIT_MB = 100
DEFAULT_PAYLOAD_MB = 6


def execution_parameters(settings: Settings, model: ModelSignature) -> dict[str, object]:
    """The answer to GET /execution-parameters for `model`, the endpoint's default model."""
    payload_mb = settings.max_payload_mb
    if payload_mb is None:
        payload_mb = max(1, min(DEFAULT_PAYLOAD_MB, settings.max_body_bytes // MEBIBYTE))
    concurrency = settings.max_concurrent_transforms
    if concurrency is None:
        wanted = max(2, model.instances + 1)
        concurrency = max(1, min(wanted, PLATFORM_LIMIT_MB // max(1, payload_mb)))
    strategy = settings.batch_strategy
    if strategy is None:
        one_record = model.decoupled or settings.inference_type != "infer"
        strategy = "SINGLE_RECORD" if one_record else "MULTI_RECORD"
    return {
        "MaxConcurrentTransforms": concurrency,
        "BatchStrategy": strategy,
        "MaxPayloadInMB": payload_mb,
    }


class ExecutionParameters:
    """Answers GET /execution-parameters from the default model's config, read from Triton."""

    def __init__(self, settings: Settings, triton: TritonClient, default_model: str):
        self._settings = settings
        self._triton = triton
        self._model = default_model

    def answer(self) -> dict[str, object]:
        path = f"/v2/models/{quote(self._model, safe='')}/config"
        try:
            reply = self._triton.request("GET", path, timeout=10.0)
        except OSError as exc:
            raise Unavailable(f"Triton did not answer: {exc}") from exc
        if reply.status != 200:
            raise Unavailable(
                f"cannot read model {self._model!r}'s configuration from Triton: "
                f"{error_message(reply.body)}"
            )
        return execution_parameters(self._settings, ModelSignature.from_triton_json(reply.body))
