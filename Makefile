# Everything runs in .venv, created on first use.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python

.PHONY: venv system-packages test dist demo bench server worker deploy clean

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

# Most of the suite waits (servers, worker polls, subprocesses), so it runs in TEST_WORKERS processes (pytest-xdist),
# more than the 2 cores, each with its own session servers. Each file runs whole in one of them, longest first
# (tests/conftest.py): module fixtures such as test_prefect_ops.py's server and workers start once.
# TEST_WORKERS=0: everything in one process.
TEST_WORKERS ?= 6

# -rs: a test skipped for a missing system package (or dist/) says so in one line at the end.
test: venv system-packages
	$(PY) -m pytest -q -rs -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder

# The Debian packages some tests drive (README "Tests"): when all are there, this only looks (~0.05 s). The missing
# ones are installed with apt-get, never prompting, when this user can (root, or passwordless sudo); else one line
# says which, and the tests that need them skip. OSSDL_REQUIRE_SYSTEM=1 (.ci/run): this step and those tests fail.
system-packages: venv
	@.ci/system-packages $(PY) $(VENV)/.system-packages-failed

# The standalone executables, without Prefect: dist/oss-download and dist/feishu-desktop (work files in build/).
# packaging/executables.spec says what goes in; tests/test_dist.py runs them from a clean environment.
dist: venv
	$(PY) -m PyInstaller --noconfirm --clean --log-level WARN --distpath dist --workpath build \
		packaging/executables.spec

BACKEND ?= s3
demo: venv
	BACKEND=$(BACKEND) $(PY) -m infra.demo

# Side-by-side benchmark against rclone, s5cmd and aws cli on a local SeaweedFS (see bench/README.md).
bench: venv
	$(PY) -m bench.run

# A Prefect server on loopback (SQLite in PREFECT_HOME; for PostgreSQL set
# PREFECT_SERVER_DATABASE_CONNECTION_URL=postgresql+asyncpg://user:pass@host/db). Its UI talks to the same port
# (PREFECT_UI_API_URL), whatever PREFECT_API_URL the shell or profile holds, and alerts link to runs on it
# (PREFECT_UI_URL). PREFECT_HOST=0.0.0.0 to serve other
# machines: then set UI_API to the URL browsers use, e.g. http://server.example:4200/api.
PREFECT_HOST ?= 127.0.0.1
PREFECT_PORT ?= 4200
export PREFECT_SERVER_ANALYTICS_ENABLED = false
API ?= http://127.0.0.1:$(PREFECT_PORT)/api
UI_API ?= $(API)
UI_URL ?= $(patsubst %/api,%,$(UI_API))
# Flow runs one worker runs at once: each is a process with its own connection pool, and a small limit leaves
# scheduled shards to the other workers (without one, the first worker to poll takes every shard).
WORKER_LIMIT ?= 2
WORKER_NAME ?= $(shell hostname)-$$$$
PREFECT_FILE ?= prefect.yaml

server: venv
	PREFECT_SERVER_API_HOST=$(PREFECT_HOST) PREFECT_SERVER_API_PORT=$(PREFECT_PORT) PREFECT_UI_API_URL=$(UI_API) \
		PREFECT_UI_URL=$(UI_URL) $(VENV)/bin/prefect server start --host $(PREFECT_HOST) --port $(PREFECT_PORT)

worker: venv
	PREFECT_API_URL=$(API) $(VENV)/bin/prefect worker start --pool downloads --type process \
		--limit $(WORKER_LIMIT) --name $(WORKER_NAME)

deploy: venv
	PREFECT_API_URL=$(API) $(PY) -m deployments.setup
	PREFECT_API_URL=$(API) $(VENV)/bin/prefect --no-prompt deploy --all --prefect-file $(PREFECT_FILE)

clean:
	rm -rf $(VENV) demo-downloads build dist
