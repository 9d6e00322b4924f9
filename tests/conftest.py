"""Test-suite wide settings."""

import pytest
from hypothesis import settings

# The machines are shared and noisy: a slow example is not a failure. Fuzzing depth comes from
# max_examples, not from racing a deadline.
settings.register_profile("softudc", deadline=None, max_examples=300)
settings.load_profile("softudc")

# A real etcd for the store's tests on both backends (issue 11).
pytest_plugins = ["tests.etcd_fixture"]


# End-to-end modules with guests, a manager or an etcd cluster (by their markers): one worker runs
# them one after the other; the network-only ones (namespaces and daemons) go on another.
HEAVY = {"vm", "images", "console", "metrics", "manager", "balance", "fencing", "power", "volumes", "ha"}


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """For `make test` (pytest-xdist, --dist loadgroup): the end-to-end tests run in two groups,
    each on one worker, one module after the other as without xdist (labs are module-scoped):
    those with guests, and the network-only ones; the unit tests go module by module to whichever
    worker is free. The e2e tests mostly wait on guests, so the rest takes the time they leave.
    Run without -n, nothing changes."""
    for item in items:
        module = item.nodeid.split("::", 1)[0]
        if module.startswith("tests/e2e/"):
            group = "e2e-guests" if HEAVY & {m.name for m in item.iter_markers()} else "e2e-net"
        else:
            group = module
        item.add_marker(pytest.mark.xdist_group(group))
