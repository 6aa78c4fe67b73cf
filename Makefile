# iotprov — build, run and test. `make run` brings up the local stack; `make test` runs
# every test. Both install what they need first (see `deps`).

GO        ?= go
BIN       := bin
TOOLS     := .tools
AZURITE   := $(TOOLS)/node_modules/.bin/azurite
AZURITE_VERSION := 3.35.0
GOFLAGS_BUILD := -trimpath -ldflags="-s -w"
FUZZTIME  ?= 20s

.PHONY: all build deps run test test-short fuzz vet package deploy clean

all: build

build:
	$(GO) build $(GOFLAGS_BUILD) -o $(BIN)/handler ./handler
	$(GO) build $(GOFLAGS_BUILD) -o $(BIN)/dpsemu ./cmd/dpsemu
	$(GO) build $(GOFLAGS_BUILD) -o $(BIN)/iotprov ./cmd/iotprov
	$(GO) build $(GOFLAGS_BUILD) -o $(BIN)/devstack ./cmd/devstack

# Azurite goes into a local tools folder (pinned: later versions need Node >= 22).
# mosquitto and jq come from Debian; installed here when we are root, else we say how.
deps: $(AZURITE)
	@missing=""; \
	for c in mosquitto mosquitto_pub jq; do command -v $$c >/dev/null 2>&1 || missing="$$missing $$c"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing mosquitto mosquitto-clients jq (missing:$$missing)"; \
	    DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mosquitto mosquitto-clients jq >/dev/null; \
	  else \
	    echo "missing:$$missing — install with: sudo apt-get install -y mosquitto mosquitto-clients jq"; \
	  fi; \
	fi

$(AZURITE):
	npm install --prefix $(TOOLS) --no-audit --no-fund --loglevel=error azurite@$(AZURITE_VERSION)

# The local stack in the foreground; Ctrl-C stops it. DPSEMU_* variables reach the emulator.
run: deps build
	$(BIN)/devstack -bin $(BIN) -azurite $(AZURITE)

vet:
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { gofmt -l $$(git ls-files '*.go'); echo "gofmt needed"; exit 1; }
	$(GO) vet ./...

# Unit, integration (real Azurite) and end-to-end tests (the whole stack + mosquitto).
test: deps vet
	AZURITE_BIN=$(CURDIR)/$(AZURITE) $(GO) test -count=1 -timeout 25m ./...

# Unit tests only: nothing external is started.
test-short:
	$(GO) test -short -count=1 ./...

# Run every fuzz target for FUZZTIME each.
fuzz:
	@for pkg in $$($(GO) list ./...); do \
	  for f in $$($(GO) test -list '^Fuzz' $$pkg 2>/dev/null | grep '^Fuzz'); do \
	    echo "== $$pkg $$f"; $(GO) test -run '^$$' -fuzz "^$$f$$" -fuzztime $(FUZZTIME) $$pkg || exit 1; \
	  done; \
	done

# dist/: what the Functions host runs (func start / func azure functionapp publish).
# DIST may name another folder (test/packaging builds into a temporary one).
DIST ?= dist
package:
	rm -rf $(DIST) && mkdir -p $(DIST)
	GOOS=linux GOARCH=amd64 CGO_ENABLED=0 $(GO) build $(GOFLAGS_BUILD) -o $(DIST)/handler ./handler
	cp host.json $(DIST)/
	cp -r functions/* $(DIST)/

# Publish dist/ to an existing Function App (infra/main.bicep's functionAppName output):
# make deploy APP=func-iotprov-xxxx. Needs the Azure Functions Core Tools and az login.
deploy:
	@test -n "$(APP)" || { echo "make deploy: set APP=<function app name> (the functionAppName output of infra/main.bicep)"; exit 2; }
	@command -v func >/dev/null || { echo "make deploy: the Azure Functions Core Tools (func) are not installed"; exit 2; }
	$(MAKE) package
	cd $(DIST) && func azure functionapp publish $(APP) --custom

clean:
	rm -rf $(BIN) dist

# The benchmark of issue 6 (docs/benchmarks.md): starts its own stacks on free ports,
# prints one table and writes .local/bench.json. Takes about 3 minutes; not part of
# `make test`. BENCHFLAGS reach cmd/loadgen (e.g. BENCHFLAGS=-base=http://127.0.0.1:7071
# to use a stack from `make run`; `$(BIN)/loadgen -h` lists them).
.PHONY: bench
bench: deps build
	$(GO) build $(GOFLAGS_BUILD) -o $(BIN)/loadgen ./cmd/loadgen
	$(BIN)/loadgen -bin $(BIN) -azurite $(AZURITE) -out .local/bench.json $(BENCHFLAGS)
