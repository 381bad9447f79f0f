# Two set-up commands (see README):  `make render`  and  `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
SHA    ?= 4f9c2b1e8d7a6c5b4a3f2e1d0c9b8a7f6e5d4c3b

.PHONY: render install install-test npm controlplane lint test test-unit test-cluster bench bench-tools clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

install: $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .

# The main job with no cluster and no GitHub: print what a preview of PR 123 would apply.
render: install
	$(BIN)/preview-bot render --config examples/.github/preview.yml --repo acme/shop --repo-id 1296269 --pr 123 \
		--sha $(SHA) --domain example.com

install-test: $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[test]' -e './propagation[lint]'

# GitHub's OpenAPI description and real webhook payloads, for the fake GitHub.
npm:
	npm install --silent --no-audit --no-fund --no-package-lock --prefix tests/fakegithub

# etcd, kube-apiserver, scheduler, controller-manager, kwok, istiod and Istio's CRDs (built once, then cached).
controlplane:
	scripts/controlplane binaries

lint: install-test
	$(BIN)/ruff check bot tests bench propagation
	$(BIN)/mypy bot
	$(BIN)/lint-imports --no-cache
	cd propagation && ../$(BIN)/mypy --strict src

test: install-test npm controlplane lint
	$(BIN)/python -m pytest propagation/tests -q
	$(BIN)/python -m pytest tests -q

test-unit: install-test
	$(BIN)/python -m pytest tests/unit -q

# The load generator (wrk, from the distribution) and the peer (Probot, pinned in bench/probot/package.json).
bench-tools:
	command -v wrk >/dev/null || (apt-get update -qq && apt-get install -y -qq wrk)
	npm install --silent --no-audit --no-fund --no-package-lock --prefix bench/probot

bench: install-test npm controlplane bench-tools
	$(BIN)/python -m bench
	$(BIN)/python -m bench.mesh_latency

clean:
	rm -rf $(VENV) tests/fakegithub/node_modules tests/fakegithub/.cache bench/probot/node_modules
