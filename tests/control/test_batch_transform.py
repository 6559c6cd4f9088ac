"""GET /execution-parameters' rule, and the batch variables' effect, without a server.

The route itself, and runs against real Triton, are in
tests/payloads/test_batch_transform.py; bad values of the variables in
tests/test_settings.py.
"""

from __future__ import annotations

import pytest
from google.protobuf import text_format

from serve.control.execution_parameters import execution_parameters
from serve.payloads.signature import ModelSignature
from serve.settings import MEBIBYTE, Settings
from serve.triton.model_config import ModelConfig


def model(instance_groups: str, extra: str = "") -> ModelSignature:
    """A model as Triton serves its config: instance groups with their devices listed."""
    return ModelSignature.from_config(
        text_format.Parse(
            f"""
            name: "m" max_batch_size: 64
            input [ {{ name: "X", data_type: TYPE_FP32, dims: [ 4 ] }} ]
            output [ {{ name: "Y", data_type: TYPE_FP32, dims: [ 1 ] }} ]
            {instance_groups} {extra}
            """,
            ModelConfig(),
        )
    )


def settings(**environ: str) -> Settings:
    return Settings.from_environ(environ)


@pytest.mark.parametrize(
    ("groups", "concurrency"),
    [
        ("instance_group [ { kind: KIND_CPU, count: 1 } ]", 2),
        ("instance_group [ { kind: KIND_CPU, count: 4 } ]", 5),
        # Two instances on each of a 4-GPU share of a host: 8 at work.
        ("instance_group [ { kind: KIND_GPU, count: 2, gpus: [ 0, 1, 2, 3 ] } ]", 9),
        # 40 instances would want 41 requests; 16 x 6 MB is the most SageMaker takes.
        ("instance_group [ { kind: KIND_GPU, count: 5, gpus: [ 0, 1, 2, 3, 4, 5, 6, 7 ] } ]", 16),
    ],
)
def test_concurrency_follows_the_instances_within_the_platforms_100_mb(
    groups: str, concurrency: int
) -> None:
    assert execution_parameters(settings(), model(groups)) == {
        "MaxConcurrentTransforms": concurrency,
        "BatchStrategy": "MULTI_RECORD",
        "MaxPayloadInMB": 6,
    }


def test_a_lower_body_limit_lowers_the_payload() -> None:
    answer = execution_parameters(
        settings(SERVE_MAX_BODY_BYTES=str(3 * MEBIBYTE)), model("instance_group [ { count: 1 } ]")
    )
    assert answer["MaxPayloadInMB"] == 3


def test_models_that_answer_one_record_at_a_time_get_single_record() -> None:
    decoupled = model("", "model_transaction_policy { decoupled: true }")
    assert execution_parameters(settings(), decoupled)["BatchStrategy"] == "SINGLE_RECORD"
    generate = settings(SAGEMAKER_TRITON_INFERENCE_TYPE="generate")
    assert execution_parameters(generate, model(""))["BatchStrategy"] == "SINGLE_RECORD"


def test_the_jobs_own_settings_are_read_and_raise_the_body_limit() -> None:
    job = settings(
        SAGEMAKER_BATCH="true",
        SAGEMAKER_BATCH_STRATEGY="MULTI_RECORD",
        SAGEMAKER_MAX_CONCURRENT_TRANSFORMS="4",
        SAGEMAKER_MAX_PAYLOAD_IN_MB="25",
    )
    assert job.batch and job.max_body_bytes == 25 * MEBIBYTE
    assert execution_parameters(job, model("")) == {
        "MaxConcurrentTransforms": 4,
        "BatchStrategy": "MULTI_RECORD",
        "MaxPayloadInMB": 25,
    }
    # The body limit is the job's payload limit; 0 (chunked) leaves the real-time one.
    assert settings(SAGEMAKER_MAX_PAYLOAD_IN_MB="2").max_body_bytes == 2 * MEBIBYTE
    unbounded = settings(SAGEMAKER_MAX_PAYLOAD_IN_MB="0")
    assert unbounded.max_payload_mb == 0 and unbounded.max_body_bytes == 6 * MEBIBYTE
