# klp-agent. `make demo` and `make check` (as root; sudo works too) are the README's two
# commands; everything else is for developers.
SHELL := /bin/bash
GO ?= go
export PATH := $(PATH):/usr/local/go/bin:$(HOME)/go/bin
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
# Expanded when used, not when make starts: on a fresh machine git arrives
# with make deps, after make has read this file (the version and the RPM's
# release, read at start, said "dev" and "g0" while rpmbuild, run later,
# wrote the real release).
LDFLAGS = -s -w -X github.com/klp-agent/klp-agent/agent/cli.Version=$(VERSION)
STATICCHECK_VERSION := v0.8.2
FUZZTIME ?= 60s
BIN := bin/klp-agent

FRESH ?= check

.PHONY: fresh all build test lint fuzz deps check demo clean staticcheck e2e e2e-setup rpm bench dist rpmspec srpm rpmlint docs

all: build

build:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN) .

# Unit and integration tests (the nginx and rpmbuild ones need `make deps`).
test:
	$(GO) test -race -count=1 ./...

staticcheck:
	@command -v staticcheck >/dev/null || $(GO) install honnef.co/go/tools/cmd/staticcheck@$(STATICCHECK_VERSION)

lint: staticcheck
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	  if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	$(GO) vet -tags e2e ./e2e/
	staticcheck ./...
	promtool check rules packaging/prometheus/klp-agent.rules.yml
	cd packaging/prometheus && promtool test rules klp-agent.rules.test.yml

# Each fuzz target runs FUZZTIME (60 s in CI) and must not find a crash
# (.ci/fuzz says what counts as a finding).
FUZZ_TARGETS := ./manifest:FuzzParse ./manifest:FuzzVerifyEnvelope ./manifest:FuzzHostilePoll ./manifest:FuzzRoot ./manifest:FuzzRevocations ./agent/config:FuzzDecode ./klp:FuzzInspectRPMReader ./health:FuzzParseKmsg ./health:FuzzNetconsole ./health:FuzzParseDmesg ./health:FuzzReports
fuzz:
	GO=$(GO) .ci/fuzz $(FUZZTIME) $(FUZZ_TARGETS)

# The real-kernel tests: qemu boots Debian's kernel with our livepatch
# modules and the agent's binary (needs root for apt on first run).
e2e-setup:
	e2e/setup.sh

# E2E_RUN picks tests (go test -run), e.g. make e2e E2E_RUN='TestKLPRealKernel/6.12$$'.
E2E_RUN ?= .
e2e: e2e-setup
	$(GO) test -tags e2e -count=1 -v -timeout 50m -run '$(E2E_RUN)' ./e2e/

# Speed and memory, never asserted: Go benchmarks (manifest verify+select,
# unchanged polls against nginx, the daemon's steady state, the fleet
# simulator, the modelled pull-back time, an RPM's verification by payload
# compression and size) and the real-kernel run (apply latency against the
# floor and kpatch's polling, rollback reaction). Tables go to bin/bench/; see
# docs/benchmarks.md for the last results and how to read them.
bench: e2e-setup
	mkdir -p bin/bench
	@set -e; run() { out=$$1; shift; rc=0; "$$@" >bin/bench/$$out 2>&1 || rc=$$?; cat bin/bench/$$out; return $$rc; }; \
	run manifest.txt $(GO) test -run '^$$' -bench 'VerifySelect|YAMLAtCap' -benchmem -benchtime 20x ./manifest/; \
	run poll.txt $(GO) test -run '^$$' -bench PollNotModified -benchmem -benchtime 300x ./manifest/; \
	run daemon.txt $(GO) test -run '^$$' -bench BenchmarkDaemonSteadyState -benchtime 1x ./agent/; \
	run fleetsim.txt $(GO) test -run '^$$' -bench 'MillionHosts|Exposure|PublishBytes|PollLoad' -benchmem -benchtime 3x ./manifest/fleetsim/; \
	run pullback.txt $(GO) test -run '^$$' -bench PullBack -benchtime 1x ./manifest/fleetsim/; \
	run verify.txt $(GO) test -run '^$$' -bench 'VerifyFile|ApplyVerify' -benchmem -benchtime 20x ./klp/; \
	run realkernel.log env KLP_BENCH_OUT=$(CURDIR)/bin/bench/realkernel.md $(GO) test -tags 'e2e bench' -count=1 -v \
	  -timeout 20m -run '^TestBenchRealKernel$$' ./e2e/
	@cat bin/bench/realkernel.md

# System packages the tests need (root; apt).
deps:
	.ci/deps.sh

# Everything CI runs: the README's test command.
check: deps lint test rpm rpmlint fuzz e2e

# The agent's own RPM and SRPM: rpmbuild -ba on the source tarball (git
# archive of the tree, uncommitted changes to tracked files included, plus
# the vendored Go modules, so %build needs no network). The spec copy in
# bin/rpmbuild/SPECS carries the Version, Release and agent version, so
# the SRPM rebuilds as it is (rpmbuild --rebuild). --nodeps: Debian's rpm
# database does not know dpkg's golang. Then the payload must be exactly
# what packaging/ promises, and its unit must pass systemd-analyze verify
# (against the payload as root, so ExecStart's binary is the shipped one
# and Documentation=man:klp-agent(8) the shipped page; any warning fails).
RPM_VERSION ?= 0.1.0
RPM_RELEASE ?= 1.g$(shell git rev-parse --short HEAD 2>/dev/null || echo 0)
DIST := bin/klp-agent-$(RPM_VERSION).tar.gz
RPMTOP := bin/rpmbuild
RPMFILE = bin/klp-agent-$(RPM_VERSION)-$(RPM_RELEASE).x86_64.rpm
SRPMFILE = bin/klp-agent-$(RPM_VERSION)-$(RPM_RELEASE).src.rpm
RPMBUILD := rpmbuild --nodeps --quiet --define '_topdir $(CURDIR)/$(RPMTOP)' --define '_rpmdir $(CURDIR)/bin' \
  --define '_srcrpmdir $(CURDIR)/bin' --define '_build_name_fmt %{NAME}-%{VERSION}-%{RELEASE}.%{ARCH}.rpm'

