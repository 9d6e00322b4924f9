# The two commands of the README, and what they build on.
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: bootstrap demo test unit e2e lint clean

bootstrap:
	@VENV=$(VENV) scripts/bootstrap.sh

demo: bootstrap
	$(VENV)/bin/softudc demo

test: bootstrap lint
	$(PY) -m pytest $(PYTEST_ARGS)

unit: bootstrap
	$(PY) -m pytest tests/unit $(PYTEST_ARGS)

e2e: bootstrap
	$(PY) -m pytest tests/e2e $(PYTEST_ARGS)

lint: bootstrap
	$(VENV)/bin/ruff check softudc gatekeeper vnetd tests
	$(VENV)/bin/mypy

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache build *.egg-info
