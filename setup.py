"""Builds obd_fast._C: C++ sources always, CUDA sources when torch has CUDA and nvcc is found.

OBD_FAST_CUDA=1 forces the CUDA build (fails loudly if it cannot), OBD_FAST_CUDA=0 disables it.
"""
import glob
import os

from setuptools import setup
from torch.utils import cpp_extension

ROOT = os.path.dirname(os.path.abspath(__file__))


def want_cuda() -> bool:
    flag = os.environ.get("OBD_FAST_CUDA")
    if flag == "0":
        return False
    import torch

    # cpp_extension finds CUDA_HOME from the environment or from nvcc on the PATH.
    have = torch.version.cuda is not None and cpp_extension.CUDA_HOME is not None
    if flag == "1" and not have:
        raise RuntimeError("OBD_FAST_CUDA=1, but torch has no CUDA or no CUDA toolkit (nvcc) was found")
    return have


def extension():
    rel = lambda paths: sorted(os.path.relpath(p, ROOT) for p in paths)
    sources = rel(glob.glob(os.path.join(ROOT, "csrc", "*.cpp")) + glob.glob(os.path.join(ROOT, "csrc", "cpu", "*.cpp")))
    # -ffp-contract=off: the AVX2 / AVX-512 clones of the CPU loops (csrc/cpu) then round exactly
    # as the baseline build does (no fused multiply-adds), so results do not depend on the CPU.
    cxx = ["-O3", "-fopenmp", "-ffp-contract=off"]
    if os.environ.get("OBD_FAST_DEBUG"):
        cxx = ["-O0", "-g", "-fopenmp"]
    if want_cuda():
        sources += rel(glob.glob(os.path.join(ROOT, "csrc", "cuda", "*.cpp")) + glob.glob(os.path.join(ROOT, "csrc", "cuda", "*.cu")))
        return cpp_extension.CUDAExtension(
            "obd_fast._C", sources,
            extra_compile_args={"cxx": cxx + ["-DOBD_FAST_WITH_CUDA"], "nvcc": ["-O3", "-DOBD_FAST_WITH_CUDA"]},
            extra_link_args=["-fopenmp"],
        )
    return cpp_extension.CppExtension("obd_fast._C", sources, extra_compile_args={"cxx": cxx}, extra_link_args=["-fopenmp"])


setup(
    ext_modules=[extension()],
    cmdclass={"build_ext": cpp_extension.BuildExtension.with_options(use_ninja=True)},
)
