"""`UCBReward`: SEIKO-UCB's reward model (the best method of the public SEIKO code), one MLP
fitted on all the feedback plus a linear-UCB bonus on its penultimate-layer features.

    r_UCB(x) = f(x) + min(alpha * sqrt(phi(x)^T (Sigma + lambda I)^-1 phi(x)), c)

`phi` is the MLP's hidden layer on the image's frozen features, `f` its output. `Sigma`:
- `sum` (default, the paper's and LinUCB's): the sum over the feedback of phi phi^T, so the
  bonus shrinks as 1/sqrt(N) where the feedback is dense;
- `cov`: the features' covariance (`torch.cov`), which the public code uses: the bonus is
  then a Mahalanobis distance from the feedback and does not shrink with N.
Sigma is recomputed after every fit. Prediction and bonus are in units of the feedback's std
(as the bootstrap heads), so `alpha` and `c` mean the same whatever the reward's scale.
"""

import torch

from rlft.checks import as_config_error
from rlft.ensemble.reward_ensemble import RewardEnsemble

SIGMAS = ("sum", "cov")


def check_settings(alpha: float, lam: float, clip: float, sigma: str) -> None:
    """Raises ValueError naming the first bad setting (also run at composition: `UCBReward.check_config`)."""
    for name, value, ok, valid in (("alpha", alpha, alpha >= 0, ">= 0 (0: no bonus, the greedy reward model)"),
                                   ("lam", lam, lam > 0, "> 0 (it makes Sigma + lam I invertible)"),
                                   ("clip", clip, clip > 0, "> 0 (the bonus's cap, in units of the feedback's std)"),
                                   ("sigma", sigma, sigma in SIGMAS, f"one of {list(SIGMAS)}")):
        if not ok:
            raise ValueError(f"ensemble.{name}={value!r} is invalid: must be {valid}")


class UCBReward(RewardEnsemble):
    bootstrap = False  # one model on all the feedback
    trained_state = (*RewardEnsemble.trained_state, "precision")

    @staticmethod
    def check_config(cfg, node, where: str) -> None:
        with as_config_error():
            check_settings(node.alpha, node.lam, node.clip, node.sigma)

    def __init__(self, backbone, feature_dim: int, hidden_dim: int = 64, lr: float = 1e-3, weight_decay: float = 1e-4,
                 alpha: float = 1e-2, lam: float = 1e-3, clip: float = 10.0, sigma: str = "sum"):
        super().__init__(backbone=backbone, feature_dim=feature_dim, num_heads=1, hidden_dim=hidden_dim, lr=lr,
                         weight_decay=weight_decay)
        check_settings(alpha, lam, clip, sigma)
        self.alpha, self.lam, self.clip, self.sigma = alpha, lam, clip, sigma
        # (Sigma + lam I)^-1; zero until the first fit, so the bonus is 0 before any feedback.
        self.register_buffer("precision", torch.zeros(hidden_dim, hidden_dim))

    def penultimate(self, features: torch.Tensor) -> torch.Tensor:
        return self.heads[0][:-1](features)

    def bonus(self, features: torch.Tensor) -> torch.Tensor:
        """(B, F) -> (B,), standardised units; differentiable in the features."""
        phi = self.penultimate(features)
        quadratic = torch.einsum("bi,ij,bj->b", phi, self.precision, phi)
        # sqrt only where positive: its gradient at 0 (before any fit, or phi = 0) is infinite
        positive = quadratic > 0
        root = torch.where(positive, torch.where(positive, quadratic, 1.0).sqrt(), 0.0)
        return (self.alpha * root).clamp(max=self.clip)

    def objective_heads(self, features: torch.Tensor) -> torch.Tensor:
        return self.standardised_heads(features) + self.bonus(features)[:, None]

    def uncertainty(self, features: torch.Tensor) -> torch.Tensor:
        return self.bonus(features) * self.reward_std

    @torch.no_grad()
    def observe_feedback(self, features: torch.Tensor) -> None:
        phi = self.penultimate(features)
        sigma = phi.T @ phi if self.sigma == "sum" else torch.cov(phi.T)
        eye = torch.eye(len(sigma), dtype=sigma.dtype, device=sigma.device)
        self.precision.copy_(torch.linalg.inv(sigma + self.lam * eye))
