"""`RLModule`: what every algorithm's LightningModule shares, the sampling-based ones
(`rlft.algorithms.pipeline.OnlineRL`) and SEIKO alike: the policy and its optimizer, the answer
store, the non-finite guard, the oracle-query and time counters, sample images, and the part of
every checkpoint that makes a resumed run continue exactly; and what an algorithm's class tells
the checks of other settings (`rlft.checks.algorithm_class`)."""

import logging
from typing import Callable

import lightning as L
from omegaconf import DictConfig

from rlft.rewards.placement import reward_modules
from rlft.run.progress import run_progress_bar
from rlft.algorithms.evaluation import HeldOutEvaluation, load_work_state, training_work, work_state
from rlft.algorithms.health import NonFiniteGuard
from rlft.checks import check
from rlft.diffusion.policy import DiffusionPolicy
from rlft.run.answers import AnswerStore
from rlft.run.checkpoints import check_resumable, keep_trained_state
from rlft.run.distributed import check_sharding, sum_over_ranks
from rlft.run.sharding import shard_denoiser, uses_fsdp2
from rlft.run.rng import get_rng_state, reseed_at_fit_start, set_rng_state
from rlft.run.sample_images import sample_grid, video_summary

log = logging.getLogger(__name__)


# TensorBoard's Custom Scalars tab: the charts a run is followed by, each a regex of tags.
TENSORBOARD_LAYOUT = {"rlft": {
    "reward (training batch, held-out evaluation)": ["Multiline", [r"reward/mean", r"eval/oracle_reward", r"eval/proxy_reward"]],
    "reward's spread in the batch": ["Margin", ["reward/mean", "reward/min", "reward/max"]],
    "held-out and component rewards": ["Multiline", [r"eval/(?!oracle_reward|proxy)", r"reward/(?!mean|std|min|max)"]],
    "KL and clipping": ["Multiline", [r"train/approx_kl$", r"train/kl$", r"train/clipfrac$"]],
    "seconds per epoch": ["Multiline", [r"time/(sample|reward|train|eval)_s"]],
}}


