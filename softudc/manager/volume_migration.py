"""Migrating a VM whose volumes are `local` (issue 13 item 5): a local volume is a qcow2 file on
the VM's host, so a migration either copies it along (libvirt's non-shared-disk migration: the
volume's `migrate: copy`, live migrations only) or is refused, by default, naming the volume and
what to do. A cold move (stop here, start there) would start the VM with an empty volume: refused
for every local volume. Network volumes (remote, mirrored) are reached from anywhere and never
stand in the way (their storage hosts admit the destination first: softudc/manager/desired.py).

`refusal` is pure; the migration workflow (softudc/manager/moves.py `_admit`) raises its answer
as a 409 before anything moves.
"""

from __future__ import annotations

from softudc.model.farm import VmDef


def refusal(instance: str, vm: VmDef, host: str, live: bool) -> str | None:
    """Why `instance` (of `vm`, on `host`) may not migrate for its local volumes, or None."""
    for vol in vm.volumes:
        if vol.cls != "local" or (live and vol.migrate == "copy"):
            continue
        what = "a live migration" if live else "a cold move (stopped here, started there)"
        fix = ("set `migrate: copy` on the volume to copy it along with a live migration, make it "
               "`class: remote`" if live else "use `migration: {policy: live}` with `migrate: copy` on the volume, "
               "or make it `class: remote`")
        return (f"{instance}: its volume {vol.name} is local (a file on {host}): {what} would leave its data "
                f"behind; {fix}")
    return None


def copied(vm: VmDef) -> list[str]:
    """The local volumes a live migration of `vm` copies along (their names)."""
    return [v.name for v in vm.volumes if v.cls == "local" and v.migrate == "copy"]
