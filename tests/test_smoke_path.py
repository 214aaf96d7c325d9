"""The thinnest real path: request -> ImageService -> A1111 emulator -> PNG on disk."""

from __future__ import annotations

from pathlib import Path

from imagegate import ImageRequest, ImageService, ImageStore
from PIL import Image

from tests.conftest import make_settings


async def test_generate_writes_png_with_parameters(a1111_url: str, tmp_path: Path) -> None:
    settings = make_settings([{"name": "local", "kind": "a1111", "base_url": a1111_url}], tmp_path=tmp_path)
    request = ImageRequest(prompt="a lighthouse at dusk", width=512, height=768, seed=7)
    async with ImageService(settings) as service:
        result = await service.generate(request)
    assert result.backend == "local"
    (image,) = result.images
    assert (image.width, image.height, image.seed) == (512, 768, 7)
    path = ImageStore(tmp_path / "out").save(image, request, backend=result.backend)
    with Image.open(path) as img:
        assert img.size == (512, 768)
        assert "a lighthouse at dusk" in img.info["parameters"]
        assert "Seed: 7" in img.info["parameters"]
