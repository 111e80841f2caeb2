"""What a result was measured with, beyond its inputs: the library versions.

A proxy top-1 is reproducible only on the same data, seed, device, thread count and
library versions; trial records and exported models carry them all.
"""

from __future__ import annotations


def versions() -> dict[str, str]:
    import optuna
    import torch

    from ccsearch import __version__

    return {"ccsearch": __version__, "torch": torch.__version__, "optuna": optuna.__version__}
