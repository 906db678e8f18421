# peerlink: the two set-up commands are `make demo` and `make test`.
CARGO ?= cargo
# Where `make man` and `make completions` write (and `make install` reads).
GEN_DIR ?= target
# Where cargo puts what it builds: target/, or wherever CARGO_TARGET_DIR
# (or a cargo config's build.target-dir) says.
ifeq ($(origin TARGET_DIR),undefined)
TARGET_DIR := $(or $(shell $(CARGO) metadata --format-version 1 --no-deps 2>/dev/null | \
	sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p'),target)
endif
# A make started from a cargo test inherits the variables cargo sets for
# that test's crate; passed on to cargo (and build scripts such as ring's),
# they change its fingerprints and everything is built twice.
unexport CARGO_MANIFEST_DIR CARGO_MANIFEST_PATH CARGO_MANIFEST_LINKS CARGO_CRATE_NAME \
	CARGO_BIN_NAME CARGO_PRIMARY_PACKAGE CARGO_TARGET_TMPDIR CARGO_RUSTC_CURRENT_DIR \
	CARGO_PKG_NAME CARGO_PKG_VERSION CARGO_PKG_VERSION_MAJOR CARGO_PKG_VERSION_MINOR \
	CARGO_PKG_VERSION_PATCH CARGO_PKG_VERSION_PRE CARGO_PKG_AUTHORS CARGO_PKG_DESCRIPTION \
	CARGO_PKG_HOMEPAGE CARGO_PKG_REPOSITORY CARGO_PKG_LICENSE CARGO_PKG_LICENSE_FILE \
	CARGO_PKG_RUST_VERSION CARGO_PKG_README

.PHONY: all build demo test lint clean bench release install uninstall verify-units man completions \
	deb test-hosts

all: build

build:
	$(CARGO) build --workspace

## demo: build, start a peerd a and b of its own (free ports, sockets and
## journals in a temp dir: never your instances), send a message, check
## that exactly it arrived, show the link's status, stop both.
demo: build
	BIN="$(TARGET_DIR)/debug" bash tests/demo.sh

## test: formatting, lints, unit and end-to-end tests.
test: lint
	$(CARGO) test --workspace
	$(MAKE) --no-print-directory verify-units

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

## man: man pages of peerd and peerctl (one per subcommand too) in
## target/man, generated from the clap definitions (crates/xtask).
man:
	$(CARGO) run --quiet -p xtask -- man $(GEN_DIR)/man

## completions: completion scripts of both binaries for bash, zsh, fish,
## elvish and powershell in target/completions.
completions:
	$(CARGO) run --quiet -p xtask -- completions $(GEN_DIR)/completions

clean:
	$(CARGO) clean

## --- Installing (README "Running as a service") ----------------------
## `make release` builds; `make install` only copies what is built, so
## `sudo make install` needs no Rust toolchain for root. BIN_DIR picks the
## binaries (the tests install the debug ones). The installed files are
## listed in README "Running as a service"; tests/e2e/service.rs checks
## that the two agree.
PREFIX ?= /usr/local
DESTDIR ?=
BIN_DIR ?= $(TARGET_DIR)/release
BINDIR = $(PREFIX)/bin
UNITDIR = $(PREFIX)/lib/systemd/system
SYSUSERSDIR = $(PREFIX)/lib/sysusers.d
DOCDIR = $(PREFIX)/share/doc/peerlink
INSTALL ?= install

MANDIR = $(PREFIX)/share/man/man1
BASHDIR = $(PREFIX)/share/bash-completion/completions
ZSHDIR = $(PREFIX)/share/zsh/site-functions
FISHDIR = $(PREFIX)/share/fish/vendor_completions.d
MANPAGES = peerd peerd-check-config peerd-journal peerd-journal-verify peerd-journal-repair \
	peerctl peerctl-attach peerctl-completions peerctl-console peerctl-drop peerctl-reload peerctl-send peerctl-status peerctl-tail

INSTALLED = $(BINDIR)/peerd $(BINDIR)/peerctl \
	$(UNITDIR)/peerd@.service $(SYSUSERSDIR)/peerd.conf \
	$(DOCDIR)/peerd.example.toml \
	$(foreach m,$(MANPAGES),$(MANDIR)/$(m).1) \
	$(BASHDIR)/peerd $(BASHDIR)/peerctl $(ZSHDIR)/_peerd $(ZSHDIR)/_peerctl \
	$(FISHDIR)/peerd.fish $(FISHDIR)/peerctl.fish

release:
	$(CARGO) build --release -p peerd -p peerctl
	$(MAKE) --no-print-directory man completions

install:
	@for b in peerd peerctl; do \
	  test -x "$(BIN_DIR)/$$b" || { echo "install: $(BIN_DIR)/$$b not built: run \`make release\` first (or set BIN_DIR)" >&2; exit 1; }; \
	done
	$(INSTALL) -d $(DESTDIR)$(BINDIR) $(DESTDIR)$(UNITDIR) $(DESTDIR)$(SYSUSERSDIR) $(DESTDIR)$(DOCDIR)
	$(INSTALL) -m 0755 $(BIN_DIR)/peerd $(BIN_DIR)/peerctl $(DESTDIR)$(BINDIR)/
	sed 's|/usr/local/bin/|$(BINDIR)/|g' systemd/peerd@.service > $(DESTDIR)$(UNITDIR)/peerd@.service
	chmod 0644 $(DESTDIR)$(UNITDIR)/peerd@.service
	$(INSTALL) -m 0644 systemd/peerd.sysusers $(DESTDIR)$(SYSUSERSDIR)/peerd.conf
	$(INSTALL) -m 0644 systemd/peerd.example.toml $(DESTDIR)$(DOCDIR)/peerd.example.toml
	@test -f "$(GEN_DIR)/man/peerd.1" -a -f "$(GEN_DIR)/completions/peerd.bash" || { echo "install: man pages and completions not generated: run \`make man completions\` (or \`make release\`) first" >&2; exit 1; }
	$(INSTALL) -d $(DESTDIR)$(MANDIR) $(DESTDIR)$(BASHDIR) $(DESTDIR)$(ZSHDIR) $(DESTDIR)$(FISHDIR)
	$(INSTALL) -m 0644 $(foreach m,$(MANPAGES),$(GEN_DIR)/man/$(m).1) $(DESTDIR)$(MANDIR)/
	for b in peerd peerctl; do \
	  $(INSTALL) -m 0644 $(GEN_DIR)/completions/$$b.bash $(DESTDIR)$(BASHDIR)/$$b && \
	  $(INSTALL) -m 0644 $(GEN_DIR)/completions/_$$b $(DESTDIR)$(ZSHDIR)/_$$b && \
	  $(INSTALL) -m 0644 $(GEN_DIR)/completions/$$b.fish $(DESTDIR)$(FISHDIR)/$$b.fish || exit 1; \
	done
	@if [ -z "$(DESTDIR)" ]; then \
	  echo "installed; next (as root): systemd-sysusers && systemctl daemon-reload"; \
	fi

## deb: a Debian package (target/debian/peerlink_<version>-1_<arch>.deb)
## of what `make install PREFIX=/usr` installs, whose postinst creates the
## peerd user (packaging/deb). Needs dpkg-deb and objdump.
deb: release
	sh packaging/deb/build.sh target/debian

uninstall:
	rm -f $(addprefix $(DESTDIR),$(INSTALLED))
	rmdir $(DESTDIR)$(DOCDIR) 2>/dev/null || true

## verify-units: `systemd-analyze verify` on the unit (installed into a
## temp prefix with the debug binaries, since verify checks that ExecStart
## exists), its sandboxing score, and the sysusers file. Any output is a
## failure. Skipped with a message where systemd-analyze is missing.
verify-units: build man completions
	@if ! command -v systemd-analyze >/dev/null 2>&1; then \
	  echo "verify-units: SKIPPED: systemd-analyze not found (apt-get install systemd)"; exit 0; \
	fi; \
	tmp=$$(mktemp -d) && trap 'rm -rf "$$tmp"' EXIT && \
	$(MAKE) --no-print-directory install PREFIX="$$tmp/usr" BIN_DIR="$(TARGET_DIR)/debug" >/dev/null && \
	unit="$$tmp/usr/lib/systemd/system/peerd@.service" && \
	out=$$(systemd-analyze verify "$$unit" 2>&1) && [ -z "$$out" ] || { echo "$$out"; echo "verify-units: systemd-analyze verify failed"; exit 1; }; \
	out=$$(systemd-analyze security --offline=yes --threshold=20 "$$unit" 2>&1) || { echo "$$out"; echo "verify-units: exposure above 2.0"; exit 1; }; \
	echo "$$out" | tail -n 1; \
	mkdir -p "$$tmp/root/etc" && \
	out=$$(systemd-sysusers --root="$$tmp/root" --dry-run "$$PWD/systemd/peerd.sysusers" 2>&1) || { echo "$$out"; echo "verify-units: bad sysusers file"; exit 1; }; \
	echo "verify-units: ok"

## test-hosts: README "Running as a service", run as written on two
## Debian hosts booted with systemd (containers on a veth pair), then
## reboots, kill -9 and a wrong secret (tests/hosts). Needs root,
## systemd-container and mmdebstrap; says SKIPPED where it cannot run.
test-hosts:
	bash tests/hosts/run.sh

## bench: release build, then throughput/latency/memory of real daemons
## against the bare WebSocket ceiling (SPEC §10). Results in
## target/bench/results.json. Not a test: it asserts nothing.
bench:
	$(CARGO) build --release -p peerd -p peerctl -p peerlink-bench
	"$(TARGET_DIR)/release/peerlink-bench" $(BENCH_ARGS)
