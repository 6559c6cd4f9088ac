"""Stateful sessions on /invocations, each one a sequence of Triton's sequence batcher.

The protocol is SageMaker's (InvokeEndpoint's SessionId), with the open and
close requests AWS's own examples send:

- `X-Amzn-SageMaker-Session-Id: NEW_SESSION` opens a session. With the body
  `{"requestType": "NEW_SESSION"}` nothing reaches the model (the answer is
  `{}`); with any other body, that body is the session's first request. The
  answer carries `X-Amzn-SageMaker-New-Session-Id: <id>; Expires=<ISO 8601>`.
- `X-Amzn-SageMaker-Session-Id: <id>` sends a request to the session's state.
- `X-Amzn-SageMaker-Session-Id: <id>` with the body `{"requestType": "CLOSE"}`
  closes it; the answer (the model's answer to the closing request) carries
  `X-Amzn-SageMaker-Closed-Session-Id: <id>`.

Triton sees one sequence per session: its correlation id (`sequence_id`, random,
63 bits: serve/sessions/registry.py), `sequence_start` on the first request that
reaches the model (the session sets all three flags; a caller's own are
overridden), and
`sequence_end` on a request whose inputs are empty (zero-length where a dim is
variable, zeros or empty strings where it is fixed) when the session closes or
expires, so the model lets go of the session's state. Requests of one session
run one at a time, in the order they arrive.

A plain request (no SessionId) naming a sequence a session or stream holds is
refused (409): nginx sends every request for a stateful model here
(serve/front/nginx.py), so none reaches Triton unchecked.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
from collections.abc import Mapping
from urllib.parse import quote

from serve.errors import Gone, PayloadError, SequenceInUse, ServeError
from serve.payloads.adapter import Invocation, PayloadAdapter, Reply, v2_document
from serve.payloads.body import Body
from serve.payloads.codecs import json_codec
from serve.payloads.formats import BINARY, Route, request_format
from serve.payloads.signature import ModelSignature
from serve.payloads.v2 import is_v2_request
from serve.sagemaker.contract import CLOSED_SESSION_HEADER, NEW_SESSION_HEADER
from serve.sessions.registry import NEW_SESSION, Session, SessionRegistry

log = logging.getLogger(__name__)

REQUEST_TYPE = "requestType"
OPEN, CLOSE = "NEW_SESSION", "CLOSE"
# Triton refuses a sequence's request without START when it has forgotten the sequence.
FORGOTTEN = "must specify the START flag"


class SessionInvocations:
    """Runs the invocations that name a session, on the payload service's event loop."""

    def __init__(self, adapter: PayloadAdapter, registry: SessionRegistry):
        self._adapter = adapter
        self.registry = registry
        # Model name -> its sequence batcher's idle limit in seconds (None: not stateful).
        self._stateful: dict[str, float | None] = {}
        self._sweeper: asyncio.Task[None] | None = None

    async def invoke(self, session_id: str, invocation: Invocation) -> Reply:
        request_type = _request_type(invocation)
        if invocation.inference != "infer":
            raise PayloadError(
                f"sessions reach models through Triton's infer route; this endpoint runs "
                f"{invocation.inference!r} (SAGEMAKER_TRITON_INFERENCE_TYPE), whose requests "
                "carry no sequence: unset it, or leave SessionId out"
            )
        if session_id == NEW_SESSION:
            return await self._open(invocation, request_type)
        session = self.registry.get(session_id)
        if invocation.model != session.model:
            raise PayloadError(
                f"session {session.id} talks to model {session.model!r}, not "
                f"{invocation.model!r}: a session stays with the model it was opened on"
            )
        if request_type == OPEN:
            raise PayloadError(
                f"session {session.id} is open already; send {REQUEST_TYPE} {OPEN} with "
                f"SessionId {NEW_SESSION} to open another"
            )
        async with session.lock:
            self.registry.get(session_id)  # it may have expired while this request waited
            if request_type == CLOSE:
                self.registry.remove(session)
                try:
                    reply = await self._end(session, invocation.accept)
                except ServeError as exc:
                    # Closed all the same: the caller must not use the id again.
                    log.warning("a session closed; its END failed: %s", exc.message)
                    body = json.dumps({"error": f"the session is closed; {exc.message}"})
                    reply = Reply(exc.status, "application/json", body.encode())
                finally:
                    self.registry.release(session)
                log.debug("session %s closed", session.id)
                return _with_header(reply, CLOSED_SESSION_HEADER, session.id)
            return await self._run(session, invocation)

    async def _open(self, invocation: Invocation, request_type: str | None) -> Reply:
        if request_type == CLOSE:
            raise PayloadError(
                f"{REQUEST_TYPE} {CLOSE} closes an open session: send it with that "
                f"session's id as SessionId, not {NEW_SESSION}"
            )
        await self._check_stateful(invocation.model)
        session = self.registry.open(invocation.model)
        header = session.expires_header()
        if request_type == OPEN:
            log.debug("session %s opened on model %r", session.id, session.model)
            return Reply(200, "application/json", b"{}", headers=((NEW_SESSION_HEADER, header),))
        async with session.lock:
            try:
                reply = await self._run(session, invocation)
            except BaseException:
                # Its first request failed: the caller never learns the id.
                self.registry.remove(session)
                self.registry.release(session)
                raise
        log.debug("session %s opened on model %r", session.id, session.model)
        return _with_header(reply, NEW_SESSION_HEADER, header)

    async def _run(self, session: Session, invocation: Invocation) -> Reply:
        # All three, so a caller's own flags in the body cannot steer the session's sequence.
        flags: dict[str, object] = {
            "sequence_id": session.sequence_id,
            "sequence_start": not session.started,
            "sequence_end": False,
        }
        try:
            # A v2 body is parsed and written again with the flags: off the loop when large.
            size = invocation.body.size
            with_flags = await self._adapter.offload.run(size, _with_parameters, invocation, flags)
            reply = await self._adapter.invoke(with_flags)
        except ServeError as exc:
            if FORGOTTEN in exc.message:
                self.registry.remove(session)
                self.registry.release(session)
                raise Gone(
                    f"the model no longer holds session {session.id}'s state: Triton forgot "
                    "the sequence after its max_sequence_idle_microseconds; raise that limit "
                    "in the model's config.pbtxt above SERVE_SESSION_TTL_SECONDS, and open "
                    "a new session"
                ) from exc
            raise
        session.started = True
        return reply

    async def _end(self, session: Session, accept: str = "") -> Reply:
        """Send the sequence's END, so the model lets go of the session's state."""
        if not session.started:
            return Reply(200, "application/json", b"{}")
        signature = await self._adapter.signature(session.model, session.model)
        body = json.dumps(
            {
                "inputs": _empty_inputs(signature),
                "parameters": {"sequence_id": session.sequence_id, "sequence_end": True},
            }
        ).encode()
        invocation = Invocation(
            model=session.model,
            inference="infer",
            content_type="application/json",
            accept=accept,
            body=Body(body),
        )
        return await self._adapter.invoke(invocation)

    async def _check_stateful(self, model: str) -> None:
        """Refuse sessions on a model that keeps no state; warn when Triton forgets too soon."""
        if model not in self._stateful:
            reply = await self._adapter.triton.request(
                "GET", f"/v2/models/{quote(model, safe='')}/config"
            )
            idle: float | None = None
            if reply.status == 200:
                config = json.loads(reply.body)
                batching = config.get("sequence_batching")
                if batching is not None:
                    micros = int(batching.get("max_sequence_idle_microseconds") or 1_000_000)
                    idle = micros / 1e6
                    if idle < self.registry.ttl:
                        log.warning(
                            "model %r forgets a sequence idle for %g s "
                            "(max_sequence_idle_microseconds), before a session expires "
                            "(%g s, SERVE_SESSION_TTL_SECONDS): a session left idle that "
                            "long loses its state; raise the model's limit",
                            model,
                            idle,
                            self.registry.ttl,
                        )
                signature = await self._adapter.signature(model, model)
                if signature.decoupled:
                    raise PayloadError(
                        f"model {model!r} is decoupled: its sessions are streams; open one "
                        "on the bidirectional stream route (/invocations-bidirectional-stream)"
                    )
                self._stateful[model] = idle
            else:
                await self._adapter.signature(model, model)  # says why (not loaded, ...)
        if self._stateful.get(model) is None:
            raise PayloadError(
                f"model {model!r} keeps no state between requests (its config.pbtxt has no "
                "sequence_batching), so a session cannot reach any: add sequence_batching "
                "to the model, or leave SessionId out"
            )

    # -- expiry -------------------------------------------------------------

    async def start_expiry(self) -> None:
        """Close expired sessions in the background, on the running loop."""
        self._sweeper = asyncio.get_running_loop().create_task(self._sweep())

    async def close(self) -> None:
        """Stop the expiry, then end every open session's sequence while Triton still runs
        (serve stops it after this service): otherwise Triton counts their sequences in
        flight, waits its whole exit timeout for them and leaves its stubs behind."""
        if self._sweeper is not None:
            self._sweeper.cancel()
            await asyncio.gather(self._sweeper, return_exceptions=True)
        await asyncio.gather(
            *(self._release(session, "closed at shutdown") for session in self.registry.take_all())
        )

    async def _sweep(self) -> None:
        shortest = min(self.registry.ttl, self.registry.first_use)
        interval = min(max(shortest / 10, 0.2), 30.0)
        while True:
            await asyncio.sleep(interval)
            for session in self.registry.expired():
                await self._release(session, "expired" if session.started else "went unused")

    async def _release(self, session: Session, why: str) -> None:
        async with session.lock:
            try:
                await self._end(session)
            except Exception as exc:  # the state is Triton's to drop now; say so and go on
                log.warning("a session %s; ending its sequence failed: %s", why, exc)
                return
            finally:
                self.registry.release(session)
        log.info("a session %s; its sequence ended", why)

    # -- plain requests -----------------------------------------------------

    async def refuse_held_sequence(self, invocation: Invocation) -> None:
        """Refuse a plain request (no SessionId) naming a sequence a session or stream holds.

        Triton takes `sequence_id` from a v2 body's parameters (or, on its generate
        routes, from the body's top level); a simple-shape JSON body's parameters
        reach it too. Nothing is read while no session or stream is open; a large
        body is parsed in a worker thread (offload.py), the held ids read on the loop.
        """
        if not self.registry.ids:
            return
        size = invocation.body.size
        for named in await self._adapter.offload.run(size, _named_sequences, invocation):
            if isinstance(named, bool):
                continue
            if isinstance(named, str) and named.isascii() and named.isdigit():
                named = int(named)
            if isinstance(named, int) and self.registry.ids.held(named):
                raise SequenceInUse(
                    f"sequence_id {named} is held by a stateful session or stream of this "
                    "endpoint; use another sequence_id (sessions and streams take random "
                    "63-bit ids, so one you pick yourself collides only by chance)"
                )


