"""Proxy training: presets, on-device augmentation and the candidate trainer."""

from ccsearch.train.device import DeviceData, device_data, resolve_device
from ccsearch.train.proxy import PRESETS, ProxyConfig, get_proxy, load_proxy_data
from ccsearch.train.trainer import TrainResult, evaluate, train_candidate, train_repeated

__all__ = [
    "PRESETS",
    "DeviceData",
    "device_data",
    "ProxyConfig",
    "TrainResult",
    "evaluate",
    "get_proxy",
    "load_proxy_data",
    "resolve_device",
    "train_candidate",
    "train_repeated",
]
