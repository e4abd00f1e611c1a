"""The layer registry: Caffe type name → LayerType. Importing this package registers every family."""
from netc.layers import activation, conv, data, inner_product, loss, lrn, norm, pool, structure  # noqa: F401
from netc.layers.base import REGISTRY, LayerType

__all__ = ["REGISTRY", "LayerType", "get"]


def get(type_name: str) -> LayerType | None:
    return REGISTRY.get(type_name)
