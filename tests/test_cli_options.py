"""One command line built from the settings dataclasses: every option field is a flag whose value
reaches the dataclass, defaults come from the dataclass alone, and every flag the commands and
the modules' own entry points (python -m obd_fast.teacher.train / obd_fast.data.recipe) took
before still parses to the same setting."""
import dataclasses

import pytest

from obd_fast import cli
from obd_fast.data.recipe import RecipeConfig
from obd_fast.demo import DemoConfig
from obd_fast.distill import DistillConfig, DistillSettings, RunControl
from obd_fast.options import cli_fields, given_options
from obd_fast.teacher.train import TeacherRunConfig

REQUIRED = {"distill": ["--data", "d", "--out", "o"], "train-teacher": ["--data", "d", "--out", "o"],
            "make-dataset": ["--out", "o"], "demo": []}
CONFIGS = {"distill": DistillConfig, "train-teacher": TeacherRunConfig, "make-dataset": RecipeConfig,
           "demo": DemoConfig}


def parse(command, *argv):
    return cli.build_parser().parse_args([command, *REQUIRED[command], *argv])


@pytest.mark.parametrize("command", sorted(CONFIGS))
def test_nothing_given_means_the_dataclass_defaults(command):
    cls = CONFIGS[command]
    assert given_options(parse(command), cls) == {}
    help_text = cli.build_parser()._subparsers._group_actions[0].choices[command].format_help()
    for f in cli_fields(cls):
        if not isinstance(f.default, bool) and not (command == "distill" and f.name == "steps"):
            shown = ",".join(map(str, f.default)) if isinstance(f.default, tuple) else str(f.default)
            assert f"(default:{shown})".replace(" ", "") in "".join(help_text.split()), (f.name, shown)


def test_settings_split_covers_the_config_once():
    names = [f.name for f in dataclasses.fields(DistillConfig)]
    algo = {f.name for f in dataclasses.fields(DistillSettings)}
    run = {f.name for f in dataclasses.fields(RunControl)}
    assert not algo & run and set(names) == algo | run and len(names) == len(set(names))
    assert {"objective", "n_syn", "seed", "hidden", "outer_lr", "clip_norm"} <= algo
    assert {"steps", "device", "precision", "backend", "max_seconds", "eval_every"} <= run


def test_every_distill_field_is_a_flag_that_reaches_the_config():
    values = {"objective": ("--objective", "dbc", "dbc"), "n_syn": ("--n-syn", "7", 7),
              "init": ("--init", "kmeans++", "kmeans++"), "inner_steps": ("--inner-steps", "3", 3),
              "inner_lr": ("--inner-lr", "0.2", 0.2), "inner_momentum": ("--inner-momentum", "0.5", 0.5),
              "real_batches": ("--real-batches", "2", 2), "real_batch_size": ("--real-batch-size", "8", 8),
              "beta": ("--beta", "0.1", 0.1), "outer_lr": ("--outer-lr", "0.3", 0.3),
              "outer_momentum": ("--outer-momentum", "0.5", 0.5), "clip_norm": ("--clip-norm", "0", 0.0),
              "hidden": ("--hidden", "4,5", (4, 5)), "head": ("--head", "tanh", "tanh"),
              "teacher_sample": ("--no-teacher-sample", None, False), "seed": ("--seed", "9", 9),
              "init_pool": ("--init-pool", "11", 11), "steps": ("--steps", "12", 12),
              "backend": ("--backend", "reference", "reference"), "precision": ("--precision", "bf16", "bf16"),
              "checkpoint_every": ("--checkpoint-every", "3", 3), "device": ("--device", "meta", "meta"),
              "cuda_graph": ("--no-cuda-graph", None, False),
              "max_nonfinite_in_a_row": ("--max-nonfinite-in-a-row", "2", 2),
              "eval_every": ("--eval-every", "0", 0), "final_eval": ("--no-final-eval", None, False),
              "eval_episodes": ("--eval-episodes", "0", 0), "eval_policies": ("--eval-policies", "2", 2),
              "eval_batch": ("--eval-batch", "5", 5), "save_every": ("--save-every", "4", 4),
              "max_seconds": ("--max-minutes", "2", 120.0), "plot": ("--no-plot", None, False)}
    assert set(values) == {f.name for f in cli_fields(DistillConfig)}
    argv = [a for flag, text, _ in values.values() for a in ((flag,) if text is None else (flag, text))]
    cfg = DistillConfig(**given_options(parse("distill", *argv), DistillConfig))
    assert {name: getattr(cfg, name) for name in values} == {name: v[2] for name, v in values.items()}


