"""Every reward model follows the module to its device and dtype (Lightning moves the module with
`.to(device)`): the trained reward's, `multi`'s components' and the held-out evaluation's, though none is
a submodule, so that their frozen weights stay out of the checkpoints. Tested on the CPU by moving the
module to float64."""

import torch

from rlft.run.train import build
from tests.conftest import save_tiny_model
from tests.test_config import compose_cfg
from tests.tiny_sd import save_tiny_clip


def test_the_reward_models_follow_the_module(tmp_path):
    clip = save_tiny_clip(tmp_path / "clip")
    cfg = compose_cfg([f"model.pretrained={save_tiny_model(tmp_path / 'model')}", "reward=multi",
                       "reward.components={compressibility:1.0,clipscore:0.5}",
                       f"+reward.settings.clipscore.model_path={clip}", "+reward.settings.clipscore.max_length=16",
                       "evaluation.rewards=[digit_alignment]", "policy.num_steps=2"], output_dir=str(tmp_path / "run"))
    module, _, _ = build(cfg)
    models = module.reward_models()
    # CLIPScore in the trained reward and in the evaluation's own instance of it, the held-out digit classifier
    kinds = sorted(type(m).__name__ for m in models)
    assert kinds == ["ClipSimilarity", "ClipSimilarity", "DigitClassifier"], kinds
    module.to(torch.float64)
    for m in models:
        assert {p.dtype for p in m.parameters()} == {torch.float64}, type(m).__name__
    assert {p.dtype for p in module.policy.trainable_parameters()} == {torch.float64}
    # Moved, not registered: the checkpoint holds none of their weights.
    assert not any(k.startswith(("scorer", "evaluation")) for k in module.state_dict())
    images = torch.rand(2, 1, 16, 16, dtype=torch.float64)  # each reward scores in its new dtype
    assert torch.isfinite(module.scorer.reward_fn(images, ["a handwritten 1", "a handwritten 2"])).all()
    held_out = module.evaluation.held_out["digit_alignment"]
    assert torch.isfinite(torch.as_tensor(held_out(images, ["a handwritten 1", "a handwritten 2"]))).all()
