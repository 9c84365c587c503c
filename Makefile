# Two commands on a fresh machine: `make demo` serves the demo, `make test` runs everything.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | sha1sum | cut -c1-12)
TYPECHECK := build/typecheck

.PHONY: demo demo-cluster test lint typecheck jstest pytest system-packages bench soak clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# The editable build warns that ./aiowt shadows the installed package: it is that package.
	PYTHONWARNINGS='ignore:Editable installation' $(PY) -m pip install --quiet -e '.[dev,prometheus,otel,redis,qh3,websocket]'
	rm -f $(VENV)/.installed-*
	touch $@

JS_CLIENT := clients/js/dist/aiowt-client.js
JS_INSTALLED := clients/js/node_modules/.package-lock.json
CHAT_VENDOR := examples/chat/static/vendor/aiowt-client.js

# The main job: the chat demo (WebTransport on udp 4433, its page on http://localhost:4434).
demo: $(STAMP) $(CHAT_VENDOR)
	$(PY) -m examples.chat

# The chat on two workers sharing a private redis-server (docs/scale.md).
demo-cluster: $(STAMP) $(CHAT_VENDOR) system-packages
	$(PY) -m examples.chat.cluster

# The browser client package (clients/js: TypeScript, its own npm ci and build); the chat
# page loads its browser bundle (msgpack inlined) from static/vendor/.
$(JS_INSTALLED): clients/js/package.json clients/js/package-lock.json
	npm ci --prefix clients/js --no-audit --no-fund
	touch $@

$(JS_CLIENT): $(JS_INSTALLED) $(wildcard clients/js/src/*.ts) clients/js/tsconfig.json
	npm run --prefix clients/js build

$(CHAT_VENDOR): $(JS_CLIENT)
	mkdir -p $(@D)
	cp $< $@

# The client package's own unit tests (node's test runner).
jstest: $(JS_INSTALLED)
	npm test --prefix clients/js

# Debian's Chromium and Redis for the browser and cluster tests (root on CI; skipped where
# apt is absent). Redis is only installed: the tests start their own servers.
SYSTEM_PACKAGES := chromium:chromium redis-server:redis-server
system-packages:
	@missing=""; for pair in $(SYSTEM_PACKAGES); do \
	  command -v $${pair%%:*} >/dev/null 2>&1 || missing="$$missing $${pair##*:}"; done; \
	if [ -n "$$missing" ]; then \
	  if command -v apt-get >/dev/null 2>&1; then \
	    SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	    $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing >/dev/null; \
	  else echo "no apt-get: tests needing$$missing will be skipped"; fi; fi

LINTED := $(wildcard aiowt actors middleware transport tests examples bench)

lint: $(STAMP)
	$(VENV)/bin/ruff check $(LINTED)
	$(VENV)/bin/ruff format --check $(LINTED)

# mypy sees the four folders as the aiowt package through a tree of links.
typecheck: $(STAMP)
	rm -rf $(TYPECHECK) && mkdir -p $(TYPECHECK)/aiowt
	for file in aiowt/*.py aiowt/py.typed; do ln -sfn $(CURDIR)/$$file $(TYPECHECK)/$$file; done
	for pkg in actors middleware transport; do ln -sfn $(CURDIR)/$$pkg $(TYPECHECK)/aiowt/$$pkg; done
	cd $(TYPECHECK) && MYPYPATH=. $(CURDIR)/$(VENV)/bin/mypy --strict --config-file $(CURDIR)/pyproject.toml -p aiowt

# Everything on the default engine (aioquic), then the end-to-end, reliability and server
# suites again on qh3 (docs/engines.md says what differs and what the browsers need), then
# the end-to-end, middleware and server suites with their Python clients over WebSocket
# (docs/websocket.md).
pytest: $(STAMP) system-packages $(CHAT_VENDOR)
	$(PY) -m pytest -q
	AIOWT_ENGINE=qh3 $(PY) -m pytest -q tests/e2e tests/reliability tests/aiowt
	AIOWT_TRANSPORT=websocket $(PY) -m pytest -q tests/e2e tests/middleware tests/aiowt

test: lint typecheck jstest pytest

bench: $(STAMP) system-packages
	$(PY) -m pip install --quiet -e '.[bench]'
	$(PY) -m bench.websocket
	$(PY) -m bench --profile
	$(PY) -m bench.cluster

# The reliability suite with its soak counts (about 20 minutes on 2 cores; docs/reliability.md).
soak: $(STAMP)
	AIOWT_SOAK=1 $(PY) -m pytest -s tests/reliability

clean:
	rm -rf $(VENV) build examples/chat/static/vendor clients/js/node_modules clients/js/dist clients/js/build-test
