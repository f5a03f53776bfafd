# drbook: `make demo` runs the whole job on the lab; `make test` runs the tests.
# Both set up what they need first (idempotent; each step says what it does).
.PHONY: setup setup-postgres test test-postgres demo lab-up lab-down bench clean-lab

PY := .venv/bin/python

setup:
	@bash lab/setup.sh

test: setup
	@bash tests/run.sh $(PYTEST_ARGS)

setup-postgres:
	@bash lab/setup.sh --postgres

# The replication and failover end-to-end tests with the lab's Prefect server on PostgreSQL
# (and the lab test that proves Prefect's data is there); the lab is left as it was found.
POSTGRES_TESTS := tests/test_e2e_protect.py tests/test_e2e_continuous.py tests/test_e2e_failover.py tests/test_e2e_scaleout.py \
	tests/test_lab.py::test_prefect_keeps_its_data_in_the_database_status_names

test-postgres: setup setup-postgres
	@DRBOOK_LAB_PREFECT_DB=postgresql bash tests/run.sh $(POSTGRES_TESTS) $(PYTEST_ARGS)

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
