"""Caffe's SolverParameter fields that netc understands: names, kinds, defaults.

The .net `solver` block and Caffe's solver.prototxt are both checked against this
table, so a field means the same thing in both. The update rules themselves live
in netc/train/solver.py.
"""
from __future__ import annotations

from netc.layers.base import Param

SOLVER_TYPES = ("SGD", "Nesterov", "AdaGrad", "RMSProp", "AdaDelta", "Adam")
LR_POLICIES = ("fixed", "step", "exp", "inv", "multistep", "poly", "sigmoid")

# For each lr_policy, the fields it reads (Caffe's formulas in shared/caffe_semantics.md).
LR_POLICY_FIELDS = {
    "fixed": (),
    "step": ("gamma", "stepsize"),
    "exp": ("gamma",),
    "inv": ("gamma", "power"),
    "multistep": ("gamma", "stepvalue"),
    "poly": ("power",),
    "sigmoid": ("gamma", "stepsize"),
}

SOLVER_FIELDS = (
    Param("base_lr", "float", 0.01, minimum=0, aliases=("lr",)),
    Param("momentum", "float", 0.0, minimum=0),
    Param("momentum2", "float", 0.999, minimum=0),
    Param("weight_decay", "float", 0.0, minimum=0),
    Param("regularization_type", "str", "L2", aliases=("regularization",)),
    Param("lr_policy", "str", "fixed"),
    Param("gamma", "float", None),
    Param("power", "float", None),
    Param("stepsize", "int", None, minimum=1),
    Param("stepvalue", "ints", ()),
    Param("max_iter", "int", 0, minimum=0),
    Param("test_interval", "int", 0, minimum=0),
    Param("test_iter", "ints", ()),
    Param("test_initialization", "bool", True),
    Param("display", "int", 0, minimum=0),
    Param("average_loss", "int", 1, minimum=1),
    Param("snapshot", "int", 0, minimum=0),
    Param("snapshot_prefix", "str", ""),
    Param("clip_gradients", "float", -1.0),
    Param("iter_size", "int", 1, minimum=1),
    Param("random_seed", "int", -1, aliases=("seed",)),
    Param("delta", "float", 1e-8, minimum=0),
    Param("rms_decay", "float", 0.99, minimum=0),
)


def solver_field(name: str) -> Param | None:
    for p in SOLVER_FIELDS:
        if p.name == name or name in p.aliases:
            return p
    return None
