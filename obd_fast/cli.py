"""The ``obd-fast`` command line.

Bad arguments and bad inputs (missing or corrupt files, unknown datasets, teachers that do not
fit) end with exit code 2 and one line on stderr, ``obd-fast: error: ...`` (``--debug`` shows the
traceback instead).
"""
from __future__ import annotations

import argparse
import json
import sys

from .checks import PRECISIONS
from .options import POS, add_options, given_options, positive_float, widths

EXAMPLES = """examples:
  obd-fast demo                         DBC, PBC and Av-PBC on the bundled hopper data (<= 15 min on a CPU)
  obd-fast demo --quick                 the same pipeline on a tiny budget (< 1 min)
  obd-fast make-dataset --out runs/data/hopper
  obd-fast train-teacher --data bundled:hopper-medium --algo calql --steps 200000 --out runs/teacher
  obd-fast distill --data bundled:hopper-medium --teacher runs/teacher/teacher.pt \\
                   --objective av-pbc --steps 20000 --out runs/avpbc
  obd-fast distill ... --out runs/avpbc --resume      continue an interrupted run (same result)
  obd-fast evaluate --synset runs/avpbc/synset.pt --episodes 10 --policies 5
  obd-fast evaluate --synset runs/avpbc/synset.pt --arch all --optimizer all
  obd-fast evaluate --synset runs/avpbc/synset.pt --ensemble 10 --baselines all
  obd-fast bench --precision bf16        fused vs reference meta-gradient, one outer step
  obd-fast info                         version, backends, bundled files
"""


class UsageError(Exception):
    """A problem with what the user asked for: reported in one line, exit code 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse's own errors: one line, exit code 2
        self.exit(2, f"{_program(self.prog)}: error: {message}\n")


def _program(prog: str) -> str:
    """``obd-fast`` for its subcommands' parsers (``obd-fast distill``), else the name as given."""
    return "obd-fast" if prog.startswith("obd-fast") else prog


def _global_options(p) -> None:
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    p.add_argument("--threads", type=POS, default=None,
                   help="torch CPU threads (when not given: torch's choice; 1 is faster on a machine busy "
                        "with other work)")


# ------------------------------------------------------------------------------- the commands' options
# Settings that have a dataclass take their flags, defaults, choices and help from it
# (obd_fast.options); the rest are the command's own inputs and outputs.
def _demo_options(d) -> None:
    from .demo import DemoConfig

    add_options(d, DemoConfig)


def _make_dataset_options(m) -> None:
    from .data.recipe import RecipeConfig

    m.add_argument("--out", required=True, help="run directory (checkpoint, datasets, summary)")
    add_options(m, RecipeConfig)
    m.add_argument("--resume", action="store_true", help="continue the run saved in --out")
    m.add_argument("--bundle", metavar="DIR", nargs="?", const="", default=None,
                   help="also copy the medium set with a README into DIR (default: the package's "
                        "bundled/<task>-medium)")
    m.add_argument("--no-progress", action="store_true")


def _train_teacher_options(t) -> None:
    from .teacher.train import TeacherRunConfig

    t.add_argument("--data", required=True, help="dataset: bundled:NAME, a Minari id or directory, .hdf5/.npz")
    t.add_argument("--out", required=True, help="run directory (checkpoint.pt, teacher.pt, log.csv, ...)")
    add_options(t, TeacherRunConfig)
    t.add_argument("--resume", action="store_true", help="continue the run saved in --out")
    t.add_argument("--actor-hidden", type=widths, default=None, help="actor widths, e.g. 256,256,256 (default: CORL's)")
    t.add_argument("--critic-hidden", type=widths, default=None, help="critic widths, e.g. 256,256 (default: CORL's)")
    t.add_argument("--env", "--env-id", dest="env", default=None,
                   help="environment id when the dataset does not name one")
    t.add_argument("--no-progress", action="store_true")


