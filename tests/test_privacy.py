"""Tests of the private media store, the access rules and the rate limit, without a server."""

from __future__ import annotations

import io
import stat
import time
from pathlib import Path

import pytest
from PIL import Image

from core.access import RateLimiter, check_bind, hash_password, parse_users, verify_password
from core.intake import load_image
from core.media_store import MediaStore
from core.settings import Settings
from core.types import SightlineError

GPS_IFD_TAG = 0x8825


def jpeg_with_gps() -> bytes:
    exif = Image.Exif()
    exif[0x010F] = "PhoneMaker"
    exif.get_ifd(GPS_IFD_TAG)[2] = (52.0, 31.0, 12.0)
    buffer = io.BytesIO()
    Image.new("RGB", (64, 48), (200, 30, 30)).save(buffer, format="JPEG", exif=exif)
    return buffer.getvalue()


def files_under(folder: Path) -> list[Path]:
    return [path for path in folder.rglob("*") if path.is_file()]


@pytest.fixture()
def store(tmp_path: Path) -> MediaStore:
    gradio_cache = tmp_path / "gradio"
    gradio_cache.mkdir()
    media_store = MediaStore(root=tmp_path / "media", retention_s=3600, gradio_cache_dir=gradio_cache)
    yield media_store
    media_store.close()


def gradio_upload(store: MediaStore, name: str, data: bytes) -> Path:
    """Place a file where Gradio puts an upload: a folder named by a hash in its cache."""
    folder = store.gradio_cache_dir / "0f3a9c"
    folder.mkdir(exist_ok=True)
    path = folder / name
    path.write_bytes(data)
    return path


def test_upload_moved_out_of_gradio_cache(store: MediaStore) -> None:
    upload = gradio_upload(store, "photo.jpg", jpeg_with_gps())

    media_id, private_path = store.adopt_upload("session-a", upload)

    assert not upload.exists()
    assert not upload.parent.exists()
    assert private_path.name == "photo.jpg"
    assert private_path.read_bytes() == jpeg_with_gps()
    assert stat.S_IMODE(store.session_dir("session-a").stat().st_mode) == 0o700
    assert stat.S_IMODE(private_path.stat().st_mode) == 0o600
    assert media_id in store.media_ids("session-a")


def test_kept_copy_has_no_metadata(store: MediaStore, settings: Settings) -> None:
    upload = gradio_upload(store, "photo.jpg", jpeg_with_gps())
    media_id, private_path = store.adopt_upload("session-a", upload)
    image = load_image(private_path, settings=settings)
    store.rename("session-a", media_id, image.id)

    store.discard_original("session-a", image.id)
    display = store.save_display_copy("session-a", image)

    assert not private_path.exists()
    assert files_under(store.root) == [display]
    with Image.open(display) as kept:
        assert kept.info == {}
        assert len(kept.getexif()) == 0
        assert kept.getexif().get_ifd(GPS_IFD_TAG) == {}
    assert b"PhoneMaker" not in display.read_bytes()


def test_forget_deletes_upload_and_derived(store: MediaStore, settings: Settings) -> None:
    media_id, private_path = store.adopt_upload("session-a", gradio_upload(store, "shot.png", b"x" * 100))
    image = load_image(io.BytesIO(jpeg_with_gps()).getvalue(), source="shot.png", settings=settings)
    store.rename("session-a", media_id, image.id)
    display = store.save_display_copy("session-a", image)
    # What Gradio does when it serves the display copy: a copy in a folder named by hash_file.
    cache_copy = store.gradio_cache_copy(display)
    cache_copy.mkdir()
    (cache_copy / display.name).write_bytes(display.read_bytes())
    other_id, other_path = store.adopt_upload("session-b", gradio_upload(store, "other.png", b"y" * 10))

    deleted = store.forget("session-a", image.id)

    assert deleted >= 3
    assert not private_path.exists()
    assert not display.exists()
    assert not cache_copy.exists()
    assert other_path.exists()
    assert files_under(store.root) == [other_path]


def test_end_session_deletes_its_folder(store: MediaStore) -> None:
    _, kept = store.adopt_upload("session-b", gradio_upload(store, "b.png", b"b"))
    store.adopt_upload("session-a", gradio_upload(store, "a.png", b"a"))

    store.end_session("session-a")

    assert not (store.root / "session-a").exists()
    assert kept.exists()


def test_retention_sweep_deletes_old_files(store: MediaStore) -> None:
    _, private_path = store.adopt_upload("session-a", gradio_upload(store, "a.png", b"a"))
    stray = gradio_upload(store, "never-submitted.png", b"s")

    assert store.sweep(now_s=time.time() + 10) == 0
    assert private_path.exists()

    store.sweep(now_s=time.time() + 3601)

    assert not private_path.exists()
    assert not stray.exists()
    assert files_under(store.root) == []
    assert files_under(store.gradio_cache_dir) == []


def test_session_id_cannot_escape_root(store: MediaStore) -> None:
    folder = store.session_dir("../../etc")
    assert folder.parent == store.root


def test_file_outside_gradio_cache_copied(store: MediaStore, tmp_path: Path) -> None:
    outside = tmp_path / "mine.png"
    outside.write_bytes(b"m")

    _, private_path = store.adopt_upload("session-a", outside)

    assert outside.exists()
    assert private_path.read_bytes() == b"m"


def test_password_hash_round_trip() -> None:
    stored = hash_password("correct horse")

    assert stored.startswith("scrypt$15$8$1$")
    assert verify_password("correct horse", stored)
    assert not verify_password("wrong horse", stored)
    assert not verify_password("correct horse", "scrypt$broken")
    assert hash_password("correct horse") != stored


def test_empty_password_rejected() -> None:
    with pytest.raises(SightlineError):
        hash_password("")


def test_parse_users_rejects_plain_password() -> None:
    with pytest.raises(SightlineError) as raised:
        parse_users("alice:hunter2")
    assert "'alice'" in str(raised.value)
    assert "hunter2" not in str(raised.value)


@pytest.mark.parametrize(
    ("host", "allow_remote", "with_user", "error"),
    [
        ("127.0.0.1", False, False, None),
        ("::1", False, False, None),
        ("localhost", False, False, None),
        ("0.0.0.0", False, True, "Set allow_remote"),
        ("0.0.0.0", True, False, "without a login"),
        ("192.168.1.20", True, True, None),
    ],
)
def test_bind_rules(host: str, allow_remote: bool, with_user: bool, error: str | None, tmp_path: Path) -> None:
    users = f"alice:{hash_password('pw')}" if with_user else ""
    settings = Settings.load(data_dir=tmp_path, host=host, allow_remote=allow_remote, auth_users=users)

    if error is None:
        assert set(check_bind(settings)) == ({"alice"} if with_user else set())
        return
    with pytest.raises(SightlineError) as raised:
        check_bind(settings)
    assert error in str(raised.value)
    assert host in str(raised.value)


def test_rate_limit_per_session() -> None:
    limiter = RateLimiter(max_per_minute=3)

    assert [limiter.allow("a", now_s=float(second)) for second in range(4)] == [True, True, True, False]
    assert limiter.allow("b", now_s=3.0)
    assert limiter.allow("a", now_s=61.0)
