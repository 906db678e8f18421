# peerlink: the two set-up commands are `make demo` and `make test`.
CARGO ?= cargo

.PHONY: all build demo test lint clean bench

all: build

build:
	$(CARGO) build --workspace

## demo: build, start instances a and b, send a message, show it arrive
## and the link's status, stop both.
demo: build
	bash tests/demo.sh

## test: formatting, lints, unit and end-to-end tests.
test: lint
	$(CARGO) test --workspace

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

clean:
	$(CARGO) clean

## bench: release build, then throughput/latency/memory of real daemons
## against the bare WebSocket ceiling (SPEC §10). Results in
## target/bench/results.json. Not a test: it asserts nothing.
bench:
	$(CARGO) build --release -p peerd -p peerctl -p peerlink-bench
	target/release/peerlink-bench $(BENCH_ARGS)
