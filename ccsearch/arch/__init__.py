"""Architecture specs, the shipped backbones and the model builder."""

from ccsearch.arch.backbones import BACKBONES, get_backbone
from ccsearch.arch.builder import CondConvNet, build_model
from ccsearch.arch.spec import ArchSpec, BlockGroup, spec_digest

__all__ = [
    "BACKBONES",
    "ArchSpec",
    "BlockGroup",
    "CondConvNet",
    "build_model",
    "get_backbone",
    "spec_digest",
]
