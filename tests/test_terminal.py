"""The terminal tool driven as a person drives it: the real program in a pseudo-terminal (pexpect), Ctrl-C typed
as a keystroke (the whole foreground process group gets it), the screen read back through a terminal emulator
(pyte) at the size the person has."""
from __future__ import annotations

import io
import os
import re
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pexpect
import pyte
import pytest

from core.report import human_bytes
from tests.conftest import ROOT, flow_run_states, run_cli
from tests.test_download import body, leftovers, local_files, put

DOWN, ENTER, BACKSPACE, CTRL_C = "\x1b[B", "\r", "\x7f", "\x03"
ANSI = r"(?:\x1b\[[0-9;?]*[A-Za-z])*"
SECRET = "typed-Secret-4711"
# Prefect's own console lines that must never reach the person's screen.
PREFECT_NOISE = ("Starting temporary server", "See https://docs", "Beginning flow run", "Finished in state",
                 "Task run", "Crash detected", "Stopping temporary server", "Error logging to API",
                 "EventsWorker", "Prefect collects anonymous usage data", "Traceback")


def styled(*words: str) -> str:
    """A regex for words as rich prints them: styles may wrap any word."""
    return (ANSI + r"\s*" + ANSI).join(words)


class Terminal(pyte.Screen):
    """The terminal the person looks at, drawn as the child writes (pyte), answering what a terminal answers:
    asked where its cursor is (ESC [6n, which prompt_toolkit sends with every question and then waits up to a
    second for), it tells the child, as xterm does."""

    def __init__(self, child: pexpect.spawn, rows: int, cols: int):
        super().__init__(cols, rows)
        self.child, self.stream = child, pyte.Stream(self)

    def write_process_input(self, data: str) -> None:
        self.child.send(data)


class ScreenLog(io.StringIO):
    """Everything the child prints, kept, and fed to its terminal as it comes."""

    def __init__(self, terminal: Terminal):
        super().__init__()
        self.terminal = terminal

    def write(self, text: str) -> int:
        self.terminal.stream.feed(text)
        return super().write(text)


def spawn(args: list[str], env: dict, size: tuple[int, int] = (50, 200), program: str | None = None) -> pexpect.spawn:
    """The CLI in a pseudo-terminal of `size` (rows, columns); everything it prints is kept in child.screen_log."""
    command, argv = (program, args) if program else (sys.executable, ["-m", "flows.download", *args])
    child = pexpect.spawn(command, argv, cwd=str(ROOT), env=env, encoding="utf-8", timeout=60, dimensions=size,
                          # the terminal echoes ^C where it is typed: possibly inside a character being drawn
                          codec_errors="replace")
    child.screen_log, child.size = ScreenLog(Terminal(child, *size)), size
    child.logfile_read = child.screen_log
    return child


def screen(child: pexpect.spawn) -> list[str]:
    """What the terminal shows now, line by line, as a terminal emulator of the child's size draws it."""
    rows, cols = child.size
    emulated = pyte.Screen(cols, rows)
    pyte.Stream(emulated).feed(child.screen_log.getvalue())
    return [line.rstrip() for line in emulated.display]


def finish(child: pexpect.spawn, timeout: float = 120) -> str:
    child.expect(pexpect.EOF, timeout=timeout)
    child.close()
    return child.screen_log.getvalue()


def terminal_env(tmp_path, prefect_api: str | None) -> dict:
    """A first-time user's environment: no credentials, no remembered answers, no CI markers; Prefect at
    `prefect_api`, or (None) nothing set, Prefect's home inside tmp_path: the default path."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("AWS_", "OSS_", "PREFECT_")) and k not in ("CI", "DO_NOT_TRACK")}
    env.update(XDG_CONFIG_HOME=str(tmp_path / "config"), TERM="xterm-256color", HOME=str(tmp_path / "home"),
               AWS_CONFIG_FILE=str(tmp_path / "none"), AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "none"),
               AWS_EC2_METADATA_DISABLED="true", PREFECT_HOME=str(tmp_path / "prefect-home"),
               PYTHONPATH=str(ROOT))
    if prefect_api:
        env["PREFECT_API_URL"] = prefect_api
    return env


def with_keys(env: dict) -> dict:
    return dict(env, AWS_ACCESS_KEY_ID="test-access-key", AWS_SECRET_ACCESS_KEY="x")


def wait_for_files(child: pexpect.spawn, folder: Path, count: int) -> None:
    while len(list(folder.glob("*.bin"))) < count:
        child.expect([pexpect.TIMEOUT], timeout=0.1)


def flow_run_state_in(prefect_home: Path) -> list[str]:
    """State types of the flow runs the temporary server recorded (its database outlives it)."""
    with sqlite3.connect(prefect_home / "prefect.db") as db:
        return [row[0] for row in db.execute("SELECT state_type FROM flow_run")]


def processes_with(marker: str) -> list[int]:
    """Live processes whose environment contains `marker` (e.g. this test's PREFECT_HOME)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and marker.encode() in (entry / "environ").read_bytes():
                if (entry / "stat").read_text().split()[2] != "Z":
                    found.append(int(entry.name))
        except OSError:
            pass
    return found


def test_first_run_prompts_with_the_flag_defaults_preview_confirm_summary(s3, bucket, tmp_path, prefect_api):
    keys = [f"data/t/{i:02d}.jpg" for i in range(12)] + ["data/t/skip.txt"]
    for key in keys:
        put(s3, bucket, key, body(key, 2048))
    out = tmp_path / "out"
    env = terminal_env(tmp_path, prefect_api)
    # "Empty endpoint: AWS S3" is boto3's default endpoint, which the AWS SDK lets a user point elsewhere.
    env["AWS_ENDPOINT_URL_S3"] = s3.endpoint

    child = spawn([], env)
    child.expect("Backend")
    child.expect("» " + ANSI + "s3")               # the flag's default, not oss
    child.send(ENTER)
    child.expect(r"Endpoint URL .*empty: AWS S3")
    child.send(ENTER)                              # empty endpoint accepted: AWS S3
    child.expect("Bucket")
    child.send(ENTER)                              # empty bucket: refused with the reason, asked again
    child.expect("cannot be empty")
    child.sendline(bucket)
    child.expect("Prefix")
    child.sendline("data/")
    child.expect("Output folder: " + ANSI + r"\./downloads")  # the flag's default
    child.send(BACKSPACE * 20 + str(out) + ENTER)
    child.expect("Concurrency: " + ANSI + "5")     # the flag's default
    child.send(BACKSPACE + "many" + ENTER)         # not a number: re-asked
    child.expect("whole number")
    child.send(BACKSPACE * 4 + "4" + ENTER)
    child.expect("suffixes or patterns")
    child.sendline("*.JPG")                        # a glob
    child.expect("Access key id")                  # no credentials anywhere: asked, secret not echoed
    child.sendline("test-access-key")
    child.expect("Access key secret")
    child.sendline(SECRET)
    child.expect(r"Preview: 12 objects, 24\.0 KiB \(1 filtered out\)")
    child.expect(r"already present +0 objects, 0 B")
    child.expect(r"to download +12 objects, 24\.0 KiB")
    child.expect("Largest:")
    child.expect("First 12 keys:")
    child.expect(r"Download 12 objects \(24\.0 KiB\)\?")
    child.send("y")
    child.expect(r"downloaded +12")
    child.expect(r"size +24\.0 KiB")
    log = finish(child)
    assert child.exitstatus == 0
    assert SECRET not in log
    assert not [noise for noise in PREFECT_NOISE if noise in log]
    assert local_files(out) == {k[len("data/"):]: body(k, 2048) for k in keys if k.endswith(".jpg")}
    remembered = (tmp_path / "config" / "oss-bulk-downloader" / "last-answers.json").read_text()
    assert bucket in remembered and SECRET not in remembered

    # Later: three new objects. The last answers are the defaults; the question counts what is left. (On the
    # core alone from here: the questions, the preview and the summary are the same.)
    for key in ["data/t/new1.jpg", "data/t/new2.jpg", "data/t/new3.jpg"]:
        put(s3, bucket, key, body(key, 1024))
    s3.clear_faults()
    env = with_keys(env)
    child = spawn(["--no-prefect"], env)
    for prompt in ("Backend", "Endpoint URL", "Bucket", "Prefix", "Output folder", "Concurrency", "suffixes"):
        child.expect(prompt)
        child.send(ENTER)
    child.expect(r"already present +12 objects, 24\.0 KiB")
    child.expect(r"Download 3 objects \(3\.0 KiB\)\?")
    child.send("y")
    child.expect(r"already present +12")
    finish(child)
    assert child.exitstatus == 0
    assert sum(s3.get_count(bucket, k) for k in keys) == 0

    # Nothing left: said so, nothing asked, no flow run for nothing.
    child = spawn(["--output", str(out), "--no-prefect"], env)
    for prompt in ("Backend", "Endpoint URL", "Bucket", "Prefix", "Concurrency", "suffixes"):
        child.expect(prompt)
        child.send(ENTER)
    child.expect(r"nothing to download: all 15 objects are already present")
    log = finish(child)
    assert child.exitstatus == 0 and "Download" not in log.split("Preview:")[-1]


def test_ctrl_c_at_a_question_says_nothing_was_downloaded(s3, bucket, tmp_path, prefect_api):
    child = spawn(["--backend", "s3", "--endpoint", s3.endpoint], terminal_env(tmp_path, prefect_api))
    child.expect("Bucket")
    child.send(CTRL_C)
    child.expect("interrupted: nothing was downloaded")
    log = finish(child, timeout=5)
    assert child.exitstatus == 130
    assert "resume" not in log and "Traceback" not in log


def test_ctrl_c_on_the_default_path_stops_within_5_s_records_crashed_and_resumes(s3, bucket, tmp_path):
    """No PREFECT_API_URL: the temporary Prefect server must survive the Ctrl-C typed at the terminal."""
    keys = [f"data/c/{i:02d}.bin" for i in range(40)]
    for key in keys:
        put(s3, bucket, key, body(key, 30_000))
        s3.add_fault(bucket, key, "delay", seconds=0.3)
    out = tmp_path / "out"
    env = with_keys(terminal_env(tmp_path, None))
    flags = ["--endpoint", s3.endpoint, "--bucket", bucket, "--prefix", "data/", "--output", str(out),
             "--concurrency", "2", "--yes"]
    child = spawn(flags, env, size=(24, 80))
    child.expect("starting a temporary Prefect server")  # a status line while the ~10 s pass
    child.expect("downloading")
    wait_for_files(child, out / "c", 3)
    bar = screen(child)
    servers = [pid for pid in processes_with(f"PREFECT_HOME={tmp_path / 'prefect-home'}")
               if b"uvicorn" in Path(f"/proc/{pid}/cmdline").read_bytes()]
    assert len(servers) == 1 and os.getsid(servers[0]) != os.getsid(child.pid)   # out of the terminal's reach
    assert b"AWS_SECRET_ACCESS_KEY" not in Path(f"/proc/{servers[0]}/environ").read_bytes()
    child.sendintr()
    log = finish(child, timeout=5)                   # the 5 s bound
    assert child.exitstatus == 130
    said = [line for line in log.splitlines() if "interrupted" in line]
    assert len(said) == 1 and "the same command resumes where this run stopped" in said[0]
    assert not [noise for noise in PREFECT_NOISE if noise in log]
    assert flow_run_state_in(tmp_path / "prefect-home") == ["CRASHED"]
    assert not processes_with(f"PREFECT_HOME={tmp_path / 'prefect-home'}"), "the temporary server outlived the run"
    # Readable at 80 columns: the counts, bytes, speed and ETA whole, nothing cut with "…".
    counts = [line for line in bar if re.match(r"downloading +\d+/40 objects +[\d.]+ KiB of 1\.1 MiB$", line)]
    speeds = [line for line in bar if re.search(r"━.* [\d.]+ (B|KiB|MiB)/s +ETA \d:\d\d:\d\d$", line)]
    assert len(counts) == 1 and len(speeds) == 1, bar
    assert not [line for line in bar if "…" in line], bar

    got_before = {k: s3.get_count(bucket, k) for k in keys}
    finished = {f"data/c/{p.name}" for p in (out / "c").glob("*.bin")}
    assert 3 <= len(finished) < 40
    s3.clear_faults()
    child = spawn(flags, env, size=(24, 80))
    child.expect("starting a temporary Prefect server")
    waited_from = time.monotonic()
    child.expect(r"already present +[1-9]")
    child.expect(r"time +([\d.]+) s")
    # The summary's time is the whole command's: at least what this test saw from the status line on.
    assert float(child.match.group(1)) >= time.monotonic() - waited_from
    finish(child)
    assert child.exitstatus == 0
    assert local_files(out) == {k[len("data/"):]: body(k, 30_000) for k in keys}
    refetched = [k for k in finished if s3.get_count(bucket, k) > got_before[k]]
    assert len(refetched) <= 2 * 2, refetched
    assert leftovers(out) == []
    assert not processes_with(f"PREFECT_HOME={tmp_path / 'prefect-home'}")


def test_second_ctrl_c_exits_at_once_without_a_traceback(s3, bucket, tmp_path):
    keys = [f"data/d/{i:02d}.bin" for i in range(30)]
    for key in keys:
        put(s3, bucket, key, body(key, 10_000))
        s3.add_fault(bucket, key, "delay", seconds=0.3)
    out = tmp_path / "out"
    env = with_keys(terminal_env(tmp_path, None))
    child = spawn(["--endpoint", s3.endpoint, "--bucket", bucket, "--prefix", "data/", "--output", str(out),
                   "--concurrency", "2"], env, size=(24, 80))
    child.expect(r"Download 30 objects")             # interactive: a question before the download
    child.send("y")
    child.expect("downloading")
    wait_for_files(child, out / "d", 2)
    child.sendintr()
    child.expect("interrupted: ")                    # the first one is being handled: the run is ending
    child.sendintr()                                 # impatient
    log = finish(child, timeout=5)
    assert child.exitstatus == 130
    assert "interrupted again: stopped at once; the same command resumes where this run stopped" in log
    assert not [noise for noise in PREFECT_NOISE if noise in log]
    for _ in range(300):  # the temporary server was told to stop, not waited for
        if not processes_with(f"PREFECT_HOME={tmp_path / 'prefect-home'}"):
            break
        time.sleep(0.1)
    assert not processes_with(f"PREFECT_HOME={tmp_path / 'prefect-home'}"), "the temporary server was left running"


def test_ctrl_c_with_a_running_server_through_the_oss_download_script(s3, bucket, tmp_path, prefect_api):
    keys = [f"data/r/{i:02d}.bin" for i in range(30)]
    for key in keys:
        put(s3, bucket, key, body(key, 10_000))
        s3.add_fault(bucket, key, "delay", seconds=0.3)
    out = tmp_path / "out"
    env = with_keys(terminal_env(tmp_path, prefect_api))
    flags = ["--endpoint", s3.endpoint, "--bucket", bucket, "--prefix", "data/", "--output", str(out),
             "--concurrency", "2", "--yes"]
    script = str(Path(sys.executable).parent / "oss-download")
    child = spawn(flags, env, size=(24, 80), program=script)
    child.expect("downloading")
    wait_for_files(child, out / "r", 3)
    child.sendintr()
    log = finish(child, timeout=5)
    assert child.exitstatus == 130
    said = [line for line in log.splitlines() if "interrupted" in line]
    assert len(said) == 1 and "the same command resumes where this run stopped" in said[0]
    assert not [noise for noise in PREFECT_NOISE if noise in log]   # as quiet as python -m flows.download
    assert flow_run_states(out) == ["CRASHED"]


def plain(text: str) -> list[str]:
    """The lines a terminal was sent, without styles and with each redraw (\\r) as its own line."""
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", text)
    return [line.strip() for line in re.split(r"\r\n|\r|\n", text)]


def test_round_2_is_its_own_phase_with_its_own_count_and_eta(s3, bucket, tmp_path, prefect_api):
    keys = [f"data/f/{i}.bin" for i in range(8)]
    for key in keys:
        put(s3, bucket, key, body(key, 5_000))
    flaky = keys[:4]
    for key in flaky:
        s3.add_fault(bucket, key, "status", status=503, code="SlowDown", times=2)
    out = tmp_path / "out"
    child = spawn(["--endpoint", s3.endpoint, "--bucket", bucket, "--prefix", "data/", "--output", str(out),
                   "--retry-backoff", "0.5", "--yes"], with_keys(terminal_env(tmp_path, prefect_api)), size=(24, 80))
    child.expect("round 2")
    log = finish(child)
    assert child.exitstatus == 0
    assert local_files(out) == {k[len("data/"):]: body(k, 5_000) for k in keys}
    lines = plain(log)
    phase = [(i, re.match(r"round 2 +(\d+)/(\d+) retried", line)) for i, line in enumerate(lines)]
    phase = [(i, m) for i, m in phase if m]
    assert phase and all(int(m.group(2)) == 4 for _, m in phase)
    # While it retries, its ETA is never the finished "0:00:00"; its count reaches 4/4.
    unfinished = [lines[i + 1] for i, m in phase if int(m.group(1)) < 4]
    assert unfinished and not [bar for bar in unfinished if "ETA 0:00:00" in bar]
    assert [m for _, m in phase if m.group(1) == "4"]
    assert [line for line in lines if re.match(r"round 1 +8/8 objects", line)]
    final = screen(child)
    assert [line for line in final if re.match(r"round 2 +4/4 retried", line)], final


def test_empty_runs_warn_once_and_fail_only_when_asked(s3, bucket, tmp_path, prefect_api):
    for key in ["data/a.jpg", "data/b.jpg", "data/c.txt"]:
        put(s3, bucket, key)
    env = with_keys(terminal_env(tmp_path, prefect_api))
    base = ["--endpoint", s3.endpoint, "--bucket", bucket, "--output", str(tmp_path / "out")]

    # At a terminal: the preview already knows, so no question and no flow run (nor Prefect, here).
    child = spawn(base + ["--prefix", "/data/", "--no-prefect"], env)
    log = finish(child)
    assert child.exitstatus == 0
    warned = [line for line in plain(log) if line.startswith("warning:")]
    assert warned == [f"warning: nothing to download: no objects under s3://{bucket}//data/"
                      " (keys rarely start with '/': did you mean --prefix data/?)"]
    child = spawn(base + ["--prefix", "data/", "--include-suffix", "*.gif", "--fail-if-empty", "--no-prefect"], env)
    log = finish(child)
    assert child.exitstatus == 3
    assert [line for line in plain(log) if line.startswith(("warning:", "error:"))] == [
        f"error: nothing to download: all 3 objects under s3://{bucket}/data/ are filtered out by"
        " --include-suffix *.gif"]

    # From a script: an empty prefix is answered by the core alone (no flow run for nothing, as at a terminal);
    # objects that are all filtered out go through the flow, and with --fail-if-empty its run fails in Prefect.
    out = tmp_path / "script"
    flags = ["--endpoint", s3.endpoint, "--bucket", bucket, "--output", str(out), "--yes"]
    quiet = run_cli(flags + ["--prefix", "/data/"], prefect_api)
    assert quiet.returncode == 0, quiet.stderr
    assert [line for line in quiet.stderr.splitlines() if line.startswith("warning:")] == [
        f"warning: nothing to download: no objects under s3://{bucket}//data/"
        " (keys rarely start with '/': did you mean --prefix data/?)"]
    failing = run_cli(flags + ["--prefix", "data/", "--include-suffix", "*.gif", "--fail-if-empty"], prefect_api)
    assert failing.returncode == 3, failing.stderr
    assert [line for line in failing.stderr.splitlines() if line.startswith(("warning:", "error:"))] == [
        f"error: nothing to download: all 3 objects under s3://{bucket}/data/ are filtered out by"
        " --include-suffix *.gif"]
    assert "Traceback" not in failing.stderr
    assert flow_run_states(out) == ["FAILED"]


def test_dry_run_prints_the_interactive_preview_and_creates_nothing(s3, bucket, tmp_path, cli):
    """On the core alone (the dry run's flow path is in test_download's filter_dry_run test)."""
    keys = [f"data/{i}.jpg" for i in range(5)] + ["data/photos/2024/x.PNG", "data/other/y.png", "data/readme.txt"]
    for key in keys:
        put(s3, bucket, key, body(key, 1000 + 100 * len(key)))
    out = tmp_path / "out"
    env = with_keys(terminal_env(tmp_path, None))
    flags = ["--endpoint", s3.endpoint, "--bucket", bucket, "--prefix", "data/", "--output", str(out)]
    first = cli(flags + ["--include-suffix", "*.jpg", "--yes"])
    assert first.returncode == 0, first.stderr
    assert len(local_files(out)) == 5
    selection = ["--include-suffix", "*.jpg,photos/**/*.png"]   # globs: every .jpg, .png only below photos/
    dry = cli(flags + selection + ["--dry-run"])
    assert dry.returncode == 0, dry.stderr
    before = sorted(p.name for p in out.iterdir())
    text = dry.stdout.strip().splitlines()
    assert text[0].startswith("Preview: 6 objects,") and text[0].endswith("(2 filtered out)")
    assert re.match(r"already present +5 objects, [\d.]+ KiB \(from an earlier run\)", text[1].strip())
    left = human_bytes(len(body("data/photos/2024/x.PNG", 1000 + 100 * len("data/photos/2024/x.PNG"))))
    assert re.match(rf"to download +1 object, {left}$", text[2].strip())
    assert "Largest:" in text and "First 6 keys:" in text and any(line.endswith("photos/2024/x.PNG") for line in text)

    child = spawn(flags + selection + ["--no-prefect"], env)
    child.expect(rf"Download 1 object \({left}\)\?")
    child.send("n")
    log = finish(child)
    assert child.exitstatus == 0
    shown = [line for line in plain(log) if line]
    start = shown.index(text[0].strip())
    assert shown[start:start + len(text)] == [line.strip() for line in text]   # the same preview, line for line
    assert sorted(p.name for p in out.iterdir()) == before

    fresh = tmp_path / "never-created" / "out"
    dry = cli(["--endpoint", s3.endpoint, "--bucket", bucket, "--prefix", "data/", "--output", str(fresh),
               "--dry-run"])
    assert dry.returncode == 0 and "Preview: 8 objects" in dry.stdout, dry.stderr
    assert not (tmp_path / "never-created").exists()


@pytest.mark.parametrize("program", ["oss-download", "python -m flows.download"])
def test_help_describes_every_flag_with_examples_credentials_and_exit_codes(program, tmp_path):
    from flows.arguments import build_parser
    command = ([str(Path(sys.executable).parent / "oss-download")] if program == "oss-download" else
               [sys.executable, "-m", "flows.download"])
    env = dict(os.environ, PYTHONPATH=str(ROOT), COLUMNS="100")
    shown = subprocess.run(command + ["--help"], cwd=ROOT, env=env, capture_output=True, text=True)
    assert shown.returncode == 0 and shown.stdout.startswith(f"usage: {program} ")
    for part in ("examples:", "AWS_ACCESS_KEY_ID", "OSS_ACCESS_KEY_ID", "PREFECT_API_URL", "exit codes:",
                 "130", "--fail-if-empty"):
        assert part in shown.stdout, part
    for action in build_parser()._actions:
        assert action.help, action.option_strings
        assert any(flag in shown.stdout for flag in action.option_strings)
    version = subprocess.run(command + ["--version"], cwd=ROOT, env=env, capture_output=True, text=True)
    assert version.returncode == 0 and re.fullmatch(rf"{re.escape(program)} \d+\.\d+\.\d+\n", version.stdout)
    bad = subprocess.run(command + ["--bucket", "b", "--include-suffix", "*.[jp"], cwd=ROOT, env=env,
                         capture_output=True, text=True, stdin=subprocess.DEVNULL)
    assert bad.returncode == 2 and bad.stderr.strip().splitlines() == [
        "error: --include-suffix: unclosed '[' in pattern '*.[jp'"]


def test_a_mirrors_preview_shows_what_it_would_delete_and_asks_defaulting_to_no(s3, bucket, tmp_path):
    put(s3, bucket, "data/keep.jpg", body("data/keep.jpg", 2000))
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.jpg").write_bytes(body("data/keep.jpg", 2000))
    (out / "old").mkdir()
    (out / "old" / "gone.jpg").write_bytes(b"x" * 3000)
    env = with_keys(terminal_env(tmp_path, None))
    child = spawn(["--endpoint", s3.endpoint, "--bucket", bucket, "--prefix", "data/", "--output", str(out),
                   "--delete", "--no-prefect"], env)
    child.expect(r"and delete 1 object \(2\.9 KiB\) here\?")
    child.send(ENTER)  # the default: No
    log = finish(child)
    shown = [line for line in plain(log) if line]
    assert any(re.match(r"would delete +1 object, 2\.9 KiB", line) for line in shown), shown
    assert any(line.endswith("old/gone.jpg") for line in shown) and any("Download 0 objects" in l for l in shown)
    assert child.exitstatus == 0 and "cancelled: nothing downloaded" in log
    assert (out / "old" / "gone.jpg").exists()
