import threading

import torch

from rlft.algorithms.scored_sampling import sample_and_score
from rlft.diffusion.noise import sample_generators
from tests.test_policy import make_policy

PROMPTS = ["a handwritten 3", "the number seven", "a handwritten 0", "a handwritten 1", "a handwritten 5"]


def noise():
    return sample_generators(0, "rollout", 0, range(len(PROMPTS)))


def test_chunks_decoded_and_scored_in_order_match_one_batch():
    """Chunks of 2 (2, 2, 1), decoded and scored in the worker: the same trajectories and
    images as one batch sampled and decoded at once, each chunk's score in order."""
    policy = make_policy()
    whole = policy.sample(PROMPTS, generator=noise())
    for overlap in (True, False):
        traj, scores = sample_and_score(policy, PROMPTS, 2, noise(), lambda part, chunk: (chunk, part.images.sum()), overlap=overlap)
        assert [chunk for chunk, _ in scores] == [range(0, 2), range(2, 4), range(4, 5)]
        for name in ("latents", "log_probs", "final_latents", "images"):
            torch.testing.assert_close(getattr(traj, name), getattr(whole, name))
        torch.testing.assert_close(torch.stack([s for _, s in scores]),
                                   torch.stack([whole.images[c.start : c.stop].sum() for c, _ in scores]))


def test_decoding_and_scoring_run_while_the_next_chunk_samples():
    """Chunk 0's score waits until chunk 1 has started sampling: it returns only if the
    worker runs beside the sampler (with overlap=False it would time out and fail)."""
    policy = make_policy()
    decoded_in, chunk1_started = [], threading.Event()
    decode = policy.decode
    policy.decode = lambda latents: (decoded_in.append(threading.current_thread().name), decode(latents))[1]
    starts = []

    def before_chunk():
        starts.append(len(starts))
        if len(starts) == 2:
            chunk1_started.set()

    def score(part, chunk):
        return chunk1_started.wait(timeout=30) if chunk.start == 0 else True

    _, waited = sample_and_score(policy, PROMPTS, 3, noise(), score, before_chunk=before_chunk)
    assert waited == [True, True]
    assert len(decoded_in) == 2 and all(name.startswith("decode-score") for name in decoded_in)


def test_an_evaluation_keeps_the_images_and_releases_the_latents():
    """keep_trajectories=False (the evaluation, oracle queries): each chunk's latents are released once it
    is scored (the score still sees them), the images and log-probabilities are those of the full run."""
    policy = make_policy()
    full, _ = sample_and_score(policy, PROMPTS, 2, noise(), lambda part, chunk: None)
    seen = []
    light, _ = sample_and_score(policy, PROMPTS, 2, noise(), lambda part, chunk: seen.append(part.latents.shape[1]),
                                keep_trajectories=False)
    assert seen == [full.latents.shape[1]] * 3 and full.latents.shape[1] > 0
    assert light.latents.shape == light.next_latents.shape == light.final_latents.shape == (len(PROMPTS), 0)
    torch.testing.assert_close(light.images, full.images)
    torch.testing.assert_close(light.log_probs, full.log_probs)
