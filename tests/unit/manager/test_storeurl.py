"""Store URLs (decision 1): sqlite:///ABS/PATH, etcd://HOST:PORT[,...][/PREFIX], nothing else."""

from __future__ import annotations

from pathlib import Path

import pytest

from softudc.etcd.cluster import EtcdCluster
from softudc.manager.etcdstore import EtcdStore
from softudc.manager.store import SqliteStore
from softudc.manager.storeurl import StoreURLError, etcd_endpoints, open_store


def test_the_default_is_the_state_dir_s_sqlite(tmp_path: Path) -> None:
    for url in (None, ""):
        s = open_store(url, tmp_path)
        assert isinstance(s, SqliteStore) and s.path == str(tmp_path / "state.db")
        s.close()
    s = open_store(f"sqlite://{tmp_path}/other.db", tmp_path)
    assert isinstance(s, SqliteStore) and s.path == str(tmp_path / "other.db")
    s.close()


def test_etcd_urls() -> None:
    assert etcd_endpoints("etcd://10.0.0.1:2379") == (["http://10.0.0.1:2379"], "/softudc")
    assert etcd_endpoints("etcd://a:1,b.example:2379/x/y/") == (["http://a:1", "http://b.example:2379"], "/x/y")
    assert etcd_endpoints("etcd://[::1]:2379/s") == (["http://[::1]:2379"], "/s")


@pytest.mark.parametrize("url", ["sqlite://relative.db", "sqlite:///", "etcd://", "etcd://host", "etcd://h:0",
                                 "etcd://h:70000", "etcd://h:1,/p", "etcd://h:1/bad prefix", "postgres://x",
                                 "/var/lib/state.db", "etcd://h:1//"])
def test_bad_urls_name_themselves_and_the_forms(url: str, tmp_path: Path) -> None:
    with pytest.raises(StoreURLError) as e:
        open_store(url, tmp_path)
    assert repr(url) in str(e.value) and "sqlite:///ABS/PATH" in str(e.value) and "etcd://HOST:PORT" in str(e.value)


def test_an_etcd_url_opens_a_working_store(etcd_cluster: EtcdCluster, etcd_prefix: str, tmp_path: Path) -> None:
    s = open_store(etcd_cluster.url + etcd_prefix, tmp_path)
    try:
        assert isinstance(s, EtcdStore) and s.prefix == etcd_prefix and s._mirror is not None  # cached
        rev = s.put("farm", "f", {})
        assert s.revision() == rev and s.get("farm", "f") is not None
    finally:
        s.close()
