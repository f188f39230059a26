# topup-gateway: `make run` (the whole system on embedded defaults) and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run reset topupctl test test-unit test-integration bench soak lint clean

$(STAMP): setup.cfg pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -e '.[test]'
	@touch $(STAMP)

venv: $(STAMP)

run: $(STAMP)
	$(BIN)/python -m topupctl.devrun

# make run keeps its ledger, Redis data and demo account under var/: start afresh
reset:
	@test ! -f var/run.env || { echo "make reset: make run is up; stop it first"; exit 1; }
	rm -rf var

# topupctl against what make run started, from this directory: make topupctl ARGS="queues"
topupctl: $(STAMP)
	@test -f var/run.env || { echo "make topupctl: make run is not up"; exit 1; }
	@set -a && . ./var/run.env && set +a && $(BIN)/topupctl $(ARGS)

test: $(STAMP)
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

test-unit: $(STAMP)
	$(BIN)/python -m pytest -q tests/unit $(PYTEST_ARGS)

test-integration: $(STAMP)
	$(BIN)/python -m pytest -q tests/integration $(PYTEST_ARGS)

LINT_STAMP := $(VENV)/.installed-lint

$(LINT_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[lint]'
	@touch $(LINT_STAMP)

# flake8 over every package, the tests and the benchmark (settings in setup.cfg)
lint: $(LINT_STAMP)
	$(BIN)/python -m flake8 app workers ledger daraja simulator settings telemetry topupctl bootstrap bench soak tests

# The benchmark: real Redis, PostgreSQL and the simulator on this machine, the gateway against
# its performance floors; writes bench/report.md and bench/report.json (under 10 minutes;
# QUICK=1 under 3). Load comes from wrk (installed with apt-get when missing and root), else
# from a Python generator. It needs nothing beyond the gateway's own dependencies.
bench: $(STAMP)
	@command -v wrk >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 \
	  && DEBIAN_FRONTEND=noninteractive apt-get install -y -q wrk >/dev/null 2>&1; } \
	  || echo "make bench: wrk is not installed; the Python load generator stands in"
	$(BIN)/python -m bench $(if $(QUICK),--quick)

clean:
	rm -rf $(VENV) var .pytest_cache

# The seeded soak (soak/): N top-ups with outcomes, callback behaviours and faults drawn from
# SEED (random when not given; printed first), against real Redis, PostgreSQL and the
# simulator, then the invariants. FAULTS (default one per 300 top-ups, at least 4) and RATE
# (top-ups a second, default 10) may be given too. Logs go to var/soak/.
soak: $(STAMP)
	$(BIN)/python -m soak $(if $(SEED),--seed $(SEED)) $(if $(N),--n $(N)) \
	  $(if $(FAULTS),--faults $(FAULTS)) $(if $(RATE),--rate $(RATE))
