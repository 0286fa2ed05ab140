"""The ``sightline`` command: serve the chat app, index a knowledge base, ask one question.

Examples::

    sightline serve                                   # http://127.0.0.1:7860
    sightline index knowledge_base/
    sightline ask --image assets/sync-paused-quota.png "What does this error mean?"
    sightline ask --audio note.wav --image shot.png --json ""
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

from core.settings import Settings
from core.types import SightlineError

logger = logging.getLogger("sightline")

EXIT_INPUT_ERROR = 1

_store_lock = None
"""The lock on the embedded Chroma store that this process holds until it exits."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sightline", description="Grounded visual question answering.")
    parser.add_argument("--log-level", default="WARNING", help="logging level: DEBUG, INFO, WARNING (default), ERROR")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="index the knowledge base, then serve the chat app")
    serve.add_argument("--host", help="address to bind (default 127.0.0.1, or SIGHTLINE_HOST)")
    serve.add_argument("--port", type=int, help="TCP port (default 7860, or SIGHTLINE_PORT)")
    _add_common_options(serve)

    index = commands.add_parser("index", help="index a folder of Markdown, text, HTML and PDF documents")
    index.add_argument("kb_dir", nargs="?", type=Path, help="knowledge-base folder (default: the configured one)")
    index.add_argument("--data-dir", type=Path, help="folder for the Chroma store and caches")

    ask = commands.add_parser("ask", help="answer one question about an image, a voice note, or neither")
    ask.add_argument("question", nargs="?", default="",
                     help="the question; leave it out when --audio contains the spoken question")
    ask.add_argument("--image", type=Path, action="append", default=[], help="screenshot or photo (repeatable)")
    ask.add_argument("--audio", type=Path, help="voice note: WAV, FLAC, MP3, OGG/Opus, M4A or WebM")
    ask.add_argument("--json", action="store_true", help="print the answer, citations and timings as JSON")
    ask.add_argument("--no-index", action="store_true", help="skip the incremental re-index before answering")
    ask.add_argument("--thorough", action="store_true",
                     help="answer with the configured model (SIGHTLINE_LLM_BASE_URL) even when the extractive "
                          "answer is confident; without a configured model this has no effect")
    _add_common_options(ask)

    audit = commands.add_parser("audit", help="list the recorded answers, or export them to a file")
    audit.add_argument("--limit", type=int, default=20, help="newest answers to list or export (default 20, 0 for all)")
    audit.add_argument("--conversation", help="only the answers of this conversation id")
    audit.add_argument("--export", type=Path, metavar="PATH", help="write the answers to a .jsonl or .csv file")
    audit.add_argument("--data-dir", type=Path, help="folder that holds audit.sqlite3")

    commands.add_parser("hash-password", help="read a password from the terminal and print a hash for auth_users")
    return parser


def _add_common_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--kb", type=Path, help="knowledge-base folder (default: the configured one)")
    parser.add_argument("--data-dir", type=Path, help="folder for the Chroma store and caches")


