# make run   installs into .venv if needed, then trains the embedded default (synthetic, CPU).
# make test  installs if needed, then runs ruff and pytest.
# make test-fast  ruff and the tests outside the slow tiers (flow, gunicorn, emulator, image,
#                 browser).
# make screenshots  refreshes docs/screenshots/ from the browser tests (Chromium).
# make serve serves the champion model over REST on $${PORT:-8000}.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Metaflow needs a user name; shells without $$USER (CI, containers) get one.
export METAFLOW_USER ?= $(or $(USER),facet)

.PHONY: install run serve test test-fast screenshots lint format clean

install: $(STAMP)

# Reinstalls only when the dependency files change. constraints.txt pins every package to
# versions tested together; torch==2.13.0 resolves to the CPU wheel on this machine's disk.
$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

run: install
	$(BIN)/python flows/train_flow.py run

# The prediction service under gunicorn; settings in serving/gunicorn.conf.py and the README.
serve: install
	$(BIN)/gunicorn --config serving/gunicorn.conf.py

test: install lint
	$(BIN)/python -m pytest

test-fast: install lint
	$(BIN)/python -m pytest -m "not (flow or gunicorn or emulator or image or browser)"

screenshots: install
	FACET_SCREENSHOTS=docs/screenshots $(BIN)/python -m pytest -m browser

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean:
	rm -rf $(VENV) .metaflow var .pytest_cache .ruff_cache
