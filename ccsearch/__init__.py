"""ccsearch: neural architecture search over CondConv.

Public API: ``build_model(spec)``, ``count_madds(model_or_spec)``, ``load(folder)`` (an
exported model), ``ArchSpec``, ``get_backbone(name)`` and the ``ccsearch`` command line.
"""

from ccsearch.arch import ArchSpec, BlockGroup, build_model, get_backbone
from ccsearch.errors import UserError
from ccsearch.layers import CondConv2d, Routing
from ccsearch.madds import count_madds


def load(path):
    """The ``nn.Module`` a ``ccsearch export`` folder holds (``arch.json`` + safetensors)."""
    from ccsearch.export import load as _load

    return _load(path)


__version__ = "0.2.0"

__all__ = [
    "ArchSpec",
    "BlockGroup",
    "CondConv2d",
    "Routing",
    "UserError",
    "build_model",
    "count_madds",
    "get_backbone",
    "load",
]
