"""The compact flat form (``final_next_observations`` instead of ``next_observations``) loads to
the same table as the full one, and bad compact files are refused with a clear error."""
import numpy as np
import pytest

from obd_fast.data import DatasetError
from obd_fast.data.loaders import compact_next_observations, table_from_flat


def _episodes_flat(rng, lengths, obs_dim=5, act_dim=2, terminal_last=()):
    obs, nxt, act, rew, term, tout = [], [], [], [], [], []
    for i, n in enumerate(lengths):
        states = rng.normal(size=(n + 1, obs_dim)).astype(np.float32)
        obs.append(states[:-1]), nxt.append(states[1:])
        act.append(rng.uniform(-1, 1, (n, act_dim)).astype(np.float32)), rew.append(rng.normal(size=n))
        t = np.zeros(n, bool)
        o = np.zeros(n, bool)
        if i in terminal_last:
            t[-1] = True
        else:
            o[-1] = True
        term.append(t), tout.append(o)
    cat = np.concatenate
    return dict(observations=cat(obs), next_observations=cat(nxt), actions=cat(act), rewards=cat(rew),
                terminals=cat(term), timeouts=cat(tout))


@pytest.mark.parametrize("seed", range(4))
def test_compact_form_loads_to_the_same_table(seed):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, 30, size=rng.integers(1, 9))
    flat = _episodes_flat(rng, lengths, terminal_last=set(rng.choice(len(lengths), len(lengths) // 2)))
    compact = compact_next_observations(flat)
    assert "next_observations" not in compact and len(compact["final_next_observations"]) == len(lengths)
    full, small = table_from_flat(flat, "full"), table_from_flat(compact, "compact")
    for name in ("observations", "next_observations", "actions", "rewards", "terminals", "timeouts", "episode_ids"):
        np.testing.assert_array_equal(getattr(small, name), getattr(full, name), err_msg=name)
    assert len(small) == sum(lengths)  # no row dropped, unlike files without any s'


def test_compact_form_with_the_wrong_number_of_final_states_is_refused():
    flat = _episodes_flat(np.random.default_rng(0), [4, 6, 3])
    compact = compact_next_observations(flat)
    compact["final_next_observations"] = compact["final_next_observations"][:2]
    with pytest.raises(DatasetError, match="final_next_observations.*one row per episode"):
        table_from_flat(compact, "bad.npz")


def test_compacting_refuses_data_whose_next_state_is_not_the_next_row():
    flat = _episodes_flat(np.random.default_rng(1), [5, 5])
    flat["next_observations"][1] += 1.0
    with pytest.raises(DatasetError, match="not the next row"):
        compact_next_observations(flat)
