"""Hubs the tests build themselves: a loopback HTTP server for downloads, a Hugging Face cache laid out by hand,
the torch hub cache in a temporary TORCH_HOME. Nothing here reaches the network."""

from __future__ import annotations

import contextlib
import hashlib
import http.server
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from torchsmith.pretrained import restore_table, table_state


# the torch hub cache and the weights table, per test


@pytest.fixture
def torch_home(tmp_path, monkeypatch) -> Path:
    """An empty TORCH_HOME, online (no offline variable set); returns its ``hub/checkpoints`` folder."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    for var in ("TORCHSMITH_OFFLINE", "HF_HUB_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    return tmp_path / "torch-home" / "hub" / "checkpoints"


@pytest.fixture
def weights_table() -> Iterator[None]:
    """Entries a test registers are taken back after it."""
    saved = table_state()
    yield
    restore_table(saved)


# a loopback HTTP server


class _Handler(http.server.BaseHTTPRequestHandler):
    files: dict[str, bytes] = {}
    delay_s = 0.0  # between chunks: a slow server, to kill a client mid-download
    chunk = 1 << 16
    requests: list[str] = []

    def do_GET(self):  # noqa: N802 - http.server's name
        self.requests.append(self.path)
        data = self.files.get(self.path)
        if data is None:
            self.send_error(404, "no such file")
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Content-Type", "application/octet-stream")
        self.end_headers()
        try:
            for i in range(0, len(data), self.chunk):
                self.wfile.write(data[i : i + self.chunk])
                self.wfile.flush()
                if self.delay_s:
                    time.sleep(self.delay_s)
        except (BrokenPipeError, ConnectionResetError):  # the client went away (killed)
            pass

    def log_message(self, *args):  # quiet
        pass


@contextlib.contextmanager
def serve(files: dict[str, bytes], *, delay_s: float = 0.0, chunk: int = 1 << 16) -> Iterator[tuple[str, list[str]]]:
    """Serve ``{"/name": bytes}`` on 127.0.0.1 (a free port) in a thread; yields (base URL, paths requested)."""
    handler = type("Handler", (_Handler,), {"files": dict(files), "delay_s": delay_s, "chunk": chunk, "requests": []})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", handler.requests
    finally:
        server.shutdown()
        server.server_close()


# a Hugging Face cache, laid out by hand as huggingface_hub lays it out


def hf_repo(cache: Path, repo_id: str, files: dict[str, bytes | Path], *, revision: str = "main", commit: str | None = None) -> Path:
    """A model repository in the Hugging Face cache ``cache``: each file's bytes in ``blobs/<sha256>``, a relative
    link to it in ``snapshots/<commit>/<name>``, and ``refs/<revision>`` holding the commit. Returns the snapshot."""
    folder = cache / ("models--" + repo_id.replace("/", "--"))
    commit = commit or hashlib.sha1(repo_id.encode() + repr(sorted(files)).encode()).hexdigest()
    (folder / "blobs").mkdir(parents=True, exist_ok=True)
    snapshot = folder / "snapshots" / commit
    for name, data in files.items():
        data = data.read_bytes() if isinstance(data, Path) else data
        blob = folder / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        link = snapshot / name
        link.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(os.path.relpath(blob, link.parent), link)
    (folder / "refs").mkdir(exist_ok=True)
    (folder / "refs" / revision).write_text(commit)
    return snapshot


@pytest.fixture
def hf_cache(tmp_path, monkeypatch) -> Path:
    """An empty Hugging Face cache that huggingface_hub uses for this test, with HF_HUB_OFFLINE=1."""
    from huggingface_hub import constants

    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return cache