def main(argv: list[str] | None = None) -> int:
    """Run the command line; return the process exit code."""
    arguments = build_parser().parse_args(argv)
    logging.basicConfig(level=arguments.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    try:
        settings = Settings.load(
            data_dir=getattr(arguments, "data_dir", None),
            kb_dir=getattr(arguments, "kb", None) or getattr(arguments, "kb_dir", None),
            host=getattr(arguments, "host", None),
            port=getattr(arguments, "port", None),
        )
        if arguments.command == "index":
            return _index(settings)
        if arguments.command == "ask":
            return _ask(settings, arguments)
        if arguments.command == "audit":
            return _audit(settings, arguments)
        if arguments.command == "hash-password":
            return _hash_password()
        return _serve(settings)
    except SightlineError as error:
        print(f"sightline: {error}", file=sys.stderr)
        return EXIT_INPUT_ERROR


def _lock_store(settings: Settings, command: str) -> None:
    """Take the embedded store's lock for the rest of the process; a Chroma server needs none."""
    global _store_lock
    if settings.chroma_host:
        return
    from core.locking import StoreLock

    _store_lock = StoreLock(settings.data_dir, command=command)
    _store_lock.acquire()


def _index(settings: Settings) -> int:
    from core.pipeline import Sightline

    _lock_store(settings, "index")
    engine = Sightline(settings=settings)
    report = engine.index(settings.kb_dir, progress=sys.stderr.isatty())
    print(f"Indexed {settings.kb_dir}: {report.summary()} ({report.elapsed_ms / 1000:.1f} s)")
    images = report.images
    if images is not None:
        print(f"Indexed {images.summary()} ({images.elapsed_ms / 1000:.1f} s)")
    failed = {**report.failed, **(images.failed if images is not None else {})}
    for path, reason in failed.items():
        # Most reasons already start with the file's path.
        print(f"  failed: {reason if reason.startswith(path) else f'{path}: {reason}'}", file=sys.stderr)
    return EXIT_INPUT_ERROR if failed else 0


def _ask(settings: Settings, arguments: argparse.Namespace) -> int:
    from core.pipeline import Sightline

    _check_input_paths([*arguments.image, *([arguments.audio] if arguments.audio else [])])

    started = time.perf_counter()
    _lock_store(settings, "ask")
    engine = Sightline(settings=settings)
    if not arguments.no_index:
        engine.index(settings.kb_dir)
    engine.warm_up()
    startup_ms = (time.perf_counter() - started) * 1000

    answer = engine.ask(arguments.question, image_paths=arguments.image, audio_path=arguments.audio,
                        thorough=arguments.thorough)
    warnings = list(answer.warnings)
    if not settings.clip_model and arguments.image:
        warnings.append("No vision model is configured (SIGHTLINE_CLIP_MODEL), so images are read by OCR only.")
    if arguments.thorough and not settings.llm_base_url:
        warnings.append("--thorough had no effect because no model is configured (SIGHTLINE_LLM_BASE_URL).")

    if arguments.json:
        record = answer.to_json()
        record["warnings"] = warnings
        record["timings_ms"]["startup"] = round(startup_ms, 1)
        print(json.dumps(record, ensure_ascii=False, indent=2))
        return 0

    print(answer.text)
    if answer.citations:
        print("\nSources:")
        file_names = {image["id"]: image["source"] for image in answer.context.get("images", [])}
        for citation in answer.citations:
            print(f"  [{citation.n}] {_describe_citation(citation, file_names)}")
    if answer.grounding is not None:
        unsupported = sum(not sentence.supported for sentence in answer.sentences)
        print(f"\nGrounding: {answer.grounding:.2f} ({len(answer.sentences)} sentences checked, "
              f"{unsupported} unsupported)")
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)
    return 0


def _describe_citation(citation, file_names: dict[str, str]) -> str:
    """Describe one citation on a line; ``file_names`` maps image content hashes to the user's file names."""
    evidence = citation.evidence
    if evidence.kind == "ocr_line":
        box = evidence.box
        image = file_names.get(evidence.source, evidence.source)
        return f"{image}, line at x={box.left} y={box.top} ({box.width}x{box.height} px): {citation.text}"
    if evidence.kind == "transcript":
        return f"voice note {evidence.source}, {evidence.start_s:.1f}-{evidence.end_s:.1f} s: {citation.text}"
    if evidence.kind == "image_label":
        return f"image {file_names.get(evidence.source, evidence.source)}, zero-shot label: {citation.text}"
    if evidence.kind == "kb_image":
        return f"matching image {evidence.image_path} in {evidence.document_title} › {evidence.heading} ({evidence.source})"
    return f"{evidence.document_title} › {evidence.heading} ({evidence.source})"


def _check_input_paths(paths: list[Path]) -> None:
    """Raise SightlineError for a missing input file before any model loads, which takes seconds."""
    for path in paths:
        if not path.exists():
            raise SightlineError(f"{path} was not found. Check the path and try again.")
        if not path.is_file():
            raise SightlineError(f"{path} is not a file. Pass an image or audio file.")


def _audit(settings: Settings, arguments: argparse.Namespace) -> int:
    from core.audit import AuditRecord

    record = AuditRecord(settings=settings)
    limit = arguments.limit or None
    if arguments.export is not None:
        count = record.export(arguments.export, limit=limit)
        print(f"Exported {count} answers to {arguments.export}")
        return 0

    rows = record.list(limit=limit, conversation_id=arguments.conversation)
    for row in rows:
        grounding = "-" if row.grounding is None else f"{row.grounding:.2f}"
        total_ms = row.timings_ms.get("total", 0.0)
        print(f"#{row.id} {row.created_utc} conversation={row.conversation_id} turn={row.turn} "
              f"engine={row.engine} grounding={grounding} total={total_ms:.0f}ms")
        print(f"  question: {row.question if row.question is not None else '(not stored)'}")
        print(f"  inputs: {', '.join(row.input_ids) or '-'}")
        print(f"  cited: {', '.join(row.cited_ids) or '-'}")
    if not rows:
        print(f"No answers recorded in {record.path}")
    return 0


def _hash_password() -> int:
    import getpass

    from core.access import hash_password

    password = getpass.getpass("Password: ")
    if password != getpass.getpass("Repeat: "):
        print("sightline: the passwords differ; nothing was printed.", file=sys.stderr)
        return EXIT_INPUT_ERROR
    print(hash_password(password))
    return 0


def _serve(settings: Settings) -> int:
    from app.ui import serve

    _lock_store(settings, "serve")
    serve(settings)
    return 0


if __name__ == "__main__":
    sys.exit(main())
