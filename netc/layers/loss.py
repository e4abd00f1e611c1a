"""Softmax, the losses and Accuracy. Losses produce a scalar (shape []).

SoftmaxWithLoss: loss = −Σ log(max(p_label, FLT_MIN)) / normalizer (VALID: labels ≠ ignore_label).
EuclideanLoss:   loss = Σ (a − b)² / (2N).
SigmoidCrossEntropyLoss: loss = −Σ [y log σ(x) + (1 − y) log(1 − σ(x))] / N.
Accuracy: fraction of predictions whose label is among the top_k scores.
"""
from __future__ import annotations

from netc.layers.base import LayerType, Param, ShapeError, count, register

_LOSS_PARAMS = (
    Param("ignore_label", "int", None, message="loss_param"),
    Param("normalization", "enum", "VALID", choices=("FULL", "VALID", "BATCH_SIZE", "NONE"),
          message="loss_param"),
    Param("normalize", "bool", None, message="loss_param"),
)


def _axis(axis: int, shape, param="axis") -> int:
    real = axis + len(shape) if axis < 0 else axis
    if not 0 <= real < len(shape):
        raise ShapeError(f"axis {axis} is out of range for shape {list(shape)}", param=param, bottom=0)
    return real


def _check_labels(scores, labels, axis: int, what: str):
    outer, inner = count(scores[:axis]), count(scores[axis + 1:])
    if count(labels) != outer * inner:
        raise ShapeError(
            f"{what} has {count(labels)} labels for {outer * inner} predictions "
            f"(scores {list(scores)}, labels {list(labels)})",
            f"with scores of shape {list(scores)} there must be one label per position outside axis {axis}",
            bottom=1)


@register
class Softmax(LayerType):
    type_name = "Softmax"
    summary = "softmax over axis (default 1, the channels)"
    params = (Param("axis", "int", 1),)
    message = "softmax_param"

    def infer(self, p, bottoms, ntops):
        _axis(p["axis"], bottoms[0])
        return [bottoms[0]]


@register
class SoftmaxWithLoss(LayerType):
    type_name = "SoftmaxWithLoss"
    summary = "softmax + multinomial logistic loss; bottoms: scores, labels"
    params = (Param("axis", "int", 1, message="softmax_param"),) + _LOSS_PARAMS
    min_bottoms = max_bottoms = 2
    num_tops = (1, 2)   # the second top, if asked for, is the softmax probabilities
    is_loss = True

    def infer(self, p, bottoms, ntops):
        axis = _axis(p["axis"], bottoms[0])
        _check_labels(bottoms[0], bottoms[1], axis, "SoftmaxWithLoss")
        return [()] + [bottoms[0]] * (ntops - 1)


@register
class EuclideanLoss(LayerType):
    type_name = "EuclideanLoss"
    summary = "sum of squared differences / 2N; two bottoms of equal size"
    min_bottoms = max_bottoms = 2
    is_loss = True

    def infer(self, p, bottoms, ntops):
        a, b = bottoms
        if count(a[1:]) != count(b[1:]) or a[:1] != b[:1]:
            raise ShapeError(f"EuclideanLoss compares blobs of equal size, got {list(a)} and {list(b)}",
                             bottom=1)
        return [()]


@register
class SigmoidCrossEntropyLoss(LayerType):
    type_name = "SigmoidCrossEntropyLoss"
    summary = "sigmoid + cross-entropy against targets in [0, 1]; two bottoms of equal size"
    params = _LOSS_PARAMS
    min_bottoms = max_bottoms = 2
    is_loss = True

    def infer(self, p, bottoms, ntops):
        a, b = bottoms
        if count(a) != count(b):
            raise ShapeError(f"SigmoidCrossEntropyLoss needs as many targets as scores, "
                             f"got {list(a)} and {list(b)}", bottom=1)
        return [()]


@register
class Accuracy(LayerType):
    type_name = "Accuracy"
    summary = "top-k accuracy of scores against labels; a metric, not a loss"
    params = (
        Param("top_k", "int", 1, minimum=1),
        Param("axis", "int", 1),
        Param("ignore_label", "int", None),
    )
    message = "accuracy_param"
    min_bottoms = max_bottoms = 2
    num_tops = (1, 2)   # the second top is the per-class accuracy

    def infer(self, p, bottoms, ntops):
        axis = _axis(p["axis"], bottoms[0])
        classes = bottoms[0][axis]
        if p["top_k"] > classes:
            raise ShapeError(f"top_k ({p['top_k']}) is more than the {classes} classes", param="top_k")
        _check_labels(bottoms[0], bottoms[1], axis, "Accuracy")
        return [()] + [(classes,)] * (ntops - 1)