def _request_type(invocation: Invocation) -> str | None:
    """`requestType` of a body that is exactly `{"requestType": ...}` (AWS's examples)."""
    payload_format, _media = request_format(invocation.content_type)
    if payload_format.route is not Route.JSON or invocation.body.size > 256:
        return None
    try:
        document = json.loads(invocation.body.read())
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    if not isinstance(document, dict) or set(document) != {REQUEST_TYPE}:
        return None
    value = document[REQUEST_TYPE]
    if value not in (OPEN, CLOSE):
        raise PayloadError(f"{REQUEST_TYPE} must be {OPEN} or {CLOSE}, not {value!r}")
    return value


def _with_parameters(invocation: Invocation, flags: Mapping[str, object]) -> Invocation:
    """The invocation with the sequence's flags among the parameters Triton gets.

    A v2 body (JSON, binary+json, or a v2 request of another type) goes to Triton
    as sent, so the flags are written into it; any other body is adapted, and the
    adapter adds them.
    """
    payload_format, media = request_format(invocation.content_type)
    if payload_format is BINARY:
        return _binary_with_parameters(invocation, flags)
    document: object = v2_document(payload_format, media, invocation.body)
    if payload_format.route is Route.JSON:
        try:
            document = json_codec.parse(invocation.body.read())
        except PayloadError:
            document = None  # the adapter says what is wrong with it
    if is_v2_request(document):
        assert isinstance(document, dict)
        document["parameters"] = {**_parameters(document), **flags}
        body = Body(json.dumps(document).encode())
        return dataclasses.replace(invocation, body=body)
    return dataclasses.replace(invocation, parameters={**invocation.parameters, **flags})


