"""Console sessions: the token is checked as the API checks it, idle sessions end, the number of
sessions is bounded, CSRF tokens compare exactly."""

from __future__ import annotations

from pathlib import Path

import pytest

from softudc.console import sessions as mod
from softudc.console.sessions import Sessions
from softudc.manager.auth import AuthError, TokenStore


@pytest.fixture
def book(tmp_path: Path) -> tuple[Sessions, str]:
    tokens = TokenStore(tmp_path / "tokens.json")
    return Sessions(tokens), tokens.create("admin", "admin")


def test_login_lookup_logout(book: tuple[Sessions, str]) -> None:
    s, token = book
    session, who = s.login(f"  {token}\n")  # pasted with blanks
    assert who.role == "admin" and token not in session.sid
    found = s.lookup(session.sid)
    assert found is not None and found[1] == who
    assert s.lookup("nope") is None and s.lookup(None) is None
    s.logout(session.sid)
    assert s.lookup(session.sid) is None and not s.alive(session.sid)
    with pytest.raises(AuthError):
        s.login("sudc_wrong")


def test_idle_sessions_end(book: tuple[Sessions, str], monkeypatch: pytest.MonkeyPatch) -> None:
    s, token = book
    session, _ = s.login(token)
    session.used -= mod.IDLE_S + 1
    assert s.lookup(session.sid) is None


def test_sessions_are_bounded(book: tuple[Sessions, str], monkeypatch: pytest.MonkeyPatch) -> None:
    s, token = book
    monkeypatch.setattr(mod, "MAX_SESSIONS", 3)
    first = s.login(token)[0]
    for _ in range(3):
        s.login(token)
    assert not s.alive(first.sid)  # the least recently used went
    assert len(s._by_id) == 3


def test_csrf_compares_exactly(book: tuple[Sessions, str]) -> None:
    s, token = book
    session, _ = s.login(token)
    assert Sessions.csrf_ok(session, session.csrf)
    assert not Sessions.csrf_ok(session, None) and not Sessions.csrf_ok(session, session.csrf[:-1])
