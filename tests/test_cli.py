"""The real `sightline` command line, run as a subprocess like a user would."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT

TIMEOUT_S = 300


def run_cli(*arguments: str, data_dir: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "app.cli", *arguments, "--data-dir", str(data_dir)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=TIMEOUT_S,
    )


@pytest.fixture(scope="module")
def indexed_data_dir(tmp_path_factory) -> Path:
    data_dir = tmp_path_factory.mktemp("cli-data")
    result = run_cli("index", str(REPO_ROOT / "knowledge_base"), data_dir=data_dir)
    assert result.returncode == 0, result.stderr
    assert "added" in result.stdout
    return data_dir


def test_index_again_embeds_nothing(indexed_data_dir: Path):
    result = run_cli("index", str(REPO_ROOT / "knowledge_base"), data_dir=indexed_data_dir)

    assert result.returncode == 0, result.stderr
    assert " 0 added, 0 updated, 0 removed" in result.stdout
    assert "0 sections embedded" in result.stdout


def test_ask_json_with_image(indexed_data_dir: Path):
    result = run_cli("ask", "--json", "--no-index", "--image", str(REPO_ROOT / "assets" / "sync-paused-quota.png"),
                     "What does this error mean?", data_dir=indexed_data_dir)
    assert result.returncode == 0, result.stderr
    record = json.loads(result.stdout)

    assert "[1]" in record["answer"]
    assert record["covered"] is True
    for citation in record["citations"]:
        assert {"n", "kind", "source", "text"} <= citation.keys()
    lines = [citation for citation in record["citations"] if citation["kind"] == "ocr_line"]
    sections = [citation for citation in record["citations"] if citation["kind"] == "kb_section"]
    assert lines and all(len(citation["box"]) == 4 for citation in lines)
    assert sections[0]["source"] == "sync-paused-tp-4021-storage-quota.md"
    assert {"intake", "ocr", "retrieval", "answer", "total", "startup"} <= record["timings_ms"].keys()
    assert any("No vision model is configured" in warning for warning in record["warnings"])


def test_ask_json_with_voice_note(indexed_data_dir: Path):
    result = run_cli("ask", "--json", "--no-index", "--audio", str(REPO_ROOT / "assets" / "voice" / "ask-tp4021.wav"),
                     "", data_dir=indexed_data_dir)
    assert result.returncode == 0, result.stderr
    record = json.loads(result.stdout)

    assert record["transcript"]["language"] == "en"
    assert record["transcript"]["segments"][0]["end_s"] > 0
    assert "speech" in record["timings_ms"]
    assert any(citation["kind"] == "transcript" for citation in record["citations"])


def test_ask_rejects_non_image(indexed_data_dir: Path, tmp_path: Path):
    fake = tmp_path / "notes.png"
    fake.write_text("not an image at all\n")
    result = run_cli("ask", "--no-index", "--image", str(fake), "What is this?", data_dir=indexed_data_dir)

    assert result.returncode == 1
    assert "notes.png" in result.stderr
    assert "Traceback" not in result.stderr


def test_ask_missing_image_file(indexed_data_dir: Path, tmp_path: Path):
    result = run_cli("ask", "--no-index", "--image", str(tmp_path / "absent.png"), "What is this?",
                     data_dir=indexed_data_dir)

    assert result.returncode == 1
    assert "absent.png" in result.stderr
    assert "Traceback" not in result.stderr


def test_ask_audio_without_question_argument(indexed_data_dir: Path):
    result = run_cli("ask", "--no-index", "--audio", str(REPO_ROOT / "assets" / "voice" / "ask-device-limit.wav"),
                     data_dir=indexed_data_dir)

    assert result.returncode == 0, result.stderr
    assert "3 devices" in result.stdout
    assert "warning: No vision model" not in result.stderr


def test_index_reports_empty_and_invalid_documents(tmp_path: Path):
    kb_dir = tmp_path / "kb"
    kb_dir.mkdir()
    (kb_dir / "widgets.md").write_text("# Widgets\n\nA widget turns blue when it is charged.\n")
    (kb_dir / "empty.md").write_bytes(b"")
    (kb_dir / "latin1.md").write_bytes(b"# Caf\xe9\n")

    result = run_cli("index", str(kb_dir), data_dir=tmp_path / "data")

    assert result.returncode == 1
    assert "1 added" in result.stdout
    assert "1 empty" in result.stdout
    assert "1 failed" in result.stdout
    assert "failed: latin1.md: not valid UTF-8" in result.stderr
    assert "latin1.md: latin1.md" not in result.stderr
