"""A fused, exact ``inner_loop`` for the official OBD code (Lei, Zhang & Tao's ``SynSetBPTT``).

The whole switch is one line::

    SynSetBPTT.inner_loop = obd_fast.compat.obd.inner_loop
    # or, with options: SynSetBPTT.inner_loop = obd_fast.compat.obd.make_inner_loop(precision="bf16")

``inner_loop(self, backbone, backbone_opt, test_dataloader) -> (loss, dL_dc, dL_dw)`` keeps the
official interface: ``loss`` is the outer loss (a detached scalar), ``dL_dc = (d_obs, d_act)`` its
gradients w.r.t. ``self.synset.observations.weight`` and ``self.synset.actions.weight`` (on
``self.device``), ``dL_dw`` its gradients w.r.t. the backbone's initial parameters (one tensor
per ``backbone.parameters()`` entry). It reads from ``self``: ``policy_type`` ("gaussian": the
tanh-Gaussian actor with learnable log-std scalars; "deterministic": the tanh MLP), ``device``,
``synset``, ``offline_policy`` / ``offline_critic`` / ``_get_pred_acts`` (the "offline_policy"
objective), and from ``self.config``: ``bptt.inner_steps``, ``bptt.test_batch_num``,
``bptt_optim.lr`` / ``momentum``, ``match_objective``, ``q_weight``, ``beta_weight``.

What it computes is the official function with the exact gradient:

* the inner loop is ``bptt.inner_steps`` steps of ``backbone_opt`` (a ``torch.optim.SGD``; its
  weight decay, if any, is included in the gradient) of MSE behavior cloning on the synthetic set;
* the outer loss is the official mean over ``test_batch_num`` batches (the sum over the batches
  the loader gives, divided by ``test_batch_num``) of each batch's mean squared error, against the
  batch's actions ("offline_data") or the teacher's actions ("offline_policy"), weighted per row
  by ``beta_weight * Q`` with ``q_weight``;
* the Gaussian noise of the inner steps and of the outer loss is drawn once (from ``generator`` or
  torch's default generator, in the official order: the inner steps' noise, then per batch the
  teacher's action and the backbone's noise) and the reverse pass reuses it exactly. The official
  reverse pass draws new noise at every step instead, so its meta-gradient mixes two samples and
  is close to, not equal to, the gradient of the loss it computed (benchmarks/obd_compat.py
  measures the cosine).

``backbone`` is only read: it keeps its initial parameters (the official code trains it in place;
nothing reads it afterwards). Tensors keep the backbone's dtype (float32 or float64); batches are
converted to it and moved to ``self.device``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from .. import checks, ops
from ..functional import batch_mean_weights, draw_noise, sgd_hyperparameters
from ..module_spec import module_layout

HEAD_OF_POLICY_TYPE = {"gaussian": "gaussian", "deterministic": "tanh"}
OBJECTIVES = ("offline_data", "offline_policy")


@dataclass(frozen=True)
class Options:
    precision: str = "native"
    backend: str = "auto"
    checkpoint_every: Optional[int] = None
    generator: Optional[torch.Generator] = None


@dataclass(frozen=True)
class BPTTConfig:
    """The fields of the official config that the inner loop reads."""

    inner_steps: int
    test_batch_num: int
    lr: float
    momentum: float
    match_objective: str
    q_weight: bool
    beta_weight: float


def make_inner_loop(*, precision: str = "native", backend: str = "auto", checkpoint_every: Optional[int] = None,
                    generator: Optional[torch.Generator] = None):
    """An ``inner_loop`` method with these options: ``precision="bf16"`` (float32 backbones, fused
    backend) runs the matrix products in bfloat16; ``backend``, ``checkpoint_every`` as
    :func:`obd_fast.unroll_bc`; ``generator`` draws the noise (default: torch's default generator)."""
    checks.check_precision(precision)
    checks.check_backend(backend)
    if generator is not None and not isinstance(generator, torch.Generator):
        raise ValueError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
    options = Options(precision, backend, checkpoint_every, generator)

    def inner_loop(self, backbone, backbone_opt, test_dataloader):
        return run_inner_loop(self, backbone, backbone_opt, test_dataloader, options)

    inner_loop.__doc__ = f"SynSetBPTT.inner_loop on obd_fast's fused meta-gradient ({options})."
    return inner_loop


def run_inner_loop(synset_bptt, backbone, backbone_opt, test_dataloader, options: Options = Options()):
    """(loss, (d_obs, d_act), dL_dw) of the official ``inner_loop``; see the module's docstring."""
    cfg = read_config(synset_bptt.config)
    layout = module_layout(backbone)
    spec = layout.spec
    policy_type = synset_bptt.policy_type
    if policy_type not in HEAD_OF_POLICY_TYPE:
        raise ValueError(f"policy_type must be one of {tuple(HEAD_OF_POLICY_TYPE)}, got {policy_type!r}")
    if spec.head != HEAD_OF_POLICY_TYPE[policy_type]:
        raise ValueError(f"policy_type is {policy_type!r} but the backbone maps to {spec} "
                         f"(the {HEAD_OF_POLICY_TYPE[policy_type]!r} head was expected)")
    lr, momentum, weight_decay = sgd_hyperparameters(backbone_opt, backbone)
    if (lr, momentum) != (cfg.lr, cfg.momentum):
        raise ValueError(f"backbone_opt has lr={lr}, momentum={momentum} but config.bptt_optim has lr={cfg.lr}, "
                         f"momentum={cfg.momentum}; the official code trains with the first and differentiates "
                         "with the second, so they must agree")
    theta0 = layout.flatten(backbone).detach()
    device = torch.device(synset_bptt.device)
    syn_obs = synset_bptt.synset.observations.weight.detach().to(device)
    syn_act = synset_bptt.synset.actions.weight.detach().to(device)
    for name, t in (("synset.observations.weight", syn_obs), ("synset.actions.weight", syn_act)):
        if t.dtype != theta0.dtype or t.device != theta0.device:
            raise ValueError(f"{name} is {t.dtype} on {t.device} but the backbone is {theta0.dtype} on "
                             f"{theta0.device}; they must match")
    inner_noise = None
    if spec.head == "gaussian":
        inner_noise = draw_noise((cfg.inner_steps, syn_obs.shape[0], spec.act_dim), options.generator, theta0)
    obs, target, weight, outer_noise = outer_rows(synset_bptt, cfg, test_dataloader, spec, theta0, options.generator)

    synset_bptt.synset.zero_grad()  # as the official inner_loop leaves them
    loss, d_obs, d_act, d_theta0 = ops.meta_gradient(
        theta0, syn_obs, syn_act, spec, obs, target, weight, steps=cfg.inner_steps, lr=lr, momentum=momentum,
        weight_decay=weight_decay, inner_noise=inner_noise, outer_noise=outer_noise, backend=options.backend,
        checkpoint_every=options.checkpoint_every, precision=options.precision, return_theta0_grad=True)
    dL_dw = tuple(layout.views(d_theta0, backbone).values())
    return loss, (d_obs, d_act), dL_dw


def outer_rows(synset_bptt, cfg: BPTTConfig, test_dataloader, spec, like: torch.Tensor,
               generator: Optional[torch.Generator]):
    """The first ``test_batch_num`` batches as one weighted BC problem: (obs, target, weight, noise)
    whose weighted loss is the official sum of per-batch losses divided by ``test_batch_num``."""
    obs_rows, targets, q_weights, noises, sizes = [], [], [], [], []
    for i, batch in enumerate(test_dataloader):
        if i == cfg.test_batch_num:
            break
        obs = as_rows(batch, "obs", like)
        if cfg.match_objective == "offline_data":
            target = as_rows(batch, "acts", like)
        else:
            with torch.no_grad():
                target = synset_bptt._get_pred_acts(synset_bptt.policy_type, synset_bptt.offline_policy, obs)
                target = target.detach().to(like.dtype)
                if cfg.q_weight:
                    q = synset_bptt.offline_critic(obs, target).detach().to(like.dtype).reshape(-1)
                    if q.numel() != obs.shape[0]:
                        raise ValueError(f"offline_critic gave {q.numel()} values for a batch of {obs.shape[0]}")
                    q_weights.append(cfg.beta_weight * q)
        if spec.head == "gaussian":
            noises.append(draw_noise((obs.shape[0], spec.act_dim), generator, like))
        obs_rows.append(obs)
        targets.append(target)
        sizes.append(obs.shape[0])
    if not sizes:
        raise ValueError("test_dataloader gave no batches")
    weight = batch_mean_weights(sizes, cfg.test_batch_num, dtype=like.dtype, device=like.device)
    if q_weights:
        weight = weight * torch.cat(q_weights)
    if torch.equal(weight, torch.ones_like(weight)):
        weight = None  # equal batches, no Q-weights: the plain mean
    noise = torch.cat(noises) if noises else None
    return torch.cat(obs_rows), torch.cat(targets), weight, noise


def as_rows(batch, key: str, like: torch.Tensor) -> torch.Tensor:
    if key not in batch:
        raise ValueError(f"a test_dataloader batch has no {key!r} entry (the official batches hold 'obs' and 'acts')")
    t = torch.as_tensor(batch[key]).to(dtype=like.dtype, device=like.device)
    if t.dim() != 2:
        raise ValueError(f"batch[{key!r}] must be a (batch, dim) array, got shape {tuple(t.shape)}")
    return t


def read_config(config) -> BPTTConfig:
    """The official config's fields, each checked; a missing or bad one is a ValueError naming it."""
    objective = _field(config, "match_objective")
    if objective not in OBJECTIVES:
        raise ValueError(f"config.match_objective must be one of {OBJECTIVES}, got {objective!r}")
    q_weight = objective == "offline_policy" and bool(getattr(config, "q_weight", False))
    return BPTTConfig(
        inner_steps=_positive_int(config, "bptt.inner_steps"),
        test_batch_num=_positive_int(config, "bptt.test_batch_num"),
        lr=float(_field(config, "bptt_optim.lr")),
        momentum=float(_field(config, "bptt_optim.momentum")),
        match_objective=objective,
        q_weight=q_weight,
        beta_weight=float(_field(config, "beta_weight")) if q_weight else 0.0,
    )


def _field(config, path: str):
    value = config
    for part in path.split("."):
        if not hasattr(value, part):
            raise ValueError(f"config.{path} is missing (the official SynSetBPTT config has it)")
        value = getattr(value, part)
    return value


def _positive_int(config, path: str) -> int:
    value = _field(config, path)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"config.{path} must be an int >= 1, got {value!r}")
    return value


inner_loop = make_inner_loop()
