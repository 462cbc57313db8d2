"""Syntax-check the CUDA glue sources (csrc/cuda/*.cpp) against the installed torch headers.

A CPU build of torch ships the c10/cuda headers but not the generated cuda_cmake_macros.h; an
empty stand-in is enough for a syntax check. The CUDA runtime headers come from nvcc's toolkit.
"""
import glob
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile

from torch.utils import cpp_extension

nvcc = shutil.which("nvcc")
if nvcc is None:
    sys.exit("nvcc not found")
cuda_include = os.path.join(os.path.dirname(os.path.dirname(os.path.realpath(nvcc))), "include")
candidates = [cuda_include] + glob.glob("/usr/local/cuda*/include")
cuda_include = next((d for d in candidates if os.path.exists(os.path.join(d, "cuda_runtime_api.h"))), None)
if cuda_include is None:
    sys.exit("cuda_runtime_api.h not found next to nvcc")
with tempfile.TemporaryDirectory() as stub:
    os.makedirs(os.path.join(stub, "c10", "cuda", "impl"))
    open(os.path.join(stub, "c10", "cuda", "impl", "cuda_cmake_macros.h"), "w").close()
    flags = ["-std=c++20", "-fsyntax-only", "-DOBD_FAST_WITH_CUDA", f"-I{stub}", f"-I{cuda_include}"]
    flags += [f"-I{p}" for p in cpp_extension.include_paths()] + [f"-I{sysconfig.get_paths()['include']}"]
    # the CUDA glue, and the device-neutral sources that declare or name CUDA code in CUDA builds
    sources = sorted(glob.glob("csrc/cuda/*.cpp")) + ["csrc/grid_step.cpp", "csrc/ops.cpp"]
    for src in sources:
        print(f"glue syntax check: {src}", flush=True)
        subprocess.run(["g++", *flags, src], check=True)
