"""Where a result came from: code version, package versions and hardware, captured in one dict.

Every ``result.json`` carries ``env = capture()`` so a number in a table can be traced back to the
commit (and whether the working tree had uncommitted changes), the stack and the machine that made it.
``capture()`` never raises — a field it cannot read is ``None`` — and is cheap (a few milliseconds
once torch is imported, as it is in the trainer)::

    >>> env = capture()
    >>> sorted(env)[:4]
    ['cpu', 'cuda', 'git', 'hostname']
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import subprocess
import sys
from pathlib import Path

#: Distributions whose versions decide a result (names as pip knows them).
PACKAGES = (
    "torch", "transformers", "peft", "accelerate", "deepspeed", "datasets", "lm_eval", "hydra-core", "wandb", "mora-adapter",
)

#: The repository holding this package (``None`` when mora is installed outside a git checkout).
REPO_ROOT = Path(__file__).resolve().parent.parent


def capture() -> dict:
    """Git state, package versions, Python, host, CPU, memory, CUDA devices and torch threads."""
    return {
        "git": _git(REPO_ROOT),
        "packages": {name: _version(name) for name in PACKAGES},
        "python": platform.python_version(),
        "platform": platform.platform(),
        "hostname": platform.node(),
        "cpu": {"model": _cpu_model(), "cores": os.cpu_count(), "usable_cores": _usable_cores()},
        "ram_gb": _ram_gb(),
        **_torch_info(),
    }


def _git(root: Path) -> dict | None:
    """``{"commit", "dirty"}`` of the checkout at ``root``, located from the package path rather than
    the working directory, so a run started elsewhere still records the suite's own commit."""
    if not (root / ".git").exists():  # a directory, or a file in a worktree
        return None
    try:
        commit = _run(["git", "-C", str(root), "rev-parse", "HEAD"])
        status = _run(["git", "-C", str(root), "status", "--porcelain"])
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": commit.strip(), "dirty": bool(status.strip())}


def _run(cmd: list[str]) -> str:
    return subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=5).stdout


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _cpu_model() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def _usable_cores() -> int | None:
    """Cores this process may run on (a container or ``taskset`` can allow fewer than exist)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return None


def _ram_gb() -> float | None:
    try:
        return round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (AttributeError, ValueError, OSError):
        return None


def _torch_info() -> dict:
    """CUDA devices and torch's intra-op thread count (both ``None`` without torch)."""
    try:
        import torch
    except ImportError:
        return {"cuda": None, "torch_threads": None}
    cuda = {"available": False, "count": 0, "devices": []}
    try:
        if torch.cuda.is_available():
            props = [torch.cuda.get_device_properties(i) for i in range(torch.cuda.device_count())]
            devices = [{"name": p.name, "memory_gb": round(p.total_memory / 2**30, 1)} for p in props]
            cuda = {"available": True, "count": len(devices), "devices": devices, "version": torch.version.cuda}
    except RuntimeError:  # a broken driver reports no device rather than failing the run
        pass
    return {"cuda": cuda, "torch_threads": torch.get_num_threads()}


if __name__ == "__main__":
    import json

    json.dump(capture(), sys.stdout, indent=2)
    print()
