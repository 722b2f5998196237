"""Signing (OpenSSF model-signing, elliptic-curve keys, offline): intact is not authentic; a signature is."""

from __future__ import annotations

from pathlib import Path

import pytest
from ckpt_models import filled
from helpers import snapshot
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from typer.testing import CliRunner

import torchsmith as ts
from torchsmith.cli import app


def _keys(directory: Path, name: str) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    private, public = directory / f"{name}.pem", directory / f"{name}.pub.pem"
    private.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    public.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    return private, public


def test_a_signed_directory_loads_and_a_resaved_one_is_refused(tmp_path):
    private, public = _keys(tmp_path, "alice")
    src = filled(ts.create_model("ckpt_tiny"), seed=1)
    directory = ts.save_model(src, tmp_path / "m")
    sig = ts.sign_checkpoint(directory, private_key=private)
    assert sig == directory / "model.sig" and sig.is_file()
    ts.verify_checkpoint(directory, public_key=public)
    assert snapshot(ts.load_model(directory, verify_signature=public)) == snapshot(src)
    # someone saves other weights there: intact (checksums recomputed, loads as "verified"), not authentic
    ts.save_model(filled(ts.create_model("ckpt_tiny"), seed=2), directory)
    assert ts.inspect_checkpoint(directory / "model.safetensors").checksums == "verified"
    with pytest.raises(ts.SignatureError, match="do not load them"):
        ts.load_model(directory, verify_signature=public)
    # another key, a missing signature
    ts.sign_checkpoint(directory, private_key=private)
    _, other = _keys(tmp_path, "mallory")
    with pytest.raises(ts.SignatureError):
        ts.verify_checkpoint(directory, public_key=other)
    sig.unlink()
    with pytest.raises(ts.SignatureError, match="has no signature"):
        ts.load_model(directory, verify_signature=public)


def test_an_added_file_fails_and_single_files_sign_next_to_themselves(tmp_path):
    private, public = _keys(tmp_path, "k")
    directory = ts.save_model(ts.create_model("ckpt_tiny"), tmp_path / "m")
    ts.sign_checkpoint(directory, private_key=private)
    (directory / "extra.bin").write_bytes(b"x")
    with pytest.raises(ts.SignatureError):
        ts.verify_checkpoint(directory, public_key=public)
    path = ts.save_weights(filled(ts.create_model("ckpt_tiny"), seed=3), tmp_path / "w.safetensors")
    assert ts.sign_checkpoint(path, private_key=private) == tmp_path / "w.safetensors.sig"
    ts.verify_checkpoint(path, public_key=public)
    data = bytearray(path.read_bytes())
    data[-1] ^= 1
    path.write_bytes(bytes(data))
    with pytest.raises(ts.SignatureError):
        ts.verify_checkpoint(path, public_key=public)


def test_cli_sign_and_verify_exit_codes(tmp_path):
    private, public = _keys(tmp_path, "k")
    directory = ts.save_model(ts.create_model("ckpt_tiny"), tmp_path / "m")
    runner = CliRunner()
    result = runner.invoke(app, ["sign", str(directory), "--key", str(private)])
    assert result.exit_code == 0 and "model.sig" in result.output
    assert runner.invoke(app, ["verify", str(directory), "--key", str(public)]).exit_code == 0
    (directory / "config.json").write_text("{}")
    result = runner.invoke(app, ["verify", str(directory), "--key", str(public)])
    assert result.exit_code == 1 and "Signature check" in result.output


def test_cli_sign_and_verify_json(tmp_path):
    import json

    private, public = _keys(tmp_path, "k")
    path = ts.save_weights(filled(ts.create_model("ckpt_tiny"), seed=1), tmp_path / "w.safetensors")
    runner = CliRunner()
    result = runner.invoke(app, ["sign", str(path), "--key", str(private), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {"path": str(path), "signature": str(path) + ".sig"}
    result = runner.invoke(app, ["verify", str(path), "--key", str(public), "--json"])
    assert result.exit_code == 0 and json.loads(result.stdout) == {"path": str(path), "signature_ok": True}
