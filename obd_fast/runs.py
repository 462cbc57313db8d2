"""What every long run shares (distillation, teacher training, the dataset recipe).

* :class:`RunDir`: the output directory. It refuses to overwrite a run unless asked to resume,
  reads the saved state with a one-line error, and writes every file atomically (a run killed
  mid-write leaves the previous version).
* :func:`rng_state` / :func:`set_rng_state`: the global random generators (torch, NumPy, Python,
  CUDA) and a run's own generators, saved and restored so that a resumed run continues the same
  random streams.
* :func:`csv_text`: a log table as CSV text.
* :class:`Progress`: the progress bar and the wall-clock budget, with the run time carried over
  resumes.

The plots are in :mod:`obd_fast.plots`.
"""
from __future__ import annotations

import csv
import io
import json
import random
import time
from pathlib import Path
from typing import Dict, Iterable, Optional, Sequence, Type

import numpy as np
import torch

from .atomic import atomic_torch_save, atomic_write_text


class RunDir:
    """``path`` holding one run whose resumable state is the file ``state_name``.

    ``what`` names the run in messages ("a distillation run"); ``error`` is the exception type
    raised for a directory that does not fit the request; ``outputs`` are other files that mark
    an existing run.
    """

    def __init__(self, path, state_name: str, what: str, error: Type[Exception] = ValueError,
                 outputs: Sequence[str] = ()):
        self.path, self.state_name, self.what, self.error = Path(path), state_name, what, error
        self.outputs = tuple(outputs)

    @property
    def state_path(self) -> Path:
        return self.path / self.state_name

    def check(self, resume: bool) -> bool:
        """Whether there is a state to resume from; raises ``error`` for a run that exists
        without ``resume``, or outputs without a state to resume."""
        existing = [n for n in (self.state_name, *self.outputs) if (self.path / n).exists()]
        if existing and not resume:
            raise self.error(f"{self.path} already holds {self.what} ({', '.join(existing)}): pass resume=True "
                             "(--resume) to continue it, or choose another output directory")
        if existing and not self.state_path.exists():
            raise self.error(f"cannot resume {self.path}: it has {', '.join(existing)} but no {self.state_name}")
        return bool(existing)

    def load_state(self, weights_only: bool = True) -> dict:
        """The saved state, read on the CPU; an unreadable file is one ``error`` line."""
        try:
            return torch.load(self.state_path, map_location="cpu", weights_only=weights_only)
        except Exception as exc:
            first = str(exc).splitlines()[0] if str(exc) else ""
            raise self.error(f"{self.state_path}: cannot read the saved state ({type(exc).__name__}: {first}); "
                             "move it away to start over") from None

    def save_state(self, state: dict) -> Path:
        return atomic_torch_save(state, self.state_path)

    def write_text(self, name: str, text: str) -> Path:
        return atomic_write_text(self.path / name, text)

    def write_json(self, name: str, obj, **kw) -> Path:
        return self.write_text(name, json.dumps(obj, **kw))


# ----------------------------------------------------------------------------- random state
def generator_state(gen):
    """The state of a ``torch.Generator`` or a NumPy ``Generator``."""
    return gen.get_state() if isinstance(gen, torch.Generator) else gen.bit_generator.state


def set_generator_state(gen, state) -> None:
    if isinstance(gen, torch.Generator):
        gen.set_state(state)
    else:
        gen.bit_generator.state = state


def rng_state(**generators) -> dict:
    """The global generators' states (``torch``, ``numpy``, ``python`` and, once CUDA is in use,
    ``cuda``) and those of ``generators`` under their keyword names."""
    np_state = np.random.get_state()
    state = dict(torch=torch.get_rng_state(),
                 numpy=(np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])),
                 python=random.getstate())
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    state.update({name: generator_state(g) for name, g in generators.items()})
    return state


def set_rng_state(state: dict, **generators) -> None:
    """Restore what :func:`rng_state` saved (``generators`` by the same names)."""
    torch.set_rng_state(state["torch"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    random.setstate(_tuples(state["python"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    for key, g in generators.items():
        set_generator_state(g, state[key])


def _tuples(x):
    return tuple(_tuples(v) for v in x) if isinstance(x, (list, tuple)) else x


# ----------------------------------------------------------------------------- logs
def csv_text(columns: Sequence[str], rows: Iterable[Dict]) -> str:
    """CSV with a header; each row a dict (missing keys and None are empty cells)."""
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(columns)
    for row in rows:
        w.writerow(["" if row.get(k) is None else row[k] for k in columns])
    return buf.getvalue()


# ----------------------------------------------------------------------------- progress
class Progress:
    """A tqdm bar over ``total`` units starting at ``initial``, and the run's clock.

    ``elapsed_before``: seconds spent by earlier sessions of the run (resumes). ``max_seconds``
    bounds this session's time (:meth:`out_of_time`).
    """

    def __init__(self, total: int, initial: int = 0, desc: str = "", unit: str = "step", enabled: bool = True,
                 elapsed_before: float = 0.0, max_seconds: Optional[float] = None):
        from tqdm.auto import tqdm

        self.bar = tqdm(total=total, initial=min(initial, total), desc=desc, unit=unit, disable=not enabled,
                        dynamic_ncols=True)
        self.started = time.perf_counter()
        self.elapsed_before, self.max_seconds = float(elapsed_before), max_seconds

    def update(self, n: int = 1, **postfix) -> None:
        if postfix:
            self.bar.set_postfix(postfix, refresh=False)
        self.bar.update(n)

    def session_seconds(self) -> float:
        return time.perf_counter() - self.started

    def elapsed(self) -> float:
        """Seconds of the whole run, earlier sessions included."""
        return self.elapsed_before + self.session_seconds()

    def out_of_time(self) -> bool:
        return self.max_seconds is not None and self.session_seconds() >= self.max_seconds

    def write(self, text: str) -> None:
        self.bar.write(text)

    def close(self) -> None:
        self.bar.close()

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