dist:
	@set -euo pipefail; rm -rf bin/dist $(DIST); mkdir -p bin/dist; \
	tree=$$(git stash create); tree=$${tree:-HEAD}; \
	untracked=$$(git ls-files --others --exclude-standard); \
	if [ -n "$$untracked" ]; then echo "dist: untracked files are not in the tarball (git add them):" $$untracked >&2; fi; \
	git archive --format=tar --prefix=klp-agent-$(RPM_VERSION)/ $$tree | tar -x -C bin/dist; \
	(cd bin/dist/klp-agent-$(RPM_VERSION) && $(GO) mod vendor); \
	tar -C bin/dist --sort=name --owner=0 --group=0 --numeric-owner --mtime=@$$(git log -1 --format=%ct) \
	  -cf - klp-agent-$(RPM_VERSION) | gzip -n >$(DIST); \
	rm -rf bin/dist; ls -l $(DIST)

rpmspec: dist
	rm -rf $(RPMTOP) && mkdir -p $(RPMTOP)/SOURCES $(RPMTOP)/SPECS
	cp $(DIST) $(RPMTOP)/SOURCES/
	sed -e 's/^Version:.*/Version:        $(RPM_VERSION)/' -e 's/^Release:.*/Release:        $(RPM_RELEASE)/' \
	  -e 's/^%global agent_version .*/%global agent_version $(VERSION)/' packaging/klp-agent.spec >$(RPMTOP)/SPECS/klp-agent.spec

srpm: rpmspec
	rm -f bin/klp-agent-*.src.rpm
	$(RPMBUILD) -bs $(RPMTOP)/SPECS/klp-agent.spec
	@ls -l $(SRPMFILE)

rpm: rpmspec
	rm -f bin/klp-agent-*.rpm
	$(RPMBUILD) -ba $(RPMTOP)/SPECS/klp-agent.spec
	@ls -l $(RPMFILE) $(SRPMFILE)
	@# The package must carry exactly what packaging/ promises.
	@rpm -qpl $(RPMFILE) | diff -u packaging/rpm-files.txt - && echo "rpm file list OK"
	@rpm -qpc $(RPMFILE) | grep -qx /etc/klp-agent/config.yaml && rpm -qpc $(RPMFILE) | grep -qx /etc/klp-agent/guard.yaml && echo "config(noreplace) OK"
	@# Files that may hold credentials are root's alone.
	@set -euo pipefail; modes=$$(rpm -qp --qf '[%{FILEMODES:perms} %{FILEUSERNAME}:%{FILEGROUPNAME} %{FILENAMES}\n]' $(RPMFILE)); \
	  for f in /etc/klp-agent/config.yaml /etc/klp-agent/guard.yaml /etc/sysconfig/klp-agent; do \
	    echo "$$modes" | grep -qx -- "-rw-r----- root:root $$f" || { echo "$$f is not 0640 root:root:"; echo "$$modes" | grep " $$f$$"; exit 1; }; \
	  done; echo "secret-bearing files 0640 OK"
	@packaging/check-scriptlets.sh $(RPMFILE)
	@packaging/check-bundled.sh $(RPMFILE)
	@set -euo pipefail; root=$$(mktemp -d); trap 'rm -rf "$$root"' EXIT; \
	  rpm2cpio $(RPMFILE) | (cd "$$root" && cpio -idm --quiet); \
	  for t in /usr/lib/systemd/system/*.target; do [ -e "$$root/usr/lib/systemd/system/$${t##*/}" ] || cp "$$t" "$$root/usr/lib/systemd/system/"; done; \
	  out=$$(MANPATH="$$root/usr/share/man" systemd-analyze verify --root="$$root" klp-agent.service klp-agent-guard.service 2>&1) || { echo "$$out"; exit 1; }; \
	  if [ -n "$$out" ]; then echo "systemd-analyze verify:"; echo "$$out"; exit 1; fi; \
	  echo "systemd-analyze verify OK"

# rpmlint on the RPM and SRPM just built; packaging/klp-agent.rpmlintrc
# lists the accepted findings, each with its reason, and an unused filter
# is an error too (except the development releases' changelog one in a
# release build, RPM_RELEASE=1).
rpmlint:
	rpmlint $(if $(filter 1,$(RPM_RELEASE)),--ignore-unused-rpmlintrc) -r packaging/klp-agent.rpmlintrc $(RPMFILE) $(SRPMFILE)

# The man page and completions, generated from the commands' --help (the
# RPM's %build makes its own the same way).
docs: build
	mkdir -p bin/docs
	$(BIN) help --man >bin/docs/klp-agent.8
	$(BIN) help --bash-completion >bin/docs/klp-agent.bash
	$(BIN) help --zsh-completion >bin/docs/_klp-agent

# The README's commands as a newcomer runs them: `make check` (or
# FRESH=demo, or any targets) in a new Debian 12 root built with
# debootstrap, where only what make deps and e2e/setup.sh install exists
# (.ci/fresh says what it binds and caches). CI runs `make fresh`. Root.
fresh:
	.ci/fresh $(FRESH)

demo: deps build
	e2e/demo.sh

clean:
	rm -rf bin
