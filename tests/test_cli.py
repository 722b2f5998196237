from __future__ import annotations

import json
import subprocess
import sys

import pytest

from torchsmith.cli import main


def test_list_json(capsys):
    assert main(["list", "resnet*", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {r["name"]: r["params"] for r in rows if r["name"] in ("resnet18", "resnet50")} == {
        "resnet18": 11_689_512,
        "resnet50": 25_557_032,
    }
    assert all(r["name"].startswith("resnet") for r in rows)


def test_list_table(capsys):
    assert main(["list", "unet"]) == 0
    out = capsys.readouterr().out
    assert "unet" in out and "32,090,627" in out


def test_list_no_match_exits_1(capsys):
    assert main(["list", "nothing*"]) == 1
    assert "no registered model matches 'nothing*'" in capsys.readouterr().err


def test_bad_usage_exits_2():
    assert main(["list", "--bogus"]) == 2


@pytest.mark.parametrize("argv", [[sys.executable, "-m", "torchsmith"], ["torchsmith"]])
def test_entry_points(argv):
    import shutil

    if argv[0] == "torchsmith":
        argv = [shutil.which("torchsmith") or str(__import__("pathlib").Path(sys.executable).parent / "torchsmith")]
    done = subprocess.run([*argv, "list", "mlp", "--json"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == [{"name": "mlp", "params": 203530}]
    helped = subprocess.run([*argv, "--help"], capture_output=True, text=True, timeout=120)
    assert helped.returncode == 0 and "list" in helped.stdout
