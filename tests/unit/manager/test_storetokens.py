"""Tokens in a shared store: made at one manager, good at another; a join token spent once."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from softudc.manager.auth import AuthError, TokenStore
from softudc.manager.storetokens import JOIN, StoreJoinTokens, StoreTokenStore, digest
from softudc.pki import PkiError
from tests.etcd_fixture import StoreBackend


def test_an_api_token_made_at_one_manager_works_at_another(store_backend: StoreBackend) -> None:
    one, other = StoreTokenStore(store_backend.open()), StoreTokenStore(store_backend.open())
    token = one.create("alice", "operator", ["shop"])
    who = other.authenticate(f"Bearer {token}")
    assert (who.name, who.role, who.farms) == ("alice", "operator", ("shop",)) and who.can_write("shop")
    assert token not in str(other.store.objects("apitoken"))  # digests only
    with pytest.raises(AuthError, match="unknown token"):
        other.authenticate("Bearer sudc_nope")
    with pytest.raises(AuthError, match="missing"):
        other.authenticate(None)
    with pytest.raises(ValueError, match="needs the farms"):
        one.create("bob", "viewer")


def test_a_token_file_is_imported(store_backend: StoreBackend, tmp_path: Path) -> None:
    token = TokenStore(tmp_path / "tokens.json").create("admin", "admin")
    tokens = StoreTokenStore(store_backend.open())
    assert tokens.import_file(tmp_path / "tokens.json") == 1 and tokens.import_file(tmp_path / "tokens.json") == 0
    assert tokens.authenticate(f"Bearer {token}").role == "admin"
    assert tokens.import_file(tmp_path / "missing.json") == 0


def test_a_join_token_is_spent_once_by_one_of_two_managers(store_backend: StoreBackend) -> None:
    managers = [StoreJoinTokens(store_backend.open()) for _ in range(2)]
    for _ in range(5):
        token = managers[0].create("h1")
        won: list[str] = []
        lost: list[str] = []

        def redeem(m: StoreJoinTokens, token: str = token, won: list[str] = won, lost: list[str] = lost) -> None:
            try:
                won.append(m.redeem(token))
            except PkiError as e:
                lost.append(str(e))

        threads = [threading.Thread(target=redeem, args=(m,)) for m in managers]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert won == ["h1"] and len(lost) == 1 and "already used" in lost[0]


def test_an_expired_join_token_is_refused_and_dropped(store_backend: StoreBackend) -> None:
    joins = StoreJoinTokens(store_backend.open())
    old = joins.create("h1", ttl=-1)
    stale = joins.create("h2", ttl=-1)
    with pytest.raises(PkiError, match="expired"):
        joins.redeem(old)
    assert joins.store.get(JOIN, digest(stale)) is None  # expired ones go at the next redeem
    assert joins.redeem(joins.create("h3")) == "h3"
