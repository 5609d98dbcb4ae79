"""The standalone executables built by `make dist`, run as on a user's machine without Python: `env -i` with
only HOME, a PATH without the venv or any Python, DISPLAY for the app and the store's keys; against the
test servers (moto's S3, the OSS-protocol server, the fake Feishu API with the published plugin's client).

Without dist/ these tests skip, saying so; with OSSDL_REQUIRE_DIST=1 (.ci/run) they fail instead. An
executable older than the code it is built from counts as missing.

The last tests need no build: they run, on Linux, the code paths Windows takes (no pread/pwrite, no
syncfs), which the Windows executable cannot be tested on here.
"""
from __future__ import annotations

import asyncio
import csv
import io
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import tomllib
import uuid
from pathlib import Path

import pexpect
import pytest

from infra import oss_server
from infra.feishu_server import FeishuServer
from infra.s3_server import ACCESS_KEY, SECRET_KEY
from core.report import human_bytes
from tests.conftest import ROOT, OssStore
from tests.plugin_client import PublishedPlugin, cells_of
from tests.test_desktop import App, need_tools, needs_display, port_open, screenshot, start_xvfb, stop_process
from tests.test_download import body, leftovers, local_files, put

DIST = ROOT / "dist"
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["version"]
BUILT_FROM = ["pyproject.toml", "packaging/executables.spec", "packaging/oss_download.py",
              "packaging/feishu_desktop.py", "core/**/*.py", "flows/*.py", "bridge/**/*.py", "tasks/*.py"]
PYTHON_HOMES = {Path(sys.prefix).resolve(), Path(sys.base_prefix).resolve(), ROOT.resolve()}
CTRL_C = "\x03"


# -- the executables and a clean environment ----------------------------------------------------------
def executable(name: str) -> Path:
    """dist/<name>, built from the code as it is now; else skip (or fail with OSSDL_REQUIRE_DIST=1)."""
    path = DIST / name
    if not path.is_file():
        problem = f"{path.relative_to(ROOT)} is not built: run `make dist`"
    else:
        newest = max(p.stat().st_mtime for pattern in BUILT_FROM for p in ROOT.glob(pattern))
        problem = (f"{path.relative_to(ROOT)} is older than the code: run `make dist`"
                   if path.stat().st_mtime < newest else "")
    if problem:
        if os.environ.get("OSSDL_REQUIRE_DIST") == "1":
            pytest.fail(f"{problem} (OSSDL_REQUIRE_DIST=1)")
        pytest.skip(f"{problem} (OSSDL_REQUIRE_DIST=1 turns this into a failure)")
    return path


def clean_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """What a user's machine gives a program: a home, a PATH with a shell and no Python; plus `extra`."""
    home, bin_dir = tmp_path / "home", tmp_path / "bin"
    home.mkdir(exist_ok=True)
    bin_dir.mkdir(exist_ok=True)
    for tool in ("sh", "ls", "cat"):
        if not (bin_dir / tool).exists():
            (bin_dir / tool).symlink_to(shutil.which(tool))
    env = {"HOME": str(home), "PATH": str(bin_dir), **extra}
    assert not [p for p in ("python", "python3") if shutil.which(p, path=env["PATH"])]
    return env


def env_i(env: dict[str, str], program: Path, *args: str) -> list[str]:
    """The command line `env -i K=V ... program args`: the program sees `env` and nothing else."""
    return [shutil.which("env"), "-i", *(f"{k}={v}" for k, v in env.items()), str(program), *args]


