# The two commands a newcomer needs: `make run` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
RUNDIR ?= $(CURDIR)/run

.PHONY: venv install run test test-all test-slow bench lint deb clean system-deps hook

# Progress goes to stderr, so that `make bench` prints nothing but its JSON on stdout even on a fresh clone.
$(STAMP): pyproject.toml client/pyproject.toml
	@echo "creating $(VENV) and installing sdd and sdd-client" >&2
	@$(PYTHON) -m venv $(VENV) >&2
	@$(PY) -m pip install -q --upgrade pip >&2
	@$(PY) -m pip install -q -e ./client[notifier] -e '.[test,dev,fleet,yara]' >&2
	@touch $(STAMP)

venv install: $(STAMP)

# The ClamAV VirusEvent hook (hook/sdd-virusevent.c), a small C program: clamd waits for it on every
# detection. CFLAGS/LDFLAGS from the environment (dpkg-buildflags in the Debian build) come last.
CC          ?= cc
HOOK        := build/sdd-virusevent
HOOK_CFLAGS := -std=c11 -O2 -Wall -Wextra -D_FORTIFY_SOURCE=2 -fstack-protector-strong -fPIE
HOOK_LDFLAGS := -pie -Wl,-z,relro,-z,now

hook: $(HOOK)

$(HOOK): hook/sdd-virusevent.c
	@mkdir -p $(dir $@)
	$(CC) $(CPPFLAGS) $(HOOK_CFLAGS) $(CFLAGS) -o $@ $< $(HOOK_LDFLAGS) $(LDFLAGS)

# Debian packages the tests use (ClamAV, dbus-daemon, systemd-analyze); only when root, else tests skip.
system-deps:
	@bash tests/system-deps.sh

# Runs the daemon in user mode on the shipped templates, with its state under ./run. A daemon already
# answering there is left alone (one line says so, as `systemctl start` of a running unit does nothing).
run: $(STAMP)
	@if $(VENV)/bin/sddctl --socket $(RUNDIR)/sdd.sock --timeout 5 status >/dev/null 2>&1; then \
	    echo "sdd is already running on $(RUNDIR)/sdd.sock (stop it with Ctrl-C in its terminal)"; exit 0; fi; \
	mkdir -p $(RUNDIR)/spool $(RUNDIR)/state $(RUNDIR)/workflows $(RUNDIR)/scripts $(RUNDIR)/files; \
	sed -e 's|@RUNDIR@|$(RUNDIR)|g' -e 's|@TEMPLATES@|$(CURDIR)/templates|g' examples/user.toml > $(RUNDIR)/sdd.toml; \
	echo "$(VENV)/bin/sdd --user --config $(RUNDIR)/sdd.toml"; \
	exec $(VENV)/bin/sdd --user --config $(RUNDIR)/sdd.toml

test: $(STAMP) system-deps hook
	$(VENV)/bin/pytest -q -m "not slow"

# The slow end-to-end tests (Debian package build and install); .ci/run runs these too.
test-slow: $(STAMP) system-deps
	$(VENV)/bin/pytest -q -m slow

bench: $(STAMP)
	@$(PY) -m bench

lint: $(STAMP)
	$(VENV)/bin/ruff check sdd client bench tests
	$(VENV)/bin/mypy sdd client/sdd_client

deb:
	bash packaging/build-deb.sh

clean:
	rm -rf $(VENV) build dist *.egg-info client/*.egg-info debian-build
