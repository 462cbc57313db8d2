"""obd-fast: offline behavior distillation with fused CPU/CUDA meta-gradients.

The core (the public contract of ``docs/design.md``): a policy is a flat parameter vector laid out
by a :class:`PolicySpec`; :func:`unroll_bc` trains it by SGD on synthetic pairs and is
differentiable through every step; :func:`weighted_bc_loss` is the outer objective;
:func:`meta_gradient` does both at once. Other OBD code brings its own ``nn.Module`` policy:
:meth:`PolicySpec.from_module` reads its spec, :func:`unroll_module` unrolls it,
:mod:`obd_fast.compat.obd` replaces the official OBD code's inner loop.

The pipeline on top: :func:`distill` / :class:`Distiller` (an :class:`Objective` such as DBC, PBC
or Av-PBC, with the paper's :class:`DistillConfig`) produce a :class:`SyntheticSet`;
:mod:`obd_fast.evaluate` trains policies on it by BC and rolls them out (:func:`evaluate_synset`,
:func:`train_bc`, baselines). ``docs/design.md`` describes the whole.
"""
from ._extension import available as fused_available, build_info, cached_tape_bytes, empty_cache
from .ops import meta_gradient, policy_forward, unroll_bc, weighted_bc_loss
from .policy import PolicyModule, PolicySpec
from .functional import UnrolledModule, batch_mean_weights, unroll_module
from .synset import SynsetError, SyntheticSet
from .objectives import Objective, register_objective
from .distill import DistillConfig, DistillSettings, Distiller, NonFiniteError, RunControl, distill
from . import compat, evaluate
from .evaluate import evaluate_synset, train_bc

__version__ = "0.1.0"

__all__ = [
    "PolicySpec", "PolicyModule", "unroll_bc", "weighted_bc_loss", "meta_gradient", "policy_forward",
    "unroll_module", "UnrolledModule", "batch_mean_weights",
    "fused_available", "build_info", "empty_cache", "cached_tape_bytes", "__version__",
    "SyntheticSet", "SynsetError", "DistillConfig", "DistillSettings", "RunControl", "Distiller", "NonFiniteError",
    "distill", "Objective", "register_objective",
    "evaluate", "evaluate_synset", "train_bc", "compat",
]