def test_the_flags_the_commands_took_before_still_parse():
    a = parse("distill", "--teacher", "t.pt", "--objective", "pbc", "--steps", "5", "--resume", "--seed", "2",
              "--eval-every", "3", "--eval-episodes", "0", "--eval-policies", "2", "--save-every", "4", "--init",
              "top-q", "--n-syn", "6", "--inner-steps", "7", "--hidden", "8,8", "--precision", "tf32", "--backend",
              "fused", "--checkpoint-every", "2", "--device", "cpu", "--no-cuda-graph", "--max-minutes", "0.5",
              "--env", "Hopper-v5", "--no-progress")
    assert (a.teacher, a.resume, a.env, a.no_progress) == ("t.pt", True, "Hopper-v5", True)
    assert given_options(a, DistillConfig) == dict(
        objective="pbc", steps=5, seed=2, eval_every=3, eval_episodes=0, eval_policies=2, save_every=4, init="top-q",
        n_syn=6, inner_steps=7, hidden=(8, 8), precision="tf32", backend="fused", checkpoint_every=2, device="cpu",
        cuda_graph=False, max_seconds=30.0)

    t = parse("train-teacher", "--algo", "td3bc", "--steps", "5", "--seed", "1", "--resume", "--eval-every", "0",
              "--eval-episodes", "2", "--env", "Hopper-v5", "--device", "cpu", "--no-progress")
    assert given_options(t, TeacherRunConfig) == dict(algo="td3bc", steps=5, seed=1, eval_every=0, eval_episodes=2,
                                                      device="cpu")
    assert (t.env, t.resume, t.no_progress) == ("Hopper-v5", True, True)

    m = parse("make-dataset", "--env", "Walker2d-v5", "--seed", "3", "--target-score", "40", "--transitions", "10",
              "--max-env-steps", "20", "--resume", "--no-progress")
    assert RecipeConfig(**given_options(m, RecipeConfig)) == RecipeConfig(
        env_id="Walker2d-v5", seed=3, target_score=40.0, medium_transitions=10, max_env_steps=20)

    d = parse("demo", "--quick", "--out", "x", "--outer-steps", "2", "--max-minutes", "1.5", "--episodes", "3",
              "--policies", "2", "--precision", "native", "--seed", "4", "--data", "d.npz", "--teacher", "t.pt",
              "--device", "cpu", "--no-progress")
    assert DemoConfig(**given_options(d, DemoConfig)) == DemoConfig(
        quick=True, out_dir="x", outer_steps=2, max_minutes=1.5, episodes=3, policies=2, precision="native", seed=4,
        data="d.npz", teacher="t.pt", device="cpu", progress=False)


def test_the_modules_entry_points_are_the_same_commands():
    t = cli.build_command_parser("train-teacher", "python -m obd_fast.teacher.train").parse_args(
        ["--data", "d", "--algo", "td3bc", "--steps", "6", "--out", "o", "--seed", "1", "--resume", "--eval-every",
         "0", "--eval-episodes", "2", "--env-id", "Hopper-v5", "--batch-size", "8", "--device", "cpu", "--threads",
         "1", "--checkpoint-every", "3", "--log-every", "2", "--actor-hidden", "8,8", "--critic-hidden", "4,4",
         "--no-progress"])
    assert t.command == "train-teacher" and t.threads == 1 and t.env == "Hopper-v5"
    assert (t.actor_hidden, t.critic_hidden) == ((8, 8), (4, 4))
    assert given_options(t, TeacherRunConfig) == dict(algo="td3bc", steps=6, seed=1, eval_every=0, eval_episodes=2,
                                                      batch_size=8, device="cpu", checkpoint_every=3, log_every=2)
    r = cli.build_command_parser("make-dataset", "python -m obd_fast.data.recipe").parse_args(
        ["--out", "o", "--env", "Hopper-v5", "--seed", "2", "--target-score", "30", "--transitions", "50", "--resume",
         "--bundle"])
    assert r.command == "make-dataset" and r.bundle == "" and r.resume
    assert given_options(r, RecipeConfig) == dict(env_id="Hopper-v5", seed=2, target_score=30.0,
                                                  medium_transitions=50)


def test_a_module_entry_point_reports_errors_in_one_line(tmp_path, capsys):
    from obd_fast.data import recipe

    assert recipe.main(["--out", str(tmp_path / "m"), "--env", "CartPole-v1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("python -m obd_fast.data.recipe: error: ") and "CartPole-v1" in err[0]
