"""What `make demo` and `make test` ask of a fresh machine: the demo never needs Chromium, the tests say what
they install and why before installing it and, without root, what to do instead; the peer-model environment
is a pinned lock installed without dependency resolution."""

from __future__ import annotations

import os
import re
import shutil
import subprocess

from helpers import ROOT

MISSING = "/nonexistent/torchsmith-test/chromium"


def make(*args: str, as_user: bool = False) -> subprocess.CompletedProcess:
    command = ["make", "--no-print-directory", "-C", str(ROOT), f"CHROMIUM={MISSING}", *args]
    if as_user and os.geteuid() == 0:  # the target installs Chromium when it runs as root: run it as nobody
        command = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *command]
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}  # under `make test` too
    return subprocess.run(command, capture_output=True, text=True, timeout=120, env=env)


def test_make_demo_does_not_need_chromium():
    planned = make("-n", "demo")
    assert planned.returncode == 0, planned.stderr
    assert MISSING not in planned.stdout and "apt-get" not in planned.stdout


def test_make_test_names_chromium_before_installing_it():
    planned = make("-n", "test-main").stdout
    announce = planned.index(f"== chromium: {MISSING} is missing; the browser tests")
    assert announce < planned.index("apt-get update") < planned.index("== test-main")


def test_without_root_the_chromium_step_says_what_to_do_and_installs_nothing():
    assert shutil.which("make") and (os.geteuid() != 0 or shutil.which("setpriv"))
    done = make(MISSING, as_user=True)
    assert done.returncode != 0
    assert done.stdout.splitlines()[0].startswith(f"== chromium: {MISSING} is missing")
    assert "installing Chromium needs root. Run 'sudo apt-get install chromium'" in done.stderr
    assert "make test CHROMIUM=/path/to/chromium" in done.stderr
    assert "Reading package lists" not in done.stdout + done.stderr  # apt-get never ran


def test_the_interop_lock_pins_every_package_and_leaves_out_what_the_suite_never_loads():
    lines = [ln for ln in (ROOT / "tests/interop/requirements.txt").read_text().splitlines() if ln and not ln.startswith("#")]
    assert lines and all(re.fullmatch(r"[A-Za-z0-9_.\-]+==[\w.+]+( ; sys_platform == \"linux\")?", ln) for ln in lines), lines
    names = {ln.split("==")[0].lower().replace("_", "-") for ln in lines}
    assert {"torch", "torchvision", "timm", "transformers", "pytest"} <= names
    assert not names & {"triton", "nvidia-cusolver", "playwright", "hypothesis"}
    recipe = (ROOT / "Makefile").read_text()
    assert "pip install --progress-bar on --no-deps -r $(INTEROP_LOCK)" in recipe