def run(env: dict[str, str], *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(env_i(env, executable("oss-download"), *args), capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL, cwd=env["HOME"])


def s3_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    # A Prefect API in the environment changes nothing: the executable has no Prefect to report to.
    return clean_env(tmp_path, AWS_ACCESS_KEY_ID=ACCESS_KEY, AWS_SECRET_ACCESS_KEY=SECRET_KEY,
                     PREFECT_API_URL="http://127.0.0.1:9/api", **extra)


def one_error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in stderr, stderr
    return lines[0]


def read_csv(out: Path) -> list[list[str]]:
    with open(out / ".oss-failed.csv", newline="", encoding="utf-8") as f:
        return list(csv.reader(f))


def summary(stdout: str) -> dict[str, str]:
    """The summary's `name  value` lines."""
    lines = stdout.split("Summary:\n", 1)[1].splitlines()
    found = {}
    for line in lines:
        name, _, value = line.strip().partition("  ")
        if not value:
            break
        found[name] = value.strip()
    return found


def python_files_mapped(pid: int) -> list[str]:
    """Files of the test's own Python (the venv, its interpreter, this checkout) in a process's memory."""
    found = []
    for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
        path = line.split(maxsplit=5)[5:]
        if path and path[0].startswith("/") and not Path(path[0]).is_relative_to(DIST) \
                and any(Path(path[0]).resolve().is_relative_to(home) for home in PYTHON_HOMES):
            found.append(path[0])
    return found


def program_pid(bootloader_pid: int, timeout: float = 10) -> int:
    """A onefile executable is a bootloader process and the program, its child."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        children = Path(f"/proc/{bootloader_pid}/task/{bootloader_pid}/children").read_text().split()
        if children:
            return int(children[0])
        time.sleep(0.05)
    raise AssertionError("the executable started no program process")


# -- oss-download --------------------------------------------------------------------------------------
def test_version_help_and_bad_input_without_python(tmp_path):
    env = clean_env(tmp_path)
    result = run(env, "--version")
    assert (result.returncode, result.stdout, result.stderr) == (0, f"oss-download {VERSION}\n", "")

    result = run(env, "--help")
    assert result.returncode == 0
    assert "exit codes:" in result.stdout and "this executable runs without Prefect" in result.stdout
    assert "temporary" not in result.stdout and "--no-prefect" not in result.stdout
    assert "--credentials-block" not in result.stdout.split("Prefect:")[0]

    result = run(env, "--bucket", "b", "--credentials-block", "prod-keys")
    assert result.returncode == 2
    assert one_error_line(result.stderr) == (
        "error: --credentials-block reads a Prefect block, and this executable is built without Prefect: give"
        " the keys as environment variables (see --help) or --profile")
    result = run(env, "--bucket", "b", "--concurrency", "0")
    assert result.returncode == 2
    assert one_error_line(result.stderr) == "error: --concurrency: Input should be greater than or equal to 1"
    with socket.socket() as closed:  # a port nothing listens on
        closed.bind(("127.0.0.1", 0))
        endpoint = f"http://127.0.0.1:{closed.getsockname()[1]}"
    result = run(dict(env, AWS_ACCESS_KEY_ID="k", AWS_SECRET_ACCESS_KEY="s"), "--endpoint", endpoint,
                 "--bucket", "b", "--output", str(tmp_path / "out"), "--connect-timeout", "2")
    assert result.returncode == 2 and endpoint.removeprefix("http://") in one_error_line(result.stderr)
    result = run(env, "--output", str(tmp_path / "out"))  # no terminal: nothing is asked
    assert result.returncode == 2 and result.stderr.splitlines()[-1] == "error: --bucket is required"
    assert not (tmp_path / "out").exists()


def test_downloads_an_s3_prefix_with_failures_in_the_csv_then_resumes(s3, bucket, tmp_path):
    keys = [f"data/{i:02d}.bin" for i in range(30)] + ["data/文件/报告 1.txt", "data/space name+plus.txt"]
    for key in keys:
        put(s3, bucket, key)
    big = os.urandom(20 * 1024 * 1024)  # fetched as parallel ranged parts
    put(s3, bucket, "data/big/blob.bin", big)
    put(s3, bucket, "other/not-selected.txt", b"x")
    s3.add_fault(bucket, "data/03.bin", "status", status=500, code="InternalError")   # every attempt
    s3.add_fault(bucket, "data/04.bin", "status", status=503, code="SlowDown", times=1)  # round 2 fetches it
    s3.add_fault(bucket, "data/05.bin", "truncate", times=1)
    out = tmp_path / "out"
    flags = ["--endpoint", s3.endpoint, "--bucket", bucket, "--prefix", "data/", "--output", str(out),
             "--concurrency", "8", "--retry-backoff", "0.05"]

    result = run(s3_env(tmp_path), *flags)
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    counts = summary(result.stdout)
    assert (counts["listed"], counts["downloaded"], counts["failed"], counts["already present"]) == ("33", "32", "1", "0")
    expected = {key.removeprefix("data/"): body(key) for key in keys if key != "data/03.bin"}
    expected["big/blob.bin"] = big
    assert local_files(out) == expected
    assert counts["size"] == human_bytes(sum(map(len, expected.values())))
    assert f"failures listed in {out / '.oss-failed.csv'}" in result.stdout
    assert read_csv(out) == [["key", "last_error", "retry_count"],
                             ["data/03.bin", "HTTP 500 InternalError: injected fault", "3"]]
    assert s3.get_count(bucket, "data/big/blob.bin") >= 3

    s3.clear_faults()
    result = run(s3_env(tmp_path), *flags)
    assert result.returncode == 0, result.stderr
    assert summary(result.stdout)["already present"] == "32" and summary(result.stdout)["downloaded"] == "1"
    assert local_files(out)["03.bin"] == body("data/03.bin")
    assert not (out / ".oss-failed.csv").exists() and leftovers(out) == []


def test_downloads_an_oss_prefix_checked_by_crc64(oss, tmp_path):
    store, bucket = OssStore(oss), "o-" + uuid.uuid4().hex[:10]
    store.create_bucket(bucket)
    data = {f"p/{i}.bin": os.urandom(300_000 + i) for i in range(6)}
    for key, value in data.items():
        oss.put(bucket, key, value)
    oss.put(bucket, "p/cold.bin", b"frozen", storage_class="Archive")
    oss.add_fault(bucket, "p/1.bin", "bad_crc", times=1)  # the CRC64 check catches it, round 2 fetches it
    out = tmp_path / "out"
    env = clean_env(tmp_path, OSS_ACCESS_KEY_ID=oss_server.ACCESS_KEY, OSS_ACCESS_KEY_SECRET=oss_server.SECRET_KEY)
    try:
        result = run(env, "--backend", "oss", "--endpoint", oss.endpoint, "--bucket", bucket, "--prefix", "p/",
                     "--output", str(out), "--retry-backoff", "0.05")
        assert oss.get_count(bucket, "p/1.bin") == 2
    finally:
        oss.clear_faults()
    assert result.returncode == 1, result.stderr  # the archived object needs a restore
    assert summary(result.stdout)["downloaded"] == "6" and summary(result.stdout)["restore required"] == "1"
    assert local_files(out) == {key.removeprefix("p/"): value for key, value in data.items()}
    assert read_csv(out)[1:] == [["p/cold.bin", "restore required", "1"]]


def test_an_empty_prefix_warns_and_fails_only_when_asked(s3, bucket, tmp_path):
    flags = ["--endpoint", s3.endpoint, "--bucket", bucket, "--prefix", "nothing/", "--output", str(tmp_path / "o")]
    result = run(s3_env(tmp_path), *flags)
    assert result.returncode == 0 and summary(result.stdout)["listed"] == "0"
    said = f"nothing to download: no objects under s3://{bucket}/nothing/"
    assert result.stderr == f"warning: {said}\n"
    result = run(s3_env(tmp_path), *flags, "--fail-if-empty")
    assert result.returncode == 3 and one_error_line(result.stderr) == f"error: {said}"


def spawn(env: dict[str, str], *args: str) -> pexpect.spawn:
    """The executable in a pseudo-terminal: Ctrl-C typed there reaches its whole process group."""
    command = env_i({**env, "TERM": "xterm-256color"}, executable("oss-download"), *args)
    child = pexpect.spawn(command[0], command[1:], cwd=env["HOME"], encoding="utf-8", timeout=60,
                          dimensions=(24, 80), codec_errors="replace")  # ^C is echoed where typed
    child.logfile_read = child.log = io.StringIO()
    return child


def test_ctrl_c_stops_once_keeps_what_finished_and_the_same_command_resumes(s3, bucket, tmp_path):
    """The onefile executable is two processes, and its bootloader forwards the Ctrl-C the terminal also
    sent to the program: one Ctrl-C, one orderly stop (never "interrupted again")."""
    keys = [f"data/c/{i:02d}.bin" for i in range(30)]
    for key in keys:
        put(s3, bucket, key, body(key, 20_000))
        s3.add_fault(bucket, key, "delay", seconds=0.3)
    out = tmp_path / "out"
    flags = ["--endpoint", s3.endpoint, "--bucket", bucket, "--prefix", "data/", "--output", str(out),
             "--concurrency", "2", "--yes"]
    child = spawn(s3_env(tmp_path), *flags)
    child.expect("downloading")
    assert python_files_mapped(program_pid(child.pid)) == []
    while len(list((out / "c").glob("*.bin"))) < 3:
        child.expect([pexpect.TIMEOUT], timeout=0.1)
    child.send(CTRL_C)
    child.expect(pexpect.EOF, timeout=10)
    child.close()
    log = child.log.getvalue()
    assert child.exitstatus == 130, log
    said = [line for line in log.splitlines() if "interrupted" in line]
    assert len(said) == 1 and said[0].strip() == \
        "interrupted: finished files are kept; the same command resumes where this run stopped", log
    assert "Traceback" not in log
    finished = len(list((out / "c").glob("*.bin")))
    assert 3 <= finished < 30

    s3.clear_faults()
    child = spawn(s3_env(tmp_path), *flags)
    child.expect(r"already present +(\d+)")
    assert int(child.match.group(1)) >= finished
    child.expect(pexpect.EOF, timeout=60)
    child.close()
    assert child.exitstatus == 0, child.log.getvalue()
    assert local_files(out) == {k.removeprefix("data/"): body(k, 20_000) for k in keys}


def test_questions_on_a_terminal_and_ctrl_c_at_one(s3, tmp_path):
    child = spawn(s3_env(tmp_path), "--endpoint", s3.endpoint)
    child.expect("Backend")
    child.send(CTRL_C)
    child.expect(pexpect.EOF, timeout=10)
    child.close()
    assert child.exitstatus == 130
    assert "interrupted: nothing was downloaded" in child.log.getvalue()
    assert "Traceback" not in child.log.getvalue()


def test_sigterm_to_the_process_group_stops_in_order(s3, bucket, tmp_path):
    """A scheduler stopping the job signals its process group: the program gets SIGTERM from it and again
    from the bootloader, and stops once (143)."""
    for i in range(20):
        put(s3, bucket, f"data/t/{i:02d}.bin", body(str(i), 20_000))
        s3.add_fault(bucket, f"data/t/{i:02d}.bin", "delay", seconds=0.3)
    out = tmp_path / "out"
    proc = subprocess.Popen(env_i(s3_env(tmp_path), executable("oss-download"), "--endpoint", s3.endpoint,
                                  "--bucket", bucket, "--prefix", "data/", "--output", str(out),
                                  "--concurrency", "2"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while len(list((out / "t").glob("*.bin"))) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=20)
    finally:
        stop_process(proc)
    assert proc.returncode == 143, stderr
    assert [line for line in stderr.splitlines() if "SIGTERM" in line] == [
        "stopped (SIGTERM): the same command resumes where this run stopped"]
    assert "Traceback" not in stderr and "Summary:" not in stdout
    assert 2 <= len(list((out / "t").glob("*.bin"))) < 20


def test_what_the_executables_hold():
    """Prefect and its server stack are not in them; what they need at run time is."""
    from PyInstaller.archive.readers import CArchiveReader
    held, compressed = {}, {}
    for name in ("oss-download", "feishu-desktop"):
        archive = CArchiveReader(str(executable(name)))
        files, modules = set(archive.toc), set(archive.open_embedded_archive("PYZ.pyz").toc)
        held[name] = (files, modules)
        # toc: name -> (offset, stored length, length, compressed, typecode); b: libraries, x: data files
        compressed[name] = {kind: {bool(e[3]) for e in archive.toc.values() if e[4] == kind} for kind in "bx"}
        for module in ("prefect", "sqlalchemy", "fastapi", "uvicorn", "prefect_aws", "infra", "moto"):
            assert not [m for m in modules if m == module or m.startswith(module + ".")], (name, module)
        assert any(f.startswith("oss_bulk_downloader-") and f.endswith("METADATA") for f in files)
        assert not [f for f in files if "readline" in f or f.startswith("libtinfo")], name
    # The terminal tool's libraries are stored as they are (inflating them took ~0.2 s at every start); the
    # desktop app, started once per session, keeps everything compressed.
    assert compressed["oss-download"] == {"b": {False}, "x": {True}}
    assert compressed["feishu-desktop"] == {"b": {True}, "x": {True}}
    files, modules = held["oss-download"]
    assert [f for f in files if f.startswith("fastcrc/fastcrc.")]
    assert {"flows.cli", "flows.terminal", "core.run", "boto3", "oss2", "questionary", "rich.live"} <= modules
    models = {f.split("/")[2] for f in files if f.startswith("botocore/data/") and f.count("/") > 2}
    assert models == {"s3", "sts", "sso", "sso-oidc", "signin"}
    assert "botocore/data/endpoints.json" in files
    files, modules = held["feishu-desktop"]
    assert {"bridge.desktop.window", "bridge.service", "tkinter", "websockets.asyncio.server"} <= modules
    assert [f for f in files if f.startswith("_tcl_data/")] and [f for f in files if f.startswith("_tk_data/")]
    assert not [m for m in modules if m.startswith(("boto3", "botocore", "oss2", "flows."))]


# -- feishu-desktop --------------------------------------------------------------------------------------
class FrozenApp(App):
    """dist/feishu-desktop --trace from a clean environment, driven and read as tests/test_desktop.py does."""

    def __init__(self, clean: dict[str, str], *args: str):
        self.display = clean["DISPLAY"]
        self.env = {**os.environ, "DISPLAY": self.display}  # xdotool's and xwd's, not the app's
        self.proc = subprocess.Popen(env_i(clean, executable("feishu-desktop"), "--trace", *args), cwd=clean["HOME"],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, encoding="utf-8",
                                     start_new_session=True)
        self.events: list[dict] = []
        self.stderr: list[str] = []
        self.cond = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()
        threading.Thread(target=lambda: self.stderr.extend(self.proc.stderr), daemon=True).start()


@needs_display
def test_the_desktop_app_completes_a_plugin_job_and_stops_on_sigterm(tmp_path):
    need_tools()
    xvfb, display = start_xvfb()
    fs = FeishuServer(rate_per_second=0).start()
    fs.add_table("app", "tbl", [{"field_id": "fAtt", "field_name": "附件", "type": 17}])
    out = tmp_path / "下载"
    app = None
    try:
        # PREFECT_API_URL would make the Python service record each job in Prefect: the executable has none.
        app = FrozenApp(clean_env(tmp_path, DISPLAY=display, PREFECT_API_URL="http://127.0.0.1:9/api"),
                        "--port", "0", "--output", str(out))
        app.wait("labels", lang="zh", timeout=30)
        app.click("start")
        port = app.wait("running", running=True, timeout=20)["port"]
        assert port and port_open(port)
        assert python_files_mapped(program_pid(app.proc.pid)) == []

        files = [(f"报告{i}.txt", os.urandom(2000 + i), "资料") for i in range(5)]
        files.append(("big.bin", os.urandom(17 * 1024 * 1024), ""))  # fetched as ranged parts
        cells = cells_of(fs, "app", "tbl", files + [("secret.txt", b"no", "")])
        fs.deny_file(cells[-1]["token"])
        plugin = PublishedPlugin(port, fs)
        assert asyncio.run(plugin.accepts_service())
        assert asyncio.run(plugin.download_url_mode(cells, zip_name="第一批")) == "complete"
        card = app.wait("card", history=lambda h: len(h or []) == 1, timeout=20)
        assert card["history"][0].endswith("第一批：6 个成功，1 个失败")
        job = out / "第一批"
        for name, data, folder in files:
            assert (job / folder / name).read_bytes() == data
        assert (out / "第一批.zip").is_file()
        assert [row[0] for row in read_csv(job)[1:]] == [f"rec7/fAtt/{cells[-1]['token']}"]
        assert plugin.results == {**{n: "success" for n in range(1, 7)}, 7: "error"}
        widgets = app.settled_geometry(0, "start")
        size, colours = screenshot(app.env, widgets["window"], ARTIFACTS / "dist-desktop.png")
        assert size > 10_000 and colours > 20, (size, colours)

        m = app.mark()
        os.killpg(app.proc.pid, signal.SIGTERM)  # the program gets it twice: from here and from its bootloader
        app.wait("closed", m)
        assert app.proc.wait(20) == 0, "".join(app.stderr)
        assert not port_open(port)
        assert "Traceback" not in "".join(app.stderr)
    finally:
        if app is not None:
            stop_process(app.proc)
        stop_process(xvfb)
        fs.stop()


# -- what Windows runs, exercised here ------------------------------------------------------------------
def test_downloads_without_pread_and_pwrite_as_on_windows(oss, tmp_path, monkeypatch):
    """Windows has no os.pread/os.pwrite: ranged parts are written, and files hashed, by seek + write/read."""
    from core.engine import Engine, commit, verify
    from core.model import RemoteObject
    from core.sources import StoreConfig
    from core.sources.oss import OssSource
    from core.workarea import Output
    used = {"write": 0, "read": 0}

    def seek_write(fd, data, pos):
        used["write"] += 1
        return commit.seek_write(fd, data, pos)

    def seek_read(fd, size, pos):
        used["read"] += 1
        return verify.seek_read(fd, size, pos)
    monkeypatch.setattr(commit, "_pwrite", seek_write)
    monkeypatch.setattr(verify, "_pread", seek_read)
    bucket = "w-" + uuid.uuid4().hex[:10]
    oss.create_bucket(bucket)
    data = os.urandom(5 * (1 << 20) + 12345)
    etag = oss.put(bucket, "big.bin", data).strip('"')  # OSS sends its CRC64: the whole file is hashed
    source = OssSource(StoreConfig(backend="oss", bucket=bucket, endpoint=oss.endpoint, credentials={
        "access_key_id": oss_server.ACCESS_KEY, "secret_access_key": oss_server.SECRET_KEY}))
    out = Output(tmp_path)
    with Engine(4, part_size=1 << 20, multipart_threshold=2 << 20) as engine:
        got = engine.run(engine.fetch(source.signer(RemoteObject("big.bin", len(data))), out, "big.bin",
                                      len(data), etag))
    out.close()
    assert got.size == len(data) and (tmp_path / "big.bin").read_bytes() == data
    assert used["write"] >= 6 and used["read"] >= 1


def test_no_syncfs_lookup_outside_linux(monkeypatch):
    """ctypes.CDLL(None) raises TypeError on Windows: looked up on Linux only (elsewhere, fsync per file)."""
    from core.engine import commit
    monkeypatch.setattr(sys, "platform", "win32")
    assert commit._syncfs_function() is None
    monkeypatch.setattr(sys, "platform", "linux")
    assert commit._syncfs_function() is not None
