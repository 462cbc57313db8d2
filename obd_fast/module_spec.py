"""Read a :class:`PolicySpec` from an ``nn.Module``, and where each of its parameters sits in theta.

Two kinds of module map onto obd_fast's policies:

* CORL-style tanh-Gaussian actors: a ``base_network`` ``nn.Sequential`` of Linear / ReLU layers and
  the scalars ``log_std_multiplier.constant`` and ``log_std_offset.constant`` (CORL's and the
  OBD code's ``TanhGaussianPolicy``, obd_fast's ``PolicyModule``): the ``"gaussian"`` head.
* Plain MLPs: ``nn.Sequential`` or nested modules whose layers, in registration order, are
  Linear, ReLU, Linear, ..., Linear, with an optional ``nn.Tanh`` at the end (or a tanh applied in
  ``forward``, as the OBD code's ``DetContPolicy``): the ``"tanh"`` head.

The structure gives a candidate spec; a probe call of the module on a few fixed inputs then checks
that its forward computes exactly that spec's function, so an activation applied in ``forward``
(or a missing one, a scaling, a different layer order) is an error rather than a silent mismatch.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Dict, Iterator, List, Optional, Tuple

import torch
from torch import nn
from torch.func import functional_call

from .policy import LOG_STD_MAX, LOG_STD_MIN, PolicyModule, PolicySpec

HEAD_SCALARS = ("log_std_multiplier.constant", "log_std_offset.constant")
ACTIVATIONS = (nn.ReLU, nn.Tanh)
PROBE_SCALES = (1.0, 1e2, 1e4)
SHAPE_HINT = "obd_fast policies are Linear layers with a ReLU between each two and a tanh (or tanh-Gaussian) output"


@dataclass(frozen=True)
class ModuleLayout:
    """A module's :class:`PolicySpec` and its parameters' names in theta order.

    ``names[i]`` is the ``named_parameters()`` name of the i-th piece of theta (each piece is the
    parameter flattened row-major: a Linear weight (out, in) as PolicySpec's flat layout has it).
    """

    spec: PolicySpec
    names: Tuple[str, ...]

    def flatten(self, module: nn.Module) -> torch.Tensor:
        """theta of ``module``'s current parameters, differentiable w.r.t. them."""
        params = dict(module.named_parameters())
        return torch.cat([params[name].reshape(-1) for name in self.names])

    def views(self, theta: torch.Tensor, module: nn.Module) -> Dict[str, torch.Tensor]:
        """Views of theta shaped like ``module``'s parameters, in ``module.named_parameters()`` order."""
        shapes = {name: p.shape for name, p in module.named_parameters()}
        pieces, offset = {}, 0
        for name in self.names:
            n = shapes[name].numel()
            pieces[name] = theta[offset:offset + n].view(shapes[name])
            offset += n
        return {name: pieces[name] for name in shapes}


def module_layout(module: nn.Module, max_action: Optional[float] = None) -> ModuleLayout:
    """The layout of a CORL-style actor or a plain tanh MLP; ``ValueError`` naming what cannot be mapped.

    ``max_action`` defaults to the module's ``max_action`` attribute (a PolicyModule's spec's), else 1.
    """
    if not isinstance(module, nn.Module):
        raise ValueError(f"module must be a torch.nn.Module, got {type(module).__name__}")
    device = _parameter_device(module)
    if max_action is None:
        max_action = module.spec.max_action if isinstance(module, PolicyModule) else getattr(module, "max_action", 1.0)
    if _is_corl_actor(module):
        linears = _linear_chain(module.base_network, "base_network", allow_tanh=False)
        head, names = "gaussian", _linear_names(linears) + list(HEAD_SCALARS)
        _check_corl_head(module)
    else:
        linears = _linear_chain(module, "", allow_tanh=True)
        head, names = "tanh", _linear_names(linears)
    if len(linears) < 2:
        raise ValueError(f"module has {len(linears)} Linear layer(s); {SHAPE_HINT}, with at least one hidden layer")
    last = linears[-1][1].out_features
    if head == "gaussian" and last % 2:
        raise ValueError(f"the last Linear layer ({linears[-1][0]}) of a tanh-Gaussian actor must output mean and "
                         f"log_std (an even width), got {last}")
    hidden = tuple(lin.out_features for _, lin in linears[:-1])
    spec = PolicySpec(linears[0][1].in_features, last // 2 if head == "gaussian" else last, hidden, head,
                      float(max_action))
    _check_parameters_mapped(module, names)
    layout = ModuleLayout(spec, tuple(names))
    _check_forward(module, layout, device)
    return layout


# -- structure ---------------------------------------------------------------------------------

def _parameter_device(module: nn.Module) -> torch.device:
    params = list(module.named_parameters())
    if not params:
        raise ValueError("module has no parameters")
    name0, p0 = params[0]
    for name, p in params:
        if p.dtype not in (torch.float32, torch.float64):
            raise ValueError(f"parameter {name!r} is {p.dtype}; obd_fast runs float32 or float64 modules")
        if p.dtype != p0.dtype or p.device != p0.device:
            raise ValueError(f"parameter {name!r} is {p.dtype} on {p.device} but {name0!r} is {p0.dtype} on "
                             f"{p0.device}; all parameters must share one dtype and device")
    return p0.device


def _is_corl_actor(module: nn.Module) -> bool:
    names = {name for name, _ in module.named_parameters()}
    return isinstance(getattr(module, "base_network", None), nn.Sequential) and set(HEAD_SCALARS) <= names


def _check_corl_head(module: nn.Module) -> None:
    """The tanh-Gaussian head's constants, where the module states them (CORL's attribute names)."""
    if getattr(module, "no_tanh", False):
        raise ValueError("module has no_tanh=True: its Gaussian head has no tanh, obd_fast's head does")
    sampler = getattr(module, "tanh_gaussian", None)
    for attr, want in (("log_std_min", LOG_STD_MIN), ("log_std_max", LOG_STD_MAX)):
        got = getattr(sampler, attr, want)
        if float(got) != want:
            raise ValueError(f"module.tanh_gaussian.{attr} is {got}; obd_fast's head clamps log_std to "
                             f"[{LOG_STD_MIN}, {LOG_STD_MAX}]")


def _leaves(module: nn.Module, prefix: str) -> Iterator[Tuple[str, nn.Module]]:
    """Modules without children, in registration order (a module registered twice counts once)."""
    for name, m in module.named_modules(prefix=prefix):
        if next(m.children(), None) is None and m is not module:
            yield name, m


def _linear_chain(module: nn.Module, prefix: str, allow_tanh: bool) -> List[Tuple[str, nn.Linear]]:
    """The Linear layers of Linear, ReLU, Linear, ..., Linear [, Tanh]; an error names the first
    layer that does not fit."""
    linears: List[Tuple[str, nn.Linear]] = []
    prev = None  # the kind of the previous layer: "linear", "relu" or "tanh"
    for name, layer in _leaves(module, prefix):
        label = f"layer {name!r} ({type(layer).__name__})"
        if prev == "tanh":
            raise ValueError(f"{label} follows the output tanh; {SHAPE_HINT}")
        if isinstance(layer, nn.Linear):
            if prev == "linear":
                raise ValueError(f"{label} follows Linear {linears[-1][0]!r} with no ReLU between them; {SHAPE_HINT}")
            if layer.bias is None:
                raise ValueError(f"{label} has no bias; obd_fast's Linear layers have one")
            if linears and linears[-1][1].out_features != layer.in_features:
                raise ValueError(f"{label} takes {layer.in_features} inputs but {linears[-1][0]!r} gives "
                                 f"{linears[-1][1].out_features}")
            linears.append((name, layer))
            prev = "linear"
        elif isinstance(layer, nn.ReLU) and prev == "linear":
            prev = "relu"
        elif isinstance(layer, nn.Tanh) and allow_tanh and prev == "linear":
            prev = "tanh"
        elif isinstance(layer, ACTIVATIONS):
            raise ValueError(f"{label} is not where {SHAPE_HINT} (after a Linear layer; tanh only at the end)")
        else:
            raise ValueError(f"cannot map {label}: {SHAPE_HINT}")
    if prev == "relu":
        raise ValueError(f"module ends in a ReLU ({name!r}); {SHAPE_HINT}")
    return linears


def _linear_names(linears) -> List[str]:
    return [f"{name}.{kind}" for name, _ in linears for kind in ("weight", "bias")]


def _check_parameters_mapped(module: nn.Module, names: List[str]) -> None:
    """Every parameter has one place in theta and every place one parameter."""
    own = [name for name, _ in module.named_parameters()]
    shared = [name for name in names if name not in own]
    if shared:
        raise ValueError(f"parameter(s) {shared} are shared with another layer; obd_fast's layers have their own")
    mapped = set(names)
    extra = [name for name in own if name not in mapped]
    if extra:
        raise ValueError(f"parameter(s) {extra} have no place in obd_fast's policy layout; {SHAPE_HINT}")


def call_with_parameters(module: nn.Module, params: Dict[str, torch.Tensor], args, kwargs):
    """``module(*args, **kwargs)`` with ``params`` (by ``named_parameters()`` name) in place of its own.

    tie_weights=False: a layer registered under two names (DetContPolicy's last layer) is one
    module, so replacing it under one name replaces it everywhere; torch's weight tying would leave
    such a module's parameters as plain tensors after the call."""
    return functional_call(module, params, args, kwargs, tie_weights=False)


# -- the probe ---------------------------------------------------------------------------------

def _check_forward(module: nn.Module, layout: ModuleLayout, device) -> None:
    """module(obs) must equal spec.forward(theta, obs) (the deterministic action of a Gaussian actor).

    Checked in float64 (the module runs on float64 copies of its parameters), on observations of
    scale 1, 100 and 10^4: a ReLU network's outputs grow with the input's scale, so even a freshly
    initialized last layer with tiny weights reaches the range where tanh(z) and z differ."""
    spec = layout.spec
    g = torch.Generator().manual_seed(0)
    obs = torch.cat([scale * torch.randn(3, spec.obs_dim, generator=g, dtype=torch.float64)
                     for scale in PROBE_SCALES]).to(device)
    params = {name: p.detach().to(torch.float64) for name, p in module.named_parameters()}
    kwargs = {}
    if spec.head == "gaussian" and "deterministic" in inspect.signature(module.forward).parameters:
        kwargs["deterministic"] = True  # CORL's actors sample unless told otherwise
    try:
        with torch.no_grad():
            out = call_with_parameters(module, params, (obs,), kwargs)
    except Exception as e:  # a forward that needs other arguments cannot be checked, hence not mapped
        raise ValueError(f"could not check the module's forward on a ({len(obs)}, {spec.obs_dim}) batch of "
                         f"float64 observations: {type(e).__name__}: {e}") from e
    want = spec.forward(layout.flatten(module).detach().to(torch.float64), obs)
    if isinstance(out, (tuple, list)):
        out = out[0]  # (action, log_prob) of a Gaussian actor
    if not isinstance(out, torch.Tensor) or out.shape != want.shape:
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(f"module(obs) gives {got}, but {spec} gives actions of shape {tuple(want.shape)}")
    diff = (out - want).abs().max().item()
    if not diff <= 1e-8 * spec.max_action:
        what = "max_action * tanh(mean)" if spec.head == "gaussian" else "max_action * tanh(last Linear layer)"
        raise ValueError(f"module(obs) is not {what} of its Linear/ReLU layers (max |difference| {diff:.3g}, "
                         f"max_action={spec.max_action}); its forward computes something else "
                         f"(a missing or extra activation, a scaling, another layer order), so it cannot "
                         f"be mapped to {spec}")
