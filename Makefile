# votr: the two commands a new user needs are `make demo` and `make test`.
# Both install the PostgreSQL server binaries first if they are missing.

GO ?= go

# Where `make demo` serves its live web view (loopback only).
UI_ADDR ?= 127.0.0.1:8080

.PHONY: build test soak screenshot demo demo-url bench clean ensure-postgres ensure-chromium

build:
	$(GO) build -o bin/votr ./cmd/votr

ensure-postgres:
	@bash scripts/ensure-postgres.sh

# Chromium drives the web view's browser test (cmd/votr/ui_test.go).
ensure-chromium:
	@bash scripts/ensure-chromium.sh

# go test runs three test binaries at a time, in the order the packages
# are named: the longest first, so that no long one runs alone at the end.
# Three on two CPUs: the long packages spend most of their time waiting on
# their servers and on fault timelines (a link held cut for seconds), and
# the suite passes with two busy loops beside it, a heavier load than a
# third binary. Then the sessions that run a feed's goroutines, one feed
# or several through one slot (sharing, detaching, handing back, two
# processes), once more under the race detector.
LONG_TESTS = ./sink ./faults ./runner ./localpg ./cmd/votr
test: ensure-postgres ensure-chromium
	$(GO) test -p 3 -count=1 -timeout 30m $(LONG_TESTS) ./...
	$(GO) test -count=1 -race -timeout 10m -run 'TestFanoutFeedsShareOneSlot|TestFanoutDetaches|TestFanoutsTakeTurns|Bidirectional' ./sink

# The randomized fault schedule of faults/nemesis_test.go, longer than in
# `make test`: NEMESIS_DURATION of faults; NEMESIS_SEED repeats a run's
# schedule (each run prints its seed; default random, where `make test`
# runs one fixed seed); NEMESIS_SHARED_HUB_SLOT=1 runs the hub's outbound
# feeds through one slot (sink.sharedHubSlot).
NEMESIS_DURATION ?= 10m
NEMESIS_SEED ?= random
NEMESIS_SHARED_HUB_SLOT ?= 0
soak: ensure-postgres
	VOTR_NEMESIS_DURATION=$(NEMESIS_DURATION) VOTR_NEMESIS_SEED=$(NEMESIS_SEED) VOTR_NEMESIS_SHARED_HUB_SLOT=$(NEMESIS_SHARED_HUB_SLOT) $(GO) test -count=1 -v -timeout 0 -run '^TestNemesis$$' ./faults

# Refresh docs/ui.png (the README's picture) from the browser test.
screenshot: ensure-postgres ensure-chromium
	VOTR_SCREENSHOT=docs/ui.png $(GO) test -count=1 -run TestWebViewInBrowser ./cmd/votr

demo-url:
	@echo "votr demo: open http://$(UI_ADDR)/ in a browser to watch it converge (the live web view)"

demo: demo-url ensure-postgres build
	./bin/votr apply examples/local.yaml --auto-approve --duration 60s --ui $(UI_ADDR)

bench: ensure-postgres
	$(GO) run ./bench

clean:
	rm -rf bin
