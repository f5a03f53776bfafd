# drbook: `make demo` runs the whole job on the lab; `make test` runs the tests.
# Both set up what they need first (idempotent; each step says what it does).
.PHONY: setup test demo lab-up lab-down bench clean-lab

PY := .venv/bin/python

setup:
	@bash lab/setup.sh

test: setup
	@bash tests/run.sh $(PYTEST_ARGS)

demo: setup
	@$(PY) -m lab.demo

lab-up: setup
	@.venv/bin/drbook-lab up

lab-down:
	@.venv/bin/drbook-lab down

bench: setup
	@for b in bench/bench_*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

clean-lab: lab-down
	rm -rf .lab
