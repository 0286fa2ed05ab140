"""Tests of the vision encoder and of CLIP in the reference image index, on a tiny CLIP with random weights.

The tiny model is built here and saved to a temporary folder, then loaded through
the same ``from_pretrained`` path as a real model, so no weights are downloaded.
The caption ranking test needs a real CLIP model in SIGHTLINE_CLIP_MODEL.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

import numpy as np
import pytest
from PIL import Image, ImageDraw

from core import vision
from core.embeddings import TextEmbedder
from core.image_index import ReferenceImageIndex
from core.intake import load_image
from core.knowledge_base import KnowledgeBase
from core.settings import Settings
from core.types import SightlineError
from core.vision import VisionEncoder, log_missing_vision_model

CAPTIONS = {
    "page.png": "a page of text about segmentation",
    "chelsea.png": "a facial photo of a tabby cat",
    "astronaut.png": "a portrait of an astronaut with the American flag",
    "rocket.jpg": "a rocket standing on a launchpad",
    "motorcycle_right.png": "a red motorcycle standing in a garage",
    "camera.png": "a person looking at a camera on a tripod",
    "horse.png": "a black-and-white silhouette of a horse",
    "coffee.png": "a cup of coffee on a saucer",
}
"""The eight image descriptions of OpenAI's "Interacting with CLIP" notebook, for scikit-image's sample images."""


def _bytes_to_unicode() -> dict[int, str]:
    """Map every byte to a printable character, as GPT-2 and CLIP byte-level BPE vocabularies do."""
    printable = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
                 + list(range(ord("®"), ord("ÿ") + 1)))
    characters = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            characters.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, characters)))


def build_tiny_clip(folder: Path, *, projection_dim: int, seed: int = 0) -> Path:
    """Save a CLIP model with random weights, a byte-level tokenizer and a 32-pixel image processor."""
    import torch
    from transformers import (CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTextConfig,
                              CLIPTokenizer, CLIPVisionConfig)

    folder.mkdir(parents=True, exist_ok=True)
    symbols = list(_bytes_to_unicode().values())
    vocabulary = {symbol: index for index, symbol in enumerate(symbols)}
    vocabulary.update({symbol + "</w>": len(symbols) + index for index, symbol in enumerate(symbols)})
    vocabulary["<|startoftext|>"] = len(vocabulary)
    vocabulary["<|endoftext|>"] = len(vocabulary)
    (folder / "vocab.json").write_text(json.dumps(vocabulary))
    (folder / "merges.txt").write_text("#version: 0.2\n")

    tokenizer = CLIPTokenizer(vocab_file=str(folder / "vocab.json"), merges_file=str(folder / "merges.txt"))
    image_processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    end_of_text = vocabulary["<|endoftext|>"]
    config = CLIPConfig(
        text_config=CLIPTextConfig(vocab_size=len(vocabulary), hidden_size=16, intermediate_size=32,
                                   num_hidden_layers=1, num_attention_heads=2, max_position_embeddings=64,
                                   bos_token_id=vocabulary["<|startoftext|>"], eos_token_id=end_of_text,
                                   pad_token_id=end_of_text),
        vision_config=CLIPVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                       num_attention_heads=2, image_size=32, patch_size=8),
        projection_dim=projection_dim,
    )
    torch.manual_seed(seed)
    CLIPModel(config).save_pretrained(folder)
    CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory) -> Path:
    return build_tiny_clip(tmp_path_factory.mktemp("tiny-clip-12"), projection_dim=12)


@pytest.fixture(scope="module")
def other_tiny_clip(tmp_path_factory) -> Path:
    return build_tiny_clip(tmp_path_factory.mktemp("tiny-clip-20"), projection_dim=20, seed=1)


@pytest.fixture(scope="module")
def text_embedder() -> TextEmbedder:
    embedder = TextEmbedder(model=Settings.load().text_embedding_model)
    embedder.warm_up()
    return embedder


def _drawn_image(seed: int, size: tuple[int, int] = (320, 200)) -> Image.Image:
    """Draw a synthetic screen: random coloured boxes on white."""
    rng = np.random.default_rng(seed)
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    for _ in range(8):
        left, top = int(rng.integers(0, size[0] - 60)), int(rng.integers(0, size[1] - 40))
        colour = tuple(int(value) for value in rng.integers(0, 255, 3))
        draw.rectangle((left, top, left + int(rng.integers(20, 60)), top + int(rng.integers(10, 40))), fill=colour)
    return image


def _image_input(image: Image.Image, settings: Settings, name: str = "shot.png"):
    path = settings.data_dir.parent / name
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return load_image(path, settings=settings)


@pytest.fixture()
def small_kb(tmp_path: Path) -> Path:
    """A knowledge base of two documents that each show one screenshot."""
    kb_dir = tmp_path / "kb"
    (kb_dir / "images").mkdir(parents=True)
    _drawn_image(1).save(kb_dir / "images" / "quota.png")
    _drawn_image(2).save(kb_dir / "images" / "login.png")
    (kb_dir / "quota.md").write_text("# Storage quota\n\nThe quota banner appears when storage is full.\n\n"
                                     "![Quota banner](images/quota.png)\n")
    (kb_dir / "login.md").write_text("# Sign-in failed\n\nThe sign-in page shows this error.\n\n"
                                     '<img alt="Sign-in error" src="/static/login.png">\n')
    return kb_dir


def _open_index(settings: Settings, embedder: TextEmbedder) -> ReferenceImageIndex:
    knowledge_base = KnowledgeBase(settings=settings, embedder=embedder)
    knowledge_base.index(settings.kb_dir)
    return ReferenceImageIndex(settings=settings, knowledge_base=knowledge_base,
                               encoder=VisionEncoder(settings=settings), ocr=lambda image: "")


def test_encoder_embeds_unit_vectors(tiny_clip, tmp_path):
    settings = Settings.load(data_dir=tmp_path / "data", clip_model=str(tiny_clip))
    encoder = VisionEncoder(settings=settings)
    images = [_image_input(_drawn_image(seed), settings, f"{seed}.png") for seed in (1, 2)]

    image_vectors = encoder.embed_images(images)
    text_vectors = encoder.embed_texts(["a settings page", "an error dialog", "a cat"])

    assert encoder.dimension == 12
    assert image_vectors.shape == (2, 12)
    assert text_vectors.shape == (3, 12)
    assert np.allclose(np.linalg.norm(image_vectors, axis=1), 1.0, atol=1e-5)
    assert np.allclose(np.linalg.norm(text_vectors, axis=1), 1.0, atol=1e-5)


def test_encoder_cache_computes_once(tiny_clip, tmp_path, monkeypatch):
    settings = Settings.load(data_dir=tmp_path / "data", clip_model=str(tiny_clip))
    image = _image_input(_drawn_image(3), settings)
    encoder = VisionEncoder(settings=settings)
    computed: list[int] = []
    original = VisionEncoder._compute_image_embeddings

    def counting(self, pixels):
        computed.append(len(pixels))
        return original(self, pixels)

    monkeypatch.setattr(VisionEncoder, "_compute_image_embeddings", counting)
    first = encoder.embed_images([image])
    second = encoder.embed_images([image])
    restarted = VisionEncoder(settings=settings).embed_images([image])

    assert computed == [1]
    assert np.array_equal(first, second)
    assert np.array_equal(first, restarted), "the on-disk cache should return the same vector after a restart"
    assert encoder.cache_hits == 1
    assert any(encoder.cache_dir.glob("*.npy"))


def test_zero_shot_scores_labels(tiny_clip, tmp_path):
    settings = Settings.load(data_dir=tmp_path / "data", clip_model=str(tiny_clip))
    encoder = VisionEncoder(settings=settings)
    image = _image_input(_drawn_image(4), settings)

    labels = encoder.zero_shot(image, ["a diagram", "a dog", "a cat"], top_k=3)

    assert sorted(label.label for label in labels) == ["a cat", "a diagram", "a dog"]
    assert sum(label.score for label in labels) == pytest.approx(1.0, abs=1e-5)
    assert [label.score for label in labels] == sorted((label.score for label in labels), reverse=True)


def test_missing_model_folder_is_named(tmp_path):
    missing = tmp_path / "no-such-model"
    encoder = VisionEncoder(settings=Settings.load(data_dir=tmp_path / "data", clip_model=str(missing)))

    with pytest.raises(SightlineError, match="no-such-model"):
        encoder.warm_up()


def test_missing_model_logged_once(tmp_path, caplog, monkeypatch):
    monkeypatch.setattr(vision, "_no_model_logged", False)
    settings = Settings.load(data_dir=tmp_path / "data")
    settings.clip_model = None

    with caplog.at_level(logging.WARNING, logger="core.vision"):
        first = log_missing_vision_model(settings)
        second = log_missing_vision_model(settings)

    assert first is True
    assert second is True
    assert [record.message for record in caplog.records].count(vision.NO_VISION_MODEL_MESSAGE) == 1


def test_index_embeds_and_queries(tiny_clip, small_kb, text_embedder, tmp_path):
    settings = Settings.load(data_dir=tmp_path / "data", kb_dir=small_kb, clip_model=str(tiny_clip))
    index = _open_index(settings, text_embedder)

    report = index.index()
    collection = index.knowledge_base.chroma_client().get_collection(index.collection_name)
    index.near_duplicate_max_bits = -1  # only CLIP can match now
    query = _image_input(_drawn_image(1), settings, "customer.png")
    matches = index.query(query)

    assert report.images_total == 2
    assert report.references == 2
    assert report.embedded == 2
    assert collection.metadata["clip_model"] == str(tiny_clip)
    assert collection.metadata["dimension"] == 12
    assert matches, "the same picture should match its reference by CLIP"
    assert matches[0].kind == "semantic"
    assert matches[0].image_path == "images/quota.png"
    assert matches[0].section_id.startswith("quota.md#")
    assert matches[0].score == pytest.approx(1.0, abs=1e-4)


def test_reindex_embeds_only_new_images(tiny_clip, small_kb, text_embedder, tmp_path):
    settings = Settings.load(data_dir=tmp_path / "data", kb_dir=small_kb, clip_model=str(tiny_clip))
    index = _open_index(settings, text_embedder)
    index.index()

    _drawn_image(5).save(small_kb / "images" / "unreferenced.png")
    second = index.index()

    assert second.added == ["images/unreferenced.png"]
    assert sorted(second.unchanged) == ["images/login.png", "images/quota.png"]
    assert second.embedded == 1


def test_model_switch_rebuilds_collection(tiny_clip, other_tiny_clip, small_kb, text_embedder, tmp_path, caplog):
    data_dir = tmp_path / "data"
    first_settings = Settings.load(data_dir=data_dir, kb_dir=small_kb, clip_model=str(tiny_clip))
    _open_index(first_settings, text_embedder).index()

    switched_settings = Settings.load(data_dir=data_dir, kb_dir=small_kb, clip_model=str(other_tiny_clip))
    switched = ReferenceImageIndex(settings=switched_settings,
                                   knowledge_base=KnowledgeBase(settings=switched_settings, embedder=text_embedder),
                                   encoder=VisionEncoder(settings=switched_settings), ocr=lambda image: "")
    with caplog.at_level(logging.WARNING, logger="core.image_index"):
        switched.warm_up()
    collection = switched.knowledge_base.chroma_client().get_collection(switched.collection_name)
    switched.near_duplicate_max_bits = -1
    matches = switched.query(_image_input(_drawn_image(2), switched_settings, "customer.png"))

    assert any("Re-indexing" in record.message for record in caplog.records)
    assert collection.metadata["dimension"] == 20
    assert collection.metadata["clip_model"] == str(other_tiny_clip)
    assert collection.count() == 2
    assert matches[0].image_path == "images/login.png"


@pytest.mark.skipif(not os.environ.get("SIGHTLINE_CLIP_MODEL"),
                    reason="needs a real CLIP model: set SIGHTLINE_CLIP_MODEL to a local model folder")
def test_clip_ranks_own_caption_first(realdata, tmp_path):
    settings = Settings.load(data_dir=tmp_path / "data")
    encoder = VisionEncoder(settings=settings)
    names = list(CAPTIONS)
    images = [load_image(realdata / "vqa" / "clip_skimage" / name, settings=settings) for name in names]

    similarities = encoder.embed_images(images) @ encoder.embed_texts([CAPTIONS[name] for name in names]).T

    for row, name in enumerate(names):
        best = names[int(np.argmax(similarities[row]))]
        assert best == name, f"{name}: its own caption should rank first, but {CAPTIONS[best]!r} did"
