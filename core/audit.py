"""The audit record: one SQLite row per answer, so an answer can be explained later.

A row holds the time, a random conversation id, the question, the content hashes of
the images and voice notes, the evidence ids the answer cites, the grounding score,
the engine and the stage timings. It never holds media. OCR and transcript text are
stored only when ``settings.log_media_text`` is on, and the question text only when
``settings.audit_store_question`` is on (the default).

The database is ``settings.data_dir/audit.sqlite3`` in WAL mode, so ``sightline audit``
can read it while the server writes.

Example::

    record = AuditRecord(settings=settings)
    record.add(question, answer, conversation_id="3f2a...", input_ids=["sha256:..."])
    rows = record.list(limit=20)
    record.export(Path("audit.jsonl"))
"""

from __future__ import annotations

import csv
import json
import logging
import sqlite3
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from core.settings import Settings
from core.types import Answer, SightlineError

logger = logging.getLogger(__name__)

AUDIT_FILE_NAME = "audit.sqlite3"
SCHEMA_VERSION = 1
BUSY_TIMEOUT_S = 10.0
"""How long a write waits for another process that holds the database lock."""

SCHEMA = """
CREATE TABLE IF NOT EXISTS answers (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    created_utc TEXT NOT NULL,
    conversation_id TEXT NOT NULL,
    turn INTEGER NOT NULL,
    question TEXT,
    input_ids TEXT NOT NULL,
    input_sizes TEXT NOT NULL,
    cited_ids TEXT NOT NULL,
    grounding REAL,
    covered INTEGER NOT NULL,
    engine TEXT NOT NULL,
    timings_ms TEXT NOT NULL,
    media_text TEXT
);
CREATE INDEX IF NOT EXISTS answers_conversation ON answers (conversation_id);
"""
EXPORT_FORMATS = (".jsonl", ".csv")


@dataclass
class AuditRow:
    """One recorded answer, as ``sightline audit`` lists and exports it."""

    id: int
    created_utc: str
    conversation_id: str
    turn: int
    question: str | None
    input_ids: list[str]
    """Content hashes of the images and voice notes in play, ``sha256:<16 hex>``."""
    input_sizes: list[int]
    """Byte sizes of the inputs, in the order of input_ids."""
    cited_ids: list[str]
    """Evidence ids the answer cites: OCR line ids, section ids, transcript segment ids."""
    grounding: float | None
    covered: bool
    engine: str
    timings_ms: dict[str, float]
    media_text: str | None
    """OCR and transcript text, present only when log_media_text was on."""


class AuditRecord:
    """Append-only SQLite record of answers, safe to share between threads of one process."""

    def __init__(self, *, settings: Settings, path: Path | None = None) -> None:
        self.settings = settings
        self.path = Path(path) if path is not None else settings.data_dir / AUDIT_FILE_NAME
        self._lock = threading.Lock()
        self._connection = self._connect()

    def _connect(self) -> sqlite3.Connection:
        """Open the database, create the schema, and reject a database from a newer schema version."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            connection = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, check_same_thread=False)
            connection.execute("PRAGMA journal_mode=WAL")
            version = connection.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise SightlineError(
                    f"Audit record {self.path} has schema version {version}, newer than this Sightline "
                    f"understands ({SCHEMA_VERSION}); upgrade Sightline or move the file away."
                )
            connection.executescript(SCHEMA)
            connection.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            connection.commit()
        except sqlite3.DatabaseError as error:
            raise SightlineError(
                f"Audit record {self.path} could not be opened ({error}); move the file away to start a new one."
            ) from error
        return connection

    def add(self, question: str, answer: Answer, *, conversation_id: str, turn: int,
            inputs: list[tuple[str, int]]) -> int:
        """Append one answer and return its row id.

        ``inputs`` lists (content hash, byte size) of the images and voice notes in play.
        """
        cited_ids = [citation.evidence.id for citation in answer.citations]
        media_text = _media_text(answer) if self.settings.log_media_text else None
        row = (
            time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            conversation_id,
            turn,
            question if self.settings.audit_store_question else None,
            json.dumps([input_id for input_id, _ in inputs]),
            json.dumps([size for _, size in inputs]),
            json.dumps(cited_ids),
            getattr(answer, "grounding", None),
            int(answer.covered),
            answer.engine,
            json.dumps({stage: round(ms, 1) for stage, ms in answer.timings_ms.items()}),
            media_text,
        )
        with self._lock:
            cursor = self._connection.execute(
                "INSERT INTO answers (created_utc, conversation_id, turn, question, input_ids, input_sizes, "
                "cited_ids, grounding, covered, engine, timings_ms, media_text) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", row)
            self._connection.commit()
        return int(cursor.lastrowid)

    def list(self, *, limit: int | None = None, conversation_id: str | None = None) -> list[AuditRow]:
        """Return recorded answers, newest first, at most ``limit`` of them."""
        query = "SELECT * FROM answers"
        parameters: list[Any] = []
        if conversation_id:
            query += " WHERE conversation_id = ?"
            parameters.append(conversation_id)
        query += " ORDER BY id DESC"
        if limit is not None:
            query += " LIMIT ?"
            parameters.append(int(limit))
        with self._lock:
            cursor = self._connection.execute(query, parameters)
            names = [column[0] for column in cursor.description]
            records = [dict(zip(names, values)) for values in cursor.fetchall()]
        return [_row_from_record(record) for record in records]

    def export(self, path: Path, *, limit: int | None = None) -> int:
        """Write the record to a ``.jsonl`` or ``.csv`` file, oldest first; return the number of rows."""
        path = Path(path)
        if path.suffix.lower() not in EXPORT_FORMATS:
            raise SightlineError(f"Cannot export the audit record to {path}: use a .jsonl or .csv file name.")
        rows = list(reversed(self.list(limit=limit)))
        path.parent.mkdir(parents=True, exist_ok=True)

        if path.suffix.lower() == ".jsonl":
            with path.open("w", encoding="utf-8") as handle:
                for row in rows:
                    handle.write(json.dumps(asdict(row), ensure_ascii=False) + "\n")
        else:
            with path.open("w", encoding="utf-8", newline="") as handle:
                writer = csv.writer(handle)
                names = list(AuditRow.__dataclass_fields__)
                writer.writerow(names)
                for row in rows:
                    record = asdict(row)
                    writer.writerow([_csv_value(record[name]) for name in names])
        logger.info("Exported %d audit rows to %s", len(rows), path)
        return len(rows)

    def close(self) -> None:
        with self._lock:
            self._connection.close()


def _media_text(answer: Answer) -> str:
    """Join the OCR lines and the transcript that the answer used, for the opt-in text column."""
    parts = [result.text for result in answer.ocr]
    if answer.transcript is not None and answer.transcript.segments:
        parts.append(answer.transcript.text)
    return "\n\n".join(parts)


def _csv_value(value: Any) -> Any:
    return json.dumps(value) if isinstance(value, (list, dict)) else value


def _row_from_record(record: dict[str, Any]) -> AuditRow:
    return AuditRow(
        id=record["id"],
        created_utc=record["created_utc"],
        conversation_id=record["conversation_id"],
        turn=record["turn"],
        question=record["question"],
        input_ids=json.loads(record["input_ids"]),
        input_sizes=json.loads(record["input_sizes"]),
        cited_ids=json.loads(record["cited_ids"]),
        grounding=record["grounding"],
        covered=bool(record["covered"]),
        engine=record["engine"],
        timings_ms=json.loads(record["timings_ms"]),
        media_text=record["media_text"],
    )