_HEADER_SIZE = "json-header-size="


@dataclasses.dataclass(frozen=True)
class _BinaryParts:
    """A binary+json request split: its JSON header, and where its size is in the type."""

    header: dict[str, object]
    size: int
    # The Content-Type up to the size's digits, and after them.
    type_head: str
    type_tail: str


def _binary_parts(invocation: Invocation) -> _BinaryParts | None:
    """The request's parts; None for a malformed one (the adapter says what is wrong)."""
    content_type = invocation.content_type
    at = content_type.lower().find(_HEADER_SIZE)
    if at < 0:
        return None
    size_text = content_type[at + len(_HEADER_SIZE) :].split(";", 1)[0].strip()
    if not (size_text.isascii() and size_text.isdigit()) or int(size_text) > invocation.body.size:
        return None
    size = int(size_text)
    try:
        header = json_codec.parse(invocation.body.head(size))
    except PayloadError:
        return None
    if not isinstance(header, dict):
        return None
    head_end = at + len(_HEADER_SIZE)
    return _BinaryParts(
        header, size, content_type[:head_end], content_type[head_end + len(size_text) :]
    )


def _binary_with_parameters(invocation: Invocation, flags: Mapping[str, object]) -> Invocation:
    parts = _binary_parts(invocation)
    if parts is None:
        return invocation
    header = parts.header
    header["parameters"] = {**_parameters(header), **flags}
    head = json.dumps(header).encode()
    return dataclasses.replace(
        invocation,
        content_type=f"{parts.type_head}{len(head)}{parts.type_tail}",
        body=Body(head + invocation.body.read()[parts.size :]),
    )


