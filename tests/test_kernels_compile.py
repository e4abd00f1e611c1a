"""Every kernels/*.cu compiles for sm_80 and sm_90 with warnings as errors, wherever nvcc
is installed (CI's machine has it), so a broken kernel fails without a GPU: both as the
file (nvcc finds its headers beside it) and as the one text NVRTC compiles, its headers
pasted in by netc.runtime.cuda_kernels.kernel_source. One nvcc call per build makes both
architectures into a fatbin (a cubin holds only one). kernel_source's own rules are
checked on made-up files, g++ saying where its #line directives point."""
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from netc.runtime.cuda_kernels import kernel_source

KERNELS = Path(__file__).resolve().parents[1] / "kernels"
SOURCES = sorted(KERNELS.glob("*.cu"))
ARCHS = ("80", "90")
INCLUDE_LINE = re.compile(r'\s*#\s*include\s*"')

needs_nvcc = pytest.mark.skipif(shutil.which("nvcc") is None, reason="needs nvcc (the CUDA toolkit)")
needs_gxx = pytest.mark.skipif(shutil.which("g++") is None, reason="needs g++")


def assert_compiles(source: Path, folder: Path) -> None:
    fatbin = folder / f"{source.stem}.fatbin"
    command = ["nvcc", "-std=c++17", "-fatbin", "-o", str(fatbin), "--Werror", "all-warnings",
               "-Xcompiler", "-Wall,-Wextra,-Werror"]
    for arch in ARCHS:
        command += ["-gencode", f"arch=compute_{arch},code=sm_{arch}"]
    result = subprocess.run(command + [str(source)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"nvcc failed on {source.name}:\n{result.stdout}{result.stderr}"
    assert fatbin.stat().st_size > 0


def test_there_are_kernels():
    assert {s.name for s in SOURCES} >= {"pool.cu", "lrn.cu", "conv.cu", "softmax_loss.cu"}


@needs_nvcc
@pytest.mark.parametrize("source", SOURCES, ids=lambda s: s.name)
def test_kernel_compiles_warning_free(source, tmp_path):
    assert_compiles(source, tmp_path)


@pytest.mark.parametrize("source", SOURCES, ids=lambda s: s.name)
def test_kernel_source_leaves_no_include(source):
    left = [line for line in kernel_source(source.name).splitlines() if INCLUDE_LINE.match(line)]
    assert not left, f"{source.name} still includes after the expansion: {left}"


@needs_nvcc
@pytest.mark.parametrize("source", SOURCES, ids=lambda s: s.name)
def test_kernel_compiles_as_the_one_text_nvrtc_gets(source, tmp_path):
    """In a folder of its own, where no header lies beside it."""
    single = tmp_path / "single" / source.name
    single.parent.mkdir()
    single.write_text(kernel_source(source.name))
    assert_compiles(single, tmp_path)


def write_files(folder: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        (folder / name).write_text(text)


@needs_gxx
def test_headers_are_pasted_once_each_and_messages_name_their_file_and_line(tmp_path):
    """main.cu includes a.cuh, which includes b.cuh, then includes both again (dropped).
    Each file's #error must be reported once, at its own file and line."""
    write_files(tmp_path, {
        "main.cu": '// main\n#include "a.cuh"\n#error main3\n#include "b.cuh"\n  # include "a.cuh"\n#error main6\n',
        "a.cuh": '#include "b.cuh"\n#error a2\n',
        "b.cuh": "#error b1",           # no newline at the end
    })
    text = kernel_source("main.cu", tmp_path)
    unit = tmp_path / "unit.cpp"
    unit.write_text(text)
    result = subprocess.run(["g++", "-fsyntax-only", "-x", "c++", str(unit)], capture_output=True, text=True,
                            timeout=60)
    reported = re.findall(r"^(\S+):(\d+):\d+: error: #error (\w+)", result.stderr, re.MULTILINE)
    assert reported == [("kernels/b.cuh", "1", "b1"), ("kernels/a.cuh", "2", "a2"),
                        ("kernels/main.cu", "3", "main3"), ("kernels/main.cu", "6", "main6")], result.stderr


def test_a_missing_header_is_named_with_the_line_that_includes_it(tmp_path):
    write_files(tmp_path, {"main.cu": '#include "a.cuh"\n', "a.cuh": '// a\n#include "gone.cuh"\n'})
    with pytest.raises(FileNotFoundError, match=r'kernels/a\.cuh:2 includes "gone\.cuh"'):
        kernel_source("main.cu", tmp_path)


@pytest.fixture(scope="module")
def conv_ptx(tmp_path_factory) -> str:
    """kernels/conv.cu as PTX for sm_90: what the device compiler was given to schedule."""
    folder = tmp_path_factory.mktemp("conv_ptx")
    source = folder / "conv.cu"
    source.write_text(kernel_source("conv.cu"))
    ptx = folder / "conv.ptx"
    result = subprocess.run(["nvcc", "-std=c++17", "-ptx", "-arch=sm_90", "-o", str(ptx), str(source)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return ptx.read_text()


def k_step(ptx: str, kernel: str) -> list[str]:
    """The instructions of one K step of a tiled kernel's loop: from its first barrier
    (the slices stored) to the second (the multiply-adds done, the next loads issued)."""
    start = re.search(rf"\.entry {kernel}\(", ptx)
    assert start, f"no entry {kernel} in the PTX"
    body = ptx[start.start():ptx.find("\n}", start.end())].splitlines()
    barriers = [i for i, line in enumerate(body) if line.strip().startswith("bar.sync")]
    assert len(barriers) >= 2, kernel
    return [line.strip() for line in body[barriers[0]:barriers[1]] if line.strip().endswith(";")]


TILED_KERNELS = ("conv_forward_f32", "conv_backward_data_unit_f32", "conv_backward_weights_f32")


@needs_nvcc
@pytest.mark.parametrize("kernel", TILED_KERNELS + ("conv_backward_data_f32",))
def test_the_convolution_tile_product_reads_shared_memory_128_bits_at_a_time(conv_ptx, kernel):
    """kernels/conv.cu's plan: per K index a thread's 4 A values and 4 B values are one
    128-bit shared load each (8 multiply-adds per load). Scalar loads, 2 per 4
    multiply-adds, would make the shared-memory pipe the limit again."""
    step = k_step(conv_ptx, kernel)
    fmas = sum(1 for i in step if re.match(r"fma\.rn\.f32\b", i))
    vector_loads = sum(1 for i in step if re.match(r"ld\.shared\.v4\.f32\b", i))
    scalar_loads = sum(1 for i in step if re.match(r"ld\.shared\.f32\b", i))
    assert fmas == 256 and vector_loads == 32 and scalar_loads == 0, (fmas, vector_loads, scalar_loads)


@needs_nvcc
@pytest.mark.parametrize("kernel", TILED_KERNELS)
def test_the_convolution_k_loop_does_not_divide(conv_ptx, kernel):
    """A thread's reduction indices are advanced digit by digit (MixedRadix), not decoded
    by division each K step: a software division costs as much as a few multiply-adds.
    (conv_backward_data_f32 divides by the stride; stride 1 × 1 takes the _unit kernel.)"""
    divisions = [i for i in k_step(conv_ptx, kernel) if re.match(r"(div|rem)\.", i)]
    assert not divisions, divisions
