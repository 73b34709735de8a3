"""Where the reward models are: every `nn.Module` a reward holds (its CLIP, BLIP, detector, OCR
networks, `multi`'s components', the held-out evaluation's), found by walking the reward objects,
so that they follow the LightningModule to its device (and dtype) without being registered as its
submodules: registered, their frozen weights would enter every checkpoint."""

from torch import nn


def reward_modules(*holders, depth: int = 4) -> list[nn.Module]:
    """The outermost `nn.Module`s reachable from `holders` through attributes, dicts, lists and
    tuples (at most `depth` levels), each once (rewards share a CLIP: `shared_clip`)."""
    found, seen = [], set()

    def walk(obj, level: int) -> None:
        if obj is None or id(obj) in seen or level > depth or isinstance(obj, (str, bytes, int, float, bool)):
            return
        seen.add(id(obj))
        if isinstance(obj, nn.Module):
            found.append(obj)
            return  # its own parameters and buffers move with it
        if isinstance(obj, dict):
            children = obj.values()
        elif isinstance(obj, (list, tuple, set)):
            children = obj
        elif hasattr(obj, "__dict__") and type(obj).__module__.startswith("rlft."):
            children = vars(obj).values()  # rlft's own reward objects; never a library's internals
        else:
            return
        for child in children:
            walk(child, level + 1)

    for holder in holders:
        walk(holder, 0)
    return found
