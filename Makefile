# Everyday commands. `make run` and `make test` start Postgres and Redis on
# loopback first (scripts/dev-services.sh), so they work on a fresh machine.

SHELL := /bin/bash
SERVICES := scripts/dev-services.sh
# Exports DATABASE_URL and REDIS_URL of the running services.
WITH_ENV = eval "$$($(SERVICES) env | sed 's/^/export /')" &&

.PHONY: run test test-faults test-schema check-deploy deny bench services services-down fmt lint sqlx-prepare

## run: services, then the API + relay + worker on HTTP_ADDR (default :8080)
run: services
	cargo run -- serve

## test: services, then the whole test suite against them: the service and
## the queue crate (queue/), and the queue crate's doc examples
test: services
	$(WITH_ENV) scripts/clean-test-data.sh
	$(WITH_ENV) cargo test --workspace --all-targets -- --test-threads=8
	cargo test --workspace --doc

## test-faults: the fault suite (minutes): two serve processes under load while
## Redis, Postgres, a process, a link and the mail server fail (tests/faults.rs)
test-faults: services
	$(WITH_ENV) cargo test --test faults -- --ignored --nocapture

## test-schema: the API against its own OpenAPI document (schemathesis)
test-schema: services
	scripts/test-schema.sh

## check-deploy: the Prometheus alert rules (promtool check + unit tests),
## the scrape config, and the Grafana dashboard's metric names (deploy/)
check-deploy:
	scripts/check-deploy.sh

## deny: licenses, bans and sources of the dependency tree (deny.toml)
deny:
	scripts/deny.sh

## bench: the benchmark harness, release build (see BENCHMARKS.md; minutes, not in CI)
bench:
	scripts/bench.sh

services:
	$(SERVICES) up

services-down:
	$(SERVICES) down

fmt:
	cargo fmt

lint:
	cargo fmt --check
	cargo clippy --workspace --all-targets -- -D warnings

## sqlx-prepare: regenerate .sqlx/ after changing sql/ or migrations/
sqlx-prepare: services
	scripts/sqlx-prepare.sh
