"""Caffe's solvers: learning-rate policies and update rules, one small function each.

One iteration, in Caffe's order (SGDSolver::ApplyUpdate):

    lr = policy(iter)                      iter 0-based, the iteration being completed
    clip    if ‖g‖₂ > clip_gradients > 0: g *= clip/‖g‖   (the norm over all updated blobs)
    normalize  g /= iter_size              (the trainer hands in the sum of iter_size passes)
    regularize g += weight_decay·decay_mult·w   (L2)   or ·sign(w)   (L1)
    update  W -= rule(history, g, lr·lr_mult)

The rules are Caffe's, not PyTorch's: SGD folds the learning rate into the velocity,
Adam adds δ to the uncorrected √v. The formulas are in shared/caffe_semantics.md.

Arithmetic uses the array module's ufuncs with out= and in-place operators, the
module taken from the arrays, so the same code runs on NumPy and CuPy arrays in
their dtype, and writes only into the history and scratch the solver keeps: no
allocation inside the training loop (house rule 6).
"""
from __future__ import annotations

import math
import sys
from dataclasses import dataclass, field

from netc.errors import NetcError
from netc.ir import Net, ParamSpec, SolverSpec
from netc.train.solver_config import LR_POLICIES, LR_POLICY_FIELDS, SOLVER_FIELDS, SOLVER_TYPES


# ---------------------------------------------------------------------------
# Settings
# ---------------------------------------------------------------------------

def solver_settings(spec: SolverSpec) -> dict:
    """Every solver field, the user's value or the default, plus `type`; the
    settings a user could get wrong are checked here, at the field they wrote."""
    settings = {p.name: p.default for p in SOLVER_FIELDS}
    settings.update(spec.fields)
    settings["type"] = spec.type
    _check(spec, settings)
    return settings


def _check(spec: SolverSpec, s: dict) -> None:
    def fail(name: str, message: str, hint: str | None = None) -> None:
        raise NetcError(message, spec.field_spans.get(name, spec.span), hint)

    kind = spec.type
    if kind not in SOLVER_TYPES:
        fail("type", f"unknown solver type '{kind}'", f"solvers are: {', '.join(SOLVER_TYPES)}")
    if s["regularization_type"] not in ("L1", "L2"):
        fail("regularization_type", f"unknown regularization '{s['regularization_type']}'",
             "regularization_type is L1 or L2")
    policy = s["lr_policy"]
    if policy not in LR_POLICIES:
        fail("lr_policy", f"unknown lr_policy '{policy}'", f"policies are: {', '.join(LR_POLICIES)}")
    for needed in LR_POLICY_FIELDS[policy]:
        if s[needed] is None or (isinstance(s[needed], (tuple, list)) and not s[needed]):
            fail("lr_policy", f"lr_policy {policy} needs {needed}",
                 f"e.g. lr_policy={policy}({', '.join(f + '=...' for f in LR_POLICY_FIELDS[policy])})")
    if policy == "poly" and s["max_iter"] <= 0:
        fail("max_iter", "lr_policy poly needs max_iter > 0", "poly decays the rate to 0 at max_iter")
    steps = list(s["stepvalue"])
    if policy == "multistep" and any(a >= b for a, b in zip(steps, steps[1:])):
        fail("stepvalue", f"stepvalues must increase, not {steps}", "list the iterations in order, e.g. [1000, 2000]")
    if s["clip_gradients"] == 0:
        fail("clip_gradients", "clip_gradients 0 would scale every gradient to zero",
             "give the largest gradient norm allowed, or a negative value to not clip")

    # Caffe's own checks (AdaGrad and RMSProp refuse momentum), and the decay rates
    # that would never forget (≥ 1) or divide by zero (δ = 0).
    momentum = s["momentum"]
    if kind in ("AdaGrad", "RMSProp") and momentum != 0:
        fail("momentum", f"{kind} takes no momentum", "remove momentum, or use SGD, Nesterov or Adam")
    if kind in ("SGD", "Nesterov", "AdaDelta", "Adam") and momentum >= 1:
        role = {"Adam": "β1", "AdaDelta": "the decay rate ρ"}.get(kind, "momentum")
        fail("momentum", f"momentum must be below 1 for {kind}, not {momentum:g}",
             f"momentum is {role}; 0.9 is usual" + (", 0.95 for AdaDelta" if kind == "AdaDelta" else ""))
    if kind == "Adam" and s["momentum2"] >= 1:
        fail("momentum2", f"momentum2 must be below 1 for Adam, not {s['momentum2']:g}", "momentum2 is β2; 0.999 is usual")
    if kind == "RMSProp" and s["rms_decay"] >= 1:
        fail("rms_decay", f"rms_decay must be below 1, not {s['rms_decay']:g}", "0.99 is usual")
    if kind in ("AdaGrad", "RMSProp", "AdaDelta", "Adam") and s["delta"] <= 0:
        fail("delta", f"{kind} needs delta > 0", "delta keeps the division finite where gradients are 0; 1e-8 is usual")


