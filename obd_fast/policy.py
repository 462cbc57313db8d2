"""The policy network as a flat parameter vector (``docs/design.md``, "The public contract").

Layout of ``theta``: for each Linear layer in order, weight (out, in) row-major, then bias (out).
The last layer has ``2 * act_dim`` outputs for the gaussian head (mean first, then log_std) or
``act_dim`` for the tanh head; the gaussian head then appends ``log_std_multiplier`` and
``log_std_offset``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import torch
from torch import nn

HEADS = ("gaussian", "tanh")
LOG_STD_MIN = -20.0
LOG_STD_MAX = 2.0


@dataclass(frozen=True)
class LayerSlices:
    """Offsets of one Linear layer inside theta."""

    in_features: int
    out_features: int
    weight_offset: int
    bias_offset: int


class PolicySpec:
    """Shape of an MLP policy with a tanh-Gaussian (``"gaussian"``) or plain tanh head.

    ``hidden`` lists the widths of the ReLU layers (at least one).
    """

    def __init__(
        self,
        obs_dim: int,
        act_dim: int,
        hidden: Sequence[int] = (256, 256, 256),
        head: str = "gaussian",
        max_action: float = 1.0,
    ):
        hidden = tuple(int(h) for h in hidden)
        if int(obs_dim) < 1 or int(act_dim) < 1:
            raise ValueError(f"obs_dim and act_dim must be >= 1, got obs_dim={obs_dim}, act_dim={act_dim}")
        if len(hidden) < 1 or any(h < 1 for h in hidden):
            raise ValueError(f"hidden must list at least one positive width, got {hidden}")
        if head not in HEADS:
            raise ValueError(f"head must be one of {HEADS}, got {head!r}")
        if not (math.isfinite(max_action) and max_action > 0):
            raise ValueError(f"max_action must be a positive finite number, got {max_action}")
        self.obs_dim = int(obs_dim)
        self.act_dim = int(act_dim)
        self.hidden = hidden
        self.head = head
        self.max_action = float(max_action)

        widths = (self.obs_dim,) + hidden + (self.out_dim,)
        layers: List[LayerSlices] = []
        offset = 0
        for fan_in, fan_out in zip(widths[:-1], widths[1:]):
            layers.append(LayerSlices(fan_in, fan_out, offset, offset + fan_in * fan_out))
            offset += fan_in * fan_out + fan_out
        self.layers: Tuple[LayerSlices, ...] = tuple(layers)
        self.head_offset = offset  # log_std_multiplier, log_std_offset (gaussian head only)
        self.num_params = offset + (2 if head == "gaussian" else 0)

    # -- description -------------------------------------------------------------------------
    @property
    def out_dim(self) -> int:
        return 2 * self.act_dim if self.head == "gaussian" else self.act_dim

    @property
    def widths(self) -> Tuple[int, ...]:
        """Feature widths from the input to the last layer's output."""
        return (self.obs_dim,) + self.hidden + (self.out_dim,)

    def __repr__(self) -> str:
        return (
            f"PolicySpec(obs_dim={self.obs_dim}, act_dim={self.act_dim}, hidden={self.hidden}, "
            f"head={self.head!r}, max_action={self.max_action})"
        )

    def __eq__(self, other) -> bool:
        return isinstance(other, PolicySpec) and self.to_dict() == other.to_dict()

    def __hash__(self) -> int:
        return hash((self.obs_dim, self.act_dim, self.hidden, self.head, self.max_action))

    def to_dict(self) -> dict:
        return dict(obs_dim=self.obs_dim, act_dim=self.act_dim, hidden=list(self.hidden),
                    head=self.head, max_action=self.max_action)

    @classmethod
    def from_dict(cls, d: dict) -> "PolicySpec":
        return cls(d["obs_dim"], d["act_dim"], tuple(d["hidden"]), d["head"], d["max_action"])

    # -- flat parameters ---------------------------------------------------------------------
    def unflatten(self, theta: torch.Tensor) -> Tuple[List[Tuple[torch.Tensor, torch.Tensor]], Optional[torch.Tensor], Optional[torch.Tensor]]:
        """Views of theta: ``([(W_1, b_1), ...], log_std_multiplier, log_std_offset)``."""
        params = []
        for layer in self.layers:
            w = theta[layer.weight_offset:layer.bias_offset].view(layer.out_features, layer.in_features)
            b = theta[layer.bias_offset:layer.bias_offset + layer.out_features]
            params.append((w, b))
        if self.head == "gaussian":
            return params, theta[self.head_offset], theta[self.head_offset + 1]
        return params, None, None

    def init_params(self, generator: Optional[torch.Generator] = None, dtype: torch.dtype = torch.float32,
                    device=None) -> torch.Tensor:
        """Paper's init: orthogonal weights (gain sqrt(2)), zero biases, multiplier 1, offset -1."""
        theta = torch.zeros(self.num_params, dtype=dtype, device=device)
        for layer in self.layers:
            # Draw on the CPU in float64 so a seed gives the same network on every device/dtype.
            w = torch.empty(layer.out_features, layer.in_features, dtype=torch.float64)
            nn.init.orthogonal_(w, gain=math.sqrt(2.0), generator=generator)
            theta[layer.weight_offset:layer.bias_offset] = w.reshape(-1).to(dtype=dtype, device=device)
        if self.head == "gaussian":
            theta[self.head_offset] = 1.0
            theta[self.head_offset + 1] = -1.0
        return theta

    # -- the function ------------------------------------------------------------------------
    def forward(self, theta: torch.Tensor, obs: torch.Tensor, noise: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Actions for ``obs`` (B, obs_dim). ``noise`` (B, act_dim) samples the gaussian head;
        None gives the deterministic action ``max_action * tanh(mean)``."""
        params, log_std_mult, log_std_off = self.unflatten(theta)
        x = obs
        for i, (w, b) in enumerate(params):
            x = torch.nn.functional.linear(x, w, b)
            if i < len(params) - 1:
                x = torch.relu(x)
        return self.head_forward(x, log_std_mult, log_std_off, noise)

    def head_forward(self, out: torch.Tensor, log_std_mult, log_std_off, noise) -> torch.Tensor:
        if self.head == "tanh":
            return self.max_action * torch.tanh(out)
        return tanh_gaussian_action(out, self.act_dim, self.max_action, log_std_mult, log_std_off, noise)

    # -- nn.Module interop (CORL actor keys) -------------------------------------------------
    def to_module(self, theta: Optional[torch.Tensor] = None) -> "PolicyModule":
        """An ``nn.Module`` holding a copy of theta, with CORL's actor ``state_dict`` keys."""
        module = PolicyModule(self)
        if theta is not None:
            check_theta(self, theta)
            module.to(dtype=theta.dtype, device=theta.device)
            with torch.no_grad():
                params, mult, off = self.unflatten(theta.detach())
                linears = module.linears()
                for lin, (w, b) in zip(linears, params):
                    lin.weight.copy_(w)
                    lin.bias.copy_(b)
                if mult is not None:
                    module.log_std_multiplier.constant.copy_(mult)
                    module.log_std_offset.constant.copy_(off)
        return module

    @classmethod
    def from_module(cls, module: nn.Module, max_action: Optional[float] = None) -> "PolicySpec":
        """The spec of a CORL-style tanh-Gaussian actor or a plain Linear/ReLU MLP with a tanh output
        (obd_fast.module_spec); ``max_action`` defaults to ``module.max_action``, else 1.
        A layer that cannot be mapped is a ``ValueError`` naming it."""
        from .module_spec import module_layout

        return module_layout(module, max_action).spec

    def params_from_module(self, module: nn.Module) -> torch.Tensor:
        """Flatten a module with CORL actor keys (ours or CORL's own) into theta."""
        state = module.state_dict() if isinstance(module, nn.Module) else dict(module)
        pieces = []
        for i, layer in enumerate(self.layers):
            for kind, shape in (("weight", (layer.out_features, layer.in_features)), ("bias", (layer.out_features,))):
                key = f"base_network.{2 * i}.{kind}"
                if key not in state:
                    raise ValueError(f"module has no {key!r}; expected CORL actor keys for {self}")
                t = state[key]
                if tuple(t.shape) != shape:
                    raise ValueError(f"{key} has shape {tuple(t.shape)}, {self} expects {shape}")
                pieces.append(t.detach().reshape(-1))
        if self.head == "gaussian":
            for key in ("log_std_multiplier.constant", "log_std_offset.constant"):
                if key not in state:
                    raise ValueError(f"module has no {key!r}; the gaussian head needs it")
                pieces.append(state[key].detach().reshape(1))
        dtype = pieces[0].dtype
        return torch.cat([p.to(dtype) for p in pieces])


# ------------------------------------------------------------------------------ the tanh-Gaussian head
# One head for every policy and actor here (PolicySpec / PolicyModule, evaluate.ResidualPolicy,
# rl.networks.TanhGaussianActor): the last layer's 2 * act_dim outputs are (mean, raw log-std),
# log_std = clamp(log_std_multiplier * raw + log_std_offset, LOG_STD_MIN, LOG_STD_MAX), and the
# action is max_action * tanh(mean + exp(log_std) * noise) (noise None: max_action * tanh(mean)).
def gaussian_mean_log_std(out: torch.Tensor, act_dim: int, log_std_multiplier, log_std_offset
                          ) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(mean, log_std)`` of the pre-tanh gaussian from the last layer's outputs."""
    mean, raw = out[..., :act_dim], out[..., act_dim:]
    return mean, torch.clamp(log_std_multiplier * raw + log_std_offset, LOG_STD_MIN, LOG_STD_MAX)


def tanh_gaussian_action(out: torch.Tensor, act_dim: int, max_action: float, log_std_multiplier, log_std_offset,
                         noise: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The head's action for explicit ``noise`` (deterministic ``max_action * tanh(mean)`` for None)."""
    if noise is None:
        return max_action * torch.tanh(out[..., :act_dim])
    mean, log_std = gaussian_mean_log_std(out, act_dim, log_std_multiplier, log_std_offset)
    return max_action * torch.tanh(mean + torch.exp(log_std) * noise)


class Scalar(nn.Module):
    """A learnable scalar, as CORL's ``Scalar`` (its parameter is called ``constant``)."""

    def __init__(self, init_value: float):
        super().__init__()
        self.constant = nn.Parameter(torch.tensor(init_value, dtype=torch.float32))

    def forward(self) -> torch.Tensor:
        return self.constant


def relu_mlp(widths: Sequence[int]) -> nn.Sequential:
    """Linear layers of ``widths`` with a ReLU between consecutive ones (module keys ``0, 2, ..``
    are the Linear layers, as CORL's networks)."""
    layers: List[nn.Module] = []
    for i, (fan_in, fan_out) in enumerate(zip(widths[:-1], widths[1:])):
        layers.append(nn.Linear(fan_in, fan_out))
        if i < len(widths) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def add_log_std_scalars(module: nn.Module) -> None:
    """The head's two learnable scalars as ``module.log_std_multiplier`` / ``log_std_offset``
    (CORL's keys ``log_std_multiplier.constant``, ``log_std_offset.constant``), at the paper's init."""
    module.log_std_multiplier = Scalar(1.0)
    module.log_std_offset = Scalar(-1.0)


class PolicyModule(nn.Module):
    """The policy as a module; ``state_dict`` keys match CORL's ``TanhGaussianPolicy``."""

    def __init__(self, spec: PolicySpec):
        super().__init__()
        self.spec = spec
        self.base_network = relu_mlp(spec.widths)
        if spec.head == "gaussian":
            add_log_std_scalars(self)

    def linears(self) -> List[nn.Linear]:
        return [m for m in self.base_network if isinstance(m, nn.Linear)]

    def forward(self, obs: torch.Tensor, noise: Optional[torch.Tensor] = None) -> torch.Tensor:
        out = self.base_network(obs)
        if self.spec.head == "gaussian":
            return self.spec.head_forward(out, self.log_std_multiplier.constant, self.log_std_offset.constant, noise)
        return self.spec.head_forward(out, None, None, noise)


def check_theta(spec: PolicySpec, theta) -> None:
    if not isinstance(theta, torch.Tensor):
        raise ValueError(f"theta must be a torch.Tensor, got {type(theta).__name__}")
    if theta.dim() != 1 or theta.numel() != spec.num_params:
        raise ValueError(f"theta must have shape ({spec.num_params},) for {spec}, got {tuple(theta.shape)}")
