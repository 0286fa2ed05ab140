"""Tests of query by screenshot on the Streamlit help pages and the screenshots they show.

The knowledge base is built in a temporary folder from the real Streamlit pages
(docs/) and screenshots (images/). The pages reference the images as
``/images/streamlit-community-cloud/<name>``, a folder that does not exist, so the
images are found by file name. No vision model is configured: near-duplicates come
from the perceptual hash and the rest from OCR text.
"""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import pytest
from PIL import Image

from core.image_index import NEAR_DUPLICATE_MAX_BITS, HashTable, ImageMatch, hash_query, hash_views
from core.intake import load_image
from core.knowledge_base import IndexReport
from core.pipeline import Sightline
from core.settings import PROJECT_ROOT, Settings
from core.types import RetrievedSection

EXPECTED_DOCUMENTS = {
    "GitHub-auth-denied-XL.png": "docs/deploy__community-cloud__get-started__connect-github.md",
    "app-state-oh-no-developer.png": "docs/deploy__community-cloud__manage-your-app___index.md",
    "app-state-oh-no.png": "docs/deploy__community-cloud__manage-your-app___index.md",
    "app-state-zzzz.png": "docs/deploy__community-cloud__manage-your-app___index.md",
    "cloud-logs.png": "docs/deploy__community-cloud__manage-your-app___index.md",
    "huh-this-isnt-supposed-to-happen.png":
        "docs/kb__deployments__huh-this-is-isnt-supposed-to-happen-message-after-trying-to-log-in.md",
    "unserializable-session-state-error.png": "docs/kb__FAQ__serializable-session-state.md",
    "workspace-settings-limits.png": "docs/deploy__community-cloud__manage-your-account__workspace-settings.md",
}
"""Each Streamlit screenshot and the page that shows it."""
VARIANTS = ("original", "resized_60", "cropped_3", "jpeg_60")
DEMO_SAME_SCREEN = {
    "conflict-copy-dialog.png": "conflict-copy-tp-2207.png",
    "settings-retention.png": "settings-retention.png",
    "sync-paused-quota.png": "sync-paused-tp-4021.png",
    "upload-blocked-characters.png": "upload-blocked-tp-3012.png",
}
"""Demo screenshots that show the same screen as a knowledge-base image, with other data in it."""


def make_variant(image: Image.Image, variant: str) -> bytes:
    """Encode a screenshot as the customer might send it: as is, at 60 %, cropped 3 % per edge, or as JPEG 60."""
    width, height = image.size
    output = io.BytesIO()
    if variant == "original":
        image.save(output, "PNG")
    elif variant == "resized_60":
        image.resize((round(width * 0.6), round(height * 0.6)), Image.Resampling.LANCZOS).save(output, "PNG")
    elif variant == "cropped_3":
        left, top = round(width * 0.03), round(height * 0.03)
        image.crop((left, top, width - left, height - top)).save(output, "PNG")
    elif variant == "jpeg_60":
        image.save(output, "JPEG", quality=60)
    else:
        raise ValueError(f"unknown variant {variant!r}")
    return output.getvalue()


@pytest.fixture(scope="module")
def streamlit_kb(realdata, tmp_path_factory) -> Path:
    kb_dir = tmp_path_factory.mktemp("streamlit-kb")
    source = realdata / "kb_pairs" / "streamlit"
    shutil.copytree(source / "docs", kb_dir / "docs")
    shutil.copytree(source / "images", kb_dir / "images")
    return kb_dir


@pytest.fixture(scope="module")
def indexed(streamlit_kb, tmp_path_factory) -> tuple[Sightline, IndexReport]:
    """An engine without a vision model, with the Streamlit pages and screenshots indexed."""
    settings = Settings.load(data_dir=tmp_path_factory.mktemp("data"), kb_dir=streamlit_kb)
    settings.clip_model = None
    engine = Sightline(settings=settings)
    report = engine.index(streamlit_kb)
    engine.warm_up()
    return engine, report


@pytest.fixture(scope="module")
def engine(indexed) -> Sightline:
    return indexed[0]


@pytest.fixture(scope="module")
def expected_sections(engine) -> dict[str, str]:
    """Map each screenshot's file name to the id of the section whose text references it."""
    expected = {}
    for section in engine.knowledge_base.sections():
        for ref in section.image_refs:
            name = ref.rsplit("/", 1)[-1]
            if name in EXPECTED_DOCUMENTS:
                expected[name] = section.id
    return expected


@pytest.fixture(scope="module")
def variant_files(streamlit_kb, tmp_path_factory) -> dict[tuple[str, str], Path]:
    folder = tmp_path_factory.mktemp("customer-screenshots")
    files = {}
    for name in EXPECTED_DOCUMENTS:
        image = Image.open(streamlit_kb / "images" / name).convert("RGB")
        for variant in VARIANTS:
            suffix = ".jpg" if variant == "jpeg_60" else ".png"
            path = folder / f"{Path(name).stem}-{variant}{suffix}"
            path.write_bytes(make_variant(image, variant))
            files[name, variant] = path
    return files


def test_index_records_every_screenshot(indexed, expected_sections):
    report = indexed[1].images

    assert report is not None
    assert report.images_total == 8
    assert report.failed == {}
    assert report.references == 8
    assert sorted(expected_sections) == sorted(EXPECTED_DOCUMENTS)
    for name, section_id in expected_sections.items():
        assert section_id.startswith(EXPECTED_DOCUMENTS[name] + "#"), name


