"""Proxy-task data: one registry of sources, each returning uint8 NHWC arrays.

NAS ranks candidates on a proxy (class subset, low resolution, few epochs) instead of
full ImageNet training. Nothing here downloads anything.
"""

from ccsearch.data._common import DataOptions
from ccsearch.data._proxy import EMBEDDED_SOURCES, ProxyData
from ccsearch.data._registry import (
    DEFAULT_SOURCE,
    SOURCES,
    available_sources,
    detect_source,
    load_data,
    parse_data_arg,
)
from ccsearch.data.cache import is_cache_dir, load_cache, prepare_imagenet_cache

__all__ = [
    "DEFAULT_SOURCE",
    "EMBEDDED_SOURCES",
    "SOURCES",
    "DataOptions",
    "ProxyData",
    "available_sources",
    "detect_source",
    "is_cache_dir",
    "load_cache",
    "load_data",
    "parse_data_arg",
    "prepare_imagenet_cache",
]
