"""Peak memory of a module call without running it: the call is traced on fake tensors
(`torch._subclasses.FakeTensorMode`: shapes, dtypes and devices, no data), and every storage an
operator creates is counted from its creation until it is freed (a weak reference to it), so
the peak is that of the real call's tensors: transient buffers, activations saved for backward,
gradients. Allocator rounding and kernels' workspaces are not seen (the plan adds a margin)."""

import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_map_only


class LiveBytes(TorchDispatchMode):
    """Bytes of the storages operators created that are still alive, and their peak."""

    def __init__(self):
        super().__init__()
        self.live = self.peak = 0
        self.refs = {}  # id -> weak reference to a storage created under this mode

    def free(self, key: int, nbytes: int) -> None:
        self.live -= nbytes
        self.refs.pop(key, None)

    def track(self, tensor: torch.Tensor) -> None:
        storage = tensor.untyped_storage()
        key = id(storage)
        if key in self.refs and self.refs[key]() is storage:
            return  # a view of a storage already counted
        nbytes = storage.nbytes()
        self.refs[key] = weakref.ref(storage, lambda _, k=key, n=nbytes: self.free(k, n))
        self.live += nbytes
        self.peak = max(self.peak, self.live)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if not func._schema.is_mutable and not any(r.alias_info for r in func._schema.returns):
            tree_map_only(torch.Tensor, self.track, out)
        return out


class FlashAttention(torch.autograd.Function):
    """What `scaled_dot_product_attention` keeps on a GPU (flash or memory-efficient kernels): the
    output and a float32 log-sum-exp per query, never the (L, L) matrix that the math kernel, the
    only one the `meta` device has, would materialise; backward returns the three gradients."""

    @staticmethod
    def forward(ctx, q, k, v):
        out = q.new_empty(*q.shape[:-1], v.shape[-1])
        ctx.save_for_backward(q, k, v, out, q.new_empty(q.shape[:-1], dtype=torch.float32))
        return out

    @staticmethod
    def backward(ctx, grad):
        q, k, v, _, _ = ctx.saved_tensors
        return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


def flash_attention(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
    """`scaled_dot_product_attention`'s signature; grouped-query heads are read in place, as the kernels do."""
    if enable_gqa and key.shape[-3] != query.shape[-3]:
        repeat = query.shape[-3] // key.shape[-3]
        key, value = key.repeat_interleave(repeat, dim=-3), value.repeat_interleave(repeat, dim=-3)
    return FlashAttention.apply(query, key, value)


class traced_attention:
    """Within it, `torch.nn.functional.scaled_dot_product_attention` is `flash_attention`."""

    def __enter__(self):
        self.original = torch.nn.functional.scaled_dot_product_attention
        torch.nn.functional.scaled_dot_product_attention = flash_attention

    def __exit__(self, *exc):
        torch.nn.functional.scaled_dot_product_attention = self.original
