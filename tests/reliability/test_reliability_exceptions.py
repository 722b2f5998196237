"""Every refusal is a ``TorchsmithError`` with a one-line cause; the CLI ends with its message, no traceback
(issue 20 §6).

The audit's inputs that escaped as Python's own exceptions: a config value ``{"$dtype": []}``, a JSON
spec with a 5,000-digit integer or nested 100,000 deep, a symbolic-link loop given to ``convert``, a
5,000-character name given to every command, a key that is not PEM, ``/proc/self/mem`` to sign. The
distributed-checkpoint ones (negative and 2**40-element sizes, a ``torch.Size`` as dtype, a list as
``state_dict_metadata``) are in ``test_reliability_dcp.py``. Exit codes: 1 for a refused input (a
torchsmith error), 2 for bad usage, as ``torchsmith --help`` documents.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from ckpt_models import TinyNet, filled
from reliability_tools import record
from typer.testing import CliRunner

import torchsmith as ts
from torchsmith.cli import app
from torchsmith.models_io import whole

LONG_NAME = "a" * 5000


def _keys(tmp: Path) -> tuple[Path, Path, Path]:
    from cryptography.hazmat.primitives import serialization as pem
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    private, public, junk = tmp / "key.pem", tmp / "pub.pem", tmp / "junk.pem"
    private.write_bytes(key.private_bytes(pem.Encoding.PEM, pem.PrivateFormat.PKCS8, pem.NoEncryption()))
    public.write_bytes(key.public_key().public_bytes(pem.Encoding.PEM, pem.PublicFormat.SubjectPublicKeyInfo))
    junk.write_text("not a key\n")
    return private, public, junk


def _inputs(tmp: Path) -> tuple[dict, dict]:
    """(library calls, CLI argument lists), each by name."""
    private, public, junk = _keys(tmp)
    weights = ts.save_weights(filled(TinyNet(), seed=1), tmp / "w.safetensors")
    signed = ts.save_weights(filled(TinyNet(), seed=1), tmp / "signed.safetensors")
    ts.sign_checkpoint(signed, private_key=private)
    dtype = ts.save_model(ts.create_model("ckpt_tiny"), tmp / "dtype")
    doc = json.loads((dtype / "config.json").read_text())
    doc["kwargs"]["act_layer"] = {"$dtype": []}
    doc["checksums"]["config.json"]["xxh3-64"] = whole._config_digest(doc)
    (dtype / "config.json").write_text(json.dumps(doc))
    digits = tmp / "digits.json"
    digits.write_text('{"layers": [{"Linear": [' + "9" * 5000 + ", 2]}]}")
    deep = tmp / "deep.json"
    deep.write_text('{"layers": ' + "[" * 100_000 + "]" * 100_000 + "}")
    (tmp / "loop1").symlink_to("loop2")
    (tmp / "loop2").symlink_to("loop1")
    nul = str(tmp / "a\x00b")
    library = {
        "config.json {$dtype: []}: load_model": lambda: ts.load_model(dtype),
        "spec with a 5,000-digit integer: build(path)": lambda: ts.build(digits),
        "spec with a 5,000-digit integer: build(text)": lambda: ts.build(digits.read_text()),
        "spec nested 100,000 deep: build(path)": lambda: ts.build(deep),
        "spec nested 100,000 deep: build(text)": lambda: ts.build(deep.read_text()),
        "convert from a link loop": lambda: ts.convert_checkpoint(tmp / "loop1", tmp / "o.safetensors"),
        "convert to a link loop": lambda: ts.convert_checkpoint(weights, tmp / "loop1"),
        "5,000-character name: read_weights": lambda: ts.read_weights(LONG_NAME),
        "5,000-character name: load_weights": lambda: ts.load_weights(TinyNet(), LONG_NAME),
        "5,000-character name: inspect_checkpoint": lambda: ts.inspect_checkpoint(LONG_NAME),
        "5,000-character name: diff_checkpoints": lambda: ts.diff_checkpoints(LONG_NAME, weights),
        "5,000-character name: convert_checkpoint": lambda: ts.convert_checkpoint(LONG_NAME, tmp / "o.safetensors"),
        "5,000-character name: convert_checkpoint output": lambda: ts.convert_checkpoint(weights, tmp / LONG_NAME),
        "5,000-character name: load_model": lambda: ts.load_model(LONG_NAME),
        "5,000-character name: save_model": lambda: ts.save_model(ts.create_model("ckpt_tiny"), tmp / LONG_NAME),
        "5,000-character name: save_weights": lambda: ts.save_weights(TinyNet(), tmp / LONG_NAME),
        "5,000-character name: load_distributed": lambda: ts.load_distributed(TinyNet(), None, LONG_NAME),
        "5,000-character name: build": lambda: ts.build(LONG_NAME + ".yaml"),
        "5,000-character name: sign_checkpoint": lambda: ts.sign_checkpoint(LONG_NAME, private_key=private),
        "5,000-character name: verify_checkpoint": lambda: ts.verify_checkpoint(LONG_NAME, public_key=public),
        "5,000-character key name: sign_checkpoint": lambda: ts.sign_checkpoint(weights, private_key=LONG_NAME),
        "a NUL in a name: read_weights": lambda: ts.read_weights(nul),
        "a NUL in a name: load_model": lambda: ts.load_model(nul),
        "a NUL in a name: convert_checkpoint": lambda: ts.convert_checkpoint(nul, tmp / "o.safetensors"),
        "sign with a key that is not PEM": lambda: ts.sign_checkpoint(weights, private_key=junk),
        "verify with a key that is not PEM": lambda: ts.verify_checkpoint(signed, public_key=junk),
        "sign /proc/self/mem": lambda: ts.sign_checkpoint("/proc/self/mem", private_key=private, signature=tmp / "mem.sig"),
    }
    cli = {
        "config.json {$dtype: []}: summary": ["summary", str(dtype)],
        "spec with a 5,000-digit integer: build": ["build", str(digits)],
        "spec nested 100,000 deep: build": ["build", str(deep)],
        "spec nested 100,000 deep: summary": ["summary", str(deep)],
        "convert from a link loop": ["convert", str(tmp / "loop1"), str(tmp / "o.safetensors")],
        "convert to a link loop": ["convert", str(weights), str(tmp / "loop1")],
        "sign with a key that is not PEM": ["sign", str(weights), "--key", str(junk)],
        "verify with a key that is not PEM": ["verify", str(signed), "--key", str(junk)],
        "sign /proc/self/mem": ["sign", "/proc/self/mem", "--key", str(private), "--signature", str(tmp / "mem.sig")],
        **{f"5,000-character name: {c[0]} ({i})": c for i, c in enumerate((
            ["inspect", LONG_NAME], ["convert", LONG_NAME, str(tmp / "o.safetensors")], ["convert", str(weights), str(tmp / LONG_NAME)],
            ["diff", LONG_NAME, str(weights)], ["sign", LONG_NAME, "--key", str(private)], ["verify", LONG_NAME, "--key", str(public)],
            ["sign", str(weights), "--key", LONG_NAME], ["summary", LONG_NAME], ["trace", LONG_NAME], ["diagram", LONG_NAME],
            ["build", LONG_NAME + ".yaml"], ["clean", LONG_NAME],
        ))},
    }
    return library, cli


def _library_outcome(call) -> str:
    try:
        call()
    except ts.TorchsmithError as e:
        return "refused" if str(e).strip() else "refused without a message"
    except BaseException as e:  # noqa: BLE001 - every other outcome is a finding
        return f"{type(e).__name__}: {str(e)[:200]}"
    return "no error"


def _cli_outcome(args: list[str]) -> str:
    done = CliRunner().invoke(app, args)
    if not isinstance(done.exception, (SystemExit, type(None))) or "Traceback" in done.output:
        return f"traceback ({type(done.exception).__name__})"
    if done.exit_code != 1:
        return f"exit code {done.exit_code}: {done.output[-200:]}"
    if "error:" not in done.output:
        return f"exit code 1 without a message: {done.output[-200:]}"
    return "refused"


def test_odd_inputs_raise_torchsmith_errors_and_the_cli_prints_no_traceback(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    library, cli = _inputs(tmp_path)
    outcomes = {f"library: {name}": _library_outcome(call) for name, call in library.items()}
    outcomes |= {f"cli: {name}": _cli_outcome(args) for name, args in cli.items()}
    through = {k: v for k, v in outcomes.items() if v != "refused"}
    record("odd inputs, every exception ours", inputs=len(outcomes), through=len(through), examples=list(through.items())[:6])
    assert not through, through


def test_an_unexpected_exception_in_a_command_is_one_line_and_asks_for_a_report(monkeypatch):
    """The last-resort guard: a bug (here a command that raises TypeError) prints one line and exits 1."""
    import torchsmith.checkpoint as checkpoint

    def broken(*args, **kwargs):
        raise TypeError("unsupported operand")

    monkeypatch.setattr(checkpoint, "inspect_checkpoint", broken)
    done = CliRunner().invoke(app, ["inspect", "anything.safetensors"])
    assert done.exit_code == 1 and isinstance(done.exception, SystemExit), done.output
    assert "Traceback" not in done.output and "TypeError: unsupported operand" in done.output
    assert "this is a bug" in done.output
    usage = CliRunner().invoke(app, ["inspect"])  # bad usage keeps its own exit code
    assert usage.exit_code == 2


@pytest.mark.parametrize("value", [{"$dtype": []}, {"$dtype": {"a": 1}}, {"$dtype": 3}, {"$layer": []}, {"$layer": None}])
def test_config_codec_refuses_odd_markers_as_problems(value):
    from torchsmith.codec import decode

    problems: list[str] = []
    decode({"x": value}, where="kwargs", problems=problems)
    assert len(problems) == 1 and "kwargs" in problems[0], problems
