"""distill on CUDA: outer steps replayed as a captured CUDA graph give what eager calls give."""
import pytest
import torch

from obd_fast import Distiller
from test_distill import fake_data, fake_teacher, tiny

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("objective,head", [("dbc", "tanh"), ("av-pbc", "gaussian")])
def test_distill_cuda_graph_matches_eager(objective, head):
    data, teacher = fake_data(), fake_teacher()
    runs = []
    for flag in (True, False):
        d = Distiller(data, teacher, tiny(objective=objective, head=head, device="cuda", cuda_graph=flag))
        assert d.uses_cuda_graph() == flag
        losses = [d.step() for _ in range(3)]
        runs.append((losses, d.syn_obs.cpu(), d.syn_act.cpu()))
    (l_g, s_g, a_g), (l_e, s_e, a_e) = runs
    assert l_g == pytest.approx(l_e, rel=1e-5)
    assert torch.allclose(s_g, s_e, rtol=1e-5, atol=1e-6) and torch.allclose(a_g, a_e, rtol=1e-5, atol=1e-6)
