"""The project's own D4RL-style datasets: train online SAC on a Gymnasium MuJoCo task until it
reaches about a third of expert return, then write

* ``medium``: rollouts of that policy (stochastic actions, as D4RL's medium sets), and
* ``medium-replay``: every transition of its replay buffer up to then,

as Minari datasets and as compressed ``.npz`` files with D4RL's keys (the bundled form).

Run ``obd-fast make-dataset --out DIR`` or :func:`make_dataset`. The run checkpoints atomically at
episode boundaries (agent, optimizers, replay buffer, every random generator), so a killed run
resumes where it stopped with ``--resume`` and gives the same result as an uninterrupted one.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import List, Optional

import numpy as np
import torch

from .. import plots
from ..atomic import atomic_torch_save, atomic_write, atomic_write_text
from ..options import NONNEG, POS, nonneg_float, option, positive_float, widths
from ..runs import Progress, RunDir, csv_text, generator_state, set_generator_state
from .errors import DatasetError
from .loaders import compact_next_observations
from .scores import normalized_score, reference_scores, task_name


EVAL_COLUMNS = ("env_steps", "return_mean", "normalized_score")


@dataclass
class RecipeConfig:
    """The recipe's settings; a resumed run must use the saved ones (all of them)."""

    env_id: str = option("Hopper-v5", "Gymnasium MuJoCo task", flag="--env")
    seed: int = option(0, type=int)
    target_score: float = option(33.3, "normalized return (0-100) that stops training; the behavior policy is the "
                                       "recent evaluated snapshot closest to it", type=positive_float)
    max_env_steps: int = option(400_000, "give up (with the last policy) after this many training steps", type=POS)
    start_steps: int = option(5_000, "uniform random actions first, as SAC usually does", type=NONNEG)
    eval_every: int = option(5_000, "env steps between evaluations of the stochastic policy", type=POS)
    # SAC on hopper can jump from a score of 24 to 73 within 1k steps: near the target, look closer
    fine_eval_every: int = option(250, "env steps between evaluations once one has passed fine_eval_from x the "
                                       "target", type=POS)
    fine_eval_from: float = option(0.5, type=nonneg_float)
    max_candidates: int = option(40, "evaluated snapshots kept near the target to choose the behavior policy from",
                                 type=POS)
    eval_episodes: int = option(10, type=POS)
    medium_transitions: int = option(100_000, "rows of the medium dataset (whole episodes of the frozen policy, at "
                                              "least this many)", flag="--transitions", type=POS)
    checkpoint_every: int = option(10_000, "env steps between resumable saves (taken at episode ends)", type=POS)
    batch_size: int = option(256, type=POS)
    hidden: tuple = option((256, 256), "hidden widths of the SAC networks", type=widths)
    threads: int = option(1, "torch threads; small nets gain little from more", cli=False)


class _Env:
    """A Gymnasium env whose episodes are seeded by episode number (so resuming needs no env state)."""

    def __init__(self, env_id: str, seed: int):
        import gymnasium as gym

        self.env = gym.make(env_id)
        self.seed = seed

    def reset(self, episode: int):
        obs, _ = self.env.reset(seed=self.seed * 1_000_003 + episode)
        return obs


def _evaluate(actor, env_id: str, episodes: int, seed: int, generator: torch.Generator) -> np.ndarray:
    """Returns of ``episodes`` episodes of the stochastic policy, stepped in lockstep (one batched call per step)."""
    from ..rollout import rollout_returns

    def policy(obs):
        return actor.sample(obs, deterministic=False, generator=generator)[0]

    return rollout_returns(policy, env_id, episodes=episodes, seed=seed * 1_000_003 + 7919)


def _near_target(cfg: RecipeConfig, score: float) -> bool:
    return score >= cfg.fine_eval_from * cfg.target_score


def _eval_interval(cfg: RecipeConfig, evals) -> int:
    return cfg.fine_eval_every if evals and _near_target(cfg, evals[-1][2]) else cfg.eval_every


def _choose_snapshot(candidates: List[dict], target: float) -> dict:
    """The evaluated snapshot whose score is closest to the target (the later one on a tie).

    A hopper policy's score can leap past the target between two evaluations (measured: 24 -> 73
    within 1k steps), so the first policy to reach the target may be far above it; the recipe keeps
    the recent snapshots near the target and freezes the closest instead.
    """
    return min(reversed(candidates), key=lambda c: abs(c["score"] - target))


