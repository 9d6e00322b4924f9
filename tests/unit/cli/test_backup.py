"""`softudc manager backup|restore` as H2 wires them: the command functions with a Namespace."""

from __future__ import annotations

import argparse
import json
import stat
from pathlib import Path

import pytest

from softudc.cli.backup import add_backup_arguments, add_restore_arguments, cmd_backup, cmd_restore
from softudc.cli.errors import CliError
from softudc.etcd.cluster import EtcdCluster, free_port
from softudc.manager.storeurl import open_store


def parse(add: object, argv: list[str], state_dir: Path) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    add(p)  # type: ignore[operator]
    a = p.parse_args(argv)
    a.state_dir = str(state_dir)
    return a


def test_backup_of_the_default_store_restores_into_etcd(tmp_path: Path, etcd_cluster: EtcdCluster,
                                                        etcd_prefix: str, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "manager").mkdir()
    s = open_store(None, tmp_path / "manager")
    s.put("farm", "shop", {"x": 1})
    s.set_status("farm", "shop", {"secret": "k"})
    s.close()
    out = tmp_path / "b.jsonl"
    cmd_backup(parse(add_backup_arguments, [str(out)], tmp_path))
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    assert json.loads(out.read_text().splitlines()[1])["object"]["status"] == {"secret": "k"}
    assert "1 objects (1 farm), 0 events" in capsys.readouterr().err
    url = etcd_cluster.url + etcd_prefix
    cmd_restore(parse(add_restore_arguments, [str(out), "--store", url], tmp_path))
    etcd = open_store(url, tmp_path)
    try:
        assert etcd.get("farm", "shop").status == {"secret": "k"}  # type: ignore[union-attr]
    finally:
        etcd.close()
    with pytest.raises(CliError, match="--force"):
        cmd_restore(parse(add_restore_arguments, [str(out), "--store", url], tmp_path))
    cmd_restore(parse(add_restore_arguments, [str(out), "--store", url, "--force"], tmp_path))


def test_errors_say_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(CliError, match="etcd://HOST:PORT"):
        cmd_backup(parse(add_backup_arguments, [str(tmp_path / "b"), "--store", "mysql://x"], tmp_path))
    with pytest.raises(CliError, match="cannot read the backup"):
        cmd_restore(parse(add_restore_arguments, [str(tmp_path / "missing")], tmp_path))
    dead = f"etcd://127.0.0.1:{free_port()}"
    with pytest.raises(CliError, match=r"backup failed: no etcd endpoint answered.*etcdctl"):
        cmd_backup(parse(add_backup_arguments, [str(tmp_path / "b"), "--store", dead], tmp_path))
    assert not (tmp_path / "b").exists()
    (tmp_path / "bad").write_text("nope\n")
    with pytest.raises(CliError, match="line 1: not JSON"):
        cmd_restore(parse(add_restore_arguments, [str(tmp_path / "bad"), "--store", dead], tmp_path))
