# peerlink: the two set-up commands are `make demo` and `make test`.
CARGO ?= cargo

.PHONY: all build demo test lint unit e2e clean

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