def _rollout_episodes(actor, env_id: str, min_transitions: int, seed: int, generator, progress) -> List[dict]:
    """Whole episodes of the stochastic policy until at least ``min_transitions`` rows."""
    env = _Env(env_id, seed + 104729)
    episodes, rows, ep = [], 0, 0
    while rows < min_transitions:
        obs = env.reset(ep)
        o, a, r, term, trunc = [obs], [], [], [], []
        done = False
        while not done:
            action = actor.act(obs, deterministic=False, generator=generator)
            obs, reward, te, tr, _ = env.env.step(action)
            o.append(obs), a.append(action), r.append(reward), term.append(te), trunc.append(tr)
            done = te or tr
        episodes.append(dict(observations=np.asarray(o), actions=np.asarray(a, np.float32),
                             rewards=np.asarray(r), terminations=np.asarray(term), truncations=np.asarray(trunc)))
        rows += len(r)
        ep += 1
        progress.update(len(r))
    env.env.close()
    return episodes


def _episodes_from_replay(buf, episode_log) -> List[dict]:
    """Replay-buffer rows split into episodes with the recorded end flags."""
    episodes, start = [], 0
    for length, terminated in episode_log:
        end = start + length
        obs = np.concatenate([buf.observations[start:end], buf.next_observations[end - 1:end]]).astype(np.float64)
        term = np.zeros(length, bool)
        trunc = np.zeros(length, bool)
        term[-1], trunc[-1] = bool(terminated), not terminated
        episodes.append(dict(observations=obs, actions=buf.actions[start:end].copy(), rewards=buf.rewards[start:end].astype(np.float64),
                             terminations=term, truncations=trunc))
        start = end
    return episodes


def episodes_to_flat(episodes: List[dict]) -> dict:
    """Episodes to D4RL's flat keys (float32 like D4RL files), with next_observations."""
    cat = lambda key, sl: np.concatenate([ep[key][sl] for ep in episodes])  # noqa: E731
    return dict(observations=cat("observations", slice(None, -1)).astype(np.float32),
                next_observations=cat("observations", slice(1, None)).astype(np.float32),
                actions=cat("actions", slice(None)).astype(np.float32),
                rewards=cat("rewards", slice(None)).astype(np.float32),
                terminals=cat("terminations", slice(None)), timeouts=cat("truncations", slice(None)))


def write_minari(dataset_id: str, episodes: List[dict], env_id: str, root: Path, metadata: dict) -> Path:
    """Write a Minari dataset under ``root`` via a temporary root, so a crash leaves nothing half-written."""
    import gymnasium as gym
    import minari
    from minari.data_collector import EpisodeBuffer

    lo, hi = (metadata["ref_min_score"], metadata["ref_max_score"])
    buffers = [EpisodeBuffer(id=i, observations=ep["observations"], actions=ep["actions"], rewards=ep["rewards"],
                             terminations=ep["terminations"], truncations=ep["truncations"])
               for i, ep in enumerate(episodes)]
    root = Path(root).resolve()  # minari resolves a relative MINARI_DATASETS_PATH against itself
    final = root / dataset_id
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root, prefix=".writing-") as tmp:
        old = os.environ.get("MINARI_DATASETS_PATH")
        os.environ["MINARI_DATASETS_PATH"] = tmp
        try:
            import warnings

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # minari warns about unset author / permalink fields
                minari.create_dataset_from_buffers(
                    dataset_id, buffers, env=gym.make(env_id), algorithm_name="obd-fast SAC recipe",
                    ref_min_score=lo, ref_max_score=hi, description=metadata.get("description"))
        finally:
            if old is None:
                os.environ.pop("MINARI_DATASETS_PATH")
            else:
                os.environ["MINARI_DATASETS_PATH"] = old
        if final.exists():
            shutil.rmtree(final)
        final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(Path(tmp) / dataset_id, final)
    return final


def write_npz(path: Path, episodes: List[dict], env_id: str) -> Path:
    flat = episodes_to_flat(episodes)

    def write(tmp):
        with open(tmp, "wb") as f:  # a file object: given a path, numpy would append ".npz" to the temp name
            np.savez_compressed(f, env_id=np.asarray(env_id), **flat)

    return atomic_write(path, write)


