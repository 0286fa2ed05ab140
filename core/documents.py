"""Knowledge-base documents: reading Markdown, plain text, HTML and PDF, and cutting them into sections.

Each section keeps the document path, the heading path and the character offsets of
its span in the document's source text, so a citation can name exactly where it
came from. For Markdown and plain text the offsets index the file's text as read;
for HTML and PDF they index the text extracted from the file.

Example::

    document = read_document(Path("kb/errors.md"), kb_dir=Path("kb"))
    for section in split_sections(document):
        print(section.id, section.heading, len(section.text))
"""

from __future__ import annotations

import hashlib
import html
import re
from dataclasses import dataclass, field
from pathlib import Path

from core.types import Section, SightlineError

DOCUMENT_SUFFIXES = {".md": "markdown", ".mdx": "markdown", ".markdown": "markdown",
                     ".txt": "text", ".html": "html", ".htm": "html", ".pdf": "pdf"}
MAX_SECTION_CHARS = 1500
"""Sections longer than this are cut at paragraph boundaries into several sections."""

_FRONT_MATTER = re.compile(r"\A---\s*\n(.*?)\n---\s*\n", re.DOTALL)
_ATX_HEADING = re.compile(r"^(#{1,6})[ \t]+(.+?)[ \t#]*$")
_FENCE = re.compile(r"^\s*(```|~~~)")
_MARKDOWN_IMAGE = re.compile(r"!\[([^\]]*)\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_SRC_ATTRIBUTE = re.compile(r"<(?:img|Image)\b[^>]*?\bsrc\s*=\s*(?:\"([^\"]+)\"|'([^']+)'|\{\s*\"([^\"]+)\"\s*\})",
                            re.IGNORECASE)
_IMAGE_TAG = re.compile(r"<(?:img|Image)\b[^>]*>", re.IGNORECASE)
_ALT_ATTRIBUTE = re.compile(r"\balt\s*=\s*(?:\"([^\"]*)\"|'([^']*)')", re.IGNORECASE)
SECTIONING_VERSION = 4
"""Bump when the cutting or cleaning of sections changes, so stores built the old way are rebuilt."""
CODE_FENCE = "```"
"""Line that opens or closes a code block in a section's plain text."""
IMAGE_CAPTION_PREFIX = "[Image: "
"""Prefix of the line that stands for an image's alt text in a section's plain text."""
_MARKDOWN_LINK = re.compile(r"\[([^\]]+)\]\([^)]*\)")
_HTML_TAG = re.compile(r"<[^>\n]+>")
_MDX_EXPRESSION = re.compile(r"\{\{.*?\}\}")
_EMPHASIS = re.compile(r"(\*\*|__|(?<=\S)\*|\*(?=\S))")
_BLANK_LINES = re.compile(r"\n\s*\n+")


@dataclass
class Document:
    """A knowledge-base file as read: its text, title, kind and content hash."""

    path: str
    """Path relative to the knowledge-base folder, with forward slashes."""
    kind: str
    text: str
    title: str
    content_hash: str
    headings: list[tuple[int, int, str]] = field(default_factory=list)
    """(offset, level, heading text) for documents whose format marks headings."""


def find_documents(kb_dir: Path) -> list[Path]:
    """List the documents below ``kb_dir`` that Sightline can index, sorted, hidden files skipped."""
    if not kb_dir.is_dir():
        raise SightlineError(
            f"Knowledge-base folder {kb_dir} does not exist. Create it or set SIGHTLINE_KB_DIR."
        )
    found = []
    for path in sorted(kb_dir.rglob("*")):
        relative_parts = path.relative_to(kb_dir).parts
        if any(part.startswith(".") for part in relative_parts):
            continue
        if path.is_file() and path.suffix.lower() in DOCUMENT_SUFFIXES:
            found.append(path)
    return found


def hash_bytes(data: bytes) -> str:
    """Return the content-hash id used for documents: ``sha256:`` and 16 hex digits."""
    return "sha256:" + hashlib.sha256(data).hexdigest()[:16]


def read_document(path: Path, *, kb_dir: Path) -> Document:
    """Read one document and extract its text and headings.

    Raises SightlineError naming the file when it cannot be decoded or parsed.
    """
    data = path.read_bytes()
    relative = path.relative_to(kb_dir).as_posix()
    kind = DOCUMENT_SUFFIXES.get(path.suffix.lower())
    if kind is None:
        raise SightlineError(f"{relative}: unsupported document type {path.suffix!r}.")

    if kind == "pdf":
        text = _extract_pdf_text(data, relative)
    else:
        try:
            text = data.decode("utf-8-sig")
        except UnicodeDecodeError as error:
            raise SightlineError(
                f"{relative}: not valid UTF-8 text ({error.reason} at byte {error.start}). "
                "Save the file as UTF-8 and index again."
            ) from error
        text = text.replace("\r\n", "\n")

    if kind == "html":
        text, headings = _extract_html_text(text)
    elif kind == "markdown":
        headings = _markdown_headings(text)
    else:
        headings = []

    title = _document_title(text, kind, headings, fallback=path.stem)
    return Document(path=relative, kind=kind, text=text, title=title,
                    content_hash=hash_bytes(data), headings=headings)


def split_sections(document: Document) -> list[Section]:
    """Cut a document into sections at its headings, then cut long sections at paragraphs."""
    spans = _heading_spans(document)
    sections: list[Section] = []

    for start, end, heading_path in spans:
        raw = document.text[start:end]
        for chunk_start, chunk_end in _paragraph_chunks(raw, MAX_SECTION_CHARS):
            chunk = raw[chunk_start:chunk_end]
            text = clean_text(chunk) if document.kind in ("markdown", "html") else _collapse(chunk)
            if not text.strip():
                continue
            sections.append(Section(
                id=f"{document.path}#{len(sections)}",
                doc_path=document.path,
                title=document.title,
                heading_path=heading_path or [document.title],
                text=text,
                start=start + chunk_start,
                end=start + chunk_end,
                doc_hash=document.content_hash,
                image_refs=find_image_refs(chunk) if document.kind in ("markdown", "html") else [],
            ))
    return sections


def find_image_refs(text: str) -> list[str]:
    """Return the image paths a Markdown, HTML or MDX snippet references, in order, without repeats."""
    found: list[str] = []
    for match in _MARKDOWN_IMAGE.finditer(text):
        found.append(match.group(2))
    for match in _SRC_ATTRIBUTE.finditer(text):
        found.append(next(group for group in match.groups() if group))
    return list(dict.fromkeys(found))


def clean_text(markdown: str) -> str:
    """Turn a Markdown or MDX snippet into plain text: links to their words, tags and images dropped."""
    lines: list[str] = []
    in_fence = False
    for line in markdown.split("\n"):
        if _FENCE.match(line):
            in_fence = not in_fence
            lines.append(CODE_FENCE)
            continue
        if in_fence:
            lines.append(line.rstrip())
            continue

        heading = _ATX_HEADING.match(line)
        if heading:
            line = heading.group(2)
        line = _MARKDOWN_IMAGE.sub(lambda match: _caption(match.group(1)), line)
        line = _MARKDOWN_LINK.sub(r"\1", line)

        # Odd pieces are inline code, where text such as `<your-app>` is literal, not a tag.
        pieces = line.split("`")
        for index in range(0, len(pieces), 2):
            pieces[index] = _clean_prose(pieces[index])
        lines.append("".join(pieces).rstrip())
    return _BLANK_LINES.sub("\n\n", "\n".join(lines)).strip()


def _clean_prose(text: str) -> str:
    text = _IMAGE_TAG.sub(lambda match: _caption(_alt_text(match.group(0))), text)
    text = _MDX_EXPRESSION.sub("", text)
    text = _HTML_TAG.sub("", text)
    text = _EMPHASIS.sub("", text)
    return html.unescape(text.replace("&mdash;", "—"))


def _caption(alt: str) -> str:
    """Keep an image's alt text as a caption line: it names the screen the image shows."""
    alt = " ".join(alt.split())
    return f"{IMAGE_CAPTION_PREFIX}{alt}]" if alt else ""


def _alt_text(tag: str) -> str:
    match = _ALT_ATTRIBUTE.search(tag)
    return next((group for group in match.groups() if group), "") if match else ""


def _collapse(text: str) -> str:
    return _BLANK_LINES.sub("\n\n", text).strip()


def _markdown_headings(text: str) -> list[tuple[int, int, str]]:
    """Find ATX headings outside fenced code blocks and front matter."""
    headings = []
    front_matter = _FRONT_MATTER.match(text)
    offset = front_matter.end() if front_matter else 0
    in_fence = False

    for line in text[offset:].split("\n"):
        if _FENCE.match(line):
            in_fence = not in_fence
        elif not in_fence:
            match = _ATX_HEADING.match(line)
            if match:
                headings.append((offset, len(match.group(1)), clean_text(match.group(2))))
        offset += len(line) + 1
    return headings


def _document_title(text: str, kind: str, headings: list[tuple[int, int, str]], *, fallback: str) -> str:
    if kind == "markdown":
        front_matter = _FRONT_MATTER.match(text)
        if front_matter:
            title = re.search(r"^title:\s*(.+)$", front_matter.group(1), re.MULTILINE)
            if title:
                return title.group(1).strip().strip("\"'")
    if headings:
        top_level = min(level for _, level, _ in headings)
        return next(heading for _, level, heading in headings if level == top_level)
    if kind == "text":
        first_line = text.strip().split("\n", 1)[0].strip()
        if 0 < len(first_line) <= 100:
            return first_line
    return fallback.replace("_", " ").replace("-", " ")


def _heading_spans(document: Document) -> list[tuple[int, int, list[str]]]:
    """Return (start, end, heading path) spans that cover the document body between headings."""
    text = document.text
    body_start = 0
    if document.kind == "markdown":
        front_matter = _FRONT_MATTER.match(text)
        body_start = front_matter.end() if front_matter else 0

    if document.kind == "pdf":
        return _page_spans(text)

    spans = []
    stack: list[tuple[int, str]] = []
    boundaries = [(offset, level, heading) for offset, level, heading in document.headings]

    if not boundaries or boundaries[0][0] > body_start:
        first_end = boundaries[0][0] if boundaries else len(text)
        spans.append((body_start, first_end, []))

    for index, (offset, level, heading) in enumerate(boundaries):
        while stack and stack[-1][0] >= level:
            stack.pop()
        stack.append((level, heading))
        end = boundaries[index + 1][0] if index + 1 < len(boundaries) else len(text)
        spans.append((offset, end, [name for _, name in stack]))
    return spans


def _page_spans(text: str) -> list[tuple[int, int, list[str]]]:
    """Cut extracted PDF text at the form feeds that separate its pages."""
    spans = []
    start = 0
    for page_number, page in enumerate(text.split("\f"), start=1):
        spans.append((start, start + len(page), [f"Page {page_number}"]))
        start += len(page) + 1
    return spans


def _paragraph_chunks(text: str, max_chars: int) -> list[tuple[int, int]]:
    """Return (start, end) offsets that cut ``text`` at blank lines into chunks of at most ``max_chars``.

    A single paragraph longer than ``max_chars`` stays whole.
    """
    if len(text) <= max_chars:
        return [(0, len(text))]

    chunks = []
    chunk_start = 0
    last_break = 0
    for match in _BLANK_LINES.finditer(text):
        if match.start() - chunk_start > max_chars and last_break > chunk_start:
            chunks.append((chunk_start, last_break))
            chunk_start = last_break
        last_break = match.end()
    if len(text) - chunk_start > max_chars and last_break > chunk_start:
        chunks.append((chunk_start, last_break))
        chunk_start = last_break
    chunks.append((chunk_start, len(text)))
    return chunks


def _extract_html_text(source: str) -> tuple[str, list[tuple[int, int, str]]]:
    """Return the visible text of an HTML page and the offsets of its h1 to h6 headings in that text."""
    from bs4 import BeautifulSoup

    soup = BeautifulSoup(source, "html.parser")
    for hidden in soup(["script", "style", "noscript", "template"]):
        hidden.decompose()
    for image in soup.find_all("img"):
        # Keep image references visible to find_image_refs by leaving a marker in the text.
        image.replace_with(f"![{image.get('alt', '')}]({image.get('src', '')})" if image.get("src") else "")

    parts: list[str] = []
    headings: list[tuple[int, int, str]] = []
    length = 0
    # A table row is one block with its cells joined by " | ", so a row's cells stay together.
    block_tags = ["h1", "h2", "h3", "h4", "h5", "h6", "p", "li", "pre", "tr", "dt", "dd", "blockquote"]
    root = soup.body or soup
    for element in root.find_all(block_tags):
        if element.find_parent(block_tags):
            continue
        if element.name == "tr":
            cells = [" ".join(cell.get_text(" ").split()) for cell in element.find_all(["td", "th"])]
            block = " | ".join(cell for cell in cells if cell)
        else:
            block = " ".join(element.get_text(" ").split())
        if not block:
            continue
        if element.name.startswith("h"):
            headings.append((length, int(element.name[1]), block))
        if element.name == "li":
            block = "- " + block
        parts.append(block)
        length += len(block) + 2
    return "\n\n".join(parts), headings


def _extract_pdf_text(data: bytes, relative: str) -> str:
    """Return the text of each page of a PDF, pages separated by form feeds."""
    import io

    from pypdf import PdfReader
    from pypdf.errors import PdfReadError

    try:
        reader = PdfReader(io.BytesIO(data))
        pages = [page.extract_text() or "" for page in reader.pages]
    except (PdfReadError, ValueError, KeyError) as error:
        raise SightlineError(f"{relative}: not a readable PDF ({error}). Re-export it and index again.") from error
    return "\f".join(page.replace("\r\n", "\n") for page in pages)