def _distill_options(s) -> None:
    from .distill import DistillConfig

    s.add_argument("--data", required=True, help="dataset: bundled:NAME, a Minari id or directory, .hdf5/.npz")
    s.add_argument("--teacher", default=None, help="teacher checkpoint (needed for pbc, av-pbc and --init top-q)")
    s.add_argument("--out", required=True, help="run directory (synset.pt, state.pt, log.csv, learning_curve.png)")
    s.add_argument("--resume", action="store_true", help="continue the run saved in --out")
    add_options(s, DistillConfig,
                default_text={"steps": "the paper's: 20k Av-PBC / 50k DBC, PBC on hopper; more elsewhere"})
    s.add_argument("--env", default=None, help="environment id when the dataset does not name one")
    s.add_argument("--no-progress", action="store_true")


def _evaluate_options(e) -> None:
    from .evaluate import ARCHS, BASELINES, OPTIMIZERS

    e.add_argument("--synset", required=True, help="a synset.pt written by distill")
    e.add_argument("--episodes", type=POS, default=10)
    e.add_argument("--policies", type=POS, default=5, help="independently trained policies (or ensembles)")
    e.add_argument("--ensemble", type=POS, default=1, help="average the actions of K BC policies (paper: 10)")
    e.add_argument("--arch", default=None,
                   help=f"comma list of {','.join(ARCHS)} or 'all' (default: the distillation architecture)")
    e.add_argument("--optimizer", default="sgd", help=f"comma list of {','.join(OPTIMIZERS)} or 'all'")
    e.add_argument("--bc-steps", type=POS, default=None, help="BC steps on the set (default: the inner steps, 100)")
    e.add_argument("--lr", type=positive_float, default=None, help="BC learning rate (default per optimizer)")
    e.add_argument("--baselines", default=None, help=f"comma list of {','.join(BASELINES)} or 'all'")
    e.add_argument("--data", default=None, help="dataset for the baselines (default: the one the set came from)")
    e.add_argument("--teacher", default=None, help="teacher for the baselines (default: the set's)")
    e.add_argument("--env", default=None, help="environment id (default: the set's)")
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--json", default=None, help="also write the results to this JSON file")


def _bench_options(b) -> None:
    b.add_argument("--n-syn", type=POS, default=256)
    b.add_argument("--inner-steps", type=POS, default=100)
    b.add_argument("--batch", type=POS, default=2560, help="real states in the outer loss")
    b.add_argument("--hidden", type=widths, default=(256, 256, 256))
    b.add_argument("--obs-dim", type=POS, default=11)
    b.add_argument("--act-dim", type=POS, default=3)
    b.add_argument("--repeats", type=POS, default=2)
    b.add_argument("--precision", choices=PRECISIONS, default="native", help="of the fused run")
    b.add_argument("--device", default="cpu")


# ------------------------------------------------------------------------------- helpers
def _load_data(source: str, env: str | None = None):
    from .data import load_dataset

    return load_dataset(source, env_id=env)


def _load_teacher(path: str, data=None, env=None):
    try:
        from .teacher import load_teacher
    except ImportError as exc:
        raise UsageError(f"loading teachers needs obd_fast.teacher.load_teacher, unavailable here ({exc})") from None
    from pathlib import Path

    if not Path(path).exists():
        raise UsageError(f"teacher checkpoint {path!r} does not exist")
    return load_teacher(path, obs_norm=None if data is None else data.normalizer,
                        env=env or (None if data is None else data.env_id))


def _choices(text, allowed, what):
    if text is None:
        return None
    items = list(allowed) if text == "all" else [t.strip() for t in text.split(",") if t.strip()]
    bad = [t for t in items if t not in allowed]
    if bad or not items:
        raise UsageError(f"unknown {what} {','.join(bad) or repr(text)}; choose from {','.join(allowed)} or 'all'")
    return items