def test_reindex_reads_no_unchanged_image(engine, streamlit_kb):
    report = engine.image_index.index()

    assert report.added == []
    assert len(report.unchanged) == 8


@pytest.mark.parametrize("variant", VARIANTS)
def test_query_matches_own_section(engine, expected_sections, variant_files, variant):
    for name, section_id in expected_sections.items():
        image = load_image(variant_files[name, variant], settings=engine.settings)

        matches = engine.image_index.query(image)

        assert matches, f"{name} ({variant}) matched no reference image"
        assert matches[0].kind == "near_duplicate", f"{name} ({variant})"
        assert matches[0].section_id == section_id, f"{name} ({variant}) matched {matches[0].image_path}"
        assert matches[0].image_path == f"images/{name}"
        assert matches[0].distance_bits <= NEAR_DUPLICATE_MAX_BITS


@pytest.mark.parametrize("variant", VARIANTS)
def test_ask_cites_matching_section_first(engine, expected_sections, variant_files, variant):
    for name, section_id in expected_sections.items():
        answer = engine.ask("What does this screen mean?", image_paths=[variant_files[name, variant]])

        image_citations = [citation for citation in answer.citations if citation.evidence.kind == "kb_image"]
        assert image_citations, f"{name} ({variant}): no kb_image citation in {answer.text!r}"
        first = image_citations[0].evidence
        assert first.id.split("@", 1)[0] == section_id, f"{name} ({variant}) cited {first.id}"
        assert first.image_path == f"images/{name}"
        assert "Your screenshot matches the image in" in answer.text
        assert "image_match" in answer.timings_ms


def test_ask_leads_with_matched_document(engine, expected_sections, variant_files):
    name = "huh-this-isnt-supposed-to-happen.png"

    answer = engine.ask("Why does it say this?", image_paths=[variant_files[name, "cropped_3"]])

    assert answer.retrieved[0].section.doc_path == EXPECTED_DOCUMENTS[name]
    assert expected_sections[name] in [hit.section.id for hit in answer.retrieved]
    assert answer.covered


def test_matched_section_joins_retrieved(engine, expected_sections):
    target = engine.knowledge_base.get_section(expected_sections["app-state-zzzz.png"])
    sections = engine.knowledge_base.sections()
    other_document = next(section for section in sections if section.doc_path == "docs/kb__dependencies__libgl.md")
    same_document = next(section for section in sections
                         if section.doc_path == target.doc_path and section.id != target.id)
    match = ImageMatch(kind="near_duplicate", score=0.99, image_path="images/app-state-zzzz.png",
                       content_id="sha256:0000000000000000", section_id=target.id, doc_path=target.doc_path)

    led = engine._put_matched_sections_first([RetrievedSection(section=other_document, score=0.5)], [match])
    kept = engine._put_matched_sections_first([RetrievedSection(section=same_document, score=0.5)], [match])

    assert [hit.section.id for hit in led] == [target.id, other_document.id]
    assert [hit.section.id for hit in kept] == [same_document.id, target.id]


def test_ocr_text_matches_without_pixels(engine, expected_sections, tmp_path):
    blank = tmp_path / "blank.png"
    Image.new("RGB", (400, 200), "white").save(blank)
    image = load_image(blank, settings=engine.settings)
    text = ("Zzzz This app has gone to sleep due to inactivity. "
            "Would you like to wake it back up? Yes, get this app back up!")

    matches = engine.image_index.query(image, ocr_text=text)

    assert matches, "the screenshot text should match the reference image's OCR text"
    assert matches[0].kind == "ocr_text"
    assert matches[0].section_id == expected_sections["app-state-zzzz.png"]


def test_unrelated_text_matches_nothing(engine, tmp_path):
    blank = tmp_path / "blank.png"
    Image.new("RGB", (400, 200), "white").save(blank)
    image = load_image(blank, settings=engine.settings)

    matches = engine.image_index.query(image, ocr_text="Your invoice for March is ready to download.")

    assert matches == []


def test_same_layout_screens_do_not_match(realdata):
    references = sorted((PROJECT_ROOT / "knowledge_base" / "images").glob("*.png"))
    references += sorted((realdata / "kb_pairs" / "streamlit" / "images").glob("*.png"))
    table = HashTable([hash_views(Image.open(path).convert("RGB")) for path in references])
    queries = sorted((PROJECT_ROOT / "assets").glob("*.png")) + sorted((PROJECT_ROOT / "assets").glob("*.jpg"))

    for path in queries:
        hits = table.nearest(hash_query(Image.open(path).convert("RGB")), max_bits=NEAR_DUPLICATE_MAX_BITS)

        matched = [references[index].name for index, _ in hits]
        expected = [DEMO_SAME_SCREEN[path.name]] if path.name in DEMO_SAME_SCREEN else []
        assert matched == expected, f"{path.name} matched {matched}"


def test_reference_images_match_only_themselves(realdata):
    references = sorted((PROJECT_ROOT / "knowledge_base" / "images").glob("*.png"))
    references += sorted((realdata / "kb_pairs" / "streamlit" / "images").glob("*.png"))
    table = HashTable([hash_views(Image.open(path).convert("RGB")) for path in references])

    for index, path in enumerate(references):
        hits = table.nearest(hash_query(Image.open(path).convert("RGB")), max_bits=NEAR_DUPLICATE_MAX_BITS)

        assert [hit for hit, _ in hits] == [index], f"{path.name} matched {[references[hit].name for hit, _ in hits]}"
