# make run   installs into .venv if needed, then trains the embedded default (synthetic, CPU).
# make test  installs if needed, then runs ruff and pytest.
# make test-fast  ruff and the tests outside the slow tiers (flow, gunicorn, emulator, image,
#                 browser).
# make screenshots  refreshes docs/screenshots/ from the browser tests (Chromium).
# make serve serves the champion model over REST on $${PORT:-8000}.
# make image  builds the container image facet:latest (Dockerfile) with docker or podman.
# make base-image  builds its base from Debian's packages, where no registry is reachable.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Metaflow needs a user name; shells without $$USER (CI, containers) get one.
export METAFLOW_USER ?= $(or $(USER),facet)

.PHONY: install run serve test test-fast screenshots lint format clean image base-image

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

# The container image. docker when its engine answers (`docker info`), else podman, with the
# project's podman settings (deploy/image/containers.conf) unless CONTAINERS_CONF names others.
# BASE_IMAGE: facet-base:bookworm when `make base-image` made it, else the Dockerfile's
# python:3.11-slim-bookworm. Where pip's configuration names a local wheel folder (find-links:
# this machine's CPU torch), podman mounts it into the build, with the host's CA bundle.
IMAGE ?= facet:latest
ENGINE ?= $(shell docker info >/dev/null 2>&1 && echo docker || echo podman)
LOCAL_BASE := facet-base:bookworm
PODMAN_CONF = $(if $(filter podman,$(ENGINE)),CONTAINERS_CONF=$${CONTAINERS_CONF:-$(CURDIR)/deploy/image/containers.conf})
BASE_IMAGE ?= $(shell $(PODMAN_CONF) $(ENGINE) image inspect $(LOCAL_BASE) >/dev/null 2>&1 && echo $(LOCAL_BASE))
WHEELS ?= $(shell $(PYTHON) -m pip config get global.find-links 2>/dev/null)
CA_BUNDLE ?= $(wildcard /etc/ssl/certs/ca-certificates.crt)
IMAGE_MOUNTS = $(if $(filter podman,$(ENGINE)), \
	$(if $(WHEELS),-v $(WHEELS):/wheels:ro --build-arg FIND_LINKS=/wheels --build-arg TORCH_INDEX_URL=) \
	$(if $(CA_BUNDLE),-v $(CA_BUNDLE):/run/build-ca.crt:ro --build-arg CA_BUNDLE=/run/build-ca.crt))

image:
	$(PODMAN_CONF) $(ENGINE) build -t $(IMAGE) \
		$(if $(BASE_IMAGE),--build-arg BASE_IMAGE=$(BASE_IMAGE)) $(IMAGE_MOUNTS) .

base-image:
	$(PODMAN_CONF) deploy/image/base.sh $(LOCAL_BASE) $(ENGINE)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean:
	rm -rf $(VENV) .metaflow var .pytest_cache .ruff_cache
