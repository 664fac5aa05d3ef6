# `make run`: build .venv and run the daemon in the foreground on etc/pylogd.conf (needs root for netlink).
# `make test`: the whole suite (lint, format check, pytest). CI runs it through .ci/run with CI=true.
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

.PHONY: run test test-deps check lint bench clean install uninstall compiled

$(VENV)/.base: pyproject.toml setup.py pylogd/compiled.py
	scripts/ensure-venv $(PYTHON) $(VENV)
	PYLOGD_NO_EXTENSIONS=1 $(VENV)/bin/pip install -q -e .
	touch $@

$(VENV)/.dev: pyproject.toml $(VENV)/.base
	PYLOGD_NO_EXTENSIONS=1 $(VENV)/bin/pip install -q -e '.[dev]'
	touch $@

# the hot modules compiled in place from their source, again after an edit (cythonize and build_ext
# redo only what changed); without a C compiler pylogd runs as pure Python
compiled: $(VENV)/.base
	$(VENV)/bin/python -c 'import Cython' 2>/dev/null || $(VENV)/bin/pip install -q 'Cython>=3.0' 'setuptools>=77'
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

# twice: the compiled build, then the pure-Python source it is compiled from (the reference)
test: test-deps lint compiled
	$(VENV)/bin/python -m pytest $(PYTEST_ARGS)
	PYLOGD_PURE_PYTHON=1 $(VENV)/bin/python -m pytest $(PYTEST_ARGS)

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
