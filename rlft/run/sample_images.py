"""Samples for TensorBoard: a grid of images, each titled with its prompt and reward, or videos
as animated GIFs."""

import matplotlib

matplotlib.use("Agg")  # headless: figures go to TensorBoard or PNG files, never a window
import matplotlib.pyplot as plt
import torch


def sample_grid(images: torch.Tensor, prompts: list[str], rewards: torch.Tensor | None = None, max_images: int = 16, columns: int = 8):
    """(B, C, H, W) in [0, 1] -> matplotlib Figure of the first `max_images`."""
    n = min(len(images), max_images)
    rows = (n + columns - 1) // columns
    fig, axes = plt.subplots(rows, columns, figsize=(1.6 * columns, 1.9 * rows), squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i >= n:
            continue
        image = images[i].detach().float().cpu().clamp(0, 1).permute(1, 2, 0).numpy()
        ax.imshow(image[..., 0] if image.shape[-1] == 1 else image, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        title = prompts[i] if rewards is None else f"{prompts[i]}\n{float(rewards[i]):.3f}"
        ax.set_title(title, fontsize=7)
    fig.tight_layout()
    return fig


def video_summary(tag: str, videos: torch.Tensor, max_videos: int = 8, fps: int = 8):
    """Videos (B, F, C, H, W) in [0, 1] -> a TensorBoard image summary holding an animated GIF of
    the first `max_videos` side by side (what SummaryWriter.add_video writes, encoded with PIL
    instead of moviepy). TensorBoard's Images tab plays it."""
    import io

    from PIL import Image
    from tensorboard.compat.proto.summary_pb2 import Summary

    clips = videos[:max_videos].detach().float().cpu().clamp(0, 1)
    tiled = torch.cat(list(clips), dim=-1)  # (F, C, H, n * W): the videos side by side
    frames = (tiled * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    images = [Image.fromarray(f[..., 0] if f.shape[-1] == 1 else f) for f in frames]
    buffer = io.BytesIO()
    images[0].save(buffer, format="GIF", save_all=True, append_images=images[1:], duration=int(1000 / fps), loop=0)
    height, width = frames.shape[1:3]
    image = Summary.Image(height=height, width=width, colorspace=frames.shape[-1], encoded_image_string=buffer.getvalue())
    return Summary(value=[Summary.Value(tag=tag, image=image)])
