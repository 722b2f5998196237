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


# help, version, and what --help costs


def _commands() -> list[str]:
    from torchsmith.cli import app
    from typer.main import get_command

    return sorted(get_command(app).commands)


def test_version_and_short_help(capsys):
    from torchsmith import __version__

    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"torchsmith {__version__}"
    assert main(["-h"]) == 0
    short = capsys.readouterr().out
    assert main(["--help"]) == 0
    assert capsys.readouterr().out == short and "Usage: torchsmith" in short


@pytest.mark.parametrize("command", _commands())
def test_every_command_help_shows_flags_as_flags_and_no_markup(command, capsys):
    assert main([command, "-h"]) == 0
    text = capsys.readouterr().out
    assert "<bool>" not in text and "``" not in text, text
    assert "--json " in text or "--json\n" in text, f"{command} has no --json"
    flag_lines = [line.split() for line in text.splitlines() if line.strip().startswith("--json")]
    assert flag_lines and flag_lines[0][1] != "<bool>" and flag_lines[0][1][0].isupper()  # '--json  Print ...'


def test_help_and_version_do_not_import_torch():
    code = (
        "import sys\n"
        "from torchsmith.cli import main\n"
        "assert main(['--help']) == 0 and main(['--version']) == 0 and main(['summary', '-h']) == 0\n"
        "import torchsmith\n"
        "torchsmith.TorchsmithError, torchsmith.__version__\n"
        "print('torch' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "False"


def test_lazy_package_has_every_public_name_and_dir_lists_them():
    import ast
    from pathlib import Path

    import torchsmith

    for name in torchsmith.__all__:
        assert getattr(torchsmith, name) is not None
    assert set(torchsmith.__all__) <= set(dir(torchsmith))
    tree = ast.parse(Path(torchsmith.__file__).read_text())
    typed = {a.asname or a.name for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.level == 1
             for a in node.names}
    assert typed == set(torchsmith.__all__), "the TYPE_CHECKING imports and __all__ list the same names"
    with pytest.raises(AttributeError):
        torchsmith.no_such_name  # noqa: B018


# messages a command-line user can act on


def test_a_weights_file_given_as_a_model_says_what_to_run(tmp_path, capsys):
    import torchsmith as ts

    path = ts.save_weights(ts.create_model("resnet18"), tmp_path / "plain.pth")
    for command in ("summary", "trace", "diagram"):
        assert main([command, str(path)]) == 1
        err = " ".join(capsys.readouterr().err.split())
        assert f"'{path}' is a weights file, not a model: torchsmith {command} takes a registered model name" in err
        assert f"torchsmith inspect {path}" in err
        assert f"Its keys fit the registered model 'resnet18': torchsmith {command} resnet18" in err
        assert "is registered" not in err
    assert main(["summary", "nothing.pth"]) == 1
    assert "There is no file 'nothing.pth'" in capsys.readouterr().err


def test_cli_errors_give_cli_hints_not_python_calls(tmp_path, capsys):
    import torch

    assert main(["summary", "resnet5O"]) == 1
    err = capsys.readouterr().err
    assert "Run 'torchsmith list' for all" in err and "list_models()" not in err
    torch.save(torch.nn.Linear(2, 2), tmp_path / "whole.pt")
    assert main(["inspect", str(tmp_path / "whole.pt")]) == 1
    err = " ".join(capsys.readouterr().err.split())
    assert "--trusted" in err and "trusted=True" not in err and "in Python" not in err


@pytest.mark.parametrize("message, said", [
    ("See torchsmith.list_models() for all 16 names.", "Run 'torchsmith list' for all 16 names."),
    ("raise it: limits=Limits(max_tensors=200) (command line: --limit max_tensors=200).", "raise it: --limit max_tensors=200."),
    ("convert it (in Python: pass trusted=True to load_weights)", "convert it"),
    ("If you trust the checkpoint, pass trusted=True (CLI: --trusted).", "If you trust the checkpoint, pass --trusted."),
    ("cannot draw (allow_real=True runs it for real)", "cannot draw (--allow-real runs it for real)"),
    ("copy the cache; or `curl -L -o FILE URL`), or pass weights_path='FILE'. Its sha256", "copy the cache; or `curl -L -o FILE URL`). Its sha256"),
])
def test_cli_message_translates_each_python_hint(message, said):
    from torchsmith.cli.app import cli_message

    assert cli_message(message) == said


def test_trace_json_lists_every_call(capsys):
    import torch

    import torchsmith as ts

    assert main(["trace", "mlp", "--input", "2,784", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    model = ts.create_model("mlp")
    assert [c["path"] for c in doc["calls"]] == [n for n, _ in model.named_modules()]  # call order: pre-order here
    assert doc["calls"][0]["inputs"] == "(2, 784)" and doc["output"][0]["shape"] == [2, 10]
    assert doc["model"] == "mlp" and isinstance(torch.Size(doc["output"][0]["shape"]), torch.Size)


def test_lazy_package_still_reaches_its_subpackages_by_attribute():
    code = (
        "import sys\n"
        "import torchsmith\n"
        "assert torchsmith.cli.main and 'torch' not in sys.modules\n"  # a subpackage that needs no torch
        "model = torchsmith.zoo.resnet18(num_classes=3)\n"  # as before the package became lazy
        "print(type(model).__name__, torchsmith.checkpoint.keys.__name__)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["ResNet", "torchsmith.checkpoint.keys"]
