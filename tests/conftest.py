"""Test-suite wide settings."""

from hypothesis import settings

# The machines are shared and noisy: a slow example is not a failure. Fuzzing depth comes from
# max_examples, not from racing a deadline.
settings.register_profile("softudc", deadline=None, max_examples=300)
settings.load_profile("softudc")

# A real etcd for the store's tests on both backends (issue 11).
pytest_plugins = ["tests.etcd_fixture"]
