"""Every kernels/*.cu compiles for sm_80 and sm_90 with warnings as errors, wherever nvcc
is installed (CI's machine has it), so a broken kernel fails without a GPU. One nvcc
call per file builds both architectures into a fatbin (a cubin holds only one)."""
import shutil
import subprocess
from pathlib import Path

import pytest

KERNELS = Path(__file__).resolve().parents[1] / "kernels"
SOURCES = sorted(KERNELS.glob("*.cu"))
ARCHS = ("80", "90")

pytestmark = pytest.mark.skipif(shutil.which("nvcc") is None, reason="needs nvcc (the CUDA toolkit)")


def test_there_are_kernels():
    assert {s.name for s in SOURCES} >= {"pool.cu", "lrn.cu", "conv.cu", "softmax_loss.cu"}


@pytest.mark.parametrize("source", SOURCES, ids=lambda s: s.name)
def test_kernel_compiles_warning_free(source, tmp_path):
    command = ["nvcc", "-std=c++17", "-fatbin", "-o", str(tmp_path / f"{source.stem}.fatbin"),
               "--Werror", "all-warnings", "-Xcompiler", "-Wall,-Wextra,-Werror"]
    for arch in ARCHS:
        command += ["-gencode", f"arch=compute_{arch},code=sm_{arch}"]
    result = subprocess.run(command + [str(source)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"nvcc failed on {source.name}:\n{result.stdout}{result.stderr}"
    assert (tmp_path / f"{source.stem}.fatbin").stat().st_size > 0
