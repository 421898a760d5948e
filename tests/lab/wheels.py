"""Wheels for installing hostmesh the way an operator would, without an index: the
package built from this checkout, and its dependencies repacked from the test venv (a
wheelhouse for ``pip install --no-index --find-links``). Used by test_ansible.py."""

from __future__ import annotations

import base64
import hashlib
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PY = sys.executable


def build_wheel(tmp: Path) -> Path:
    """The hostmesh wheel, built from a copy of the sources (the repository stays clean)."""
    src = tmp / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE", "MANIFEST.in"):
        if (REPO / name).exists():
            shutil.copy2(REPO / name, src / name)
    shutil.copytree(REPO / "agent", src / "agent", ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.so"))
    # the native data plane's crate; its build cache is the checkout's (a warm rebuild
    # takes seconds, a cold one minutes)
    shutil.copytree(REPO / "dataplane", src / "dataplane", ignore=shutil.ignore_patterns("target"))
    out = tmp / "wheels"
    env = {**os.environ, "CARGO_TARGET_DIR": str(REPO / "dataplane" / "target")}
    r = subprocess.run([PY, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(src)],
                       capture_output=True, text=True, timeout=900, env=env)
    assert r.returncode == 0, r.stderr
    (wheel,) = out.glob("hostmesh-*.whl")
    return wheel


def dependency_wheelhouse(out: Path) -> None:
    """Wheels of hostmesh's dependencies, repacked from this venv, so the role's
    ``pip install --no-index --find-links`` installs them without any index."""
    import importlib.metadata as md

    from packaging.markers import default_environment
    from packaging.requirements import Requirement

    env = {**default_environment(), "extra": ""}
    seen: dict[str, md.Distribution] = {}
    todo = [r for r in md.distribution("hostmesh").requires or []]
    while todo:
        req = Requirement(todo.pop())
        if req.marker and not req.marker.evaluate(env):
            continue
        key = re.sub(r"[-_.]+", "-", req.name).lower()
        if key not in seen:
            seen[key] = md.distribution(req.name)
            todo += seen[key].requires or []
    for dist in seen.values():
        repack(dist, out)


def repack(dist, out: Path) -> Path:
    tags = [ln.split(":", 1)[1].strip() for ln in dist.read_text("WHEEL").splitlines() if ln.startswith("Tag:")]
    parts = [sorted({t.split("-")[i] for t in tags}) for i in range(3)]
    tag = "-".join(".".join(p) for p in parts)
    name = re.sub(r"[-_.]+", "_", dist.metadata["Name"])
    path = out / f"{name}-{dist.version}-{tag}.whl"
    record_name, records = None, []
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        for f in dist.files:
            s = str(f)
            if s.endswith(".dist-info/RECORD"):
                record_name = s
                continue
            if (s.startswith("..") or "__pycache__" in s or s.endswith(".pyc")
                    or s.endswith((".dist-info/INSTALLER", ".dist-info/REQUESTED", ".dist-info/direct_url.json"))):
                continue
            p = Path(dist.locate_file(f))
            if not p.is_file():
                continue
            data = p.read_bytes()
            z.writestr(s, data)
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
            records.append(f"{s},sha256={digest},{len(data)}")
        assert record_name, f"{dist.metadata['Name']}: no RECORD"
        z.writestr(record_name, "\n".join(records + [f"{record_name},,"]) + "\n")
    return path


def venv_python() -> str:
    """The interpreter the role makes its virtualenv with: the role's default when it is
    this Python's version (the repacked wheels are built for it), else this venv's base.
    Either must be reachable by the unprivileged agent (not under /root)."""
    want = f"{sys.version_info.major}.{sys.version_info.minor}"
    r = subprocess.run(["/usr/bin/python3", "-c", "import sys, venv; print('%d.%d' % sys.version_info[:2])"],
                       capture_output=True, text=True)
    if r.returncode == 0 and r.stdout.strip() == want:
        return "/usr/bin/python3"
    return getattr(sys, "_base_executable", None) or shutil.which("python3")