def _parameters(document: Mapping[str, object]) -> dict[str, object]:
    parameters = document.get("parameters")
    return parameters if isinstance(parameters, dict) else {}


def _named_sequences(invocation: Invocation) -> list[object]:
    """The `sequence_id` values a plain request names, wherever Triton would read one."""
    payload_format, media = request_format(invocation.content_type)
    document: object = None
    try:
        if payload_format is BINARY:
            parts = _binary_parts(invocation)
            document = parts.header if parts is not None else None
        elif payload_format.route is Route.JSON:
            document = json_codec.parse(invocation.body.read())
        else:  # a v2 request of another type is Triton's to read too
            document = v2_document(payload_format, media, invocation.body)
    except PayloadError:
        return []  # the adapter says what is wrong with it
    if not isinstance(document, dict):
        return []
    return [
        found
        for found in (_parameters(document).get("sequence_id"), document.get("sequence_id"))
        if found is not None
    ]


def _empty_inputs(signature: ModelSignature) -> list[dict[str, object]]:
    """The closing request's inputs: every required input, empty or zero."""
    inputs: list[dict[str, object]] = []
    for spec in signature.inputs:
        if spec.optional:
            continue
        shape = [0 if dim < 0 else dim for dim in spec.dims]
        if signature.batched:
            shape = [1, *shape]
        count = 1
        for dim in shape:
            count *= dim
        value: object = "" if spec.is_bytes else (False if spec.datatype == "BOOL" else 0)
        inputs.append(
            {"name": spec.name, "shape": shape, "datatype": spec.datatype, "data": [value] * count}
        )
    return inputs


def _with_header(reply: Reply, name: str, value: str) -> Reply:
    return dataclasses.replace(reply, headers=(*reply.headers, (name, value)))
