"""Knowledge-base safety: one process owns the embedded store, and a store left broken is rebuilt.

The tests run the real ``sightline`` command as subprocesses on a generated knowledge
base, and kill an indexing run half-way with SIGKILL by its process id.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from core.locking import LOCK_FILE_NAME, StoreLock, indexing_marker

from tests.conftest import REPO_ROOT

DOCUMENT_COUNT = 80
CLI_TIMEOUT_S = 600
MARKER_TIMEOUT_S = 120
KILL_AFTER_MARKER_S = 2.0
"""Time the run writes before it is killed. Indexing 240 such pages took about 100 s on 2 shared cores, so 80 take far longer than this."""
TARGET_CODE = 57


def write_knowledge_base(folder: Path) -> Path:
    """Write DOCUMENT_COUNT help pages, each about one error code WX-<n> with its own fix."""
    folder.mkdir(parents=True)
    for n in range(DOCUMENT_COUNT):
        (folder / f"error-wx-{n:03d}.md").write_text(
            f"# Error WX-{n:03d}\n\n"
            f"Error WX-{n:03d} means the sync agent of cabinet {n} lost its lease.\n\n"
            f"## How to fix WX-{n:03d}\n\n"
            f"Open Settings, choose Cabinet {n}, and press Renew lease {n}. "
            f"If WX-{n:03d} comes back, ask the owner of cabinet {n} to re-invite you.\n"
        )
    return folder


def run_cli(*arguments: str, data_dir: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "app.cli", "--log-level", "INFO", *arguments, "--data-dir", str(data_dir)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=CLI_TIMEOUT_S,
    )


def ask_for_target(data_dir: Path, kb_dir: Path) -> subprocess.CompletedProcess:
    return run_cli("ask", "--json", "--kb", str(kb_dir), f"What does error WX-{TARGET_CODE:03d} mean?", data_dir=data_dir)


def cited_sources(result: subprocess.CompletedProcess) -> list[str]:
    return [citation["source"] for citation in json.loads(result.stdout)["citations"]]


@pytest.fixture(scope="module")
def generated_kb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_knowledge_base(tmp_path_factory.mktemp("kb-safety") / "kb")


def test_killed_index_rebuilt_at_start(generated_kb: Path, tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    command = [sys.executable, "-m", "app.cli", "index", str(generated_kb), "--data-dir", str(data_dir)]
    process = subprocess.Popen(command, cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    marker = indexing_marker(data_dir)
    try:
        deadline = time.monotonic() + MARKER_TIMEOUT_S
        while not marker.exists():
            assert process.poll() is None, f"sightline index exited with {process.returncode} before writing"
            assert time.monotonic() < deadline, f"{marker} did not appear within {MARKER_TIMEOUT_S} s"
            time.sleep(0.2)
        time.sleep(KILL_AFTER_MARKER_S)
        assert process.poll() is None, "the indexing run finished before it could be killed; raise DOCUMENT_COUNT"
    finally:
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
    assert marker.exists()

    result = ask_for_target(data_dir, generated_kb)

    assert result.returncode == 0, result.stderr[-3000:]
    assert "stopped before it finished" in result.stderr
    assert "Deleting the store" in result.stderr
    assert cited_sources(result)[0] == f"error-wx-{TARGET_CODE:03d}.md"
    assert f"cabinet {TARGET_CODE}" in json.loads(result.stdout)["answer"].lower()
    assert not marker.exists()


def test_damaged_store_rebuilt(generated_kb: Path, tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    assert run_cli("index", str(generated_kb), data_dir=data_dir).returncode == 0
    database = data_dir / "chroma" / "chroma.sqlite3"
    assert database.exists()
    database.write_bytes(b"this is not an SQLite database" * 100)

    result = ask_for_target(data_dir, generated_kb)

    assert result.returncode == 0, result.stderr[-3000:]
    assert "is broken" in result.stderr
    assert cited_sources(result)[0] == f"error-wx-{TARGET_CODE:03d}.md"


def test_index_rejected_while_store_owned(generated_kb: Path, tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    with StoreLock(data_dir, command="serve"):
        result = run_cli("index", str(generated_kb), data_dir=data_dir)

    assert result.returncode == 1
    assert f"in use by sightline serve (pid {os.getpid()})" in result.stderr
    assert "restart it" in result.stderr
    assert (data_dir / LOCK_FILE_NAME).exists()
    assert not (data_dir / "chroma").exists()
