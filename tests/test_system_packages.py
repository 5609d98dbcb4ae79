"""System programs the tests drive, on a newcomer's machine: `make test` installs the missing Debian packages when
it can (.ci/system-packages: root or passwordless sudo, apt-get without a prompt), else says in one line what it
could not install and goes on; a test whose program is missing is skipped with one line naming its package and the
README's install line (tests/conftest.py need_program, @pytest.mark.system), and fails under OSSDL_REQUIRE_SYSTEM=1
(.ci/run). The machine without a program is made with a PATH that lacks it; apt-get, id and sudo are stand-ins."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, SYSTEM_PACKAGES, find_program

SCRIPT = ROOT / ".ci" / "system-packages"
HIDDEN = {"chromium", "chromium-browser", "sudo", "apt-get", "id"}


def test_one_package_list_in_the_readme_the_tests_the_makefile_and_ci():
    readme = (ROOT / "README.md").read_text()
    assert f"sudo apt-get install {SYSTEM_PACKAGES}\n" in readme
    script = re.search(r'^PACKAGES="(.*)"$', SCRIPT.read_text(), re.M)[1].split()
    assert sorted(script) == sorted(SYSTEM_PACKAGES.split() + ["binutils"])  # binutils: make dist (PyInstaller)
    assert re.search(r"^test: venv system-packages$", (ROOT / "Makefile").read_text(), re.M)
    assert "OSSDL_REQUIRE_SYSTEM=1" in (ROOT / ".ci" / "run").read_text()


# -- the install step ------------------------------------------------------------------------------------------------
@pytest.fixture
def machine(tmp_path):
    """A PATH like this machine's but without Chromium (nor sudo, apt-get, id: `fake` puts stand-ins first)."""
    system, fake = tmp_path / "system-bin", tmp_path / "fake-bin"
    system.mkdir()
    fake.mkdir()
    for folder in ("/usr/local/bin", "/usr/bin", "/bin"):
        for entry in os.scandir(folder) if os.path.isdir(folder) else ():
            if entry.name not in HIDDEN and not os.path.lexists(system / entry.name):
                (system / entry.name).symlink_to(entry.path)
    return {"PATH": f"{fake}:{system}", "fake": fake, "system": system, "tmp": tmp_path}


def fake(machine, name: str, script: str) -> None:
    path = machine["fake"] / name
    path.write_text("#!/bin/sh\n" + script)
    path.chmod(0o755)


def as_user(machine, uid: int) -> None:
    fake(machine, "id", f'[ "$1" = -u ] && echo {uid} && exit 0\nexit 1\n')


def apt_get(machine, installs: bool = True, needs_update: bool = False) -> Path:
    """An apt-get that notes its calls (one line each, its arguments); `installs`: makes chromium appear (only after
    an update, with `needs_update`), else fails as apt-get does."""
    calls = machine["tmp"] / "apt-calls"
    chromium = machine["fake"] / "chromium"
    lines = [f'echo "$*" >> {calls}', f'case "$*" in *update*) touch {calls}.updated; exit 0 ;; esac']
    if needs_update:
        lines.append(f"[ -e {calls}.updated ] || exit 100")
    lines.append(f"printf '#!/bin/sh\\n' > {chromium} && chmod +x {chromium}" if installs else "exit 100")
    fake(machine, "apt-get", "\n".join(lines) + "\n")
    return calls


def install_step(machine, **env) -> subprocess.CompletedProcess:
    """.ci/system-packages as `make test` runs it, on the machine (OSSDL_REQUIRE_SYSTEM only when given)."""
    full = {k: v for k, v in os.environ.items() if k != "OSSDL_REQUIRE_SYSTEM"}
    full.update(PATH=machine["PATH"], **env)
    return subprocess.run([str(SCRIPT), sys.executable, str(machine["tmp"] / "state")], env=full, capture_output=True,
                          text=True, timeout=60)


def calls_of(calls: Path) -> list[str]:
    """apt-get's calls: "install" or "update"."""
    return ["update" if "update" in line else "install" for line in calls.read_text().splitlines()] \
        if calls.exists() else []


@pytest.mark.skipif(os.environ.get("OSSDL_REQUIRE_SYSTEM") != "1" and any(
    find_program(*p) is None for p in (("chromium", "chromium-browser"), ("Xvfb",), ("xwd",),
                                       ("/usr/lib/postgresql/*/bin/initdb",), ("objdump",))),
                    reason="not every system package is installed here (OSSDL_REQUIRE_SYSTEM=1: required)")
def test_with_everything_installed_it_only_looks():
    done = subprocess.run([str(SCRIPT), sys.executable], capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stdout, done.stderr) == (0, "", "")


