import pytest

# helpers.py holds shared assertions (check_against_plain, gradcheck_*): give them pytest's
# detailed assertion messages too.
pytest.register_assert_rewrite("helpers")


@pytest.fixture
def one_thread():
    """Small or paper-size CPU work on a shared 2-core machine: one torch thread avoids OpenMP
    oversubscription stalls. Files opt in with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
