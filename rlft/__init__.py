"""rlft: fine-tune diffusion models with reinforcement learning (DDPO-style PPO, SEIKO)."""

__version__ = "0.1.0"
