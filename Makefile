# `make run`: build .venv and run the daemon in the foreground on etc/pylogd.conf (needs root for netlink).
# `make test`: the whole suite (lint, format check, pytest on the compiled build and on the Python source, the
#   oldest allowed dependencies: build tools, drivers, test tools). CI runs it through .ci/run with CI=true.
# `make install`: pylogd in its own virtual environment (PREFIX), the systemd unit, /etc/pylogd.conf unless
#   one exists, logrotate, the service user; DESTDIR stages it all elsewhere (packaging, tests).
# `make uninstall`: removes what install added; logs, state and /etc/pylogd.conf stay.
VENV    ?= .venv
CONF    ?= etc/pylogd.conf
PYTHON  ?= python3
PYTEST_ARGS ?=

PREFIX  ?= /opt/pylogd
SBINDIR ?= /usr/sbin
UNITDIR ?= /lib/systemd/system
SYSUSERSDIR ?= /usr/lib/sysusers.d
SYSCONFDIR ?= /etc
MANDIR  ?= /usr/share/man
DESTDIR ?=
# the system's interpreter: a service outlives any per-user Python
INSTALL_PYTHON ?= $(firstword $(wildcard /usr/bin/python3) python3)

.PHONY: run test test-deps check lint bench clean install uninstall compiled test-build-oldest

# The build dependencies at one end of the range pyproject.toml's [build-system] requires (">" the oldest, "<"
# the newest), as pins for pip: CI builds with both ends, and nothing outside them is built with
build_pins = $(shell $(PYTHON) -c 'import re, tomllib; \
	requires = tomllib.load(open("pyproject.toml", "rb"))["build-system"]["requires"]; \
	print(" ".join(re.sub(r"^([\w.-]+).*$(1)=([^,]+).*$$", r"\1==\2", r) for r in requires))')

$(VENV)/.base: pyproject.toml setup.py pylogd/compiled.py
	scripts/ensure-venv $(PYTHON) $(VENV)
	PYLOGD_NO_EXTENSIONS=1 $(VENV)/bin/pip install -q -e .
	touch $@

$(VENV)/.dev: pyproject.toml $(VENV)/.base
	PYLOGD_NO_EXTENSIONS=1 $(VENV)/bin/pip install -q -e '.[dev]'
	touch $@

# the hot modules compiled in place from their source, again after an edit (cythonize and build_ext
# redo only what changed), with the newest build dependencies allowed; without a C compiler pylogd runs as
# pure Python
compiled: $(VENV)/.base
	@echo "compiling pylogd's hot modules with Cython: a few minutes the first time, then only what changed"
	$(VENV)/bin/pip install -q $(call build_pins,<)
	$(VENV)/bin/python setup.py -q build_ext --inplace

run: $(VENV)/.base compiled
	mkdir -p /var/log/pylogd
	$(VENV)/bin/pylogd -c $(CONF)

check: $(VENV)/.base
	$(VENV)/bin/pylogd --check -c $(CONF)

lint: $(VENV)/.dev
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test-deps:
	scripts/test-deps

# not $(MAKE) in the recipe: `make -n test` would run that line, the whole suite with it, instead of showing it
SUBMAKE = $(MAKE) --no-print-directory

# the suite twice, the compiled build then the pure-Python source it is compiled from (the reference), and
# the build with the oldest dependencies allowed: each runs whatever the one before it found, each result is
# reported, and any failure fails the whole
test: test-deps lint compiled
	@compiled=passed pure=passed oldest=passed; \
	echo "make test: the suite on the compiled build"; \
	$(VENV)/bin/python -m pytest $(PYTEST_ARGS) || compiled=FAILED; \
	echo "make test: the suite on the pure-Python source (PYLOGD_PURE_PYTHON=1)"; \
	PYLOGD_PURE_PYTHON=1 $(VENV)/bin/python -m pytest $(PYTEST_ARGS) || pure=FAILED; \
	echo "make test: the build with the oldest dependencies allowed (make test-build-oldest)"; \
	$(SUBMAKE) test-build-oldest || oldest=FAILED; \
	echo "make test: compiled build $$compiled; pure-Python build $$pure; oldest allowed dependencies $$oldest"; \
	[ $$compiled$$pure$$oldest = passedpassedpassed ]

