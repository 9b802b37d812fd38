# Entry points (kept stable; README documents them). Everything runs from the repo root.
SHELL := /bin/bash
VENV := .venv
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
export ANSIBLE_CONFIG := $(CURDIR)/ansible.cfg
HOSTS ?= 2
FLEET ?= local
PYTEST_ARGS ?=

.PHONY: help setup lint pytest molecule test test-extended test-slow bench hosts-up hosts-down hosts-status demo status clean lock

help:
	@echo "make demo        boot local test hosts and deploy the app to them"
	@echo "make test        setup + lint + pytest + molecule (what CI runs)"
	@echo "make test-extended  deploy/host faults, Django proof, status, uninstall, lock, collection jobs (CI runs it after make test)"
	@echo "make test-slow   the long load scenarios (straight-at-host rollouts, 10-min soak, app rolls)"
	@echo "make bench       load comparison: the seed's peers vs the converged stack, converge scaling (~20 min)"
	@echo "make molecule    converge/idempotence/check/verify on local systemd hosts"
	@echo "make status      health summary of every host (inventory/local), non-zero if anything is down"
	@echo "make lint        yamllint + ansible-lint (production profile + win-args/win-ps/win-tasks)"
	@echo "make hosts-up    boot HOSTS=$(HOSTS) local systemd test hosts (inventory/local)"
	@echo "make hosts-down  stop them and remove everything they used"

setup:
	@scripts/setup.sh

lint: setup
	yamllint --strict .
	ansible-lint
	python tools/inventory_policy.py inventory

pytest: setup
	python -m pytest -m "not slow and not extended" $(PYTEST_ARGS)

# The fault scenarios (controller killed, host lost, hung backend, disk full, ssh cut, soak), the Django proof,
# status, uninstall and the deploy lock, the collection's jobs on hosts, each on its own fleet (~25 min): outside make test to keep it near 30 min;
# CI (.ci/run) runs both.
test-extended: setup
	python -m pytest -m "extended and not slow" $(PYTEST_ARGS)

# Long load scenarios (a short form of each is in `make test` or `make test-extended`).
test-slow: setup
	python -m pytest -m slow $(PYTEST_ARGS)

molecule: setup
	molecule test -s default

test: setup lint pytest molecule

# The load comparison (peers vs the converged stack) and deploy-time scaling (1/3/6 hosts), ~15 min;
# writes bench/results/latest.{json,png} and converge.json.
bench: setup
	python bench/run.py $(BENCH_ARGS)
	python bench/converge.py

hosts-up: setup
	python3 tools/testhosts.py up --fleet $(FLEET) --count $(HOSTS)

hosts-down:
	python3 tools/testhosts.py down --fleet $(FLEET)

hosts-status:
	python3 tools/testhosts.py status --fleet $(FLEET)

# Fresh clone -> local hosts -> deploy -> health summary. Re-running converges with no change.
demo: hosts-up
	ansible-playbook deploy.yml -i inventory/local
	ansible-playbook playbooks/status.yml -i inventory/local | grep -E '"(site|backends) '
	@echo
	@python3 tools/testhosts.py urls --fleet $(FLEET)

# Fleet summary of the local hosts; non-zero when a backend or site is down. STATUS_JSON=file: also as JSON.
status: setup
	ansible-playbook playbooks/status.yml -i inventory/local $(if $(STATUS_JSON),-e status_json=$(abspath $(STATUS_JSON)))

lock: setup
	pip freeze --exclude-editable | { echo "# Full lock of requirements.in (pip freeze). Regenerate: make lock"; cat; } > requirements.txt

clean: hosts-down
	rm -rf $(VENV) build
