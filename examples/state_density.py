"""A new distillation objective in a few lines: Av-PBC with state-density weights.

The authors' follow-up (Lei, Cheng & Tao, "State Diversity Matters in Offline Behavior
Distillation", arXiv 2512.06692) weights the distillation objective by the reciprocal of the
state density, so that the synthetic set covers rare states too. Its exact estimator and
normalization are not reproduced here: this objective is this project's own reading of the idea,

    w(s) = beta * q*(s, a*) * clip(rho_ref / rho(s), 1 / c, c),

with rho a Gaussian kernel density estimate over a fixed random subsample of the normalized real
states (Scott's bandwidth; a state's own copy in the subsample does not count), rho_ref the
geometric mean of rho over that subsample (a typical state keeps its Av-PBC weight), and
c = ``MAX_RATIO`` bounding how far one state's weight moves, so that neither isolated states nor
dense clusters take over the loss.

Use it from Python (``import`` this file, then ``DistillConfig(objective="density-av-pbc")``) or
run it: the arguments are those of ``obd-fast distill``, e.g.

    python examples/state_density.py --data bundled:hopper-medium \
        --teacher obd_fast/teacher/bundled/hopper-medium/teacher.pt --steps 2000 --out runs/density
"""
import math
import sys

import torch

from obd_fast.objectives import AvPBC, register_objective

REFERENCE_ROWS = 2048  # states the density is estimated from
MAX_RATIO = 10.0


@register_objective
class StateDensityAvPBC(AvPBC):
    """Av-PBC with each row's weight multiplied by its state's inverse density (see the module docstring)."""

    name = "density-av-pbc"

    def __init__(self, config, teacher=None, real_obs=None):
        super().__init__(config, teacher, real_obs)
        g = torch.Generator().manual_seed(int(config.seed))  # its own generator: the run's draws are unchanged
        rows = torch.randperm(len(real_obs), generator=g)[:REFERENCE_ROWS].to(real_obs.device)
        self.reference = real_obs[rows].double()
        n, d = self.reference.shape
        self.bandwidth = float(self.reference.std(0).mean()) * n ** (-1.0 / (d + 4))  # Scott's rule
        self.log_reference = float(self.log_density(self.reference).mean())  # log of rho_ref

    def log_density(self, obs):
        """log rho(s) up to a constant: log sum_j exp(-|s - r_j|^2 / (2 h^2)) over r_j != s."""
        d2 = torch.cdist(obs.double(), self.reference, compute_mode="donot_use_mm_for_euclid_dist").pow(2)
        logits = (-d2 / (2 * self.bandwidth ** 2)).masked_fill(d2 == 0, -math.inf)
        return torch.logsumexp(logits, 1)

    def density_weights(self, obs):
        w = torch.exp(self.log_reference - self.log_density(obs))
        return w.clamp(1 / MAX_RATIO, MAX_RATIO).to(torch.float32)

    def targets(self, obs, actions, teacher_noise=None):
        target, weight = super().targets(obs, actions, teacher_noise)
        return target, weight * self.density_weights(obs)


if __name__ == "__main__":
    from obd_fast import cli

    sys.exit(cli.main(["distill", "--objective", StateDensityAvPBC.name, *sys.argv[1:]]))
