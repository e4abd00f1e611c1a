"""netc's CUDA kernels against PyTorch/cuDNN on the GPU, layer by layer and for a whole training step.

Layers: every Convolution, LRN and Pooling layer of AlexNet (batch 128) and GoogLeNet
(batch 64), with the shapes netc's own checker gives for the train phase, forward and
backward, ours (netc.runtime.cuda_kernels) and PyTorch's on the same input arrays:
  Convolution  F.conv2d, cuDNN with benchmark mode (it picks its fastest algorithm) and
               TF32 off, so both sides compute in FP32; backward: ∂x (not for a layer
               reading the net's data, as in training) and ∂w, ∂b, through autograd
  Pooling      F.max_pool2d (with indices, as training needs) / F.avg_pool2d with
               ceil_mode and count_include_pad: Caffe's window and divisor
  LRN          F.local_response_norm: Σ over n channels scaled by α/n, as Caffe's
               ACROSS_CHANNELS (WITHIN_CHANNEL: α/n² over an n×n window, built from avg_pool2d)
PyTorch runs pooling and LRN with its own CUDA kernels (ATen), not cuDNN's.

Each figure is the median of --repeat timings by CUDA events after warm-up (one
timing covers enough calls to last about a millisecond). Printed per layer and pass:
ms ours, ms PyTorch, the ratio PyTorch/ours (> 1: ours is faster), and the fraction of
the machine each achieves: convolution as 2·MACs/time against the FP32 peak (a
measured 8192² SGEMM, or --peak-tflops), LRN and pooling as bytes/time against a
measured device-to-device copy. The bytes are those our kernels read and write (x, y,
the MAX mask or the LRN scale; dy, dx), counted the same for both sides. The largest
difference between both sides' results is printed too: a fast wrong kernel is no win.

Whole step: one AlexNet training iteration (forward, backward, SGD update) of netc's
Executor on the CUDA backend against the same net built in PyTorch from netc's IR
(bench/torch_peer.py's TorchNet, which leaves Dropout out: under 0.1 % of the step),
both from the same weights and batch on the GPU; images/s and the ratio.

    python3 bench/gpu.py [--net alexnet|googlenet|all] [--mode layers|step|all]
                         [--repeat 20] [--peak-tflops 60] [--markdown]
"""
from __future__ import annotations

import argparse
import datetime
import math
import os
import statistics
import subprocess
import sys
import zlib
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NETS = {"alexnet": ("alexnet.net", 128), "googlenet": ("googlenet.net", 64)}
STEP_NET = "alexnet"
TIMED_TYPES = ("Convolution", "LRN", "Pooling")


def _fail(message: str, hint: str | None = None) -> None:
    print(f"bench/gpu.py: error: {message}", file=sys.stderr)
    if hint:
        print(f"hint: {hint}", file=sys.stderr)
    sys.exit(1)


# --- clocks --------------------------------------------------------------------------

class Clock:
    """Times calls with one library's CUDA events on its current stream."""

    def __init__(self, library: str):
        self.library = library
        if library == "cupy":
            import cupy
            self.cupy = cupy
        else:
            import torch
            self.torch = torch

    def measure(self, fn, calls: int) -> float:
        """Milliseconds for `calls` back-to-back calls, from the GPU's own timeline."""
        if self.library == "cupy":
            start, end = self.cupy.cuda.Event(), self.cupy.cuda.Event()
        else:
            start, end = (self.torch.cuda.Event(enable_timing=True) for _ in range(2))
        start.record()
        for _ in range(calls):
            fn()
        end.record()
        end.synchronize()
        if self.library == "cupy":
            return self.cupy.cuda.get_elapsed_time(start, end)
        return start.elapsed_time(end)

    def median_ms(self, fn, repeat: int, warmup: int = 3) -> float:
        for _ in range(warmup):   # compiles our kernels, lets cuDNN try its algorithms, fills the allocators
            fn()
        once = self.measure(fn, 1)
        calls = max(1, min(200, math.ceil(1.0 / max(once, 1e-3))))   # a timing lasts about 1 ms
        return statistics.median(self.measure(fn, calls) / calls for _ in range(repeat))


# --- what the machine can do -----------------------------------------------------------

def fp32_peak_tflops(cupy, clock: Clock, repeat: int) -> float:
    """FP32 TFLOP/s of an 8192³ SGEMM by cuBLAS (TF32 stays off unless CUPY_TF32=1)."""
    n = 8192
    rng = cupy.random.RandomState(0)
    a = rng.standard_normal((n, n), dtype=cupy.float32)
    b = rng.standard_normal((n, n), dtype=cupy.float32)
    c = cupy.empty((n, n), dtype=cupy.float32)
    ms = clock.median_ms(lambda: cupy.matmul(a, b, out=c), max(3, repeat // 2))
    return 2 * n ** 3 / (ms * 1e-3) / 1e12


def copy_bandwidth_gbs(cupy, clock: Clock, repeat: int) -> float:
    """Device-to-device copy of 1 GiB: (bytes read + bytes written) / time, in GB/s."""
    nbytes = 2 ** 30
    src = cupy.ones(nbytes // 4, dtype=cupy.float32)
    dst = cupy.empty_like(src)
    ms = clock.median_ms(lambda: dst.data.copy_from_device_async(src.data, nbytes), repeat)
    return 2 * nbytes / (ms * 1e-3) / 1e9


# --- the layers ----------------------------------------------------------------------------

@dataclass
class Case:
    net: str
    layer: object          # netc.ir.Layer
    bottom: tuple          # N, C, H, W
    top: tuple
    param_shapes: tuple
    macs: int              # forward multiply-adds (convolution)
    needs_dx: bool         # False for a layer reading the net's data: training computes no ∂data


def layer_cases(name: str, batch: int) -> list[Case]:
    """The timed layers with the shapes `netc check` gives the train phase at `batch`."""
    from netc.compile import build_ir, check_ir

    path = str(ROOT / "nets" / NETS[name][0])
    ir = build_ir(path, "train")
    declared = check_ir(ir)
    fed = {t for l in declared.layers if not l.bottoms for t in l.tops}
    data = next(l for l in declared.layers if not l.bottoms).tops[0]
    net = check_ir(ir, {data: (batch,) + tuple(declared.blob_shapes[data][1:])})
    cases = []
    for layer in net.layers:
        if layer.type not in TIMED_TYPES:
            continue
        info = net.layer_info[layer.name]
        cases.append(Case(name, layer, tuple(info.bottom_shapes[0]), tuple(info.top_shapes[0]),
                          tuple(tuple(s) for s in info.param_shapes), info.macs, layer.bottoms[0] not in fed))
    return cases


@dataclass
class Row:
    case: Case
    direction: str         # "fwd" or "bwd"
    ours_ms: float | None
    peer_ms: float
    work: float            # FLOPs (convolution) or bytes (LRN, pooling)
    unit: str              # "flop" or "byte"
    difference: float | None


def _rel(got, want) -> float:
    from netc.runtime.verify import relative_error
    return relative_error(got, want)


def time_case(case: Case, cupy, torch, kernels, clocks, repeat: int) -> list[Row]:
    """Forward and backward of one layer, ours and PyTorch's, on the same arrays."""
    import torch.nn.functional as F

    p = dict(case.layer.params)
    rng = cupy.random.RandomState(zlib.crc32(case.layer.name.encode()))   # the same arrays every run
    x = rng.standard_normal(case.bottom, dtype=cupy.float32)
    dy = rng.standard_normal(case.top, dtype=cupy.float32)
    xt, dyt = torch.from_dlpack(x), torch.from_dlpack(dy)
    ours_clock, peer_clock = clocks
    itemsize = 4
    count = lambda shape: math.prod(shape)   # noqa: E731

    if case.layer.type == "Convolution":
        w_shape = case.param_shapes[0]
        fan_in = math.prod(w_shape[1:])
        w = rng.standard_normal(w_shape, dtype=cupy.float32) * cupy.float32(1 / math.sqrt(fan_in))
        b = rng.standard_normal(case.param_shapes[1], dtype=cupy.float32) if p["bias_term"] else None
        wt = torch.from_dlpack(w)
        bt = torch.from_dlpack(b) if b is not None else None
        conv_args = (p["stride_hw"], p["pad_hw"], p["dilation_hw"], p["group"])

        def peer_fwd():
            return F.conv2d(xt, wt, bt, *conv_args)

        if hasattr(kernels, "conv_forward"):
            def ours_fwd():
                return kernels.conv_forward(x, w, b, p)

            def ours_bwd():
                dx = kernels.conv_backward_data(dy, w, x.shape, p) if case.needs_dx else None
                return dx, kernels.conv_backward_weights(x, dy, w.shape, p)
        else:
            ours_fwd = ours_bwd = None

        xr = xt.detach().requires_grad_(case.needs_dx)
        wr, br = wt.detach().requires_grad_(), bt.detach().requires_grad_() if bt is not None else None
        leaves = [t for t in (xr, wr, br) if t is not None and t.requires_grad]
        graph = F.conv2d(xr, wr, br, *conv_args)

        def peer_bwd():
            return torch.autograd.grad(graph, leaves, dyt, retain_graph=True)

        passes = 2 if case.needs_dx else 1          # ∂x and ∂w each cost the forward's MACs
        work = (2.0 * case.macs, 2.0 * case.macs * passes)
        unit = "flop"

        def compare():
            if ours_fwd is None:
                return None, None
            fwd = _rel(cupy.asnumpy(ours_fwd()), peer_fwd().cpu().numpy())
            dx, (dw, db) = ours_bwd()
            grads = [g.cpu().numpy() for g in peer_bwd()]
            ours_grads = ([cupy.asnumpy(dx)] if case.needs_dx else []) + [cupy.asnumpy(dw)] + \
                         ([cupy.asnumpy(db)] if b is not None else [])
            return fwd, max(_rel(o, t) for o, t in zip(ours_grads, grads))
    elif case.layer.type == "Pooling":
        is_max = p["pool"] == "MAX"
        kernel = tuple(case.bottom[2:]) if p["global_pooling"] else p["kernel"]
        stride = kernel if p["global_pooling"] else p["stride_hw"]
        pad = (0, 0) if p["global_pooling"] else p["pad_hw"]
        ceil = p["round_mode"] == "CEIL" and not p["global_pooling"]

        def torch_pool(inp):
            if is_max:
                return F.max_pool2d(inp, kernel, stride, pad, ceil_mode=ceil, return_indices=True)[0]
            return F.avg_pool2d(inp, kernel, stride, pad, ceil_mode=ceil, count_include_pad=True)

        if tuple(torch_pool(xt).shape) != case.top:
            print(f"  {case.layer.name}: PyTorch's window gives {tuple(torch_pool(xt).shape)}, Caffe's "
                  f"{case.top}: skipped", file=sys.stderr)
            return []

        def peer_fwd():
            if is_max:   # training's forward: the values and where they came from
                return F.max_pool2d(xt, kernel, stride, pad, ceil_mode=ceil, return_indices=True)
            return torch_pool(xt)

        if is_max:
            _, mask = kernels.max_pool_forward(x, p)

            def ours_fwd():
                return kernels.max_pool_forward(x, p)

            def ours_bwd():
                return kernels.max_pool_backward(dy, mask, x.shape, p)
        else:
            def ours_fwd():
                return kernels.ave_pool_forward(x, p)

            def ours_bwd():
                return kernels.ave_pool_backward(dy, x.shape, p)

        xr = xt.detach().requires_grad_()
        graph = torch_pool(xr)

        def peer_bwd():
            return torch.autograd.grad(graph, [xr], dyt, retain_graph=True)

        mask_bytes = count(case.top) * 4 if is_max else 0
        work = ((count(case.bottom) + count(case.top)) * itemsize + mask_bytes,
                (count(case.top) + count(case.bottom)) * itemsize + mask_bytes)
        unit = "byte"

        def compare():
            top = ours_fwd()
            fwd = _rel(cupy.asnumpy(top[0] if is_max else top), torch_pool(xt).cpu().numpy())
            return fwd, _rel(cupy.asnumpy(ours_bwd()), peer_bwd()[0].cpu().numpy())
    else:   # LRN
        size, alpha, beta, k = p["local_size"], p["alpha"], p["beta"], p["k"]

        def torch_lrn(inp):
            if p["norm_region"] == "ACROSS_CHANNELS":
                return F.local_response_norm(inp, size, alpha, beta, k)
            mean = F.avg_pool2d(inp * inp, size, 1, (size - 1) // 2, count_include_pad=True)   # Σ/n²
            return inp / (k + alpha * mean) ** beta

        def peer_fwd():
            return torch_lrn(xt)

        y, scale = kernels.lrn_forward(x, p)

        def ours_fwd():
            return kernels.lrn_forward(x, p)

        def ours_bwd():
            return kernels.lrn_backward(x, y, scale, dy, p)

        xr = xt.detach().requires_grad_()
        graph = torch_lrn(xr)

        def peer_bwd():
            return torch.autograd.grad(graph, [xr], dyt, retain_graph=True)

        n = count(case.bottom) * itemsize
        work, unit = (3.0 * n, 5.0 * n), "byte"     # x → y, scale;  x, y, scale, dy → dx

        def compare():
            return (_rel(cupy.asnumpy(ours_fwd()[0]), peer_fwd().cpu().numpy()),
                    _rel(cupy.asnumpy(ours_bwd()), peer_bwd()[0].cpu().numpy()))

    differences = compare()
    rows = []
    for direction, ours, peer, amount, difference in (("fwd", ours_fwd, peer_fwd, work[0], differences[0]),
                                                        ("bwd", ours_bwd, peer_bwd, work[1], differences[1])):
        ours_ms = ours_clock.median_ms(ours, repeat) if ours is not None else None
        peer_ms = peer_clock.median_ms(peer, repeat)
        rows.append(Row(case, direction, ours_ms, peer_ms, amount, unit, difference))
    return rows


# --- a whole training step -------------------------------------------------------------------

def training_step(cupy, torch, backend, clocks, repeat: int) -> dict:
    """One AlexNet SGD iteration at batch 128, netc against PyTorch, in images/s."""
    import numpy as np

    from netc.compile import build_ir, check_ir
    from netc.runtime.executor import Executor
    from netc.runtime.weights import init_weights
    from netc.train.solver import Solver
    from torch_peer import TorchNet

    name, batch = STEP_NET, NETS[STEP_NET][1]
    ir = build_ir(str(ROOT / "nets" / NETS[name][0]), "train")
    declared = check_ir(ir)
    source = next(l for l in declared.layers if not l.bottoms)
    data, label = source.tops[:2]
    net = check_ir(ir, {data: (batch,) + tuple(declared.blob_shapes[data][1:])})
    weights = init_weights(net, seed=0)
    classes = net.blob_shapes[next(l for l in net.layers if l.type == "SoftmaxWithLoss").bottoms[0]][1]
    rng = cupy.random.RandomState(0)
    feeds = {data: rng.standard_normal(net.blob_shapes[data], dtype=cupy.float32),
             label: rng.randint(0, classes, size=net.blob_shapes[label]).astype(cupy.float32)}

    executor = Executor(net, weights, backend=backend, dtype=np.float32, seed=0)
    solver = Solver(net.solver, net, executor.weights)
    iteration = [0]

    def ours():
        executor.forward(feeds)
        solver.step(executor.backward(), iteration[0])
        iteration[0] += 1

    peer = TorchNet(net, weights, requires_grad=True)
    peer.params = {n: [t.detach().cuda().requires_grad_() for t in blobs] for n, blobs in peer.params.items()}
    settings = dict(net.solver.fields)
    optimizer = torch.optim.SGD([t for blobs in peer.params.values() for t in blobs], lr=settings["base_lr"],
                                momentum=settings.get("momentum", 0.0), weight_decay=settings.get("weight_decay", 0))
    peer_feeds = {n: torch.from_dlpack(a) for n, a in feeds.items()}

    def theirs():
        optimizer.zero_grad(set_to_none=True)
        peer.forward(peer_feeds)
        sum(peer.losses).backward()
        optimizer.step()

    ours_clock, peer_clock = clocks
    ours_ms = ours_clock.median_ms(ours, repeat, warmup=2)
    peer_ms = peer_clock.median_ms(theirs, repeat, warmup=2)
    return {"net": name, "batch": batch, "ours_ms": ours_ms, "peer_ms": peer_ms,
            "ours_ips": batch / (ours_ms * 1e-3), "peer_ips": batch / (peer_ms * 1e-3)}


# --- output -----------------------------------------------------------------------------------

def machine(cupy, torch) -> dict:
    runtime = cupy.cuda.runtime
    device = cupy.cuda.Device()
    props = runtime.getDeviceProperties(device.id)
    name = props["name"].decode() if isinstance(props["name"], bytes) else str(props["name"])
    try:
        driver = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                capture_output=True, text=True, timeout=30).stdout.split("\n")[0].strip()
    except (OSError, subprocess.SubprocessError):
        driver = ""
    version = runtime.driverGetVersion()
    return {"gpu": name, "driver": driver or f"CUDA {version // 1000}.{version % 1000 // 10} driver API",
            "cuda": "{}.{}".format(*divmod(runtime.runtimeGetVersion() // 10, 100)), "cupy": cupy.__version__,
            "torch": torch.__version__, "cudnn": str(torch.backends.cudnn.version()),
            "date": datetime.date.today().isoformat()}


def _fraction(row: Row, ms: float | None, peak_flops: float, bandwidth: float) -> str:
    if ms is None:
        return "-"
    fraction = row.work / (ms * 1e-3) / (peak_flops if row.unit == "flop" else bandwidth)
    return f"{fraction:.1%}" if fraction < 0.1 else f"{fraction:.0%}"


def print_rows(rows: list[Row], peak_tflops: float, bandwidth_gbs: float, markdown: bool) -> None:
    if not rows:
        return
    peak, bandwidth = peak_tflops * 1e12, bandwidth_gbs * 1e9
    headers = ("net", "layer", "type", "pass", "input", "ours ms", "torch ms", "torch/ours", "ours of peak",
               "torch of peak", "max rel diff")
    table = []
    for r in rows:
        kind = r.case.layer.type + (f" {r.case.layer.params['pool']}" if r.case.layer.type == "Pooling" else "")
        table.append((r.case.net, r.case.layer.name, kind, r.direction, "x".join(map(str, r.case.bottom)),
                      "-" if r.ours_ms is None else f"{r.ours_ms:.3f}", f"{r.peer_ms:.3f}",
                      "-" if r.ours_ms is None else f"{r.peer_ms / r.ours_ms:.2f}",
                      _fraction(r, r.ours_ms, peak, bandwidth), _fraction(r, r.peer_ms, peak, bandwidth),
                      "-" if r.difference is None else f"{r.difference:.1e}"))
    if markdown:
        print("| " + " | ".join(headers) + " |")
        print("|" + "|".join("---" if i < 5 else "---:" for i in range(len(headers))) + "|")
        for cells in table:
            print("| " + " | ".join(cells) + " |")
    else:
        widths = [max(len(h), *(len(c[i]) for c in table)) for i, h in enumerate(headers)]
        print("  ".join(f"{h:<{w}}" if i < 5 else f"{h:>{w}}" for i, (h, w) in enumerate(zip(headers, widths))))
        for cells in table:
            print("  ".join(f"{c:<{w}}" if i < 5 else f"{c:>{w}}" for i, (c, w) in enumerate(zip(cells, widths))),
                  flush=True)
    for net in dict.fromkeys(r.case.net for r in rows):
        mine = [r for r in rows if r.case.net == net and r.ours_ms is not None]
        ours, theirs = sum(r.ours_ms for r in mine), sum(r.peer_ms for r in mine)
        if mine:
            print(f"{'' if not markdown else chr(10)}{net}: these layers take {ours:.2f} ms ours, {theirs:.2f} ms "
                  f"PyTorch's (torch/ours {theirs / ours:.2f})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--net", choices=sorted(NETS) + ["all"], default="all")
    parser.add_argument("--mode", choices=["layers", "step", "all"], default="all",
                        help="the layers one by one, one AlexNet training step, or both")
    parser.add_argument("--repeat", type=int, default=20, help="timings per figure (the median is printed)")
    parser.add_argument("--peak-tflops", type=float, help="the GPU's FP32 peak (default: measured by SGEMM)")
    parser.add_argument("--device", default="cuda", help="cuda or cuda:N (default: cuda)")
    parser.add_argument("--markdown", action="store_true", help="print tables for docs/gpu-bench.md")
    args = parser.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parent))   # torch_peer

    from netc.errors import NetcError
    from netc.runtime.backend import get_backend

    try:
        backend = get_backend(args.device)
    except NetcError as err:
        _fail(f"this benchmark needs a GPU, and {err.message}",
              "run it where there is an NVIDIA GPU, CuPy (pip install 'netc[cuda]') and a CUDA build of "
              "PyTorch; bench/cpu.py is the CPU benchmark")
    if not backend.is_gpu:
        _fail("this benchmark is for a GPU", "give --device cuda or cuda:N")
    try:
        import torch
    except ImportError:
        _fail("the peer, PyTorch, is not installed", "pip install torch (a CUDA build)")
    if not torch.cuda.is_available():
        _fail(f"PyTorch {torch.__version__} cannot use the GPU", "install a CUDA build of PyTorch")
    torch.cuda.set_device(backend.device_index)
    torch.backends.cudnn.benchmark = True          # cuDNN's fastest algorithm for each shape
    torch.backends.cudnn.allow_tf32 = False        # FP32 against FP32 (TF32 is on by default for convolutions)
    torch.backends.cuda.matmul.allow_tf32 = False
    cupy = backend.xp
    from netc.runtime import cuda_kernels as kernels

    if os.environ.get("CUPY_TF32") == "1":
        _fail("CUPY_TF32=1 makes CuPy's matrix products TF32: the FP32 peak and netc's numbers would not be FP32",
              "unset CUPY_TF32")
    clocks = (Clock("cupy"), Clock("torch"))
    info = machine(cupy, torch)
    peak = args.peak_tflops or fp32_peak_tflops(cupy, clocks[0], args.repeat)
    bandwidth = copy_bandwidth_gbs(cupy, clocks[0], args.repeat)
    lines = [f"GPU: {info['gpu']}, driver {info['driver']}, CUDA runtime {info['cuda']}, CuPy {info['cupy']}, "
             f"PyTorch {info['torch']} (cuDNN {info['cudnn']}), {info['date']}",
             f"FP32 peak: {peak:.1f} TFLOP/s ({'given' if args.peak_tflops else 'measured: 8192² SGEMM'}); "
             f"device copy: {bandwidth:.0f} GB/s (read + written); median of {args.repeat} timings"]
    print("\n\n".join(lines) if args.markdown else "\n".join(lines), flush=True)
    if not hasattr(kernels, "conv_forward"):
        print("note: netc.runtime.cuda_kernels has no convolution kernels yet: their rows show PyTorch alone",
              file=sys.stderr)

    nets = list(NETS) if args.net == "all" else [args.net]
    if args.mode in ("layers", "all"):
        rows = []
        for name in nets:
            for case in layer_cases(name, NETS[name][1]):
                rows.extend(time_case(case, cupy, torch, kernels, clocks, args.repeat))
                cupy.get_default_memory_pool().free_all_blocks()
                torch.cuda.empty_cache()
        print()
        print_rows(rows, peak, bandwidth, args.markdown)
    if args.mode in ("step", "all"):
        step = training_step(cupy, torch, backend, clocks, max(3, args.repeat // 4))
        print()
        text = (f"{step['net']} training step, batch {step['batch']}: netc {step['ours_ms']:.1f} ms "
                f"({step['ours_ips']:.0f} images/s), PyTorch {step['peer_ms']:.1f} ms ({step['peer_ips']:.0f} "
                f"images/s); netc/PyTorch images/s {step['ours_ips'] / step['peer_ips']:.2f}")
        if args.markdown:
            print("| net | batch | netc ms | netc images/s | PyTorch ms | PyTorch images/s | netc/PyTorch |")
            print("|---|---:|---:|---:|---:|---:|---:|")
            print(f"| {step['net']} | {step['batch']} | {step['ours_ms']:.1f} | {step['ours_ips']:.0f} | "
                  f"{step['peer_ms']:.1f} | {step['peer_ips']:.0f} | {step['ours_ips'] / step['peer_ips']:.2f} |")
        else:
            print(text)


if __name__ == "__main__":
    main()