# ---------------------------------------------------------------------------
# Learning-rate policies (Caffe's SGDSolver::GetLearningRate)
# ---------------------------------------------------------------------------

LR_POLICY_RATES = {
    "fixed": lambda s, it: s["base_lr"],
    "step": lambda s, it: s["base_lr"] * s["gamma"] ** (it // s["stepsize"]),
    "exp": lambda s, it: s["base_lr"] * s["gamma"] ** it,
    "inv": lambda s, it: s["base_lr"] * (1 + s["gamma"] * it) ** -s["power"],
    # Caffe counts the stepvalues passed one per iteration; with increasing stepvalues
    # (checked) that is the number of stepvalues <= iter, also right after a resume.
    "multistep": lambda s, it: s["base_lr"] * s["gamma"] ** sum(1 for v in s["stepvalue"] if it >= v),
    # Past max_iter Caffe's pow of a negative base is NaN; the rate stays 0 instead.
    "poly": lambda s, it: s["base_lr"] * max(0.0, 1 - it / s["max_iter"]) ** s["power"],
    "sigmoid": lambda s, it: s["base_lr"] / (1 + math.exp(-s["gamma"] * (it - s["stepsize"]))),
}


def learning_rate(settings: dict, iteration: int) -> float:
    """The rate Caffe uses to complete `iteration` (0-based)."""
    return float(LR_POLICY_RATES[settings["lr_policy"]](settings, iteration))


# ---------------------------------------------------------------------------
# Update rules (Caffe's ComputeUpdateValue): update the history in place and
# return what is subtracted from the weights. g is already clipped, normalized
# and regularized, in a scratch array the rule may overwrite; `spare` holds the
# rule's other scratch arrays (RULES counts them). All arrays are shaped alike: a
# slice of the blob's elements, or the whole blob. rate = lr·lr_mult; t = iter + 1.
#
# Every operation writes into an array it is given (out=, in-place operators), so
# a step allocates nothing the size of a blob. Each is the operation the plain
# expression would do, on the same operands in the same precision (a·g and g·a
# round alike), so on NumPy the results are the expressions', bit for bit.
# √ is sqrt, which is what NumPy's x ** 0.5 computes (CuPy's x ** 0.5 is
# pow(x, 0.5), which may differ from the correctly rounded sqrt in the last bit).
# ---------------------------------------------------------------------------

def sgd(xp, history, g, spare, rate, s, t):
    v, = history                         # V ← μV + rate·g; update V
    v *= s["momentum"]
    g *= rate
    v += g
    return v


def nesterov(xp, history, g, spare, rate, s, t):
    v, = history                         # V' = μV + rate·g; update (1+μ)V' − μV
    old, = spare
    mu = s["momentum"]
    old[...] = v
    v *= mu
    g *= rate
    v += g
    update = xp.multiply(v, 1 + mu, out=g)
    old *= mu
    update -= old
    return update


def adagrad(xp, history, g, spare, rate, s, t):
    h, = history                         # h += g²; update rate·g/(√h + δ)
    work, = spare
    h += xp.multiply(g, g, out=work)
    return _scaled_by_root(xp, g, h, work, rate, s["delta"])


def rmsprop(xp, history, g, spare, rate, s, t):
    h, = history                         # h = ρh + (1−ρ)g²; update rate·g/(√h + δ)
    work, = spare
    rho = s["rms_decay"]
    h *= rho
    h += _weighted_square(xp, g, 1 - rho, out=work)
    return _scaled_by_root(xp, g, h, work, rate, s["delta"])


def adadelta(xp, history, g, spare, rate, s, t):
    # Caffe's AdaDelta: ρ = momentum, and unlike Zeiler's paper it is scaled by rate.
    #   Eg² = ρEg² + (1−ρ)g²;  dx = g·√((EΔ² + δ)/(Eg² + δ));  EΔ² = ρEΔ² + (1−ρ)dx²;  update rate·dx
    grad_sq, update_sq = history
    ratio, work = spare
    rho, delta = s["momentum"], s["delta"]
    grad_sq *= rho
    grad_sq += _weighted_square(xp, g, 1 - rho, out=work)
    xp.add(update_sq, delta, out=ratio)
    ratio /= xp.add(grad_sq, delta, out=work)
    dx = g
    dx *= xp.sqrt(ratio, out=ratio)
    update_sq *= rho
    update_sq += _weighted_square(xp, dx, 1 - rho, out=work)
    dx *= rate
    return dx


def adam(xp, history, g, spare, rate, s, t):
    # m = β1m + (1−β1)g; v = β2v + (1−β2)g²; update rate·√(1−β2^t)/(1−β1^t)·m/(√v + δ)
    m, v = history
    work, = spare
    beta1, beta2 = s["momentum"], s["momentum2"]
    m *= beta1
    m += xp.multiply(g, 1 - beta1, out=work)
    v *= beta2
    v += _weighted_square(xp, g, 1 - beta2, out=g)
    correction = math.sqrt(1 - beta2 ** t) / (1 - beta1 ** t)
    update = xp.sqrt(v, out=g)
    update += s["delta"]
    xp.divide(m, update, out=update)
    update *= rate * correction
    return update


def _weighted_square(xp, x, weight, out):
    """weight·x², as (x·x)·weight; out may be x."""
    xp.multiply(x, x, out=out)
    out *= weight
    return out


def _scaled_by_root(xp, g, h, work, rate, delta):
    """g/(√h + δ)·rate, written over g; work is spare."""
    root = xp.sqrt(h, out=work)
    root += delta
    g /= root
    g *= rate
    return g


# The rule, the names of its history buffers (as they appear in state()), and how
# many scratch arrays it needs besides the gradient's.
RULES = {
    "SGD": (sgd, ("velocity",), 0),
    "Nesterov": (nesterov, ("velocity",), 1),
    "AdaGrad": (adagrad, ("grad_sq_sum",), 1),
    "RMSProp": (rmsprop, ("grad_sq_mean",), 1),
    "AdaDelta": (adadelta, ("grad_sq_mean", "update_sq_mean"), 2),
    "Adam": (adam, ("m", "v"), 1),
}


# A blob is updated SLICE elements at a time (every rule is elementwise once the
# clip scale is known), so the scratch is SLICE elements long, not as long as the
# largest blob: AlexNet's fc6 weight would make it 2 × 144 MiB. At 2²⁰ elements a
# slice's Python calls (~10 µs) are under 1% of its arithmetic on a CPU and there
# are few kernel launches on a GPU, while the scratch (4 MiB a float32 array) stays
# in a CPU's cache: AlexNet's step takes ~0.6× the time of whole-blob updates.
# At least 128: _sum_of_squares splits as NumPy's pairwise sum does, which leaves
# blocks of up to 128 whole.
SLICE = 1 << 20


def scratch_arrays(solver_type: str, regularized: bool) -> int:
    """How many scratch arrays a solver keeps: the gradient's, and the rule's spares
    or the decay term's, whichever are more (the decay term is added to the gradient
    before the rule runs)."""
    return 1 + max(RULES[solver_type][2], int(regularized))


def scratch_bytes(net: Net, dtype_bytes: int, spec: SolverSpec | None = None) -> int:
    """The bytes of scratch a Solver for `net` keeps, from the IR: scratch_arrays()
    times SLICE elements, or the largest blob it updates where that is shorter.
    `spec` defaults to the net's solver."""
    spec = spec if spec is not None else net.solver
    solver_type = spec.type if spec is not None else "SGD"
    weight_decay = spec.fields.get("weight_decay", 0.0) if spec is not None else 0.0
    largest, decayed, seen = 0, False, set()
    for layer in net.layers:
        for i, shape in enumerate(net.layer_info[layer.name].param_shapes):
            param = layer.param_specs[i] if i < len(layer.param_specs) else ParamSpec()
            if param.name is not None:
                if param.name in seen:
                    continue                # shared: the owner's multipliers count (updated_blobs)
                seen.add(param.name)
            if param.lr_mult == 0 or layer.type == "BatchNorm":
                continue
            largest = max(largest, math.prod(shape))
            decayed = decayed or param.decay_mult != 0
    if not largest:
        return 0
    return scratch_arrays(solver_type, weight_decay != 0 and decayed) * min(largest, SLICE) * dtype_bytes


def _sum_of_squares(xp, g, square):
    """Σ g² over the flat array g, as (g·g).sum() would sum it, with g² written into
    pieces of the flat scratch `square` only. NumPy sums a contiguous array pairwise,
    halving it at a multiple of 8 until a block is at most 128 long; splitting where
    it does until a block fits the scratch, and adding the blocks' sums in the array's
    dtype as it does, gives its sum bit for bit. (CuPy sums in an order of its own:
    there it is just a sum by blocks.)"""
    n = g.size
    if n <= square.size:
        return xp.multiply(g, g, out=square[:n]).sum()
    half = n // 2 - n // 2 % 8
    return _sum_of_squares(xp, g[:half], square) + _sum_of_squares(xp, g[half:], square)


# ---------------------------------------------------------------------------
# The solver
# ---------------------------------------------------------------------------

def _array_module(array):
    """numpy or cupy, whichever module the array belongs to (cupy.get_array_module
    without importing cupy)."""
    return sys.modules[type(array).__module__.partition(".")[0]]


@dataclass
class _Blob:
    """One learnable array, listed once however many layers share it."""
    key: str                              # "<owner layer>/<index>", prefix of its state names
    weight: object
    lr_mult: float
    decay_mult: float
    places: list = field(default_factory=list)   # (layer, index) of every user

    def gradient(self, grads: dict):
        # The executor hands every user of a shared blob the same summed gradient.
        for layer, i in self.places:
            diffs = grads.get(layer)
            if diffs is not None and i < len(diffs) and diffs[i] is not None:
                return diffs[i]
        return None


def updated_blobs(net: Net, weights: dict) -> list[_Blob]:
    """The blobs the solver updates, in net order, with the owner's (first user's)
    multipliers: lr_mult 0 and BatchNorm's statistics are left out."""
    by_id: dict[int, _Blob] = {}
    for layer in net.layers:
        for i, weight in enumerate(weights.get(layer.name) or ()):
            blob = by_id.get(id(weight))
            if blob is None:
                spec = layer.param_specs[i] if i < len(layer.param_specs) else None
                lr_mult, decay_mult = (spec.lr_mult, spec.decay_mult) if spec else (1.0, 1.0)
                if layer.type == "BatchNorm":
                    lr_mult = 0.0           # Caffe fixes it: the statistics are not learned
                blob = by_id[id(weight)] = _Blob(f"{layer.name}/{i}", weight, lr_mult, decay_mult)
            blob.places.append((layer.name, i))
    return [blob for blob in by_id.values() if blob.lr_mult != 0]


class Solver:
    """Applies Caffe's update for one iteration to `weights`, in place, and keeps
    the history each rule needs. A blob's history is made when its first gradient
    arrives; blobs without gradients (None) are neither updated nor given history.

    The arithmetic runs in scratch arrays made at the first step and kept: for each
    array module and dtype, scratch_arrays() flat arrays of SLICE elements (fewer if
    no updated blob is that large). A blob up to SLICE long is updated whole in views
    of them; a longer one slice by slice, through flat views of its weight, gradient
    and history, so steps allocate nothing the size of a blob. A longer blob whose
    weight or history is not C-contiguous has no flat view to write through: it is
    updated whole, in temporaries made for that step. A gradient of another dtype
    than its weight is rounded to the weight's as it is scaled."""

    def __init__(self, spec: SolverSpec, net: Net, weights: dict):
        self.settings = solver_settings(spec)
        self.rule, self.buffer_names, self.spare_arrays = RULES[spec.type]
        self.blobs = updated_blobs(net, weights)
        self.history: dict[str, list] = {}      # blob key → its buffers, in buffer_names order
        self._scratch: dict[tuple, list] = {}   # (array type, dtype) → flat scratch arrays

    def step(self, grads: dict, iteration: int) -> float:
        """Complete `iteration` (0-based) with `grads`, the sum of iter_size backward
        passes; the caller's gradients are left as they are. Returns the lr used."""
        s = self.settings
        lr = learning_rate(s, iteration)
        live = [(blob, g) for blob in self.blobs if (g := blob.gradient(grads)) is not None]
        regularized = s["weight_decay"] != 0 and any(blob.decay_mult for blob in self.blobs)
        count = scratch_arrays(s["type"], regularized)
        scale = self._clip_scale(live, count) / s["iter_size"]
        for blob, g in live:
            w = blob.weight
            xp = _array_module(w)
            history = self.history.get(blob.key)
            if history is None:
                history = self.history[blob.key] = [xp.zeros_like(w) for _ in self.buffer_names]
            rate, decay = lr * blob.lr_mult, s["weight_decay"] * blob.decay_mult
            size = w.size
            if size <= SLICE:
                scratch = [a[:size].reshape(w.shape) for a in self._flat_scratch(w, count)]
                self._update(xp, w, g, history, scratch, scale, decay, rate, iteration + 1)
            elif all(a.flags.c_contiguous for a in (w, *history)):
                # flat views; g's is a copy if g is strided, which costs only a temporary
                flats = [w.reshape(-1), g.reshape(-1), *(h.reshape(-1) for h in history)]
                scratch = self._flat_scratch(w, count)
                for start in range(0, size, SLICE):
                    stop = min(start + SLICE, size)
                    w_part, g_part, *history_part = [f[start:stop] for f in flats]
                    self._update(xp, w_part, g_part, history_part, [a[:stop - start] for a in scratch],
                                 scale, decay, rate, iteration + 1)
            else:
                # reshape(-1) would copy, and the update would land in the copy: the
                # whole blob at once, in temporaries
                scratch = [xp.empty_like(w) for _ in range(count)]
                self._update(xp, w, g, history, scratch, scale, decay, rate, iteration + 1)
        return lr

    def _update(self, xp, w, g, history, scratch, scale, decay, rate, t) -> None:
        """w −= rule(history, g·scale + decay term), all of them the same slice or
        blob; scratch holds scratch_arrays() arrays shaped like them."""
        scaled, *spare = scratch
        # g·scale (+ the decay term) goes to scratch, so clipping never touches grads;
        # the decay term is made first, so that L1's sign can borrow `scaled` too
        if decay:
            term = spare[0]
            if self.settings["regularization_type"] == "L2":
                xp.multiply(w, decay, out=term)
            else:
                _sign(xp, w, out=term, work=scaled)
                term *= decay
            xp.multiply(g, scale, out=scaled)
            scaled += term
        else:
            xp.multiply(g, scale, out=scaled)
        w -= self.rule(xp, history, scaled, spare[:self.spare_arrays], rate, self.settings, t)

    def _clip_scale(self, live: list, count: int) -> float:
        clip = self.settings["clip_gradients"]
        if clip < 0 or not live:
            return 1.0
        # Σ g² per blob summed as (g·g).sum() would be, in the gradient's scratch
        squares = 0.0
        for blob, g in live:
            square = self._flat_scratch(blob.weight, count)[0]
            # a strided g's reshape(-1) is a C-ordered copy, which sums as g·g would
            squares += float(_sum_of_squares(_array_module(g), g.reshape(-1), square))
        norm = math.sqrt(squares)
        return clip / norm if norm > clip else 1.0

    def _flat_scratch(self, weight, count: int) -> list:
        """`count` flat scratch arrays of `weight`'s array type and dtype, made (again)
        when fewer than `count` are kept: SLICE elements long, or as long as the
        largest such blob where that is shorter."""
        key = (type(weight), weight.dtype)
        flats = self._scratch.get(key, [])
        if len(flats) < count:
            largest = max(b.weight.size for b in self.blobs if (type(b.weight), b.weight.dtype) == key)
            xp = _array_module(weight)
            flats = self._scratch[key] = [xp.empty(min(largest, SLICE), weight.dtype) for _ in range(count)]
        return flats[:count]

    # --- snapshots ----------------------------------------------------------------
    def state(self) -> dict:
        """Every history buffer, named "<layer>/<index>/<buffer>" (e.g. conv1/0/velocity).
        Adam's t is not kept: it is iteration + 1."""
        return {f"{key}/{name}": buffer for key, buffers in self.history.items()
                for name, buffer in zip(self.buffer_names, buffers)}

    def load_state(self, state: dict) -> None:
        """Replace the history with `state` (as state() wrote it, arrays of any module)."""
        hint = "the solver state was written for another net or solver type"
        known = {f"{blob.key}/{name}" for blob in self.blobs for name in self.buffer_names}
        for name in state:
            if name not in known:
                raise NetcError(f"solver state entry '{name}' matches no blob this {self.settings['type']} "
                                "solver updates", None, hint)
        history = {}
        for blob in self.blobs:
            names = [f"{blob.key}/{name}" for name in self.buffer_names]
            if blob.key not in self.history and not any(n in state for n in names):
                continue                        # no gradient had reached it yet
            buffers = []
            for name in names:
                if name not in state:
                    raise NetcError(f"solver state lacks '{name}'", None, hint)
                value = state[name]
                if tuple(value.shape) != tuple(blob.weight.shape):
                    raise NetcError(f"solver state '{name}' has shape {tuple(value.shape)}, "
                                    f"the blob {tuple(blob.weight.shape)}", None, hint)
                xp = _array_module(blob.weight)
                buffer = xp.zeros_like(blob.weight)
                buffer[...] = xp.asarray(value)
                buffers.append(buffer)
            history[blob.key] = buffers
        self.history = history


def _sign(xp, w, out, work):
    """Caffe's caffe_cpu_sign, (w > 0) − (w < 0): +1, −1, and 0 at 0 (and at NaN)."""
    xp.greater(w, 0, out=work)
    xp.less(w, 0, out=out)
    return xp.subtract(work, out, out=out)
