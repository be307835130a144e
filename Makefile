# pfx — the two set-up commands are `make serve` and `make test`; both go through `make install`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP_INSTALL := $(PY) -m pip install --quiet --disable-pip-version-check -c constraints.txt
# The stamp is newer than every input once an install has succeeded: `make install` is then a no-op.
STAMP := $(VENV)/.installed
INSTALL_INPUTS := constraints.txt requirements-dev.txt \
	perfusion_format/pyproject.toml runtime/pyproject.toml registry/pyproject.toml client/pyproject.toml

.PHONY: install serve test lint format demo toyworld bench bench-registry bench-cluster cluster clean

install: $(STAMP)

$(STAMP): $(INSTALL_INPUTS)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP_INSTALL) --upgrade pip
	$(PIP_INSTALL) -r requirements-dev.txt \
		-e 'perfusion_format[test]' -e 'runtime[test]' -e 'registry[test]' -e 'client[test]'
	touch $(STAMP)

serve: install
	$(VENV)/bin/pfx-registry serve --data data

test: install
	$(PY) -m pytest -n 2 tests

# The scaled-out shape (deploy/cluster.py, docs/deploy.md): PostgreSQL 15, the S3-protocol server,
# two registry replicas and nginx on http://127.0.0.1:8780, in the foreground; Ctrl-C stops all.
# Needs nginx (Debian: apt-get install -y nginx). CLUSTER_ARGS="--replicas 3 --store folder".
cluster: install
	$(PY) deploy/cluster.py $(CLUSTER_ARGS)

# Registry, tiny pipeline, two concepts signed and pushed to two organizations, search, verified
# pulls and an image with both concepts; offline, in a temporary folder (about a minute).
# `make demo DEMO_ARGS="--serve --port 8700"` keeps its registry (and web catalog) running after.
demo: install
	$(PY) demo/demo.py $(DEMO_ARGS)

# The toy world (bench/toyworld): world, instrument, base models, concepts, measurements with
# replicates and intervals; every stage cached under .toyworld/, so a second run builds only
# what is new. Default: the quick profile, about 50 minutes on 2 cores. The README's tables:
# TOYWORLD_ARGS="--replicates 5 --replication-seeds 2"; longer: "--profile full" or "large".
toyworld: install
	$(PY) -m bench.toyworld.run $(TOYWORLD_ARGS)

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: install
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

bench: install
	$(PY) -m bench.format
	$(PY) -m bench.runtime
	$(PY) -m bench.training
	$(PY) -m bench.client

# Needs wrk, nginx and pypiserver (see bench/registry.py); about 10 minutes.
bench-registry: install
	$(PY) -m bench.registry

# The cluster's download, resolve and fault figures (bench/cluster.py); needs nginx and wrk.
bench-cluster: install
	$(PY) -m bench.cluster

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis
