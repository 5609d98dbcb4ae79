"""Interactive mode, driven as a person would: the real program in a pseudo-terminal (pexpect)."""
from __future__ import annotations

import os
import sys

import pexpect

from tests.conftest import ROOT
from tests.test_download import body, leftovers, local_files, put

DOWN, ENTER, BACKSPACE = "\x1b[B", "\r", "\x7f"
ANSI = r"(?:\x1b\[[0-9;?]*[A-Za-z])*"


def styled(*words: str) -> str:
    """A regex for words as rich prints them: styles may wrap any word."""
    return (ANSI + r"\s*" + ANSI).join(words)
SECRET = "typed-Secret-4711"


def spawn(args: list[str], env: dict) -> pexpect.spawn:
    return pexpect.spawn(sys.executable, ["-m", "flows.download", *args], cwd=str(ROOT), env=env,
                         encoding="utf-8", timeout=90, dimensions=(50, 200))


def terminal_env(tmp_path, prefect_api) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "OSS_"))}
    env.update(XDG_CONFIG_HOME=str(tmp_path / "config"), PREFECT_API_URL=prefect_api, TERM="xterm-256color",
               HOME=str(tmp_path / "home"), AWS_CONFIG_FILE=str(tmp_path / "none"),
               AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "none"), AWS_EC2_METADATA_DISABLED="true")
    return env


def test_prompts_preview_confirm_summary_then_resume(s3, bucket, tmp_path, prefect_api):
    keys = [f"data/t/{i:02d}.jpg" for i in range(12)] + ["data/t/skip.txt"]
    for key in keys:
        put(s3, bucket, key, body(key, 2048))
    out = tmp_path / "out"
    env = terminal_env(tmp_path, prefect_api)

    child = spawn([], env)
    child.expect("Backend")
    child.send(DOWN + ENTER)                       # oss → s3
    child.expect("Endpoint URL")
    child.sendline(s3.endpoint)
    child.expect("Bucket")
    child.send(ENTER)                              # empty bucket: refused with the reason, asked again
    child.expect("cannot be empty")
    child.sendline(bucket)
    child.expect("Prefix")
    child.sendline("data/")
    child.expect("Output folder")
    child.send(BACKSPACE * 20 + str(out) + ENTER)
    child.expect("Concurrency")
    child.send(BACKSPACE + "many" + ENTER)         # not a number: re-asked
    child.expect("whole number")
    child.send(BACKSPACE * 4 + "4" + ENTER)
    child.expect("suffixes")
    child.sendline(".JPG")
    child.expect("Access key id")                  # no credentials anywhere: asked, secret not echoed
    child.sendline("test-access-key")
    child.expect("Access key secret")
    child.sendline(SECRET)
    child.expect(styled("12", "objects,", "24.0", "KiB", r"\(1", "filtered", "out\);", "0", "already", "present"))
    child.expect("First 12 keys")
    child.expect(r"Download 12 objects\?")
    child.send("y")
    child.expect("downloaded +12")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0
    assert SECRET not in child.before
    assert local_files(out) == {k[len("data/"):]: body(k, 2048) for k in keys if k.endswith(".jpg")}
    remembered = (tmp_path / "config" / "oss-bulk-downloader" / "last-answers.json").read_text()
    assert bucket in remembered and SECRET not in remembered

    # Second run: the last answers are the defaults; everything is already there.
    s3.clear_faults()
    child = spawn([], env)
    for prompt in ("Backend", "Endpoint URL", "Bucket", "Prefix", "Output folder", "Concurrency", "suffixes"):
        child.expect(prompt)
        child.send(ENTER)
    child.expect("Access key id")
    child.sendline("test-access-key")
    child.expect("Access key secret")
    child.sendline(SECRET)
    child.expect(styled("12", "already", "present"))
    child.expect(r"Download 12 objects\?")
    child.send("y")
    child.expect("already present +12")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0
    assert sum(s3.get_count(bucket, k) for k in keys) == 0


def test_flags_skip_questions_and_ctrl_c_then_rerun(s3, bucket, tmp_path, prefect_api):
    keys = [f"data/c/{i:02d}.bin" for i in range(30)]
    for key in keys:
        put(s3, bucket, key, body(key, 30_000))
        s3.add_fault(bucket, key, "delay", seconds=0.3)
    out = tmp_path / "out"
    env = terminal_env(tmp_path, prefect_api)
    env.update(AWS_ACCESS_KEY_ID="test-access-key", AWS_SECRET_ACCESS_KEY="x")
    flags = ["--endpoint", s3.endpoint, "--bucket", bucket, "--prefix", "data/", "--output", str(out),
             "--concurrency", "2"]
    child = spawn(flags, env)
    child.expect(styled("30", "objects"))          # given as flags: nothing asked, straight to the preview
    child.expect(r"Download 30 objects\?")
    child.send("y")
    child.expect("downloading")
    while len(list((out / "c").glob("*.bin"))) < 3:
        child.expect([pexpect.TIMEOUT], timeout=0.1)
    child.sendintr()
    child.expect("the same command resumes")
    child.expect(pexpect.EOF, timeout=10)
    child.close()
    assert child.exitstatus == 130
    assert len(list((out / "c").glob("*.bin"))) < 30

    s3.clear_faults()
    child = spawn(flags + ["--yes"], env)
    child.expect("already present +[1-9]")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0
    assert local_files(out) == {k[len("data/"):]: body(k, 30_000) for k in keys}
    assert leftovers(out) == []
