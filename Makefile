# Petals Chat. The two commands a newcomer needs: `make run` and `make test`.
# Every target installs what it needs first, and only what is missing.

SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
HOST ?= 127.0.0.1
PORT ?= 5000
EMBEDDED := models/SmolLM2-135M-Instruct/.verified
FRONTEND_SOURCES := $(shell find frontend/src frontend/index.html frontend/vite.config.ts frontend/public -type f 2>/dev/null)

export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: install run dev test lint bench bench-quick bench-latency bench-openai model frontend screenshots clean

## install: Python venv with the pinned set, the web app's bundle, the embedded model
install: $(VENV)/.installed frontend/dist/index.html $(EMBEDDED)

$(VENV)/.installed: requirements.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --no-deps -r requirements.txt
	$(PY) -c "import backend.compat as c; c.import_petals(); import quart, hypercorn, gguf"
	@touch $@

frontend/node_modules/.package-lock.json: frontend/package-lock.json
	cd frontend && npm ci --no-audit --no-fund

frontend/dist/index.html: frontend/node_modules/.package-lock.json $(FRONTEND_SOURCES)
	cd frontend && npm run build

frontend: frontend/dist/index.html

## model: download and convert the embedded model (SmolLM2-135M-Instruct) into models/
model: $(EMBEDDED)

$(EMBEDDED): | $(VENV)/.installed
	$(PY) -m backend model prepare

## run: the app on http://$(HOST):$(PORT), with its own local Petals swarm unless PETALS_CHAT_INITIAL_PEERS is set
run: install
	PETALS_CHAT_HOST=$(HOST) PETALS_CHAT_PORT=$(PORT) exec $(PY) -m backend

## dev: the backend plus Vite's dev server with hot reload (proxies /api to the backend)
dev: install
	@trap 'kill 0' EXIT; \
	PETALS_CHAT_HOST=$(HOST) PETALS_CHAT_PORT=$(PORT) $(PY) -m backend & \
	cd frontend && BACKEND_URL=http://$(HOST):$(PORT) npm run dev

## test: the whole suite (Python unit + integration on a real local swarm, Vitest, browser end-to-end)
test: install
	$(PY) -m pytest

lint: $(VENV)/.installed frontend/node_modules/.package-lock.json
	$(PY) -m ruff check backend tests bench
	cd frontend && npm run check

## bench: the benchmarks on the embedded model (whole stack; stock vs batched server); results in bench/results, charts and README tables
bench: install
	$(PY) -m bench
	$(PY) -m bench.batching

bench-quick: install
	$(PY) -m bench --tiny --quick

## bench-openai: the OpenAI API on the embedded model: 50 JSON schemas, prompt reuse over 10 turns, constrained decoding speed (~10 minutes)
bench-openai: install
	$(PY) -m bench.openai_api

## bench-latency: TTFT and tokens/s with 0-100 ms RTT between hosts, blocks on 1-3 hosts (root + ip netns; ~8 minutes)
bench-latency: install
	$(PY) -m bench.latency

## screenshots: README pictures of the app answering with the embedded model (needs Chromium)
screenshots: install
	@PETALS_CHAT_PORT=5099 $(PY) -m backend > /tmp/petals-chat-screenshots.log 2>&1 & pid=$$!; \
	trap 'kill -INT $$pid; wait $$pid' EXIT; \
	for i in $$(seq 120); do curl -sf http://127.0.0.1:5099/healthz >/dev/null && break; sleep 1; done; \
	cd frontend && BASE_URL=http://127.0.0.1:5099 node scripts/screenshots.mjs

clean:
	rm -rf $(VENV) frontend/node_modules frontend/dist .pytest_cache
