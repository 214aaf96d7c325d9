"""The output store: dated paths, A1111-style ``parameters`` metadata, atomic writes."""

from __future__ import annotations

import io
import os
import re
import shutil
import threading
import time
from datetime import datetime
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from imagegate.models import GeneratedImage, ImageFormat, ImageRequest
from imagegate.server.files import sweep
from imagegate.store import (
    ImageStore,
    embed_parameters,
    parameters_text,
    parse_parameters,
    read_parameters,
)
from imagegate.testing import make_image
from PIL import Image


def image_of(fmt: str = "png", *, width: int = 96, height: int = 64, seed: int | None = 7) -> GeneratedImage:
    data = make_image(width, height, "a lighthouse", seed or 0, fmt)
    return GeneratedImage(data=data, format=ImageFormat(fmt), width=width, height=height, seed=seed)


FULL = ImageRequest(
    prompt="a lighthouse at dusk",
    negative_prompt="blurry, low quality",
    width=96,
    height=64,
    steps=20,
    sampler="Euler a",
    guidance_scale=7.5,
    seed=7,
    model="sd_xl_base_1.0",
)


def test_png_parameters_are_read_by_pillow_like_a1111_infotext(tmp_path: Path) -> None:
    path = ImageStore(tmp_path).save(image_of(), FULL, backend="local-sd")
    with Image.open(path) as img:
        assert img.size == (96, 64)
        text = img.info["parameters"]
    assert text.split("\n") == [
        "a lighthouse at dusk",
        "Negative prompt: blurry, low quality",
        (
            "Steps: 20, Sampler: Euler a, CFG scale: 7.5, Seed: 7, Size: 96x64, "
            "Model: sd_xl_base_1.0, Backend: local-sd"
        ),
    ]


def test_pixels_are_unchanged_by_the_metadata(tmp_path: Path) -> None:
    image = image_of()
    path = ImageStore(tmp_path).save(image, FULL, backend="b")
    with Image.open(path) as saved:
        saved.verify()  # every chunk, the inserted one too, has a valid CRC
    with Image.open(path) as saved:
        assert saved.tobytes() == image.to_pil().tobytes()


def test_unset_fields_are_left_out_of_the_parameters() -> None:
    request = ImageRequest(prompt="a cat", width=64, height=64)
    text = parameters_text(request, image_of(width=64, height=64, seed=123), "local")
    assert text == "a cat\nSeed: 123, Size: 64x64, Backend: local"


def test_non_latin1_prompt_is_stored_as_itxt_and_still_readable(tmp_path: Path) -> None:
    request = ImageRequest(prompt="灯台、夕暮れ — маяк 🌅", negative_prompt="размыто")
    path = ImageStore(tmp_path).save(image_of(), request, backend="local")
    assert b"iTXt" in path.read_bytes()
    with Image.open(path) as img:
        text = img.info["parameters"]
    assert text.startswith("灯台、夕暮れ — маяк 🌅\nNegative prompt: размыто\n")
    assert "Seed: 7" in text


def test_jpeg_is_saved_as_jpg_with_the_parameters_as_a_comment(tmp_path: Path) -> None:
    request = ImageRequest(prompt="a lighthouse at dusk", output_format="jpeg", seed=7)
    path = ImageStore(tmp_path).save(image_of("jpeg"), request, backend="local")
    assert path.suffix == ".jpg"
    with Image.open(path) as img:
        assert img.format == "JPEG" and img.size == (96, 64)
        comment = img.info["comment"].decode()
    assert comment.startswith("a lighthouse at dusk\n") and "Seed: 7" in comment


@pytest.mark.parametrize("mode", ["lossy", "lossless", "alpha"])
def test_webp_carries_the_parameters_as_an_exif_user_comment_like_a1111(tmp_path: Path, mode: str) -> None:
    img = Image.new("RGBA" if mode == "alpha" else "RGB", (70, 50), (10, 200, 30, 120))
    buffer = io.BytesIO()
    img.save(buffer, "WEBP", lossless=mode != "lossy")
    image = GeneratedImage(data=buffer.getvalue(), format=ImageFormat.WEBP, width=70, height=50, seed=7)
    path = ImageStore(tmp_path).save(image, FULL, backend="b")
    with Image.open(path) as saved:
        saved.load()
        assert (saved.size, saved.mode) == ((70, 50), img.mode)
        assert saved.tobytes() == image.to_pil().tobytes()  # the pixels were not touched
        comment = saved.getexif().get_ifd(0x8769)[0x9286]
    assert comment[:8] == b"UNICODE\x00"  # piexif's UserComment, as A1111 writes it for WebP
    assert comment[8:].decode("utf-16-be") == parameters_text(FULL, image, "b")


