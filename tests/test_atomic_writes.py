"""obd_fast.atomic: a failed or killed write leaves the old file or the new one, never a torn one."""
import hashlib
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from obd_fast.atomic import atomic_torch_save, atomic_write, atomic_write_text

ROOT = Path(__file__).resolve().parent.parent
KILLS = {"atomic_write": 8, "atomic_torch_save": 3}  # the figures in the notes count these


def leftovers(folder: Path, name: str):
    return sorted(p.name for p in folder.iterdir() if p.name != name)


# -- exceptions inside the writer --------------------------------------------------------------

class Boom(Exception):
    pass


@pytest.mark.parametrize("error", [Boom("disk full, pretend"), KeyboardInterrupt()])
def test_writer_exception_keeps_the_old_file_and_no_temp_files(tmp_path, error):
    target = tmp_path / "state.bin"
    target.write_bytes(b"old complete version")

    def writer(tmp):
        with open(tmp, "wb") as f:
            f.write(b"new, half written")
        raise error

    with pytest.raises(type(error)):
        atomic_write(target, writer)
    assert target.read_bytes() == b"old complete version"
    assert leftovers(tmp_path, target.name) == []


def test_writer_exception_without_an_old_file(tmp_path):
    target = tmp_path / "sub" / "new.bin"

    def writer(tmp):
        Path(tmp).write_bytes(b"partial")
        raise Boom()

    with pytest.raises(Boom):
        atomic_write(target, writer)
    assert not target.exists() and leftovers(target.parent, target.name) == []


def test_the_former_module_name_still_imports():
    import obd_fast.checkpoint as former

    assert (former.atomic_write, former.atomic_torch_save, former.atomic_write_text) == (
        atomic_write, atomic_torch_save, atomic_write_text)


def test_torch_save_failure_midway_keeps_the_old_file(tmp_path):
    target = tmp_path / "ckpt.pt"
    atomic_torch_save({"step": 1, "w": torch.arange(5.0)}, target)
    unpicklable = {"step": 2, "w": torch.zeros(10_000), "fn": lambda x: x}  # fails after the tensor is written
    with pytest.raises(Exception):
        atomic_torch_save(unpicklable, target)
    got = torch.load(target)
    assert got["step"] == 1 and torch.equal(got["w"], torch.arange(5.0))
    assert leftovers(tmp_path, target.name) == []


def test_successful_writes_replace_and_get_normal_permissions(tmp_path):
    target = tmp_path / "notes.txt"
    atomic_write_text(target, "one")
    atomic_write_text(target, "two")
    assert target.read_text() == "two" and leftovers(tmp_path, target.name) == []
    umask = os.umask(0)
    os.umask(umask)
    assert (target.stat().st_mode & 0o777) == (0o666 & ~umask)


# -- SIGKILL at random moments -----------------------------------------------------------------

# The child imports obd_fast/atomic.py by path (not the whole package: faster restarts). It
# writes version after version of a large file forever and prints "ready" once its first write
# has finished.
CHILD = textwrap.dedent("""
    import hashlib, importlib.util, os, sys
    target, mode, start = sys.argv[1], sys.argv[2], int(sys.argv[3])
    spec = importlib.util.spec_from_file_location("ckpt", os.path.join(sys.argv[4], "obd_fast", "atomic.py"))
    ckpt = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ckpt)
    if mode == "atomic_torch_save":
        import torch
    version = start
    while True:
        version += 1
        if mode == "atomic_torch_save":
            ckpt.atomic_torch_save({"version": version, "data": torch.full((3_000_000,), float(version))}, target)
        else:
            body = version.to_bytes(8, "little") + os.urandom(6_000_000)
            def write(tmp, body=body):
                with open(tmp, "wb") as f:
                    f.write(body)
                    f.write(hashlib.sha256(body).digest())
            ckpt.atomic_write(target, write)
        if version == start + 1:
            print("ready", flush=True)
""")


def read_version(path: Path, mode: str) -> int:
    """The version of a complete file; fails on a torn or mixed one."""
    if mode == "atomic_torch_save":
        obj = torch.load(path)
        v = obj["version"]
        assert obj["data"].shape == (3_000_000,) and bool((obj["data"] == float(v)).all())
        return v
    raw = path.read_bytes()
    body, digest = raw[:-32], raw[-32:]
    assert len(body) == 8 + 6_000_000 and hashlib.sha256(body).digest() == digest
    return int.from_bytes(body[:8], "little")


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs POSIX signals")
@pytest.mark.parametrize("mode", list(KILLS))
def test_sigkill_during_writes_leaves_a_complete_version(tmp_path, mode):
    target = tmp_path / ("state.pt" if mode == "atomic_torch_save" else "state.bin")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    rng = random.Random(1234)
    version, seen = 0, []
    for _ in range(KILLS[mode]):
        proc = subprocess.Popen([sys.executable, "-c", CHILD, str(target), mode, str(version), str(ROOT)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
        try:
            line = proc.stdout.readline()
            assert line.strip() == "ready", proc.stderr.read()[-2000:]
            time.sleep(rng.uniform(0.0, 0.4))  # somewhere inside a later write, fsync or rename
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)
        assert proc.returncode == -signal.SIGKILL
        new = read_version(target, mode)  # loads: the old complete file or the new complete one
        assert new > version  # at least the first write of this child (the "ready" one) is there
        version = new
        seen.append(new)
    # a killed writer may leave its temporary file (nothing runs after SIGKILL), but only as a
    # hidden .NAME.*.tmp beside the target, never under the target's name
    assert all(p.startswith(f".{target.name}.") and p.endswith(".tmp") for p in leftovers(tmp_path, target.name))
    assert seen == sorted(seen)
