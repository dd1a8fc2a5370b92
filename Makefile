# Weir's verbs. `make demo` and `make test` set up everything they need on a fresh machine.
SHELL := /bin/bash
CARGO ?= cargo
export CARGO_TERM_COLOR ?= never

.PHONY: all build release test lint lint-chart chart-manifests fmt fuzz demo deps drivers bench profile image image-smoke

all: build

deps:
	@scripts/ensure-deps.sh >/dev/null

## drivers: install the pinned client drivers of the compatibility matrix (tests/drivers/)
drivers:
	@scripts/install-drivers.sh

build:
	$(CARGO) build --workspace --bins

release:
	$(CARGO) build --release -p weir-pooler --bin weir -p weir-operator --bin weir-operator

## lint-chart: chart lint/template, CRD copy, deploy/weir.yaml drift (+ server dry run if a test control plane is up)
lint-chart:
	@scripts/lint-chart.sh

## chart-manifests: regenerate deploy/weir.yaml from the chart
chart-manifests:
	@scripts/lint-chart.sh --update

## test: everything CI runs — lint, unit tests, integration tests against real PostgreSQL
test: deps lint lint-chart build drivers
	$(CARGO) test --workspace --no-fail-fast
	python3 -m unittest discover -s bench -p 'test_*.py'
	$(MAKE) fuzz FUZZ_SECONDS=20

lint:
	python3 scripts/check-layering.py
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

## fuzz: run the protocol decoder fuzz target briefly (longer: make fuzz FUZZ_SECONDS=600)
FUZZ_SECONDS ?= 60
fuzz:
	@scripts/fuzz.sh $(FUZZ_SECONDS)

## image: the weir image (pooler + operator) with podman, from a locally made Debian base and
## the release binaries; prints its size, saves target/image/*.oci.tar (see Containerfile)
image: release
	@scripts/image.sh

## image-smoke: the image under podman as a pod runs it, in front of a local PostgreSQL
image-smoke: deps image
	@scripts/image-smoke.sh

## demo: the operator and weir as pods on a local test cluster (one real node), PostgreSQL, pgbench, a short report
demo: deps release
	@scripts/demo.sh

## bench: direct vs PgBouncer vs weir, the operator at scale, then Redis direct vs twemproxy vs weir; markdown reports under target/bench/
bench: deps
	@bench/prepare.sh
	@bench/run.sh
	@bench/redis.sh

## profile: perf profile of weir under select-only load at 50 and 500 clients
profile: deps
	$(CARGO) build --release -p weir-pooler --bin weir
	@bench/profile.sh