def test_a_webp_with_exif_already_is_written_as_received(tmp_path: Path) -> None:
    exif = Image.Exif()
    exif[0x010E] = "the provider's own"
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16)).save(buffer, "WEBP", exif=exif.tobytes())
    image = GeneratedImage(data=buffer.getvalue(), format=ImageFormat.WEBP, width=16, height=16)
    path = ImageStore(tmp_path).save(image, FULL, backend="b")
    assert path.suffix == ".webp" and path.read_bytes() == image.data


def test_path_is_dated_folder_and_time_plus_short_id(tmp_path: Path) -> None:
    store = ImageStore(tmp_path / "outputs")
    first = store.save(image_of(), FULL, backend="b")
    second = store.save(image_of(), FULL, backend="b")
    assert first != second
    assert first.parent.parent == tmp_path / "outputs"
    assert first.parent.name == datetime.now().astimezone().strftime("%Y-%m-%d")
    assert re.fullmatch(r"\d{6}-[0-9a-f]{8}\.png", first.name)


@pytest.mark.parametrize("fails", ["fsync", "replace"])
def test_a_failure_mid_write_leaves_no_partial_or_temp_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fails: str
) -> None:
    def boom(*args: object) -> None:
        raise OSError(28, "No space left on device")

    store = ImageStore(tmp_path)
    store.save(image_of(), FULL, backend="b")  # creates today's folder with one good file
    (folder,) = tmp_path.iterdir()
    before = sorted(folder.iterdir())
    monkeypatch.setattr(os, fails, boom)
    with pytest.raises(OSError, match="No space left"):
        store.save(image_of(), FULL, backend="b")
    monkeypatch.undo()
    assert sorted(folder.iterdir()) == before  # nothing new: no partial file, no .tmp- file


# -- reading the parameters back (the operator page's gallery) --------------------------------

A1111_INFOTEXT = (  # the shape of a real A1111 1.6 infotext: multi-line negative, quoted values
    "masterpiece, a lighthouse at dusk\n"
    "Negative prompt: lowres, blurry\nwatermark\n"
    "Steps: 20, Sampler: DPM++ 2M Karras, CFG scale: 7, Seed: 1234, Size: 512x768, "
    'Model hash: 6ce0161689, Model: v1-5-pruned-emaonly, Lora hashes: "add_detail: 7c6bad76eb54, '
    'more_details: 3b8aa1d351ef", Version: v1.6.0'
)


@pytest.mark.parametrize("fmt", ["png", "jpeg", "webp"])
def test_what_the_store_embeds_is_read_back_with_the_adjustments(tmp_path: Path, fmt: str) -> None:
    request = FULL.model_copy(update={"prompt": "灯台、夕暮れ, a lighthouse\nsecond line", "output_format": fmt})
    adjusted = ["size 100x100->104x104 (snapped to the step, 8)", "steps 200->150 (clamped)"]
    path = ImageStore(tmp_path).save(image_of(fmt), request, backend="local-sd", adjustments=adjusted)
    text = read_parameters(path.read_bytes())
    assert text == parameters_text(request, image_of(fmt), "local-sd", adjusted)
    parsed = parse_parameters(text)
    assert parsed["prompt"] == "灯台、夕暮れ, a lighthouse\nsecond line"
    assert parsed["negative_prompt"] == "blurry, low quality"
    assert parsed["fields"]["Backend"] == "local-sd" and parsed["fields"]["Steps"] == "20"
    assert parsed["fields"]["Adjustments"] == "; ".join(adjusted)  # quoted (it has commas)


def test_parameters_written_by_pillow_as_a1111_does_are_read(tmp_path: Path) -> None:
    """A1111's PNG: PngInfo.add_text (tEXt, or iTXt beyond Latin-1, maybe compressed); its
    JPEG: EXIF UserComment "UNICODE" + UTF-16BE (piexif), in an APP1 segment."""
    from PIL.PngImagePlugin import PngInfo

    for zipped, text in ((False, A1111_INFOTEXT), (True, "灯台\nSteps: 5, Seed: 1, Size: 64x64")):
        info = PngInfo()
        info.add_itxt("parameters", text, zip=zipped) if zipped else info.add_text("parameters", text)
        buffer = io.BytesIO()
        Image.new("RGB", (8, 8)).save(buffer, "PNG", pnginfo=info)
        assert read_parameters(buffer.getvalue()) == text
    exif = Image.Exif()
    exif.get_ifd(0x8769)[0x9286] = b"UNICODE\x00" + A1111_INFOTEXT.encode("utf-16-be")
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buffer, "JPEG", exif=exif.tobytes())
    assert read_parameters(buffer.getvalue()) == A1111_INFOTEXT


