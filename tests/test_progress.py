"""The progress bar follows the epoch's phases: a line each for sampling (per denoising step),
rewards, training (per backward pass) and evaluation, each reaching its total; its metrics are the
reward, the evaluation's and PPO's KL and clip fraction."""

from rlft.run.progress import PhaseProgressBar
from rlft.run.train import build
from tests.conftest import save_tiny_model
from tests.test_config import compose_cfg


class Recorded:
    def __init__(self, log, description, total):
        self.log, self.entry = log, [description, total, 0]
        log.append(self.entry)

    def update(self, n=1):
        self.entry[2] += n

    def set_description(self, description):
        self.entry[0] = description

    def close(self):
        pass


class RecordingBar(PhaseProgressBar):
    """The run's bar, its phases recorded (description, total, advanced) instead of drawn."""

    def __init__(self):
        super().__init__()
        self.phases = []

    def phase(self, description, total):
        return Recorded(self.phases, description, total)


def test_every_phase_of_an_epoch_moves_to_its_total(tmp_path):
    cfg = compose_cfg([f"model.pretrained={save_tiny_model(tmp_path / 'model')}", "trainer.max_epochs=1",
                       "data.samples_per_epoch=8", "algorithm.sample_batch_size=4", "algorithm.train_batch_size=2",
                       "algorithm.timestep_fraction=1.0", "policy.num_steps=3",
                       "algorithm.evaluation.samples_per_prompt=1"], output_dir=str(tmp_path / "run"))
    module, data, trainer = build(cfg)
    bars = [c for c in trainer.callbacks if isinstance(c, PhaseProgressBar)]
    assert len(bars) == 1  # added by the run (run_callbacks), in place of Lightning's own
    bar = RecordingBar()
    trainer.callbacks[trainer.callbacks.index(bars[0])] = bar
    trainer.fit(module, datamodule=data)
    eval_chunks = -(-len(data.eval_prompts) // module.evaluation.batch_size)
    assert bar.phases == [
        ["sampling", 2 * 3, 6],  # 2 chunks x 3 denoising steps
        ["rewards", 2, 2],
        ["training", 4 * 3, 12],  # 4 micro-batches x 3 timesteps
        ["evaluating", eval_chunks * 3, eval_chunks * 3],
        ["evaluating: rewards", eval_chunks, eval_chunks],
    ]
    assert {"reward", "eval", "approx_kl", "clipfrac"} <= set(trainer.progress_bar_metrics)


def test_the_bar_can_be_turned_off(tmp_path):
    """trainer.enable_progress_bar=false: no bar is added (Lightning refuses a progress bar callback then)."""
    cfg = compose_cfg([f"model.pretrained={save_tiny_model(tmp_path / 'model')}", "+trainer.enable_progress_bar=false"],
                      output_dir=str(tmp_path / "run"))
    _, _, trainer = build(cfg)
    assert not any(isinstance(c, PhaseProgressBar) for c in trainer.callbacks) and trainer.progress_bar_callback is None