# The oldest version of every other dependency pyproject.toml's [project] allows (the ">=" end of the runtime one,
# the extras' and the test tools'; ruff, pinned to one version, and the build dependencies left to build_pins), as
# pins for pip; systemd-python only where it builds (libsystemd-dev, which scripts/test-deps installs)
oldest_dependency_pins = $(shell $(PYTHON) -c 'import re, shutil, subprocess, tomllib; \
	toml = tomllib.load(open("pyproject.toml", "rb")); project = toml["project"]; \
	name = lambda r: re.match(r"[\w.-]+", r).group().lower(); \
	build = {name(r) for r in toml["build-system"]["requires"]}; \
	systemd = bool(shutil.which("pkg-config")) and subprocess.run(["pkg-config", "--exists", "libsystemd"]).returncode == 0; \
	requires = project["dependencies"] + sum(project["optional-dependencies"].values(), []); \
	pins = {re.sub(r"^([\w.\[\]-]+).*>=([^,]+).*$$", r"\1==\2", r) for r in requires \
		if ">=" in r and name(r) not in build and (systemd or name(r) != "systemd-python")}; \
	print(" ".join(sorted(f"\x27{p}\x27" for p in pins)))')

# Quick tests (seconds each) of what the oldest runtime and test dependencies do: the PGSQL and MYSQL outputs against
# the real PostgreSQL and MariaDB (psycopg, PyMySQL), YAML configs (PyYAML), sd_notify (systemd-python), BASE and
# the conntrack decoder against scapy and pyroute2 (pytest and hypothesis run them all)
OLDEST_TESTS = tests/test_config_errors.py tests/test_config_stack.py tests/test_notify.py \
	tests/test_base.py tests/test_nfct_decode.py tests/test_ifindex.py::test_parse_links_reads_what_pyroute2_encodes \
	$(addprefix tests/test_pgsql.py::test_,shipped_schema_takes_packets_through_insert_packet_full \
		connstring_replaces_db_host_and_user flat_schema_takes_rows_through_insert \
		a_refused_row_is_set_aside_and_the_rows_behind_it_written a_cut_off_commit_is_settled_by_its_transaction_id \
		every_procedure_form_writes_the_rows sighup_reconnects_and_the_password_comes_from_a_file \
		a_function_takes_a_batch_in_one_statement_in_order_and_refuses_only_its_bad_rows) \
	$(addprefix tests/test_mysql.py::test_,shipped_schema_takes_packets_through_insert_packet_full \
		flat_schema_takes_rows_through_insert a_refused_row_is_set_aside_and_the_rows_behind_it_written \
		a_cut_off_commit_is_settled_by_xa_recover every_procedure_form_writes_the_rows \
		text_is_written_as_the_driver_escapes_it sighup_reconnects)

# The oldest dependencies allowed, in a venv and a copy of the tree of their own under build/ (.venv keeps the
# newest): every hot module compiles with the oldest build dependencies and loads (tests/test_compiled.py), the
# default config checks, and OLDEST_TESTS pass with the oldest runtime and test dependencies.
# Kept between runs, so that only what changed is compiled again.
OLDEST ?= build/oldest
OLDEST_VENV = $(abspath $(OLDEST))/venv
test-build-oldest:
	scripts/ensure-venv $(PYTHON) $(OLDEST_VENV)
	$(OLDEST_VENV)/bin/pip install -q $(call build_pins,>) $(oldest_dependency_pins)
	mkdir -p $(OLDEST)/src
	tar -c --exclude=./.git --exclude=./.venv --exclude=./build --exclude='*.so' --exclude=__pycache__ \
		--exclude='*.egg-info' --exclude='./.*cache' --exclude=./.hypothesis --exclude=./var . | tar -x -C $(OLDEST)/src
	cd $(OLDEST)/src && PYLOGD_NO_EXTENSIONS=1 $(OLDEST_VENV)/bin/pip install -q --no-build-isolation -e .
	cd $(OLDEST)/src && $(OLDEST_VENV)/bin/python setup.py -q build_ext --inplace
	cd $(OLDEST)/src && $(OLDEST_VENV)/bin/python -m pytest -q tests/test_compiled.py $(OLDEST_TESTS)
	cd $(OLDEST)/src && $(OLDEST_VENV)/bin/pylogd --check -c etc/pylogd.conf >/dev/null