def paper_steps(objective: str, env_id: str | None) -> int:
    """The paper's distillation steps: Av-PBC 20k (hopper) / 50k; DBC, PBC 50k (hopper) / 200k."""
    hopper = env_id is not None and "hopper" in env_id.lower()
    if objective == "av-pbc":
        return 20_000 if hopper else 50_000
    return 50_000 if hopper else 200_000


def _fmt(res: dict) -> str:
    return f"{res['mean']:.1f} +- {res['std']:.1f}"


# ------------------------------------------------------------------------------- commands
def cmd_demo(args) -> int:
    from .demo import DemoConfig, run_demo

    run_demo(DemoConfig(**given_options(args, DemoConfig), threads=args.threads))
    return 0


def cmd_make_dataset(args) -> int:
    from pathlib import Path

    from .data.loaders import BUNDLED_ROOT
    from .data.recipe import RecipeConfig, make_dataset, write_bundle
    from .data.scores import task_name

    cfg = RecipeConfig(**given_options(args, RecipeConfig))
    summary = make_dataset(args.out, cfg, resume=args.resume, progress=not args.no_progress)
    print(json.dumps(summary["datasets"], indent=1))
    if args.bundle is not None:
        dest = Path(args.bundle) if args.bundle else BUNDLED_ROOT / f"{task_name(cfg.env_id)}-medium"
        print(f"bundled: {write_bundle(args.out, dest)}")
    return 0


def cmd_train_teacher(args) -> int:
    from pathlib import Path

    from .teacher.train import TeacherRunConfig, train_teacher

    data = _load_data(args.data, args.env)
    config = {k: getattr(args, k) for k in ("actor_hidden", "critic_hidden") if getattr(args, k) is not None}
    summary = train_teacher(data, out_dir=args.out, resume=args.resume, env_id=args.env or data.env_id,
                            progress=not args.no_progress, config=config or None, threads=args.threads,
                            **given_options(args, TeacherRunConfig))
    final = summary["final_evaluation"]
    flat = {k: v for k, v in summary.items() if not isinstance(v, (list, dict))}
    print(json.dumps(dict(flat, teacher=str(Path(args.out) / summary["teacher"]),
                          normalized_score=None if final is None else final["normalized_score"]),
                     indent=1, default=str))
    return 0


def cmd_distill(args) -> int:
    from .distill import DistillConfig, distill
    from .objectives import OBJECTIVES

    data = _load_data(args.data, args.env)
    if args.env:
        data.env_id = args.env
    given = given_options(args, DistillConfig)
    cfg = DistillConfig(**given)
    if "steps" not in given:
        cfg.steps = paper_steps(cfg.objective, data.env_id)
    teacher = None
    if args.teacher:
        teacher = _load_teacher(args.teacher, data, args.env)
    elif OBJECTIVES[cfg.objective].needs_teacher or cfg.init == "top-q":
        raise UsageError(f"--objective {cfg.objective}" + (" --init top-q" if cfg.init == "top-q" else "")
                         + " needs --teacher PATH")
    syn = distill(data, teacher, config=cfg, out_dir=args.out, resume=args.resume, progress=not args.no_progress,
                  data_source=args.data, teacher_path=args.teacher)
    last = syn.history[-1] if syn.history else {}
    score = f", normalized return {last['score_mean']:.1f} +- {last['score_std']:.1f}" if "score_mean" in last else ""
    print(f"synthetic set: {args.out}/synset.pt ({len(syn)} pairs, step {syn.step}{score})")
    return 0