def dataset_stats(episodes: List[dict], env_id: str) -> dict:
    returns = np.asarray([ep["rewards"].sum() for ep in episodes])
    lengths = np.asarray([len(ep["rewards"]) for ep in episodes])
    scores = normalized_score(env_id, returns)
    return dict(transitions=int(lengths.sum()), episodes=len(episodes),
                return_mean=float(returns.mean()), return_std=float(returns.std()),
                return_min=float(returns.min()), return_max=float(returns.max()),
                normalized_mean=float(np.mean(scores)), normalized_std=float(np.std(scores)),
                episode_length_mean=float(lengths.mean()),
                terminated_episodes=int(sum(bool(ep["terminations"][-1]) for ep in episodes)))


def make_dataset(out_dir, config: Optional[RecipeConfig] = None, resume: bool = False, progress: bool = True) -> dict:
    """Run the recipe into ``out_dir``; returns the summary (also ``out_dir/summary.json``)."""
    from ..rl import SAC, ReplayBuffer, SACConfig

    cfg = config or RecipeConfig()
    task = task_name(cfg.env_id)
    if task is None:
        raise DatasetError(f"make_dataset: {cfg.env_id!r} has no D4RL reference scores (hopper, halfcheetah, walker2d)")
    run = RunDir(out_dir, "checkpoint.pt", "a recipe run", DatasetError)
    resuming = run.check(resume)
    out = run.path
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(cfg.threads)

    env = _Env(cfg.env_id, cfg.seed)
    obs_dim = env.env.observation_space.shape[0]
    act_dim = env.env.action_space.shape[0]
    torch.manual_seed(cfg.seed)  # before the networks are made: the seed fixes their init too
    agent = SAC(obs_dim, act_dim, SACConfig(actor_hidden=cfg.hidden, critic_hidden=cfg.hidden, batch_size=cfg.batch_size))
    buf = ReplayBuffer(obs_dim, act_dim, cfg.max_env_steps + 1000, seed=cfg.seed)
    act_rng = np.random.default_rng(cfg.seed + 1)
    eval_gen = torch.Generator().manual_seed(cfg.seed + 2)
    state = dict(env_steps=0, episode=0, episode_log=[], evals=[], last_ckpt=0, frozen=False, elapsed_before=0.0,
                 candidates=[], chosen=None)

    if resuming:
        ck = run.load_state(weights_only=False)
        if ck["config"] != asdict(cfg):
            raise DatasetError(f"{run.state_path} was made with another configuration: {ck['config']}")
        agent.load_state_dict(ck["agent"])
        buf.load_state_dict(ck["replay"])
        torch.set_rng_state(ck["torch_rng"])
        set_generator_state(act_rng, ck["act_rng"])
        set_generator_state(eval_gen, ck["eval_rng"])
        state.update(ck["state"])

    bar = Progress(cfg.max_env_steps, state["env_steps"], "SAC", "step", progress,
                   elapsed_before=state["elapsed_before"])

    def save_checkpoint():
        state["elapsed_before"] = bar.elapsed()
        run.save_state(dict(config=asdict(cfg), agent=agent.state_dict(), replay=buf.state_dict(),
                            torch_rng=torch.get_rng_state(), act_rng=generator_state(act_rng),
                            eval_rng=generator_state(eval_gen), state=state))
        state["last_ckpt"] = state["env_steps"]

    while not state["frozen"] and state["env_steps"] < cfg.max_env_steps:
        obs, done, length = env.reset(state["episode"]), False, 0
        while not done:
            if state["env_steps"] < cfg.start_steps:
                action = act_rng.uniform(-1.0, 1.0, act_dim).astype(np.float32)
            else:
                action = agent.actor.act(obs, deterministic=False)
            next_obs, reward, term, trunc, _ = env.env.step(action)
            buf.add(obs, action, reward, next_obs, term)
            obs, done, length = next_obs, term or trunc, length + 1
            state["env_steps"] += 1
            if state["env_steps"] >= cfg.start_steps:
                info = agent.update(buf.sample(cfg.batch_size))
            post = {}
            if state["env_steps"] % _eval_interval(cfg, state["evals"]) == 0:
                returns = _evaluate(agent.actor, cfg.env_id, cfg.eval_episodes, cfg.seed, eval_gen)
                score = float(np.mean(normalized_score(cfg.env_id, returns)))
                state["evals"].append((state["env_steps"], float(returns.mean()), score))
                post = dict(score=f"{score:.1f}",
                            alpha=f"{info['alpha']:.3f}" if state["env_steps"] > cfg.start_steps else "-")
                if _near_target(cfg, score):
                    actor = {k: v.detach().clone() for k, v in agent.actor.state_dict().items()}
                    state["candidates"] = (state["candidates"] + [dict(
                        env_steps=state["env_steps"], return_mean=float(returns.mean()), score=score, actor=actor,
                        episodes_done=len(state["episode_log"]), partial=length, partial_ended=bool(term))
                    ])[-cfg.max_candidates:]
                else:
                    state["candidates"] = []
                if score >= cfg.target_score:
                    state["frozen"] = True  # stop training right here and choose among the snapshots
            bar.update(1, **post)
            if state["frozen"] or state["env_steps"] >= cfg.max_env_steps:
                break
        # an episode cut by the freeze or the step budget counts as truncated
        state["episode_log"].append((length, bool(done and term)))
        state["episode"] += 1
        if state["env_steps"] - state["last_ckpt"] >= cfg.checkpoint_every or state["frozen"]:
            save_checkpoint()
    bar.close()
    env.env.close()
    if state["frozen"] and state["chosen"] is None:
        chosen = _choose_snapshot(state["candidates"], cfg.target_score)
        # the behavior policy is that snapshot; medium-replay is the buffer up to it
        state["chosen"], state["candidates"] = chosen, []
        state["episode_log"] = state["episode_log"][:chosen["episodes_done"]] + (
            [(chosen["partial"], chosen["partial_ended"])] if chosen["partial"] else [])
        save_checkpoint()
    if state["chosen"] is not None:
        agent.actor.load_state_dict(state["chosen"]["actor"])
    last = state["evals"][-1] if state["evals"] else (state["env_steps"], float("nan"), float("nan"))
    behavior = state["chosen"] or dict(env_steps=state["env_steps"], return_mean=last[1], score=last[2])
    train_seconds = bar.elapsed()
    if not state["frozen"]:
        import warnings

        warnings.warn(f"SAC did not reach normalized score {cfg.target_score} in {cfg.max_env_steps} steps; "
                      "the datasets use the last policy")

    atomic_torch_save(dict(actor=agent.actor.state_dict(), hidden=list(cfg.hidden), env_id=cfg.env_id,
                           evals=state["evals"], env_steps=behavior["env_steps"]), out / "behavior_policy.pt")
    gen = torch.Generator().manual_seed(cfg.seed + 3)
    with Progress(cfg.medium_transitions, 0, "medium rollouts", "step", progress) as rollouts:
        medium = _rollout_episodes(agent.actor, cfg.env_id, cfg.medium_transitions, cfg.seed, gen, rollouts)
        rollout_seconds = rollouts.elapsed()
    replay = _episodes_from_replay(buf, state["episode_log"])

    lo, hi = reference_scores(cfg.env_id)
    env_name = task
    outputs = {}
    for kind, episodes in (("medium", medium), ("medium-replay", replay)):
        meta = dict(ref_min_score=lo, ref_max_score=hi,
                    description=f"obd-fast recipe: SAC on {cfg.env_id}, seed {cfg.seed}, {kind}")
        minari_path = write_minari(f"obd-fast/{env_name}/{kind}-v0", episodes, cfg.env_id, out / "minari", meta)
        npz_path = write_npz(out / f"{env_name}-{kind}.npz", episodes, cfg.env_id)
        outputs[kind] = dict(minari=str(minari_path.relative_to(out.resolve())), npz=npz_path.name,
                             npz_bytes=npz_path.stat().st_size, **dataset_stats(episodes, cfg.env_id))
    summary = dict(config=asdict(cfg), reached_target=state["frozen"], train_env_steps=state["env_steps"],
                   behavior_policy=dict(env_steps=behavior["env_steps"], return_mean=behavior["return_mean"],
                                        normalized=behavior["score"]),
                   train_seconds=round(train_seconds, 1), rollout_seconds=round(rollout_seconds, 1),
                   evaluations=[dict(env_steps=s, return_mean=r, normalized=n) for s, r, n in state["evals"]],
                   datasets=outputs)
    run.write_json("summary.json", summary, indent=2)
    run.write_text("training_curve.csv", csv_text(EVAL_COLUMNS, [dict(zip(EVAL_COLUMNS, e)) for e in state["evals"]]))
    plots.recipe_curve(out / "training_curve.png", state["evals"], cfg.target_score, behavior,
                       title=f"SAC on {cfg.env_id} (seed {cfg.seed})")
    return summary


