"""Language-model clients SageMaker users have, calling an endpoint through the AWS stand-in.

Run by tests/payloads/llm/test_clients.py with the clients' own environment's
Python (.venv-llm, build/setup.sh: these packages' pins conflict with
nvidia-pytriton's): `python clients.py CLIENT ENDPOINT STREAM`, with
AWS_ENDPOINT_URL naming the stand-in (tests/build/fake_aws.py), which passes
InvokeEndpoint and InvokeEndpointWithResponseStream to a real serve. Prints
one JSON object: the text the client got, and what it saw on the way.

Each client is used as its documentation shows; the content handlers of
LangChain's classes are the ones users write for the TGI schema (SagemakerEndpoint)
and the chat schema (ChatSagemakerEndpoint).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterator
from typing import Any

PROMPT = "Triton serves language models"
MESSAGES = [
    {"role": "system", "content": "Answer briefly."},
    {"role": "user", "content": "Which server runs here?"},
]
REGION = "us-east-1"


def _runtime() -> Any:
    import boto3

    return boto3.client("sagemaker-runtime", region_name=REGION)


def _sse_data(parts: Iterator[bytes]) -> Iterator[dict[str, Any] | str]:
    """The data of each server-sent event, however the PayloadParts cut them."""
    pending = b""
    for part in parts:
        pending += part
        *events, pending = pending.split(b"\n\n")
        for event in events:
            data = event.strip().removeprefix(b"data:").strip()
            if data:
                yield "[DONE]" if data == b"[DONE]" else json.loads(data)


def _payload_parts(response: dict[str, Any]) -> Iterator[bytes]:
    for event in response["Body"]:
        if "PayloadPart" in event:
            yield event["PayloadPart"]["Bytes"]


# --- the OpenAI SDK's types, validating every answer and chunk ---------------------------------


def openai_types(endpoint: str, stream: bool) -> dict[str, Any]:
    from openai.types import Completion
    from openai.types.chat import ChatCompletion, ChatCompletionChunk

    runtime = _runtime()
    chat = {"messages": MESSAGES, "max_tokens": 8, "n": 2, "seed": 7, "logprobs": True}
    completion = {"prompt": PROMPT, "max_tokens": 3, "logprobs": 1}
    if not stream:
        answer = runtime.invoke_endpoint(
            EndpointName=endpoint, ContentType="application/json", Body=json.dumps(chat)
        )
        validated = ChatCompletion.model_validate(json.loads(answer["Body"].read()))
        answer = runtime.invoke_endpoint(
            EndpointName=endpoint, ContentType="application/json", Body=json.dumps(completion)
        )
        text = Completion.model_validate(json.loads(answer["Body"].read()))
        return {
            "text": validated.choices[0].message.content,
            "texts": [c.message.content for c in validated.choices],
            "usage": validated.usage.model_dump() if validated.usage else None,
            "completion": text.choices[0].text,
            "logprobs": len(validated.choices[0].logprobs.content or [])
            if validated.choices[0].logprobs
            else 0,
        }
    body = {**chat, "stream": True, "stream_options": {"include_usage": True}}
    response = runtime.invoke_endpoint_with_response_stream(
        EndpointName=endpoint, ContentType="application/json", Body=json.dumps(body)
    )
    texts = ["", ""]
    chunks = 0
    usage = None
    done = False
    for data in _sse_data(_payload_parts(response)):
        if data == "[DONE]":
            done = True
            continue
        chunk = ChatCompletionChunk.model_validate(data)
        chunks += 1
        for choice in chunk.choices:
            texts[choice.index] += choice.delta.content or ""
        if chunk.usage is not None:
            usage = chunk.usage.model_dump()
    response = runtime.invoke_endpoint_with_response_stream(
        EndpointName=endpoint,
        ContentType="application/json",
        Body=json.dumps({**completion, "stream": True}),
    )
    completion_text = ""
    finished = []
    for data in _sse_data(_payload_parts(response)):
        if data == "[DONE]":
            continue
        # The SDK's Completion type wants a finish reason in every choice, which OpenAI's
        # own stream (and vLLM's) leaves null until a choice's last chunk: every other
        # field is validated as it is.
        reason = data["choices"][0]["finish_reason"]
        finished.append(reason)
        choices = [{**c, "finish_reason": c["finish_reason"] or "stop"} for c in data["choices"]]
        completion_text += Completion.model_validate({**data, "choices": choices}).choices[0].text
    return {
        "text": texts[0],
        "texts": texts,
        "usage": usage,
        "chunks": chunks,
        "done": done,
        "completion": completion_text,
        "finished": finished,
    }


# --- LangChain ---------------------------------------------------------------------------------


def langchain_tgi(endpoint: str, stream: bool) -> dict[str, Any]:
    from langchain_aws.llms import SagemakerEndpoint
    from langchain_aws.llms.sagemaker_endpoint import LLMContentHandler

    class TgiHandler(LLMContentHandler):
        content_type = "application/json"
        accepts = "application/json"

        def transform_input(self, prompt: str, model_kwargs: dict[str, Any]) -> bytes:
            return json.dumps(
                {"inputs": prompt, "parameters": model_kwargs, "stream": stream}
            ).encode()

        def transform_output(self, output: Any) -> str:
            if isinstance(output, bytes):  # a streamed line
                line = output.decode().strip().removeprefix("data:")
                if not line.strip():
                    return ""
                event = json.loads(line)
                return "" if event["token"]["special"] else event["token"]["text"]
            return json.loads(output.read())[0]["generated_text"]

    llm = SagemakerEndpoint(
        endpoint_name=endpoint,
        region_name=REGION,
        content_handler=TgiHandler(),
        model_kwargs={"max_new_tokens": 6},
        streaming=stream,
    )
    if stream:
        pieces = [piece for piece in llm.stream(PROMPT) if piece]
        return {"text": "".join(pieces), "chunks": len(pieces)}
    return {"text": llm.invoke(PROMPT)}


def langchain_chat(endpoint: str, stream: bool) -> dict[str, Any]:
    from langchain_aws.chat_models.sagemaker_endpoint import (
        ChatModelContentHandler,
        ChatSagemakerEndpoint,
    )
    from langchain_core.messages import AIMessage, AIMessageChunk, HumanMessage, SystemMessage

    class ChatHandler(ChatModelContentHandler):
        content_type = "application/json"
        accepts = "application/json"

        def transform_input(
            self, messages: list[dict[str, Any]], model_kwargs: dict[str, Any]
        ) -> bytes:
            return json.dumps({"messages": messages, **model_kwargs, "stream": stream}).encode()

        def transform_output(self, output: Any) -> Any:
            if isinstance(output, bytes):  # a streamed line
                line = output.decode().strip().removeprefix("data:").strip()
                if not line or line == "[DONE]":
                    return AIMessageChunk(content="")
                chunk = json.loads(line)
                delta = chunk["choices"][0]["delta"] if chunk["choices"] else {}
                return AIMessageChunk(content=delta.get("content") or "")
            answer = json.loads(output.read())
            return AIMessage(content=answer["choices"][0]["message"]["content"])

    chat = ChatSagemakerEndpoint(
        endpoint_name=endpoint,
        region_name=REGION,
        content_handler=ChatHandler(),
        model_kwargs={"max_tokens": 12},
        streaming=stream,
    )
    messages = [
        SystemMessage(content=MESSAGES[0]["content"]),
        HumanMessage(content=MESSAGES[1]["content"]),
    ]
    if stream:
        pieces = [chunk.content for chunk in chat.stream(messages) if chunk.content]
        return {"text": "".join(pieces), "chunks": len(pieces)}
    return {"text": chat.invoke(messages).content}


# --- LiteLLM -----------------------------------------------------------------------------------


def _litellm(provider: str, endpoint: str, stream: bool, **extra: Any) -> dict[str, Any]:
    import litellm

    route = "invocations-response-stream" if stream else "invocations"
    base = f"{os.environ['AWS_ENDPOINT_URL']}/endpoints/{endpoint}/{route}"
    response = litellm.completion(
        model=f"{provider}/{endpoint}",
        messages=MESSAGES,
        stream=stream,
        sagemaker_base_url=base,
        aws_region_name=REGION,
        aws_access_key_id=os.environ["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=os.environ["AWS_SECRET_ACCESS_KEY"],
        **extra,
    )
    if stream:
        pieces = [chunk.choices[0].delta.content or "" for chunk in response]
        return {"text": "".join(pieces), "chunks": len([p for p in pieces if p])}
    return {"text": response.choices[0].message.content}


def litellm_tgi(endpoint: str, stream: bool) -> dict[str, Any]:
    # The sagemaker provider renders the messages itself (hf_model_name picks its template).
    return _litellm("sagemaker", endpoint, stream, max_tokens=6)


def litellm_chat(endpoint: str, stream: bool) -> dict[str, Any]:
    return _litellm("sagemaker_chat", endpoint, stream, max_tokens=12)


# --- Strands Agents ----------------------------------------------------------------------------


def strands(endpoint: str, stream: bool) -> dict[str, Any]:
    from strands import Agent
    from strands.models.sagemaker import SageMakerAIModel

    model = SageMakerAIModel(
        endpoint_config={"endpoint_name": endpoint, "region_name": REGION},
        payload_config={
            "max_tokens": 12,
            "stream": stream,
            # OpenAI's stream carries usage only when asked, as here.
            "additional_args": {"stream_options": {"include_usage": True}} if stream else None,
        },
    )
    agent = Agent(model=model, system_prompt=MESSAGES[0]["content"], callback_handler=None)
    result = agent(MESSAGES[1]["content"])
    usage = result.metrics.accumulated_usage
    return {"text": str(result).strip("\n"), "usage": dict(usage)}


CLIENTS: dict[str, Callable[[str, bool], dict[str, Any]]] = {
    "openai_types": openai_types,
    "langchain_tgi": langchain_tgi,
    "langchain_chat": langchain_chat,
    "litellm_tgi": litellm_tgi,
    "litellm_chat": litellm_chat,
    "strands": strands,
}


if __name__ == "__main__":
    client, endpoint, streamed = sys.argv[1:4]
    print(json.dumps(CLIENTS[client](endpoint, streamed == "stream")))
