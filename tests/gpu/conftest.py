import pytest
import torch

import obd_fast


def pytest_collection_modifyitems(config, items):
    """The GPU suite needs a CUDA device and an extension built with CUDA; skip it otherwise."""
    reason = None
    if not torch.cuda.is_available():
        reason = "needs a CUDA device"
    elif "cuda" not in obd_fast.build_info():
        reason = f"obd_fast._C was built without CUDA ({obd_fast.build_info()})"
    if reason is None:
        return
    for item in items:
        if "tests/gpu" in str(item.fspath).replace("\\", "/"):
            item.add_marker(pytest.mark.skip(reason=reason))
