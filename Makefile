# Each target installs what it needs first (idempotent), then does its job.
PY := .venv/bin/python
TESTBED := .venv/bin/testbed

.PHONY: setup demo test bench clean lint

setup:
	@scripts/setup.sh

demo: setup
	$(TESTBED) compare scenarios/contention.yaml --policies none,reserve-only,phillips-2005,phillips-2005-threshold,gorman-3.6 --out runs/demo

test: setup
	$(PY) -m pytest -q -rs $(PYTEST_ARGS)

bench: setup
	@for b in bench/bench_*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

clean: setup
	$(TESTBED) clean
