"""Tests of the audit record: what a row holds, what it never holds, and the ``sightline audit`` command."""

from __future__ import annotations

import csv
import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from core.audit import SCHEMA_VERSION, AuditRecord
from core.pipeline import Conversation, Sightline
from core.settings import Settings
from core.types import Answer, Citation, Evidence, OcrLine, OcrResult, SightlineError, Box

from tests.conftest import REPO_ROOT

SCREENSHOT = REPO_ROOT / "assets" / "sync-paused-quota.png"
OCR_SECRET = "Invoice 4471 for Dana Whitfield"
CLI_TIMEOUT_S = 300


def make_answer() -> Answer:
    line = OcrLine(id="sha256:00aa#L1", text=OCR_SECRET, box=Box(0, 0, 10, 10), confidence=90.0)
    section = Evidence(kind="kb_section", id="billing.md#s2", source="billing.md", text="Invoices are monthly.")
    answer = Answer(text="Invoices are monthly [1].", covered=True, engine="extractive",
                    citations=[Citation(n=1, evidence=section, text="Invoices are monthly."),
                               Citation(n=2, evidence=Evidence(kind="ocr_line", id=line.id, source="sha256:00aa",
                                                               text=line.text), text=line.text)],
                    timings_ms={"ocr": 120.04, "total": 300.0})
    answer.ocr = [OcrResult(image_id="sha256:00aa", lines=[line])]
    return answer


def test_row_holds_hashes_ids_and_timings(tmp_path: Path) -> None:
    record = AuditRecord(settings=Settings.load(data_dir=tmp_path))

    record.add("When is the invoice due?", make_answer(), conversation_id="c1", turn=0,
               inputs=[("sha256:00aa", 48_213)])
    row = record.list()[0]

    assert row.conversation_id == "c1"
    assert row.question == "When is the invoice due?"
    assert row.input_ids == ["sha256:00aa"]
    assert row.input_sizes == [48_213]
    assert row.cited_ids == ["billing.md#s2", "sha256:00aa#L1"]
    assert row.engine == "extractive"
    assert row.timings_ms == {"ocr": 120.0, "total": 300.0}
    assert row.grounding is None
    assert row.media_text is None


def test_ocr_text_never_stored_by_default(tmp_path: Path) -> None:
    record = AuditRecord(settings=Settings.load(data_dir=tmp_path))
    record.add("q", make_answer(), conversation_id="c1", turn=0, inputs=[])
    record.close()

    stored = b"".join(path.read_bytes() for path in tmp_path.glob("audit.sqlite3*"))
    assert OCR_SECRET.encode() not in stored


def test_media_text_stored_when_enabled(tmp_path: Path) -> None:
    record = AuditRecord(settings=Settings.load(data_dir=tmp_path, log_media_text=True))
    record.add("q", make_answer(), conversation_id="c1", turn=0, inputs=[])
    assert record.list()[0].media_text == OCR_SECRET


def test_question_left_out_when_disabled(tmp_path: Path) -> None:
    record = AuditRecord(settings=Settings.load(data_dir=tmp_path, audit_store_question=False))
    record.add("private question", make_answer(), conversation_id="c1", turn=0, inputs=[])
    assert record.list()[0].question is None


def test_schema_version_and_wal(tmp_path: Path) -> None:
    AuditRecord(settings=Settings.load(data_dir=tmp_path)).close()
    connection = sqlite3.connect(tmp_path / "audit.sqlite3")
    assert connection.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_newer_schema_rejected(tmp_path: Path) -> None:
    connection = sqlite3.connect(tmp_path / "audit.sqlite3")
    connection.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    connection.close()
    with pytest.raises(SightlineError) as raised:
        AuditRecord(settings=Settings.load(data_dir=tmp_path))
    assert "newer" in str(raised.value)


def test_export_jsonl_and_csv(tmp_path: Path) -> None:
    record = AuditRecord(settings=Settings.load(data_dir=tmp_path))
    for turn in range(3):
        record.add(f"question {turn}", make_answer(), conversation_id="c1", turn=turn, inputs=[("sha256:00aa", 1)])

    assert record.export(tmp_path / "audit.jsonl") == 3
    rows = [json.loads(line) for line in (tmp_path / "audit.jsonl").read_text().splitlines()]
    assert [row["turn"] for row in rows] == [0, 1, 2]
    assert rows[0]["cited_ids"] == ["billing.md#s2", "sha256:00aa#L1"]

    assert record.export(tmp_path / "audit.csv", limit=2) == 2
    with (tmp_path / "audit.csv").open() as handle:
        csv_rows = list(csv.DictReader(handle))
    assert [row["question"] for row in csv_rows] == ["question 1", "question 2"]

    with pytest.raises(SightlineError):
        record.export(tmp_path / "audit.xlsx")


def test_ask_writes_audit_row_and_cli_lists_it(tmp_path: Path) -> None:
    settings = Settings.load(data_dir=tmp_path / "data", kb_dir=REPO_ROOT / "knowledge_base")
    engine = Sightline(settings=settings)
    engine.index()
    conversation = Conversation()

    answer = engine.ask("What does this error mean?", conversation=conversation, image_paths=[SCREENSHOT])
    engine.audit.close()

    row = AuditRecord(settings=settings).list()[0]
    image_id = conversation.images[0].image.id
    assert row.conversation_id == conversation.id
    assert row.input_ids == [image_id]
    assert row.input_sizes == [SCREENSHOT.stat().st_size]
    assert row.cited_ids == [citation.evidence.id for citation in answer.citations]
    assert "total" in row.timings_ms
    ocr_text = conversation.images[0].ocr.text
    stored = b"".join(path.read_bytes() for path in (tmp_path / "data").glob("audit.sqlite3*"))
    for line in ocr_text.splitlines():
        if len(line) > 12:
            assert line.encode() not in stored

    listed = subprocess.run([sys.executable, "-m", "app.cli", "audit", "--data-dir", str(tmp_path / "data")],
                            cwd=REPO_ROOT, capture_output=True, text=True, timeout=CLI_TIMEOUT_S)
    assert listed.returncode == 0, listed.stderr
    assert f"conversation={conversation.id}" in listed.stdout
    assert image_id in listed.stdout

    exported = tmp_path / "out.jsonl"
    result = subprocess.run([sys.executable, "-m", "app.cli", "audit", "--export", str(exported),
                             "--data-dir", str(tmp_path / "data")],
                            cwd=REPO_ROOT, capture_output=True, text=True, timeout=CLI_TIMEOUT_S)
    assert result.returncode == 0, result.stderr
    assert json.loads(exported.read_text().splitlines()[0])["input_ids"] == [image_id]
