"""Caffe's solvers: learning-rate policies and update rules, one small function each.

One iteration, in Caffe's order (SGDSolver::ApplyUpdate):

    lr = policy(iter)                      iter 0-based, the iteration being completed
    clip    if ‖g‖₂ > clip_gradients > 0: g *= clip/‖g‖   (the norm over all updated blobs)
    normalize  g /= iter_size              (the trainer hands in the sum of iter_size passes)
    regularize g += weight_decay·decay_mult·w   (L2)   or ·sign(w)   (L1)
    update  W -= rule(history, g, lr·lr_mult)

The rules are Caffe's, not PyTorch's: SGD folds the learning rate into the velocity,
Adam adds δ to the uncorrected √v. The formulas are in shared/caffe_semantics.md.

Arithmetic uses array operators and methods only, and the array module is taken
from the arrays, so the same code runs on NumPy and CuPy arrays in their dtype.
"""
from __future__ import annotations

import math
import sys
from dataclasses import dataclass, field

from netc.errors import NetcError
from netc.ir import Net, SolverSpec
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
# and regularized; rate = lr·lr_mult; t = iter + 1.
# ---------------------------------------------------------------------------

def sgd(history, g, rate, s, t):
    v, = history                         # V ← μV + rate·g; update V
    v *= s["momentum"]
    v += rate * g
    return v


def nesterov(history, g, rate, s, t):
    v, = history                         # V' = μV + rate·g; update (1+μ)V' − μV
    mu = s["momentum"]
    old = v.copy()
    v *= mu
    v += rate * g
    return v * (1 + mu) - old * mu


def adagrad(history, g, rate, s, t):
    h, = history                         # h += g²; update rate·g/(√h + δ)
    h += g * g
    return g / (h ** 0.5 + s["delta"]) * rate


def rmsprop(history, g, rate, s, t):
    h, = history                         # h = ρh + (1−ρ)g²; update rate·g/(√h + δ)
    rho = s["rms_decay"]
    h *= rho
    h += (1 - rho) * (g * g)
    return g / (h ** 0.5 + s["delta"]) * rate


def adadelta(history, g, rate, s, t):
    # Caffe's AdaDelta: ρ = momentum, and unlike Zeiler's paper it is scaled by rate.
    #   Eg² = ρEg² + (1−ρ)g²;  dx = g·√((EΔ² + δ)/(Eg² + δ));  EΔ² = ρEΔ² + (1−ρ)dx²;  update rate·dx
    grad_sq, update_sq = history
    rho, delta = s["momentum"], s["delta"]
    grad_sq *= rho
    grad_sq += (1 - rho) * (g * g)
    dx = g * ((update_sq + delta) / (grad_sq + delta)) ** 0.5
    update_sq *= rho
    update_sq += (1 - rho) * (dx * dx)
    return dx * rate


def adam(history, g, rate, s, t):
    # m = β1m + (1−β1)g; v = β2v + (1−β2)g²; update rate·√(1−β2^t)/(1−β1^t)·m/(√v + δ)
    m, v = history
    beta1, beta2 = s["momentum"], s["momentum2"]
    m *= beta1
    m += (1 - beta1) * g
    v *= beta2
    v += (1 - beta2) * (g * g)
    correction = math.sqrt(1 - beta2 ** t) / (1 - beta1 ** t)
    return m / (v ** 0.5 + s["delta"]) * (rate * correction)


# The rule and the names of its history buffers (as they appear in state()).
RULES = {
    "SGD": (sgd, ("velocity",)),
    "Nesterov": (nesterov, ("velocity",)),
    "AdaGrad": (adagrad, ("grad_sq_sum",)),
    "RMSProp": (rmsprop, ("grad_sq_mean",)),
    "AdaDelta": (adadelta, ("grad_sq_mean", "update_sq_mean")),
    "Adam": (adam, ("m", "v")),
}


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
    arrives; blobs without gradients (None) are neither updated nor given history."""

    def __init__(self, spec: SolverSpec, net: Net, weights: dict):
        self.settings = solver_settings(spec)
        self.rule, self.buffer_names = RULES[spec.type]
        self.blobs = updated_blobs(net, weights)
        self.history: dict[str, list] = {}      # blob key → its buffers, in buffer_names order

    def step(self, grads: dict, iteration: int) -> float:
        """Complete `iteration` (0-based) with `grads`, the sum of iter_size backward
        passes; the caller's gradients are left as they are. Returns the lr used."""
        s = self.settings
        lr = learning_rate(s, iteration)
        live = [(blob, g) for blob in self.blobs if (g := blob.gradient(grads)) is not None]
        scale = self._clip_scale([g for _, g in live]) / s["iter_size"]
        for blob, g in live:
            g = g * scale                       # a new array, so clipping never touches grads
            decay = s["weight_decay"] * blob.decay_mult
            if decay:
                w = blob.weight
                g += decay * (w if s["regularization_type"] == "L2" else _sign(w))
            history = self.history.get(blob.key)
            if history is None:
                xp = _array_module(blob.weight)
                history = self.history[blob.key] = [xp.zeros_like(blob.weight) for _ in self.buffer_names]
            blob.weight -= self.rule(history, g, lr * blob.lr_mult, s, iteration + 1)
        return lr

    def _clip_scale(self, grads: list) -> float:
        clip = self.settings["clip_gradients"]
        if clip < 0 or not grads:
            return 1.0
        norm = math.sqrt(sum(float((g * g).sum()) for g in grads))
        return clip / norm if norm > clip else 1.0

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


def _sign(w):
    # Caffe's caffe_cpu_sign: +1, −1, and 0 at 0.
    return (w > 0).astype(w.dtype) - (w < 0).astype(w.dtype)