def cmd_evaluate(args) -> int:
    from .evaluate import ARCHS, BASELINES, OPTIMIZERS, cross_evaluate, run_baselines
    from .synset import SyntheticSet

    archs = _choices(args.arch, ARCHS, "architecture") or [None]
    optimizers = _choices(args.optimizer, OPTIMIZERS, "optimizer")
    baselines = _choices(args.baselines, BASELINES, "baseline") or []
    syn = SyntheticSet.load(args.synset)
    env = args.env or syn.env_id
    if not env:
        raise UsageError("the synthetic set names no environment: pass --env ENV_ID")
    results = cross_evaluate(syn, archs=archs, optimizers=optimizers, env_id=env, episodes=args.episodes,
                             policies=args.policies, ensemble=args.ensemble, steps=args.bc_steps, lr=args.lr,
                             seed=args.seed)
    rows = [(f"synthetic set ({k}{', ensemble of %d' % args.ensemble if args.ensemble > 1 else ''})", r)
            for k, r in results.items()]
    if baselines:
        data = teacher = None
        if {"random", "bc"} & set(baselines):
            source = args.data or syn.data_source
            if not source:
                raise UsageError("the random/bc baselines need the dataset: pass --data SOURCE")
            data = _load_data(source, env)
        if "teacher" in baselines:
            path = args.teacher or syn.teacher_path
            if not path:
                raise UsageError("the teacher baseline needs --teacher PATH")
            teacher = _load_teacher(path, data, env)
        base = run_baselines(data, teacher, env, which=baselines, episodes=args.episodes, policies=args.policies,
                             n=len(syn), seed=args.seed, spec=syn.spec, normalizer=syn.normalizer,
                             ensemble=args.ensemble)
        ens = f", ensemble of {args.ensemble}" if args.ensemble > 1 else ""
        labels = {"random": f"random selection ({len(syn)} real pairs{ens})", "bc": "BC on the whole dataset",
                  "teacher": "teacher"}
        rows += [(labels[k], r) for k, r in base.items()]
        results.update({f"baseline/{k}": r for k, r in base.items()})
    print(f"{args.synset}: {len(syn)} pairs, objective {syn.objective}, step {syn.step}, env {env}; "
          f"{args.episodes} episodes x {args.policies} policies")
    print("| evaluation | normalized return (mean +- std) | per policy |")
    print("|---|---|---|")
    for label, r in rows:
        print(f"| {label} | {_fmt(r)} | {', '.join(f'{v:.1f}' for v in r['per_policy'])} |")
    if args.json:
        from .atomic import atomic_write_text

        atomic_write_text(args.json, json.dumps(results, indent=1))
    return 0


def cmd_bench(args) -> int:
    import time

    import torch

    from . import ops
    from ._extension import available
    from .policy import PolicySpec

    if not available():
        raise UsageError("the compiled extension is not loaded: nothing fused to time (see `obd-fast info`)")
    device = torch.device(args.device)
    spec = PolicySpec(args.obs_dim, args.act_dim, tuple(args.hidden))
    g = torch.Generator().manual_seed(0)
    theta0 = spec.init_params(generator=g).to(device)
    S = torch.randn(args.n_syn, spec.obs_dim, generator=g).to(device)
    A = (0.9 * (2 * torch.rand(args.n_syn, spec.act_dim, generator=g) - 1)).to(device)
    x = torch.randn(args.batch, spec.obs_dim, generator=g).to(device)
    y = (0.9 * (2 * torch.rand(args.batch, spec.act_dim, generator=g) - 1)).to(device)
    w = (torch.rand(args.batch, generator=g) + 0.5).to(device)
    inner = torch.randn(args.inner_steps, args.n_syn, spec.act_dim, generator=g).to(device)
    outer = torch.randn(args.batch, spec.act_dim, generator=g).to(device)

    def run(backend, precision):
        return ops.meta_gradient(theta0, S, A, spec, x, y, w, steps=args.inner_steps, lr=0.1, inner_noise=inner,
                                 outer_noise=outer, backend=backend, precision=precision)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    times, outs = {}, {}
    for name, backend, precision in (("reference", "reference", "native"), ("fused", "fused", args.precision)):
        outs[name] = run(backend, precision)  # warm-up
        best = float("inf")
        for _ in range(args.repeats):
            sync()
            t0 = time.perf_counter()
            run(backend, precision)
            sync()
            best = min(best, time.perf_counter() - t0)
        times[name] = best
    err = max(float((f - r).norm() / r.norm()) for f, r in zip(outs["fused"][1:], outs["reference"][1:]))
    print(f"one outer step: N={args.n_syn}, T={args.inner_steps}, batch {args.batch}, policy {spec.widths}, "
          f"{device}, {torch.get_num_threads()} threads (best of {args.repeats})")
    print(f"  reference (autograd, paper's algorithm): {times['reference']:.3f} s")
    print(f"  fused ({args.precision}): {times['fused']:.3f} s")
    print(f"  ratio reference/fused: {times['reference'] / times['fused']:.2f}x "
          f"(meta-gradient relative difference {err:.1e})")
    return 0


