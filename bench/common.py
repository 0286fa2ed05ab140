"""Machine facts that every benchmark prints next to its numbers.

Times measured on shared cores mean little without the CPU, the core count and
the load average at the time, so the benchmark scripts print these lines first.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import shutil
import subprocess
from pathlib import Path

KEY_PACKAGES = ("torch", "ctranslate2", "faster-whisper", "chromadb", "sentence-transformers", "rank-bm25")


def cpu_model() -> str:
    """Return the CPU model name from /proc/cpuinfo, or the platform's processor string."""
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def describe_machine() -> str:
    """Return the CPU model, logical core count, Python version and OS as one line."""
    return f"{cpu_model()}, {os.cpu_count()} logical cores, Python {platform.python_version()}, {platform.system()}"


def describe_load() -> str:
    """Return the 1, 5 and 15 minute load averages as one line, for example "3.10 / 2.95 / 2.40"."""
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} / {five:.2f} / {fifteen:.2f}"


def package_versions() -> str:
    """Return the installed versions of the packages that dominate the timings, and Tesseract's."""
    versions = []
    for name in KEY_PACKAGES:
        try:
            versions.append(f"{name} {importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            versions.append(f"{name} not installed")
    versions.append(f"Tesseract {tesseract_version()}")
    return ", ".join(versions)


def tesseract_version() -> str:
    """Return the version that `tesseract --version` prints first, or "not found"."""
    binary = shutil.which("tesseract")
    if binary is None:
        return "not found"
    completed = subprocess.run([binary, "--version"], capture_output=True, text=True, check=False)
    first_line = (completed.stdout or completed.stderr).splitlines()[:1]
    return first_line[0].removeprefix("tesseract ").strip() if first_line else "unknown"


def describe_revision(repo_root: Path) -> str:
    """Return the short commit of ``repo_root``, flagged when core/ or app/ has uncommitted changes."""
    def git(*arguments: str) -> str:
        completed = subprocess.run(["git", *arguments], cwd=repo_root, capture_output=True, text=True, check=False)
        return completed.stdout.strip() if completed.returncode == 0 else ""

    commit = git("rev-parse", "--short", "HEAD") or "unknown commit"
    if git("status", "--porcelain", "--", "core", "app"):
        return f"{commit} with uncommitted changes in core/ or app/"
    return commit
