"""Downloads into the torch hub cache, from a server on 127.0.0.1: progress, the hash check before use, the atomic
write (a download killed midway leaves no file under the cache's name), offline and network errors, and
register_weights."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from hub_fixtures import serve

import torchsmith as ts
from helpers import ROOT
from torchsmith.checkpoint.atomic import temporary_owner
from torchsmith.pretrained import cache_path, fetch

PAYLOAD = bytes(range(256)) * 4096 * 3  # 3 MiB: several chunks of the reader (1 MiB) and of the server


def entry_for(url: str, data: bytes, tag: str = "SERVED", **extra):
    return ts.register_weights("resnet18", tag, url=url, sha256=hashlib.sha256(data).hexdigest(), **extra)


def temporaries(folder) -> list[str]:
    return [p.name for p in folder.iterdir() if temporary_owner(p.name)] if folder.exists() else []


def test_a_download_lands_in_the_cache_hash_checked_with_progress(torch_home, weights_table):
    with serve({"/w/resnet18-served.pth": PAYLOAD}) as (url, requests):
        entry = entry_for(f"{url}/w/resnet18-served.pth", PAYLOAD)
        seen = []
        path = fetch(entry, progress=lambda done, total: seen.append((done, total)))
        assert path == torch_home / "resnet18-served.pth" == cache_path(entry)
        assert path.read_bytes() == PAYLOAD and temporaries(torch_home) == []
        assert seen[0] == (0, len(PAYLOAD)) and seen[-1] == (len(PAYLOAD), len(PAYLOAD))
        assert [d for d, _ in seen] == sorted(d for d, _ in seen) and len(seen) >= 4  # (0, 1 MiB, 2 MiB, 3 MiB)
        assert fetch(entry) == path and requests == ["/w/resnet18-served.pth"]  # then the cache: no second request


def test_the_default_progress_is_a_rich_bar_on_stderr(torch_home, weights_table, capsys):
    with serve({"/resnet18-bar.pth": PAYLOAD}) as (url, _):
        entry_for(f"{url}/resnet18-bar.pth", PAYLOAD, tag="BAR")
        ts.fetch_weights("resnet18", "BAR")
    err = capsys.readouterr()
    assert err.out == ""  # library code never prints to stdout
    assert "resnet18.BAR (resnet18-bar.pth)" in err.err and "3.1/3.1 MB" in err.err


def test_a_download_whose_hash_differs_is_refused_and_nothing_is_cached(torch_home, weights_table):
    with serve({"/resnet18-x.pth": PAYLOAD}) as (url, _):
        entry = entry_for(f"{url}/resnet18-x.pth", PAYLOAD[:-1] + b"?")  # the hash of other bytes
        with pytest.raises(ts.CorruptCheckpointError) as info:
            fetch(entry, progress=False)
    assert f"the download from {url}/resnet18-x.pth" in str(info.value) and hashlib.sha256(PAYLOAD).hexdigest() in str(info.value)
    assert not (torch_home / "resnet18-x.pth").exists() and temporaries(torch_home) == []


def test_a_torchvision_file_name_carries_its_hash_prefix(torch_home, weights_table):
    prefix = hashlib.sha256(PAYLOAD).hexdigest()[:8]
    with serve({f"/models/resnet18-{prefix}.pth": PAYLOAD, "/models/resnet18-00000000.pth": PAYLOAD}) as (url, _):
        good = ts.register_weights("resnet18", "PREFIX", url=f"{url}/models/resnet18-{prefix}.pth")
        assert good.sha256 == prefix and fetch(good, progress=False).read_bytes() == PAYLOAD
        bad = ts.register_weights("resnet18", "ZEROS", url=f"{url}/models/resnet18-00000000.pth")
        with pytest.raises(ts.CorruptCheckpointError, match="does not start with 00000000"):
            fetch(bad, progress=False)


@pytest.mark.parametrize("variable", ["TORCHSMITH_OFFLINE", "HF_HUB_OFFLINE"])
def test_offline_names_the_url_and_the_exact_path(variable, torch_home, weights_table, monkeypatch):
    monkeypatch.setenv(variable, "1")
    with serve({"/resnet18-off.pth": PAYLOAD}) as (url, requests):
        entry_for(f"{url}/resnet18-off.pth", PAYLOAD, tag="OFF")
        with pytest.raises(ts.DownloadError) as info:
            ts.create_model("resnet18", weights="OFF")
        assert requests == []
    msg = str(info.value)
    assert f"{url}/resnet18-off.pth" in msg and repr(str(torch_home / "resnet18-off.pth")) in msg
    assert f"{variable}=1" in msg and "weights_path=" in msg and "torchsmith fetch resnet18 --weights OFF" in msg


def test_network_errors_name_the_url_and_the_path(torch_home, weights_table):
    with serve({}) as (url, _):
        entry = entry_for(f"{url}/missing.pth", PAYLOAD, tag="MISSING")
        with pytest.raises(ts.DownloadError, match=r"the download failed \(HTTP 404: no such file\)"):
            fetch(entry, progress=False)
    entry = entry_for(f"{url}/gone.pth", PAYLOAD, tag="GONE")  # the server is shut: connection refused
    with pytest.raises(ts.DownloadError) as info:
        fetch(entry, progress=False)
    assert f"{url}/gone.pth" in str(info.value) and str(torch_home / "gone.pth") in str(info.value)
    assert temporaries(torch_home) == []


CHILD = """
import sys, hashlib, torchsmith as ts
data_sha, url = sys.argv[1], sys.argv[2]
entry = ts.register_weights("resnet18", "SLOW", url=url, sha256=data_sha)
ts.pretrained.fetch(entry, progress=False)
print("finished")
"""


@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGINT])
def test_a_download_killed_midway_leaves_no_file_under_the_caches_name(how, torch_home, weights_table):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    with serve({"/resnet18-slow.pth": PAYLOAD}, delay_s=0.05, chunk=1 << 14) as (url, _):  # about 10 s in all
        sha = hashlib.sha256(PAYLOAD).hexdigest()
        child = subprocess.Popen([sys.executable, "-c", CHILD, sha, f"{url}/resnet18-slow.pth"], env=env,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
        try:
            for _ in range(600):  # until the child's temporary holds some bytes
                tmp = [torch_home / n for n in temporaries(torch_home)]
                if tmp and tmp[0].stat().st_size > 0:
                    break
                assert child.poll() is None, child.communicate()
                time.sleep(0.05)
            else:
                pytest.fail("the child never started writing")
            child.send_signal(how)
            child.wait(timeout=60)
        finally:
            child.kill()
        assert not (torch_home / "resnet18-slow.pth").exists()
        left = temporaries(torch_home)
        assert left == ([] if how == signal.SIGINT else [tmp[0].name])  # Ctrl-C cleans up; -9 cannot
    # the next fetch (from a fast server) removes the dead process's temporary and completes
    with serve({"/resnet18-slow.pth": PAYLOAD}) as (url, _):
        entry = ts.register_weights("resnet18", "FAST", url=f"{url}/resnet18-slow.pth", sha256=sha)
        assert fetch(entry, progress=False).read_bytes() == PAYLOAD
    assert temporaries(torch_home) == []


def test_register_weights_checks_every_field_and_refuses_duplicates(weights_table):
    with pytest.raises(ts.ModelConfigError) as info:
        ts.register_weights("resnet18", "DEFAULT", url="ftp://x/y.pth", sha256="ABC", mean=(0.5,), crop_pct=2)
    msg = str(info.value)
    for part in ("tag must be", "url must be", "sha256 must be", "mean must hold one number per input channel", "crop_pct must be"):
        assert part in msg
    with pytest.raises(ts.ModelConfigError, match="no hash: pass sha256="):
        ts.register_weights("resnet18", "NOHASH", url="https://example.com/plain.pth")
    ts.register_weights("resnet18", "ONCE", url="https://example.com/r-0123abcd.pth")
    with pytest.raises(ts.DuplicateModelError, match="'resnet18' already has weights 'ONCE'"):
        ts.register_weights("resnet18", "ONCE", url="https://example.com/r-0123abcd.pth")


def test_register_weights_then_create_model_downloads_and_loads(torch_home, weights_table):
    ref = ts.create_model("resnet18", num_classes=3).eval()
    buf = torch_home.parent / "w.pth"
    buf.parent.mkdir(parents=True)
    torch.save(ref.state_dict(), buf)
    data = buf.read_bytes()
    with serve({"/mine/r18-3.pth": data}) as (url, requests):
        ts.register_weights("resnet18", "THREE", url=f"{url}/mine/r18-3.pth", sha256=hashlib.sha256(data).hexdigest(),
                            categories=["a", "b", "c"], classifier="fc", default=True)  # fmt: skip
        model = ts.create_model("resnet18", pretrained=True).eval()
    assert requests == ["/mine/r18-3.pth"] and model.fc.out_features == 3  # num_classes follows the weights
    x = torch.randn(1, 3, 32, 32)
    assert torch.equal(model(x), ref(x))
    assert ts.get_weights("resnet18").categories == ("a", "b", "c") and ts.list_pretrained("resnet18*") == [
        "resnet18.IMAGENET1K_V1", "resnet18.THREE"]  # fmt: skip
