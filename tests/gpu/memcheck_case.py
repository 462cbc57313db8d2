"""A small fused CUDA case for compute-sanitizer (run by test_cuda_backend.test_memcheck_small_case):
both heads, with and without checkpoints, through the grid program and the ATen path."""
import torch

import obd_fast
from obd_fast import PolicySpec

for kernel, head in [(k, h) for k in ("grid", "library") for h in ("gaussian", "tanh")]:
    spec = PolicySpec(5, 2, (13, 40), head=head)  # 40: two column tiles, one partial
    dev = torch.device("cuda")
    g = torch.Generator().manual_seed(0)
    theta0 = spec.init_params(generator=g).to(dev)
    s, a = torch.randn(37, 5, device=dev), torch.rand(37, 2, device=dev)  # 37 rows: two slices of k
    x, y, w = torch.randn(11, 5, device=dev), torch.rand(11, 2, device=dev), torch.rand(11, device=dev)
    noise = dict(inner_noise=torch.randn(3, 37, 2, device=dev), outer_noise=torch.randn(11, 2, device=dev)) \
        if head == "gaussian" else {}
    for ck in (None, 2):
        out = obd_fast.meta_gradient(theta0, s, a, spec, x, y, w, steps=3, lr=0.1, momentum=0.9, weight_decay=1e-4,
                                     checkpoint_every=ck, backend="fused", step_kernel=kernel, **noise)
    torch.cuda.synchronize()
print("memcheck case done")
