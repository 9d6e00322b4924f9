"""Test-suite wide settings."""

import pytest
from hypothesis import settings

# The machines are shared and noisy: a slow example is not a failure. Fuzzing depth comes from
# max_examples, not from racing a deadline.
settings.register_profile("softudc", deadline=None, max_examples=300)
settings.load_profile("softudc")

# A real etcd for the store's tests on both backends (issue 11).
pytest_plugins = ["tests.etcd_fixture"]


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """For `make test` (pytest-xdist, --dist loadgroup): every end-to-end test runs on one worker,
    one module after the other as without xdist (labs are heavy, and module-scoped), while the
    unit tests go module by module to whichever worker is free. The e2e tests mostly wait on
    guests, so the unit tests take the time they leave; run alone (no -n), nothing changes."""
    for item in items:
        module = item.nodeid.split("::", 1)[0]
        group = "e2e" if module.startswith("tests/e2e/") else module
        item.add_marker(pytest.mark.xdist_group(group))
