"""X-Amzn-SageMaker-Custom-Attributes on an answer: how a model sets it.

SageMaker passes the caller's CustomAttributes to the container and returns
to the caller only what the container sets on its answer (InvokeEndpoint's
CustomAttributes: at most 1024 visible US-ASCII characters). A model sets it
with an output of this name (one string, TYPE_STRING), which works with
every backend and every Triton release; the Python backend of Triton 2.51
cannot set response parameters (InferenceResponse takes none there).

The front sends invocations of such a model through the payload service,
which reads the output, checks it and writes the header; other answers carry
no such header, whatever the caller sent.
"""

from __future__ import annotations

from serve.errors import ModelMisconfigured
from serve.sagemaker.contract import HEADER_VALUE
from serve.triton.model_config import ModelConfig

HEADER = "X-Amzn-SageMaker-Custom-Attributes"
OUTPUT = "SAGEMAKER_CUSTOM_ATTRIBUTES"
MAX_LENGTH = 1024


def sets_custom_attributes(config: ModelConfig) -> bool:
    """Whether a model answers custom attributes: its config declares the OUTPUT."""
    return any(output.name == OUTPUT for output in config.output)


def header_value(model: str, value: object) -> str | None:
    """The header's value from the OUTPUT's first element; None when the model left it empty.

    A value SageMaker cannot carry is the model's mistake, a 500 that says what is wrong.
    """
    text = value.decode("ascii", errors="replace") if isinstance(value, bytes) else str(value)
    if not text:
        return None
    # Visible US-ASCII with spaces between, the whole value (a final line break too).
    if len(text) > MAX_LENGTH or not HEADER_VALUE.match(text):
        raise ModelMisconfigured(
            f"model {model!r} set {OUTPUT} to {text[:60]!r}{'...' if len(text) > 60 else ''}, "
            f"which {HEADER} cannot carry: it takes 1 to {MAX_LENGTH} visible US-ASCII "
            "characters (spaces only between them)"
        )
    return text
