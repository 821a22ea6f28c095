# Two commands do all set-up (see README): `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export RAY_AUTH_MODE := disabled
export RAY_USAGE_STATS_ENABLED := 0
export MLFLOW_DISABLE_TELEMETRY := true

.PHONY: install run test test-fast clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/autosparse run $(ARGS)

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-fast: $(STAMP)
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) autosparse-workspace .pytest_cache

# Local Ray head + MLflow server (see clusters/README.md): `make cluster-up`,
# `make submit ARGS="smoke"` (or ARGS="--no-wait quickstart"), `make cluster-down`.
.PHONY: cluster-up submit cluster-down

cluster-up: $(STAMP)
	scripts/local-cluster-up.sh

submit: $(STAMP)
	scripts/submit.sh $(ARGS)

cluster-down:
	scripts/local-cluster-down.sh