def cmd_info(args) -> int:
    import torch

    import obd_fast

    from .data import available_bundled
    from .demo import BUNDLED_TEACHER

    print(f"obd-fast {obd_fast.__version__}, torch {torch.__version__}, extension: {obd_fast.build_info()}, "
          f"CUDA device: {torch.cuda.get_device_name() if torch.cuda.is_available() else 'none'}")
    print(f"bundled datasets: {', '.join(available_bundled()) or 'none'}; bundled hopper-medium teacher: "
          f"{'yes' if BUNDLED_TEACHER.is_file() else 'no'}")
    return 0


# name: (help, options, run); build_parser makes one subcommand of each
COMMANDS = {
    "demo": ("DBC/PBC/Av-PBC on the bundled hopper data and teacher, with a table", _demo_options, cmd_demo),
    "make-dataset": ("make a D4RL-style medium dataset with online SAC (the recipe)", _make_dataset_options,
                     cmd_make_dataset),
    "train-teacher": ("train a Cal-QL or TD3+BC teacher on a dataset", _train_teacher_options, cmd_train_teacher),
    "distill": ("distill a dataset into a synthetic set (DBC, PBC, Av-PBC or a registered objective)",
                _distill_options, cmd_distill),
    "evaluate": ("BC on a synthetic set, rollouts, D4RL normalized returns", _evaluate_options, cmd_evaluate),
    "bench": ("time one outer step: fused vs reference meta_gradient", _bench_options, cmd_bench),
    "info": ("print the version, the available backends and the bundled files", None, cmd_info),
}
_FORMAT = dict(formatter_class=argparse.ArgumentDefaultsHelpFormatter)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="obd-fast", description="Fast offline behavior distillation (OBD).", epilog=EXAMPLES,
                formatter_class=argparse.RawDescriptionHelpFormatter)
    _global_options(p)
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    for name, (text, options, _) in COMMANDS.items():
        sp = sub.add_parser(name, help=text, description=text, **_FORMAT)
        if options is not None:
            options(sp)
    return p


def build_command_parser(command: str, prog: str) -> argparse.ArgumentParser:
    """One command's parser on its own (with --debug and --threads), for ``python -m`` entry points."""
    text, options, _ = COMMANDS[command]
    p = _Parser(prog=prog, description=text, **_FORMAT)
    _global_options(p)
    options(p)
    p.set_defaults(command=command)
    return p


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    if isinstance(exc, KeyError) and text.startswith("'") and text.endswith("'"):
        text = text[1:-1]
    return text


def main(argv=None, command: str | None = None, prog: str | None = None) -> int:
    """Run ``obd-fast ARGV``; with ``command``, run that command alone (``argv`` holds its options)
    under the program name ``prog``."""
    parser = build_parser() if command is None else build_command_parser(command, prog or f"obd-fast {command}")
    args = parser.parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    try:
        return COMMANDS[args.command][2](args)
    except (UsageError, ValueError, FileNotFoundError, FloatingPointError) as exc:  # incl. NonFiniteError
        if args.debug:
            raise
        print(f"{_program(parser.prog)}: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{_program(parser.prog)}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
