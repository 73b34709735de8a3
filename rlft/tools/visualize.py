"""Sample grids for TensorBoard: each image titled with its prompt and reward."""

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


def metric_curves(
    series: dict[str, list[tuple[float, float]]], ylabel: str, xlabel: str = "epoch", title: str = "",
    bands: dict[str, list[tuple[float, float, float]]] | None = None,
    styles: dict[str, dict] | None = None,
):
    """One line per label: label -> [(x, value)], with an optional shaded band per label:
    label -> [(x, low, high)] (e.g. mean ± std over seeds), and optional matplotlib line
    settings per label (e.g. {"linestyle": "--", "color": "C1"} to pair two curves). Returns
    a matplotlib Figure."""
    fig, ax = plt.subplots(figsize=(9 if len(series) > 1 else 6, 3.5))
    for label, points in series.items():
        steps, values = zip(*points)
        (line,) = ax.plot(steps, values, marker="o", markersize=3, label=label, **(styles or {}).get(label, {}))
        if bands and bands.get(label):
            xs, low, high = zip(*bands[label])
            ax.fill_between(xs, low, high, color=line.get_color(), alpha=0.2, linewidth=0)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    ax.grid(alpha=0.3)
    if len(series) > 1:
        ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))  # outside: never hides a curve
    else:
        fig.tight_layout()  # a legend outside is fitted by savefig(bbox_inches="tight") instead
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