bench: $(VENV)/.dev
	$(VENV)/bin/python bench/empty_stack.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache .hypothesis
	find pylogd plugins -name '*.so' -delete

install:
	scripts/ensure-venv $(INSTALL_PYTHON) $(DESTDIR)$(PREFIX)
	$(DESTDIR)$(PREFIX)/bin/pip install -q '.[pgsql,mysql]'
	# sd_notify through systemd-python where it builds (libsystemd-dev); pylogd falls back to a plain socket
	-pkg-config --exists libsystemd && $(DESTDIR)$(PREFIX)/bin/pip install -q '.[systemd]'
	# the environment was made where DESTDIR puts it: its scripts must name where it will run
	grep -rlI -- '$(DESTDIR)$(PREFIX)' $(DESTDIR)$(PREFIX)/bin $(DESTDIR)$(PREFIX)/pyvenv.cfg 2>/dev/null \
		| xargs -r sed -i 's#$(DESTDIR)$(PREFIX)#$(PREFIX)#g'
	install -d $(DESTDIR)$(SBINDIR) $(DESTDIR)$(UNITDIR) $(DESTDIR)$(SYSUSERSDIR) $(DESTDIR)$(SYSCONFDIR)/logrotate.d
	ln -sfn $(PREFIX)/bin/pylogd $(DESTDIR)$(SBINDIR)/pylogd
	sed 's#@SBINDIR@#$(SBINDIR)#g' systemd/pylogd.service > $(DESTDIR)$(UNITDIR)/pylogd.service
	install -m 0644 systemd/pylogd.sysusers $(DESTDIR)$(SYSUSERSDIR)/pylogd.conf
	# man pages made from the installed command line and plugin specs (-P: not from the source tree)
	$(DESTDIR)$(PREFIX)/bin/python -P -m pylogd.manpage $(DESTDIR)$(MANDIR) >/dev/null
	install -m 0644 etc/logrotate.d/pylogd $(DESTDIR)$(SYSCONFDIR)/logrotate.d/pylogd
	[ -e $(DESTDIR)$(SYSCONFDIR)/pylogd.conf ] || install -m 0644 etc/pylogd.conf $(DESTDIR)$(SYSCONFDIR)/pylogd.conf
	# the service user, on a real install only
	if [ -z "$(DESTDIR)" ]; then \
		if command -v systemd-sysusers >/dev/null; then systemd-sysusers $(SYSUSERSDIR)/pylogd.conf; \
		elif ! getent passwd pylogd >/dev/null; then \
			useradd --system --home-dir /var/lib/pylogd --no-create-home --shell /usr/sbin/nologin pylogd; fi; \
		if [ -d /run/systemd/system ]; then systemctl daemon-reload; fi; \
	fi

uninstall:
	if [ -z "$(DESTDIR)" ] && [ -d /run/systemd/system ]; then systemctl disable --now pylogd.service || true; fi
	rm -rf $(DESTDIR)$(PREFIX)
	rm -f $(DESTDIR)$(SBINDIR)/pylogd $(DESTDIR)$(UNITDIR)/pylogd.service $(DESTDIR)$(SYSUSERSDIR)/pylogd.conf \
		$(DESTDIR)$(SYSCONFDIR)/logrotate.d/pylogd $(DESTDIR)$(MANDIR)/man8/pylogd.8 $(DESTDIR)$(MANDIR)/man5/pylogd.conf.5
	if [ -z "$(DESTDIR)" ] && [ -d /run/systemd/system ]; then systemctl daemon-reload; fi