BUNDLE_README = """# Bundled dataset: {name}

Made by the project's own recipe (`obd_fast/data/recipe.py`): online SAC on Gymnasium
`{env_id}` (MuJoCo) until its stochastic policy's mean normalized return over {eval_episodes}
evaluation episodes reached {target_score} (evaluated every {eval_every} steps, every {fine_eval_every}
once a score passed {fine_eval_from} x the target). A SAC policy's score can leap far past the
target between two evaluations (on hopper, from 24 to 73 within 1k steps), so the behavior policy
is the evaluated snapshot closest to the target among the recent ones, and medium-replay holds the
buffer up to it. Then rollouts of that policy
(stochastic actions, whole episodes) until at least {medium_transitions} transitions, as D4RL's
"medium" datasets were made. Nothing here was downloaded.

Command (from the repository root; it also writes the Minari and medium-replay versions):

    python -m obd_fast.data.recipe --env {env_id} --seed {seed} --out runs/{task}-recipe --bundle

| what | value |
| --- | --- |
| seed | {seed} |
| SAC training steps (until an evaluation reached the target) | {train_env_steps} (reached target: {reached_target}) |
| behavior policy: the snapshot closest to the target | step {freeze_step}: return {freeze_return:.1f}, normalized {freeze_score:.1f} |
| recipe wall time here (2-core CPU, 1 torch thread) | {wall_minutes:.1f} min |
| transitions / episodes | {transitions} / {episodes} |
| episode return mean +- std (min, max) | {return_mean:.1f} +- {return_std:.1f} ({return_min:.1f}, {return_max:.1f}) |
| normalized return of the dataset's episodes | {normalized_mean:.1f} +- {normalized_std:.1f} |
| mean episode length; episodes ended by a fall | {episode_length_mean:.1f}; {terminated_episodes} |
| file | `{file}` ({megabytes:.1f} MB; D4RL keys, float32; {next_form}) |

The training curve (evaluations of the SAC policy, the behavior policy marked) is
`training_curve.png`. Load the data with `obd_fast.data.load_dataset("bundled:{name}")`. Normalized scores use D4RL's
reference returns for {task} ({ref_min} random, {ref_max} expert).
"""


