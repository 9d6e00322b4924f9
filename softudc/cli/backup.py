"""`softudc manager backup FILE` and `softudc manager restore FILE` (wired in cli/manager.py): a
logical backup of the manager's store (softudc/manager/backup.py), from and to SQLite or etcd."""

from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path
from typing import Any

from softudc.atomicfile import write_atomic
from softudc.cli.errors import CliError
from softudc.etcd.client import EtcdError
from softudc.lab.state import default_state_dir
from softudc.manager.backup import BackupError, Counts, backup, restore
from softudc.manager.store import Store
from softudc.manager.storeurl import StoreURLError, open_store

STORE_HELP = ("the store: sqlite:///ABS/PATH/state.db or etcd://HOST:PORT[,HOST:PORT...][/PREFIX] "
              "(default: the state directory's SQLite file)")


def add_backup_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", help="where to write the backup (JSON lines, 0600: it holds every VNET secret)")
    p.add_argument("--store", default=None, metavar="URL", help=STORE_HELP)


def add_restore_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", help="a backup written by `softudc manager backup`")
    p.add_argument("--store", default=None, metavar="URL", help=STORE_HELP)
    p.add_argument("--force", action="store_true",
                   help="restore into a store that is not empty: its objects are replaced by the backup's")


def _store(a: argparse.Namespace) -> Store:
    state_dir = Path(getattr(a, "state_dir", None) or default_state_dir()) / "manager"
    try:
        return open_store(a.store, state_dir, cache=False)  # one pass: no watched copy needed
    except StoreURLError as e:
        raise CliError(str(e)) from None


def _progress(what: str, n: int) -> None:
    print(f"  {n} {what}...", file=sys.stderr, flush=True)


def _summary(counts: Counts) -> str:
    kinds = ", ".join(f"{n} {k}" for k, n in sorted(counts.kinds.items())) or "none"
    return f"{counts.objects} objects ({kinds}), {counts.events} events"


def _run(what: str, a: argparse.Namespace, work: Any) -> Counts:
    store = _store(a)
    try:
        result: Counts = work(store)
    except EtcdError as e:
        raise CliError(f"{what} failed: {e}") from None
    except BackupError as e:
        raise CliError(str(e)) from None
    finally:
        store.close()
    return result


def cmd_backup(a: argparse.Namespace) -> None:
    out = io.BytesIO()
    counts = _run("backup", a, lambda store: backup(store, out, _progress))
    try:
        write_atomic(Path(a.file), out.getvalue())  # 0600 from its first byte; a crash leaves no half file
    except OSError as e:
        raise CliError(f"cannot write the backup to {a.file}: {e}") from None
    print(f"backup of {a.store or 'the state directory store'} in {a.file}: {_summary(counts)}", file=sys.stderr)


def cmd_restore(a: argparse.Namespace) -> None:
    try:
        inp = io.BytesIO(Path(a.file).read_bytes())
    except OSError as e:
        raise CliError(f"cannot read the backup {a.file}: {e}") from None
    counts = _run("restore", a, lambda store: restore(store, inp, a.force, a.file, _progress))
    print(f"restored {a.file} into {a.store or 'the state directory store'}: {_summary(counts)}", file=sys.stderr)
