"""Step 4 - intact is not authentic: checksums catch damage, a signature catches a swapped model.

Checksums (xxh3-64) say the bytes are the ones written with them; whoever rewrites a
checkpoint writes new checksums too. A signature made with a private key (the OpenSSF
model-signing package, offline) says the files are the ones its holder signed.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from rich.console import Console

import torchsmith as ts

console = Console()


def _key_pair(directory: Path) -> tuple[Path, Path]:
    """An elliptic-curve key pair in PEM files (what `openssl ecparam -name prime256v1 -genkey` makes)."""
    key = ec.generate_private_key(ec.SECP256R1())
    private, public = directory / "key.pem", directory / "pub.pem"
    private.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    public.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    return private, public


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        private, public = _key_pair(tmp)
        run = ts.save_model(ts.create_model("resnet18", num_classes=10), tmp / "resnet18-run")
        sig = ts.sign_checkpoint(run, private_key=private)
        console.print(f"signed: {sig.relative_to(tmp)}")
        model = ts.load_model(run, verify_signature=public)
        console.print(f"load_model(verify_signature=...): {type(model).__name__}, signature ok")

        # someone replaces the model with another one: every checksum is valid again...
        ts.save_model(ts.create_model("resnet18", num_classes=10), run)
        info = ts.inspect_checkpoint(run / "model.safetensors")
        console.print(f"after the swap, checksums: {info.checksums} (intact, but not the signed model)")
        # ...but the signature is not
        try:
            ts.load_model(run, verify_signature=public)
        except ts.SignatureError as e:
            console.print(f"[bold red]refused:[/] {str(e)[:160].replace(str(tmp) + '/', '')}...", highlight=False)


if __name__ == "__main__":
    main()