def write_bundle(run_dir, dest, kind: str = "medium") -> Path:
    """Copy a finished recipe run's ``kind`` npz into ``dest`` with a README of how it was made."""
    run_dir, dest = Path(run_dir), Path(dest)
    summary = json.loads((run_dir / "summary.json").read_text())
    cfg, ds = summary["config"], summary["datasets"][kind]
    task = task_name(cfg["env_id"])
    lo, hi = reference_scores(cfg["env_id"])
    behavior = summary["behavior_policy"]
    dest.mkdir(parents=True, exist_ok=True)
    target = dest / ds["npz"]
    with np.load(run_dir / ds["npz"], allow_pickle=False) as f:
        fields = {k: f[k] for k in f.files}
    # s' only where it is not the next row (episode ends): the same table at ~60% of the size
    fields = compact_next_observations(fields)

    def write(tmp):
        with open(tmp, "wb") as out:
            np.savez_compressed(out, **fields)

    atomic_write(target, write)
    text = BUNDLE_README.format(
        name=dest.name, task=task, file=target.name, megabytes=target.stat().st_size / 1e6,
        freeze_return=behavior["return_mean"], freeze_score=behavior["normalized"], freeze_step=behavior["env_steps"],
        ref_min=lo, ref_max=hi, next_form="s' of each episode's last row as `final_next_observations`",
        wall_minutes=(summary["train_seconds"] + summary["rollout_seconds"]) / 60,
        train_env_steps=summary["train_env_steps"], reached_target=summary["reached_target"], **cfg,
        **{k: v for k, v in ds.items() if k not in ("npz", "minari", "npz_bytes")})
    atomic_write_text(dest / "README.md", text)
    if (run_dir / "training_curve.png").exists():
        shutil.copyfile(run_dir / "training_curve.png", dest / "training_curve.png")
    return target


def main(argv=None) -> int:
    """``python -m obd_fast.data.recipe``: the ``obd-fast make-dataset`` command."""
    from ..cli import main as cli_main

    return cli_main(argv, command="make-dataset", prog="python -m obd_fast.data.recipe")


if __name__ == "__main__":
    raise SystemExit(main())
