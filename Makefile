# Two commands do all the set-up on a fresh machine with Python 3.11 and make:
#   make run    install into .venv and start the broker on 127.0.0.1:5672
#   make test   install into .venv with the test extras and run `trial qha qha_bench`

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.qha-installed
# The checkout is installed editable, and qha-checkout.pth puts it on the
# venv's sys.path as well, so twistd finds twisted/plugins/qha_plugin.py with no
# PYTHONPATH (an editable install imports qha through a finder hook, which
# Twisted's plugin search, a walk over sys.path, does not see).

.PHONY: run test check soak fuzz clean

$(STAMP): setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# The distribution was called "qha" before it became "qha-broker".
	$(BIN)/python -m pip uninstall -q -y qha 2>/dev/null || true
	$(BIN)/python -m pip install -q -e '.[test]'
	echo '$(CURDIR)' > "$$($(BIN)/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/qha-checkout.pth"
	touch $@

run: $(STAMP)
	$(BIN)/twistd -n --pidfile= qha

test: $(STAMP)
	$(BIN)/trial qha qha_bench
	$(BIN)/mypy qha qha_bench

check: test

# The failover soak tests (about a minute each): three brokers, ten SIGKILL
# failovers, promoted by hand, then chosen by etcd (one etcd, --ha-lease-ttl 2);
# and the failover figure through HAProxy (skipped where haproxy is not installed).
soak: $(STAMP)
	QHA_SOAK=1 $(BIN)/trial qha.test.integration.test_soak qha.test.integration.test_soak_coordinated qha.test.integration.test_haproxy.HAProxyFailoverTests.test_failoverFigure

# The long fuzz run (several minutes): the hypothesis fuzz tests of the AMQP
# frames, the replication events and the AMP boxes with the qha-fuzz profile,
# random inputs each run (QHA_FUZZ_EXAMPLES=N for more or fewer).
fuzz: $(STAMP)
	QHA_FUZZ=1 $(BIN)/trial qha.test.test_fuzz_amqp qha.test.test_fuzz_events

clean:
	rm -rf $(VENV) _trial_temp* *.egg-info build dist twisted/plugins/dropin.cache
