# votr: the two commands a new user needs are `make demo` and `make test`.
# Both install the PostgreSQL server binaries first if they are missing.

GO ?= go

.PHONY: build test demo bench clean ensure-postgres

build:
	$(GO) build -o bin/votr ./cmd/votr

ensure-postgres:
	@bash scripts/ensure-postgres.sh

test: ensure-postgres
	$(GO) test -count=1 -timeout 14m ./...

demo: ensure-postgres build
	./bin/votr apply examples/local.yaml --auto-approve --duration 60s

bench: ensure-postgres
	$(GO) run ./bench

clean:
	rm -rf bin
