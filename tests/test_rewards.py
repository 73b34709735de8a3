import torch

from rlft.assets import asset_path
from rlft.data.digits import digit_prompt, load_digits
from rlft.rewards.digit_alignment import DigitAlignment
from rlft.rewards.jpeg import JpegCompressibility, JpegIncompressibility, jpeg_size_kb


def test_flat_images_compress_better_than_noise():
    torch.manual_seed(0)
    flat, noise = torch.full((2, 1, 16, 16), 0.5), torch.rand(2, 1, 16, 16)
    reward = JpegCompressibility()
    assert (reward(flat, ["", ""]) > reward(noise, ["", ""])).all()
    torch.testing.assert_close(JpegIncompressibility()(noise, ["", ""]), -reward(noise, ["", ""]))


def test_jpeg_size_is_in_kilobytes_of_a_real_encoding():
    import io

    from PIL import Image

    image = torch.rand(1, 3, 32, 32)
    buffer = io.BytesIO()
    Image.fromarray((image[0].permute(1, 2, 0) * 255).round().byte().numpy()).save(buffer, format="JPEG", quality=95)
    assert round(jpeg_size_kb(image).item() * 1000) == buffer.tell()


def test_digit_alignment_prefers_the_prompted_digit_on_real_digits():
    images, labels = load_digits(16)
    images, labels = (images[::250] + 1) / 2, labels[::250]  # 20 real digits, 2 per class
    reward = DigitAlignment(asset_path("digit_classifier"))
    right = reward(images, [digit_prompt(int(y)) for y in labels])
    wrong = reward(images, [digit_prompt((int(y) + 1) % 10) for y in labels])
    assert (right > wrong).float().mean() >= 0.9
    assert right.mean() > -0.5  # most real digits are classified confidently
