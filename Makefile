# Everything runs in .venv, created on first use.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python

.PHONY: venv test demo bench server worker deploy clean

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

test: venv
	$(PY) -m pytest -q

BACKEND ?= s3
demo: venv
	BACKEND=$(BACKEND) $(PY) -m infra.demo

# Side-by-side benchmark against rclone, s5cmd and aws cli on a local SeaweedFS (see bench/README.md).
bench: venv
	$(PY) -m bench.run

# A Prefect server on loopback (SQLite in PREFECT_HOME; for PostgreSQL set
# PREFECT_SERVER_DATABASE_CONNECTION_URL=postgresql+asyncpg://user:pass@host/db).
PREFECT_PORT ?= 4200
export PREFECT_SERVER_ANALYTICS_ENABLED = false
API := http://127.0.0.1:$(PREFECT_PORT)/api

server: venv
	$(VENV)/bin/prefect server start --host 127.0.0.1 --port $(PREFECT_PORT)

worker: venv
	PREFECT_API_URL=$(API) $(VENV)/bin/prefect worker start --pool downloads --type process

deploy: venv
	PREFECT_API_URL=$(API) $(PY) -m deployments.setup
	PREFECT_API_URL=$(API) $(VENV)/bin/prefect --no-prompt deploy --all

clean:
	rm -rf $(VENV) demo-downloads