class RLModule(L.LightningModule):
    # What other settings may ask of the algorithm (checked at composition):
    moves_sde_window = False  # policy.sde_window_shift moves the SDE window between its epochs
    needs_stochastic_steps = True  # its training needs the sampler's stochastic steps (no policy.deterministic)
    learns_own_reward = False  # it fits its own reward model on the oracle's answers (one reward per sample)
    summary_metric = "reward/mean"  # what train() reports and the HParams tab shows
    # Keys of `algorithm` that describe the run to the other configs, not the constructor's arguments.
    config_only_keys = ("name", "epochs", "lr")

    @classmethod
    def check_config(cls, cfg: DictConfig, node: DictConfig, where: str) -> None:
        """The algorithm's settings at composition; each algorithm adds its own (super() first)."""
        a = cfg.algorithm
        check(a.lr > 0, "algorithm.lr", a.lr, "must be > 0")
        check(a.train_batch_size >= 1, "algorithm.train_batch_size", a.train_batch_size, "must be >= 1")
        check(a.sample_batch_size >= 1, "algorithm.sample_batch_size", a.sample_batch_size, "must be >= 1")
        check(a.max_grad_norm > 0, "algorithm.max_grad_norm", a.max_grad_norm, "must be > 0")

    @classmethod
    def projected_unet_evals(cls, cfg: DictConfig, cfg_factor: int) -> float:
        """The run's projected UNet work for `policy.compile=auto` (`rlft.run.work`)."""
        raise NotImplementedError

    def __init__(self, policy: DiffusionPolicy, optimizer: Callable, evaluation: HeldOutEvaluation | None,
                 health: NonFiniteGuard | None, log_images_every_n_epochs: int, progress: bool, seed: int):
        super().__init__()
        self.automatic_optimization = False
        self.strict_loading = False  # checkpoints hold the trained weights only (rlft.run.checkpoints)
        self.policy = policy
        self.optimizer_factory = optimizer
        self.evaluation = evaluation  # its own reward instance: measurement only, never fed back
        self.health = health or NonFiniteGuard()
        self.log_images_every_n_epochs = log_images_every_n_epochs
        self.progress = progress
        self.seed = seed  # names each sample's noise with the epoch and the sample's index
        self.oracle_queries = 0  # every answer of the oracle counts
        self.elapsed_s = 0.0  # wall seconds of the run's work so far (time/elapsed_s)
        self.first_reward_mean = None  # for train()'s closing summary
        self.answers = AnswerStore()  # on disk once the trainer names the run's directory (setup)

    def _apply(self, fn, recurse: bool = True):
        """`.to(device)` (Lightning's placement), `.to(dtype)`, `.cuda()`: the reward models follow
        (`rlft.rewards.placement`), though they are no submodules (their weights stay out of the
        checkpoints)."""
        super()._apply(fn, recurse)
        for module in self.reward_models():
            module._apply(fn, recurse)
        return self

    def reward_models(self) -> list:
        """The reward models this module asks (the trained reward's, the evaluation's), not its own submodules."""
        own = {id(m) for m in self.modules()}
        holders = [getattr(self, name, None) for name in ("scorer", "evaluation", "learned", "oracle")]
        return [m for m in reward_modules(*holders) if id(m) not in own]

    def micro_batching(self) -> tuple:
        """(train_batch_size, gradient_accumulation_steps) when each rank's share of an epoch is cut
        into micro-batches that every rank must run as many of (`check_sharding`); () when not."""
        return ()

    def setup(self, stage: str) -> None:
        # With trainer.devices=auto the number of processes is known only now.
        check_sharding(self.trainer.world_size, self.trainer.datamodule.samples_per_epoch, *self.micro_batching())
        reseed_at_fit_start()
        self.answers = AnswerStore.beside_checkpoints(self.trainer)
        writer = getattr(self.logger, "experiment", None) if self.trainer.is_global_zero else None
        if hasattr(writer, "add_custom_scalars"):
            writer.add_custom_scalars(TENSORBOARD_LAYOUT)


    def configure_model(self) -> None:
        """trainer=fsdp2: the denoiser sharded block by block over the processes (`rlft.run.sharding`)."""
        if uses_fsdp2(self._trainer):
            shard_denoiser(self.policy.denoiser, self.device_mesh["data_parallel"])

    def on_fit_start(self) -> None:
        """A run's prompts are fixed: encode each once, now that the model is on its device (one
        process per node writes the store, the others read it), keep the embeddings on disk and,
        unless policy.release_text_encoders=false, free the text encoders."""
        data, trainer = self.trainer.datamodule, self.trainer
        done = self.policy.cache_prompts(data.train_prompts + data.eval_prompts, writer=trainer.local_rank == 0,
                                         barrier=trainer.strategy.barrier, progress=bool(self.showing_progress))
        if trainer.is_global_zero:
            released = f"; released {', '.join(done['released'])}" if done["released"] else ""
            log.info(f"prompt embeddings: {done['prompts']} prompts, {done['encoded']} encoded, {done['reused']} "
                     f"reused, in {done['directory']}{released}")

    def configure_optimizers(self):
        return self.optimizer_factory(self.policy.trainable_parameters())

    @property
    def showing_progress(self):
        """What the phases' bars go to (`rlft.run.progress.phase_bar`): the run's PhaseProgressBar
        on the main process, else whether to show tqdm bars (off on the other ranks)."""
        if not self.progress or (self._trainer is not None and not self.trainer.is_global_zero):
            return False
        return (self._trainer is not None and run_progress_bar(self.trainer)) or True

    # -- outside a Trainer: `rlft speed` times the real update on a module with no trainer ----
    def standalone(self, optimizer) -> "RLModule":
        """Lets `update` run without a Trainer: plain backward passes, this optimizer, one process."""
        self.standalone_optimizer = optimizer
        return self

    @property
    def attached_trainer(self):
        """The Trainer, or None outside one (`standalone`)."""
        return self._trainer

    @property
    def processes(self) -> int:
        return self._trainer.world_size if self._trainer is not None else 1

    def backward_pass(self, loss) -> None:
        """A backward pass under the Trainer (manual optimization), or a plain one outside it."""
        if self._trainer is None:
            loss.backward()
        else:
            self.manual_backward(loss)

    def current_optimizer(self):
        return self.optimizers() if self._trainer is not None else self.standalone_optimizer

    def run_metrics(self, world: int) -> dict[str, float]:
        """What every algorithm logs each epoch: oracle queries, the training's UNet work, health."""
        return {"oracle/queries": float(self.oracle_queries),
                "work/unet_evals": float(sum_over_ranks(training_work(self.policy, self.evaluation), world)),
                **self.health.metrics()}

    # What the epoch's log line shows, when the epoch logged it: (label, metric, format).
    EPOCH_LINE = (("reward", "reward/mean", "{:.4f}"), ("± ", "reward/std", "{:.4f}"), ("eval", "eval/oracle_reward", "{:.4f}"),
                  ("reward model", "train/reward_model", "{:.4f}"),
                  ("approx_kl", "train/approx_kl", "{:.2e}"), ("clipfrac", "train/clipfrac", "{:.3f}"), ("kl", "train/kl", "{:.2e}"),
                  ("queries", "oracle/queries", "{:.0f}"))

    # The progress bar's metrics beside the epoch (name on the bar, metric), when the epoch logged them.
    PROGRESS_BAR = (("reward", "reward/mean"), ("eval", "eval/oracle_reward"),
                    ("approx_kl", "train/approx_kl"), ("clipfrac", "train/clipfrac"), ("kl", "train/kl"))

    def show_on_progress_bar(self, metrics: dict) -> None:
        self.log_dict({name: float(metrics[key]) for name, key in self.PROGRESS_BAR if key in metrics},
                      prog_bar=True, logger=False)

    def epoch_line(self, metrics: dict, seconds: float) -> str:
        """One line per epoch for the console and the run's log (cli.log): what a cluster job's log
        shows between its start and its end."""
        parts = [f"{label}{'' if label.endswith(' ') else ' '}{fmt.format(float(metrics[key]))}"
                 for label, key, fmt in self.EPOCH_LINE if key in metrics]
        line = f"epoch {self.current_epoch + 1}/{self.trainer.max_epochs}: " + ", ".join(parts)
        return line.replace(", ± ", " ± ") + f", {seconds:.1f} s"

    def log_samples(self, images, prompts: list[str], rewards, step: int) -> None:
        """Every `log_images_every_n_epochs` epochs and at the last, rank 0's samples: a grid of images
        titled with their prompts and rewards, or videos (B, F, C, H, W) as an animated GIF."""
        every = self.log_images_every_n_epochs
        last_epoch = self.current_epoch == self.trainer.max_epochs - 1
        if not every or (self.current_epoch % every and not last_epoch):
            return
        if not self.trainer.is_global_zero or self.logger is None or not hasattr(self.logger.experiment, "add_figure"):
            return  # rank 0 shows its shard
        if images.ndim == 5:  # videos: an animated GIF in the Images tab
            self.logger.experiment._get_file_writer().add_summary(video_summary("samples", images), step)
            return
        self.logger.experiment.add_figure("samples", sample_grid(images, prompts, rewards), step)

    # -- checkpoints ---------------------------------------------------------------------
    def trained_state(self) -> tuple[str, ...]:
        """State-dict keys kept in checkpoints beside the policy's trainable weights."""
        return ()

    def extra_state(self) -> dict:
        """The algorithm's own state for an exact resume (beside the shared one)."""
        return {}

    def load_extra_state(self, state: dict) -> None:
        pass

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # Written at the end of an epoch (SEIKO: also after a round's queries): with these and the
        # trained weights and optimizer state, a resumed run continues exactly as an uninterrupted one.
        keep_trained_state(self, checkpoint, also=self.trained_state())
        checkpoint["rlft"] = {
            "oracle_queries": self.oracle_queries,
            "elapsed_s": self.elapsed_s,
            "work": work_state(self.policy, self.evaluation),
            "health": self.health.state_dict(),
            "rng": get_rng_state(),
            **self.extra_state(),
        }

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        check_resumable(self, checkpoint, also=self.trained_state())
        state = checkpoint.get("rlft", {})
        self.oracle_queries = state.get("oracle_queries", 0)
        self.elapsed_s = state.get("elapsed_s", 0.0)
        load_work_state(self.policy, self.evaluation, state.get("work"))
        if "health" in state:
            self.health.load_state_dict(state["health"])
        if "rng" in state:
            set_rng_state(state["rng"])
        self.load_extra_state(state)