def test_without_root_or_sudo_one_line_says_what_and_make_test_goes_on(machine):
    as_user(machine, 1000)
    calls = apt_get(machine)
    done = install_step(machine)
    assert done.returncode == 0 and done.stdout == ""
    assert done.stderr.splitlines() == ["system packages: could not install chromium (not root, and no passwordless "
                                        "sudo); their tests skip: sudo apt-get install chromium"]
    assert calls_of(calls) == []
    required = install_step(machine, OSSDL_REQUIRE_SYSTEM="1")
    assert required.returncode == 1 and "OSSDL_REQUIRE_SYSTEM=1" in required.stderr


def test_with_passwordless_sudo_the_missing_package_is_installed_without_a_prompt(machine):
    as_user(machine, 1000)
    fake(machine, "sudo", '[ "$1" = -n ] || exit 1\nshift\n[ "$1" = true ] && exit 0\nexec "$@"\n')
    calls = apt_get(machine)
    done = install_step(machine)
    assert done.returncode == 0, done.stderr
    assert done.stderr.splitlines() == ["system packages: installing chromium (apt-get)",
                                        "system packages: installed chromium"]
    assert calls_of(calls) == ["install"]                    # no update: the package lists sufficed
    assert "install --no-install-recommends chromium" in calls.read_text()
    again = install_step(machine)                             # installed: only looks
    assert (again.returncode, again.stderr) == (0, "") and len(calls_of(calls)) == 1


def test_as_root_apt_get_update_only_when_the_lists_lack_the_package(machine):
    as_user(machine, 0)
    calls = apt_get(machine, needs_update=True)
    done = install_step(machine)
    assert done.returncode == 0 and done.stderr.splitlines()[-1] == "system packages: installed chromium"
    assert calls_of(calls) == ["install", "update", "install"]


def test_a_failed_install_is_one_line_and_not_tried_again_each_time(machine):
    as_user(machine, 0)
    calls = apt_get(machine, installs=False)
    done = install_step(machine)
    state = machine["tmp"] / "state"
    assert done.returncode == 0
    assert done.stderr.splitlines() == [
        "system packages: installing chromium (apt-get)",
        f"system packages: could not install chromium (apt-get could not, see {state}.log); their tests skip:"
        " sudo apt-get install chromium"]
    tried = len(calls_of(calls))
    again = install_step(machine)
    assert again.returncode == 0 and again.stderr.splitlines() == [
        f"system packages: could not install chromium (apt-get failed before, see {state}.log; rm {state} to try"
        " again); their tests skip: sudo apt-get install chromium"]
    assert len(calls_of(calls)) == tried
    assert install_step(machine, OSSDL_REQUIRE_SYSTEM="1").returncode == 1  # CI always tries, and stops
    assert len(calls_of(calls)) > tried


# -- the tests that need a program -----------------------------------------------------------------------------------
NEEDS = '''
import pytest
from tests.conftest import need_program

@pytest.mark.system("chromium", "chromium", "chromium-browser")
def test_marked(request):
    request.getfixturevalue("never_started")  # a marked test is skipped before its fixtures start

def test_asks(tmp_path):
    need_program("strace", "strace")
'''


def run_needing(tmp_path, machine, **env) -> subprocess.CompletedProcess:
    (tmp_path / "test_needs.py").write_text(NEEDS)
    (machine["system"] / "strace").unlink(missing_ok=True)  # nor strace, here
    full = {k: v for k, v in os.environ.items() if k != "OSSDL_REQUIRE_SYSTEM"}
    full.update(PATH=f"{Path(sys.executable).parent}:{machine['system']}", **env)
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-n0", "-p", "no:cacheprovider", "-p",
                           "tests.conftest", "--rootdir", str(tmp_path), str(tmp_path / "test_needs.py")], cwd=ROOT,
                          env=full, capture_output=True, text=True, timeout=120)


def test_a_missing_program_skips_the_test_in_one_line_naming_the_package(tmp_path, machine):
    done = run_needing(tmp_path, machine)
    assert done.returncode == 0, done.stdout
    install = f"the suite's system packages: sudo apt-get install {SYSTEM_PACKAGES}"
    skipped = [line for line in done.stdout.splitlines() if line.startswith("SKIPPED")]
    assert len(skipped) == 2, done.stdout
    assert skipped[0].startswith("SKIPPED [1] ")           # pointing at the test, not at conftest.py
    assert skipped[0].endswith(f"test_needs.py:5: chromium is not installed (Debian package chromium); {install}")
    assert skipped[1].endswith(f": strace is not installed (Debian package strace); {install}")
    assert "2 skipped" in done.stdout


def test_with_ossdl_require_system_a_missing_program_fails(tmp_path, machine):
    done = run_needing(tmp_path, machine, OSSDL_REQUIRE_SYSTEM="1")
    assert done.returncode == 1, done.stdout
    assert "1 failed, 1 error" in done.stdout
    assert "chromium is not installed (Debian package chromium)" in done.stdout and "(OSSDL_REQUIRE_SYSTEM=1)" in done.stdout
    assert "never_started" not in done.stdout  # failed before its fixtures
