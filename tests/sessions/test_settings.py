"""The sessions' and streams' settings, and the registry's bookkeeping (no server needed)."""

from __future__ import annotations

import pytest

from serve.errors import ConfigError, SessionNotOpen, TooManySessions
from serve.sessions.registry import SessionRegistry
from serve.settings import Settings


def test_defaults() -> None:
    settings = Settings.from_environ({})
    assert settings.session_ttl == 1200.0
    assert settings.max_sessions == 10000
    assert settings.bidirectional_streaming is True
    assert settings.stream_send_timeout == 30.0


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("SERVE_SESSION_TTL_SECONDS", "forever", "positive number"),
        ("SERVE_SESSION_TTL_SECONDS", "-5", "positive number"),
        ("SERVE_MAX_SESSIONS", "0", "positive whole number"),
        ("SERVE_BIDIRECTIONAL_STREAMING", "sometimes", "not a boolean"),
        ("SERVE_STREAM_SEND_TIMEOUT", "0", "positive number"),
    ],
)
def test_bad_values_name_the_variable(variable: str, value: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        Settings.from_environ({variable: value})
    assert variable in caught.value.message and message in caught.value.message


def test_sessions_expire_at_the_time_they_announce() -> None:
    now = [1_700_000_000.0]
    registry = SessionRegistry(ttl=60, max_sessions=2, clock=lambda: now[0])
    first = registry.open("m")
    second = registry.open("m")
    assert first.sequence_id != second.sequence_id
    assert first.expires_header() == f"{first.id}; Expires=2023-11-14T22:14:20Z"
    with pytest.raises(TooManySessions, match="SERVE_MAX_SESSIONS"):
        registry.open("m")
    assert registry.get(first.id) is first
    now[0] += 60
    with pytest.raises(SessionNotOpen, match="expired"):
        registry.get(first.id)
    assert {s.id for s in registry.expired()} == {first.id, second.id}
    assert len(registry) == 0
    with pytest.raises(SessionNotOpen, match=r"\(malformed\)"):
        registry.get("../etc/passwd")


def test_an_unused_session_frees_its_slot_after_its_first_use_deadline() -> None:
    now = [1_700_000_000.0]
    registry = SessionRegistry(ttl=60, max_sessions=2, clock=lambda: now[0], first_use=5)
    used, unused = registry.open("m"), registry.open("m")
    used.started = True
    with pytest.raises(TooManySessions, match="SERVE_SESSION_FIRST_USE_SECONDS"):
        registry.open("m")
    now[0] += 5
    assert registry.ids.held(unused.sequence_id)
    third = registry.open("m")  # the unused one's slot, at once
    assert not registry.ids.held(unused.sequence_id)
    assert registry.get(used.id) is used
    with pytest.raises(SessionNotOpen, match="SERVE_SESSION_FIRST_USE_SECONDS"):
        registry.get(unused.id)
    now[0] += 60
    assert {s.id for s in registry.expired()} == {used.id, third.id}
    assert Settings.from_environ({}).session_first_use == 60.0
