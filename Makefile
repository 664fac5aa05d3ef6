# `make run`: build .venv and run the daemon in the foreground on etc/pylogd.conf (needs root for netlink).
# `make test`: the whole suite (lint, format check, pytest). CI runs it through .ci/run with CI=true.
VENV    ?= .venv
CONF    ?= etc/pylogd.conf
PYTHON  ?= python3
PYTEST_ARGS ?=

.PHONY: run test check lint bench clean

$(VENV)/.base: pyproject.toml
	scripts/ensure-venv $(PYTHON) $(VENV)
	$(VENV)/bin/pip install -q -e .
	touch $@

$(VENV)/.dev: pyproject.toml $(VENV)/.base
	$(VENV)/bin/pip install -q -e '.[dev]'
	touch $@

run: $(VENV)/.base
	mkdir -p /var/log/pylogd
	$(VENV)/bin/pylogd -c $(CONF)

check: $(VENV)/.base
	$(VENV)/bin/pylogd --check -c $(CONF)

lint: $(VENV)/.dev
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test: lint
	$(VENV)/bin/python -m pytest $(PYTEST_ARGS)

bench: $(VENV)/.dev
	$(VENV)/bin/python bench/empty_stack.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache .hypothesis
