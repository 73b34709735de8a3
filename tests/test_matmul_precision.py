"""TF32 matmuls where flow_grpo uses them: on a CUDA GPU, by default."""

import torch


def test_tf32_matmuls_on_a_cuda_gpu_only(monkeypatch):
    """float32_matmul_precision=auto: high (TF32) when the run trains on a CUDA GPU, highest elsewhere."""
    from omegaconf import OmegaConf

    from rlft.run.train import matmul_precision

    cfg = lambda accelerator, precision="auto": OmegaConf.create(
        {"float32_matmul_precision": precision, "trainer": {"accelerator": accelerator}})
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert [matmul_precision(cfg(a)) for a in ("auto", "cpu", "gpu")] == ["highest"] * 3
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert [matmul_precision(cfg(a)) for a in ("auto", "cpu", "gpu")] == ["high", "highest", "high"]
    assert matmul_precision(cfg("gpu", "highest")) == "highest"
