"""Layers ccsearch builds models from."""

from ccsearch.layers.cond_conv import ROUTING_ACTIVATIONS, CondConv2d, Conv2d, Routing

__all__ = ["ROUTING_ACTIVATIONS", "CondConv2d", "Conv2d", "Routing"]
