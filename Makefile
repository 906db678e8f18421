# peerlink: the two set-up commands are `make demo` and `make test`.
CARGO ?= cargo

.PHONY: all build demo test lint unit e2e clean man completions

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

## man: man pages of peerd and peerctl (one per subcommand too) in
## target/man, generated from the clap definitions (crates/xtask).
man:
	$(CARGO) run --quiet -p xtask -- man target/man

## completions: completion scripts of both binaries for bash, zsh, fish,
## elvish and powershell in target/completions.
completions:
	$(CARGO) run --quiet -p xtask -- completions target/completions

clean:
	$(CARGO) clean
