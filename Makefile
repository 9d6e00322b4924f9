# The two commands of the README, and what they build on.
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=
TEST_WORKERS ?= 2

GUEST_DIR ?= build/guest

.PHONY: bootstrap guest demo test unit e2e lint clean

bootstrap:
	@VENV=$(VENV) scripts/bootstrap.sh
	@scripts/build-bpf.sh
	@scripts/build-native.sh

# The test guest (Debian cloud kernel + busybox initramfs), cached in $(GUEST_DIR).
guest: bootstrap
	@scripts/build-guest.sh $(GUEST_DIR)

demo: bootstrap guest
	$(VENV)/bin/softudc demo

test: bootstrap guest lint
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadgroup $(PYTEST_ARGS)

unit: bootstrap
	$(PY) -m pytest tests/unit $(PYTEST_ARGS)

e2e: bootstrap guest
	$(PY) -m pytest tests/e2e $(PYTEST_ARGS)

lint: bootstrap
	$(VENV)/bin/ruff check softudc gatekeeper vnetd tests
	$(VENV)/bin/mypy

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache build *.egg-info
