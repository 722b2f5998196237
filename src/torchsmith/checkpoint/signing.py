"""Signing checkpoints, for authenticity: the OpenSSF ``model-signing`` package, with keys, offline.

Checksums show a file is intact (not damaged); anyone who edits it can recompute them. A signature
made with a private key shows the files are the ones the key's holder signed. torchsmith does not
invent a scheme: it calls ``model_signing`` (elliptic-curve keys in PEM files, no network).

    >>> from cryptography.hazmat.primitives import serialization as pem
    >>> from cryptography.hazmat.primitives.asymmetric import ec
    >>> key = ec.generate_private_key(ec.SECP256R1())      # or: openssl ecparam -name prime256v1 -genkey
    >>> _ = open("key.pem", "wb").write(key.private_bytes(pem.Encoding.PEM, pem.PrivateFormat.PKCS8, pem.NoEncryption()))
    >>> _ = open("pub.pem", "wb").write(key.public_key().public_bytes(pem.Encoding.PEM, pem.PublicFormat.SubjectPublicKeyInfo))
    >>> run = save_model(create_model("mlp", in_features=4, hidden=[8], num_classes=2), "run")
    >>> sign_checkpoint(run, private_key="key.pem")
    PosixPath('run/model.sig')
    >>> verify_checkpoint(run, public_key="pub.pem")          # raises SignatureError if not
    >>> model = load_model(run, verify_signature="pub.pem")

A directory's signature lives inside it (``model.sig``, left out of what is signed) and covers
every other file there, so an added, removed or changed file fails verification; a single file's
signature is written next to it (``model.safetensors.sig``). Keys: ``openssl ecparam -name
prime256v1 -genkey -noout -out key.pem`` and ``openssl ec -in key.pem -pubout -out pub.pem``.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import CheckpointError, SignatureError
from .files import checked_path, open_regular, shown
from .formats import SIGNATURE_NAME, SIGNATURE_SUFFIX

MAX_KEY_BYTES = 1 << 16  # a PEM key is a few hundred bytes

__all__ = ["sign_checkpoint", "verify_checkpoint", "signature_path"]


def signature_path(path: str | os.PathLike) -> Path:
    """Where the signature of ``path`` lives: ``DIR/model.sig`` for a directory, ``FILE.sig`` for a file."""
    path = Path(path)
    return path / SIGNATURE_NAME if path.is_dir() else path.with_name(path.name + SIGNATURE_SUFFIX)


def _library():
    try:
        from model_signing import signing, verifying
    except ImportError as e:  # an optional dependency
        raise CheckpointError(
            f"Signing needs the OpenSSF model-signing package, which is not importable here ({e}). "
            f"Install it with: pip install 'torchsmith[sign]' (model-signing and pyopenssl)."
        ) from e
    return signing, verifying


def _check_inputs(path: str | os.PathLike, key: str | os.PathLike, what: str) -> Path:
    """The path to sign or verify, once it and the key are known good: a file or a directory that exists, and
    a key file that holds a PEM key of the right kind (checked here: the library raises its own errors)."""
    path = checked_path(path, action=what)
    if not path.exists():
        raise CheckpointError(f"Cannot {what} {shown(path)}: it does not exist.")
    if not (path.is_dir() or path.is_file()):
        raise CheckpointError(f"Cannot {what} {shown(path)}: it is neither a file nor a directory.")
    key = checked_path(key, action=f"{what} with the key")
    if not key.is_file():
        raise CheckpointError(f"Cannot {what} {shown(path)}: key file {shown(key)} does not exist (a PEM file).")
    with open_regular(key) as f:
        pem = f.read(MAX_KEY_BYTES + 1)
    _load_key(pem, private=what == "sign", where=shown(key))
    return path


def _load_key(pem: bytes, *, private: bool, where: str) -> None:
    """Refuse a key file that is not a PEM elliptic-curve key of the kind asked for (private to sign, public to verify)."""
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    kind = "private" if private else "public"
    try:
        if len(pem) > MAX_KEY_BYTES:
            raise ValueError(f"it is over {MAX_KEY_BYTES:,} bytes")
        key = serialization.load_pem_private_key(pem, password=None) if private else serialization.load_pem_public_key(pem)
    except (ValueError, TypeError) as e:  # not PEM, damaged, or encrypted (a password is asked for)
        raise CheckpointError(
            f"The key file {where} is not a PEM {kind} key ({str(e).splitlines()[0][:120] if str(e) else type(e).__name__}). "
            f"Make one with `openssl ecparam -name prime256v1 -genkey -noout -out key.pem`"
            + ("" if private else " and `openssl ec -in key.pem -pubout -out pub.pem`") + "."
        ) from e
    except UnsupportedAlgorithm as e:
        raise CheckpointError(f"The key file {where} holds a key this torchsmith cannot use ({type(e).__name__}: {e}).") from e
    wanted = ec.EllipticCurvePrivateKey if private else ec.EllipticCurvePublicKey
    if not isinstance(key, wanted):
        raise CheckpointError(f"The key file {where} holds a {type(key).__name__.lstrip('_')}; signing uses elliptic-curve keys (prime256v1).")


def sign_checkpoint(path: str | os.PathLike, *, private_key: str | os.PathLike, signature: str | os.PathLike | None = None) -> Path:
    """Sign a checkpoint file or directory with an elliptic-curve private key (PEM); returns the signature's path.

    Raises:
        CheckpointError: the path or key is missing, the package is not installed, or signing failed.
    """
    signing, _ = _library()  # cryptography comes with it: the key is read with it
    path = _check_inputs(path, private_key, "sign")
    out = Path(signature) if signature is not None else signature_path(path)
    from model_signing import hashing

    config = signing.Config().use_elliptic_key_signer(private_key=str(private_key))
    config = config.set_hashing_config(hashing.Config().set_ignored_paths(paths=[out.absolute()]))  # the signature itself
    try:
        config.sign(path.absolute(), out.absolute())  # the library compares ignored paths as given: all absolute
    except Exception as e:  # the library raises ValueError / OSError / cryptography errors
        raise CheckpointError(f"Signing {str(path)!r} failed: {type(e).__name__}: {e}") from e
    return out


def verify_checkpoint(path: str | os.PathLike, *, public_key: str | os.PathLike, signature: str | os.PathLike | None = None) -> None:
    """Check the signature of a checkpoint file or directory against a public key (PEM).

    Raises:
        SignatureError: no signature, or it does not match (a changed, added or removed file, another key).
        CheckpointError: the path or key is missing, or the package is not installed.
    """
    _, verifying = _library()
    path = _check_inputs(path, public_key, "verify")
    from model_signing import hashing

    sig = Path(signature) if signature is not None else signature_path(path)
    if not sig.is_file():
        raise SignatureError(
            f"{str(path)!r} has no signature at {str(sig)!r}. Sign it with `torchsmith sign {path} --key KEY.pem`, "
            f"or pass the signature's path."
        )
    config = verifying.Config().use_elliptic_key_verifier(public_key=str(public_key))
    config = config.set_hashing_config(hashing.Config().set_ignored_paths(paths=[sig.absolute()]))
    try:
        config.verify(path.absolute(), sig.absolute())
    except Exception as e:
        raise SignatureError(
            f"Signature check of {str(path)!r} failed: {str(e)[:500]}. The files are not the ones signed with the "
            f"key matching {str(public_key)!r} (changed, added or removed files, or another key); do not load them."
        ) from e
