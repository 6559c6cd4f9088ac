"""Session bookkeeping: ids, the Triton sequence behind each, expiry.

SageMaker routes every request that names a session to the instance that opened
it, so sessions live in this container's memory only: a restart (or a crash)
forgets them, Triton's sequences with them, and their ids then get the "not
open" error, which tells the caller to open a new one.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import re
import secrets
import threading
import time
import uuid
from collections.abc import Callable

from serve.errors import SessionNotOpen, TooManySessions

NEW_SESSION = "NEW_SESSION"
# What a session id may be: ours are UUIDs; anything else is refused before lookup.
SESSION_ID = re.compile(r"[A-Za-z0-9-]{1,256}")
# Correlation ids of sessions and streams are below this (63 bits).
MAX_SEQUENCE_ID = 2**63 - 1


class SequenceIds:
    """Triton correlation ids held by sessions and streams: random, unique, unguessable.

    A plain v2 request names any sequence it likes (`parameters.sequence_id`),
    as Triton's own clients do, and Triton cannot tell a session's sequence
    from a caller's. So a session's or stream's id is drawn at random from
    63 bits (never guessed, where ids counting up from 1 were), and the
    payload service refuses a plain request naming one that is held
    (`held`). Sessions (the payload service) and bidirectional streams (their
    own server) run on different threads and may use the same model, so they
    share one.
    """

    def __init__(self) -> None:
        self._held: set[int] = set()
        self._lock = threading.Lock()

    def take(self) -> int:
        """A fresh id, held until `release`."""
        with self._lock:
            while True:
                # 1 to 2**63 - 1: Triton's UINT64 and INT64 correlation ids both hold it.
                sequence_id = secrets.randbelow(MAX_SEQUENCE_ID) + 1
                if sequence_id not in self._held:
                    self._held.add(sequence_id)
                    return sequence_id

    def release(self, sequence_id: int) -> None:
        with self._lock:
            self._held.discard(sequence_id)

    def held(self, sequence_id: int) -> bool:
        with self._lock:
            return sequence_id in self._held

    def __bool__(self) -> bool:
        """Whether any id is held (a plain request then has something to collide with)."""
        return bool(self._held)


SEQUENCE_IDS = SequenceIds()


@dataclasses.dataclass
class Session:
    id: str
    # Triton's correlation id for the session's requests.
    sequence_id: int
    # The model the session talks to (the one invoked when it was opened).
    model: str
    # Seconds since the epoch after which the session is closed for the caller.
    expires: float
    # Seconds since the epoch after which the session is closed if no request has
    # reached the model by then (SERVE_SESSION_FIRST_USE_SECONDS).
    first_use_by: float
    # Whether Triton has seen the sequence's first request (START); until then no
    # END is due when the session closes.
    started: bool = False
    # One request of a session at a time, in the order they come: the model's state
    # moves one step per request.
    lock: asyncio.Lock = dataclasses.field(default_factory=asyncio.Lock)

    def is_over(self, now: float) -> bool:
        """Past its time, or unused past its first-use deadline (and not being used now)."""
        unused = not self.started and not self.lock.locked()
        return self.expires <= now or (unused and self.first_use_by <= now)

    def expires_header(self) -> str:
        """`<id>; Expires=<ISO 8601>`: the value of NEW_SESSION_HEADER."""
        moment = datetime.datetime.fromtimestamp(self.expires, datetime.timezone.utc)
        return f"{self.id}; Expires={moment.strftime('%Y-%m-%dT%H:%M:%SZ')}"


class SessionRegistry:
    """The open sessions of one event loop (the payload service's).

    A session expires `ttl` seconds after it was opened (the time its
    NEW_SESSION_HEADER announces), whether or not it was used since; one that
    no request has used `first_use` seconds after it was opened is closed then.
    Opening one costs a caller nothing (`{"requestType": "NEW_SESSION"}` reaches
    no model) and SageMaker does not say who the caller is, so this is what keeps
    one caller's empty opens from holding every slot for the whole TTL.
    """

    def __init__(
        self,
        ttl: float,
        max_sessions: int,
        ids: SequenceIds = SEQUENCE_IDS,
        clock: Callable[[], float] = time.time,
        first_use: float | None = None,
    ):
        self.ttl = ttl
        self.first_use = ttl if first_use is None else min(first_use, ttl)
        self.max_sessions = max_sessions
        self.ids = ids
        self._clock = clock
        self._sessions: dict[str, Session] = {}

    def __len__(self) -> int:
        return len(self._sessions)

    def open(self, model: str) -> Session:
        if len(self._sessions) >= self.max_sessions:
            self._reclaim_unused()
        if len(self._sessions) >= self.max_sessions:
            raise TooManySessions(
                f"{self.max_sessions} sessions are open on this instance (SERVE_MAX_SESSIONS); "
                "close sessions you no longer use, or retry later (a session no request "
                f"uses is closed {self.first_use:g} s after it opened, "
                "SERVE_SESSION_FIRST_USE_SECONDS)"
            )
        now = self._clock()
        session = Session(
            id=str(uuid.uuid4()),
            sequence_id=self.ids.take(),
            model=model,
            expires=now + self.ttl,
            first_use_by=now + self.first_use,
        )
        self._sessions[session.id] = session
        return session

    def get(self, session_id: str) -> Session:
        """The open session `session_id`; SessionNotOpen when there is none (or it expired)."""
        well_formed = SESSION_ID.fullmatch(session_id) is not None
        session = self._sessions.get(session_id) if well_formed else None
        if session is None or session.is_over(self._clock()):
            shown = session_id if well_formed else "(malformed)"
            raise SessionNotOpen(
                f"session {shown} is not open on this instance: it was closed, it expired "
                f"(sessions last {self.ttl:g} s, SERVE_SESSION_TTL_SECONDS; one no request "
                f"used is closed after {self.first_use:g} s, SERVE_SESSION_FIRST_USE_SECONDS), "
                f"or the container restarted; open a new one with SessionId {NEW_SESSION}"
            )
        return session

    def remove(self, session: Session) -> None:
        """Take the session out: its id is no longer open (its sequence id stays held)."""
        if self._sessions.get(session.id) is session:
            del self._sessions[session.id]

    def release(self, session: Session) -> None:
        """Let go of the session's sequence id, once its sequence has ended in Triton."""
        self.ids.release(session.sequence_id)

    def take_all(self) -> list[Session]:
        """Every open session, taken out (shutdown)."""
        taken = list(self._sessions.values())
        self._sessions.clear()
        return taken

    def expired(self) -> list[Session]:
        """The sessions past their time (or their first-use deadline), taken out."""
        now = self._clock()
        gone = [s for s in self._sessions.values() if s.is_over(now)]
        for session in gone:
            del self._sessions[session.id]
        return gone

    def _reclaim_unused(self) -> None:
        """Free the slots of sessions past their first-use deadline, at once.

        Nothing reached Triton for them (no START), so no END is due: their slot
        and sequence id are free without waiting for the expiry sweep.
        """
        now = self._clock()
        for session in [s for s in self._sessions.values() if s.is_over(now) and not s.started]:
            del self._sessions[session.id]
            self.release(session)

    def drain(self) -> list[Session]:
        """Every session, taken out (at shutdown)."""
        sessions = list(self._sessions.values())
        self._sessions.clear()
        return sessions