def test_an_a1111_infotext_is_parsed_as_a1111_parses_it() -> None:
    parsed = parse_parameters(A1111_INFOTEXT)
    assert parsed["prompt"] == "masterpiece, a lighthouse at dusk"
    assert parsed["negative_prompt"] == "lowres, blurry\nwatermark"
    assert parsed["fields"]["Lora hashes"] == "add_detail: 7c6bad76eb54, more_details: 3b8aa1d351ef"
    assert parsed["fields"]["Sampler"] == "DPM++ 2M Karras" and parsed["fields"]["Version"] == "v1.6.0"
    # a last line with fewer than three pairs is part of the prompt (A1111's rule)
    assert parse_parameters("a cat\nSteps: 20") == {
        "prompt": "a cat\nSteps: 20", "negative_prompt": "", "fields": {}}


def test_images_without_parameters_and_broken_files_read_as_none() -> None:
    plain = {fmt: make_image(16, 16, "x", 1, fmt) for fmt in ("png", "jpeg", "webp")}
    assert [read_parameters(data) for data in plain.values()] == [None, None, None]
    assert read_parameters(b"") is None and read_parameters(b"GIF89a...") is None


@given(st.sampled_from([b"\x89PNG\r\n\x1a\n", b"\xff\xd8", b"RIFF\x00\x00\x00\x00WEBP"]), st.binary(max_size=300))
def test_read_parameters_never_raises_on_a_damaged_file(head: bytes, tail: bytes) -> None:
    found = read_parameters(head + tail)
    assert found is None or isinstance(found, str)


@given(st.sampled_from(["png", "jpeg", "webp"]), st.integers(min_value=0, max_value=2000), st.binary(max_size=8))
def test_a_truncated_or_altered_stored_file_never_raises(fmt: str, cut: int, junk: bytes) -> None:
    image = image_of(fmt)
    data = embed_parameters(image.data, image.format, parameters_text(FULL, image, "b"))
    found = read_parameters(data[:cut] + junk + data[cut + len(junk):])
    assert found is None or isinstance(found, str)


def _aged(path: Path, age_s: float) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    when = time.time() - age_s
    os.utime(path, (when, when))
    return path


def test_remove_stale_takes_old_temp_files_only(tmp_path: Path) -> None:
    old_top = _aged(tmp_path / ".tmp-a.png", 120)
    old_day = _aged(tmp_path / "2026-01-01" / ".tmp-b.png", 120)
    young = _aged(tmp_path / "2026-01-01" / ".tmp-c.png", 5)  # a writer still at work
    image = _aged(tmp_path / "2026-01-01" / "101010-0123abcd.png", 120)
    deep = _aged(tmp_path / "2026-01-01" / "sub" / ".tmp-d.png", 120)  # not where we write
    assert ImageStore(tmp_path).remove_stale(older_than_s=60) == 2
    assert not old_top.exists() and not old_day.exists()
    assert young.exists() and image.exists() and deep.exists()
    assert ImageStore(tmp_path / "missing").remove_stale() == 0


def test_cleaning_while_day_folders_come_and_go_never_raises(tmp_path: Path) -> None:
    """At start the stale-file cleaner and the retention sweep run at once, and the sweep
    removes the day folders it empties (other instances sharing the folder do too): a folder
    removed while it is being listed made Path.glob raise and the server fail to start."""
    for i in range(20):
        (tmp_path / f"2026-01-{i:02d}").mkdir()
    stop = threading.Event()

    def churn() -> None:  # a sweep elsewhere: day folders appear, are emptied and removed
        i = 0
        while not stop.is_set():
            day = tmp_path / f"2026-02-{i % 28 + 1:02d}"
            _aged(day / "101010-0123abcd.png", 10 * 86400)
            shutil.rmtree(day, ignore_errors=True)
            i += 1

    worker = threading.Thread(target=churn)
    worker.start()
    try:
        store = ImageStore(tmp_path)
        for _ in range(1500):  # the old code raised in about 1 call in 20
            store.remove_stale(older_than_s=0)
            sweep(tmp_path, now=time.time(), max_age_s=86400)
    finally:
        stop.set()
        worker.join()
