"""Every model family resumes bitwise: a run stopped after its first epoch and rerun with the
same command in the same directory (ckpt_path=last) ends with the same LoRA weights and logs the
same metrics, value for value, as one that ran straight through. On the tiny pipelines of each
family's tests, through the CLI."""

import pytest
from safetensors.torch import load_file

from rlft.tools.tensorboard import read_scalars
from tests.test_end_to_end import run_rlft
from tests.test_stable_diffusion import save_tiny_assets, sd_overrides
from tests.tiny_sd import (save_tiny_flux, save_tiny_flux2_klein, save_tiny_qwen_image, save_tiny_sd, save_tiny_sd3,
                           save_tiny_sdxl, save_tiny_wan)

FAMILIES = {  # model config -> (tiny pipeline saver, overrides it needs)
    "stable_diffusion": (save_tiny_sd, []),
    "sd3": (save_tiny_sd3, ["model.max_sequence_length=8"]),
    "sdxl": (save_tiny_sdxl, []),
    "flux_dev": (save_tiny_flux, ["model.max_sequence_length=8"]),
    "flux2_klein_4b": (save_tiny_flux2_klein, ["model.max_sequence_length=16", "model.text_encoder_out_layers=[1,2,3]",
                                               "policy.latent_size=4"]),
    "qwen_image": (save_tiny_qwen_image, ["model.max_sequence_length=16", "policy.latent_size=8"]),
    "wan21_t2v_1_3b": (save_tiny_wan, ["model.num_frames=5", "model.height=32", "model.width=32",
                                       "model.max_sequence_length=8"]),
}


@pytest.mark.parametrize("model", list(FAMILIES))
def test_a_resumed_run_equals_an_uninterrupted_one(model, tmp_path):
    save, extra = FAMILIES[model]
    assets = save_tiny_assets(tmp_path / "assets", {"pipeline": save})
    args = [*sd_overrides(assets, model=model, pipeline="pipeline"), *extra, "algorithm=grpo", "algorithm.group_size=2",
            "algorithm.sample_batch_size=2", "algorithm.train_batch_size=2", "algorithm.lr=0.05",
            "algorithm.clip_range=0.5", "algorithm.eval_every_n_epochs=1"]
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    run_rlft(*args, "trainer.max_epochs=2", f"hydra.run.dir={straight}", cwd=tmp_path)
    run_rlft(*args, "trainer.max_epochs=1", f"hydra.run.dir={resumed}", cwd=tmp_path)
    run_rlft(*args, "trainer.max_epochs=2", f"hydra.run.dir={resumed}", cwd=tmp_path)  # ckpt_path=last: resumes

    lora = lambda run: load_file(run / "lora" / "pytorch_lora_weights.safetensors")
    a, b = lora(straight), lora(resumed)
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a), "the resumed run's LoRA differs"
    ours, theirs = read_scalars(straight), read_scalars(resumed)
    # time/ differs by nature; hp/ is the closing summary each invocation writes (the first one's too)
    tags = [t for t in ours if not t.startswith(("time/", "hp/"))]
    assert [s for s, _ in ours["reward/mean"]] == [0, 1]
    assert {t: ours[t] for t in tags} == {t: theirs[t] for t in tags}


@pytest.mark.slow  # torch.compile's tracing takes ~40 s a family even with the eager backend; CI runs it (.ci/run)
@pytest.mark.parametrize("model", ["sdxl", "flux_dev", "qwen_image", "wan21_t2v_1_3b", "flux2_klein_4b"])
def test_policy_compile_runs_every_family_and_matches_eager(model, tmp_path):
    """policy.compile (here the eager backend: the code path with its padding into one graph per
    phase, not inductor's minutes) samples and recomputes log-probabilities as eager does."""
    import torch
    from hydra.utils import instantiate

    from tests.test_config import compose_cfg

    save, extra = FAMILIES[model]
    assets = save_tiny_assets(tmp_path / "assets", {"pipeline": save})
    cfg = compose_cfg([*sd_overrides(assets, model=model, pipeline="pipeline"), *extra, "policy.guidance_scale=2.0"])
    eager = instantiate(cfg.policy, **instantiate(cfg.model.load), compile=False)
    compiled = instantiate(cfg.policy, **instantiate(cfg.model.load), compile={"backend": "eager"})
    compiled.load_state_dict(eager.state_dict())
    noise = lambda: torch.Generator().manual_seed(0)
    for n in (3, 2):  # the second, smaller batch runs padded in the first one's graph
        a, b = eager.sample(["a cat"] * n, generator=noise()), compiled.sample(["a cat"] * n, generator=noise())
        torch.testing.assert_close(b.log_probs, a.log_probs)
        recomputed = compiled.log_prob(b.latents[:, 0], b.next_latents[:, 0], b.timesteps[:, 0], b.prompt_embeds)
        torch.testing.assert_close(recomputed, b.log_probs[:, 0])
    assert compiled.compiled_batches[False] == {3}
