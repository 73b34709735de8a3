"""JPEG (in)compressibility, as in DDPO: the file size in kB at quality 95."""

import io

import numpy as np
import torch
from PIL import Image


def to_pil(images: torch.Tensor) -> list[Image.Image]:
    """(B, C, H, W) in [0, 1] -> PIL images (grayscale for C = 1)."""
    arrays = (images.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()
    arrays = np.transpose(arrays, (0, 2, 3, 1))
    return [Image.fromarray(a[..., 0] if a.shape[-1] == 1 else a) for a in arrays]


def jpeg_size_kb(images: torch.Tensor, quality: int = 95) -> torch.Tensor:
    sizes = []
    for image in to_pil(images):
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=quality)
        sizes.append(buffer.tell() / 1000)
    return torch.tensor(sizes, dtype=torch.float32)


class JpegCompressibility:
    """Reward = -(JPEG size in kB): smaller files score higher."""

    def __init__(self, quality: int = 95):
        self.quality = quality

    def __call__(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        return -jpeg_size_kb(images, self.quality)


class JpegIncompressibility(JpegCompressibility):
    """Reward = JPEG size in kB: more detail scores higher."""

    def __call__(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        return jpeg_size_kb(images, self.quality)
