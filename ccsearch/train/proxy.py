"""Proxy-task presets: how a candidate's accuracy is estimated cheaply.

A proxy changes only how accuracy is estimated (class subset, low resolution, few
epochs, optionally a thinner/shallower copy of the candidate); MADDs are always
counted on the full model at 224px.  Presets are data; a YAML file with the same
fields defines a custom one.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

from ccsearch.arch import ArchSpec
from ccsearch.config import check_fields, load_yaml_mapping, resolve_name_or_path
from ccsearch.data import DEFAULT_SOURCE, EMBEDDED_SOURCES, ProxyData, load_data, parse_data_arg
from ccsearch.errors import UserError
from ccsearch.validate import nonnegative_int, positive_int

OPTIMIZERS = ("sgd", "rmsprop")


@dataclass(frozen=True)
class ProxyConfig:
    name: str
    data: str = "digits"  # default data source when the user names none
    resolution: int = 32  # proxy input size; MADDs are still counted at 224
    classes: int | None = None  # class subset (None = all classes of the source)
    images_per_class: int | None = None  # cap on training images per class
    epochs: int = 3
    batch_size: int = 64
    optimizer: str = "sgd"  # SGD with Nesterov momentum; rmsprop as in MnasNet
    lr: float = 0.1  # peak LR for batch_size; cosine decay after warm-up
    momentum: float = 0.9
    weight_decay: float = 5e-5  # not applied to batch norm and biases
    warmup_epochs: float = 0.5  # linear warm-up keeps early BN statistics sane
    label_smoothing: float = 0.1
    grad_clip: float | None = 5.0  # max gradient norm: unbounded routers (relu) can blow up
    # Factor of the LR for the routing functions' parameters (0 freezes them).  A router's
    # logit scales a whole per-example kernel, so SGD's step on it is steep where the
    # reference's RMSProp normalises it: 0.1 ends most take-off stalls of CondConv-heavy
    # layouts on the smoke proxy, but ranks its candidates worse (benchmarks/README.md,
    # "The routing's learning rate"), so no preset departs from 1 yet.
    routing_lr: float = 1.0
    # Fraction of the training steps over which every routing weight ramps from 1/2 (one
    # kernel for every example, as routing starts) to its own value (``Routing.blend``):
    # per-example kernels from the first step make CondConv-heavy layouts stall in a short
    # training, but no ramp tried ranks candidates reliably (benchmarks/README.md,
    # "Another machine, and a routing warm-up"), so every preset keeps it off (0).
    routing_warmup: float = 0.0
    crop_padding: int = 4  # random crop with this much zero padding
    flip: bool = True  # random horizontal flip
    width: float = 1.0  # proxy-only width multiplier of the candidate
    depth: float = 1.0  # proxy-only multiplier of each group's repeats
    max_val_images: int | None = None  # cap on held-out images (evaluation cost)
    # Which classes and images a subset takes: part of the proxy, never a trial's training
    # seed, so every trial (and ``ccsearch train`` retraining one) sees the same data.
    data_seed: int = 0
    # Batch norm and regularisation against the TF reference recipe (README, "The proxy's
    # training recipe"): where the reference's value costs accuracy on a few-epoch proxy,
    # the default departs from it.
    bn_momentum: float = 0.1  # PyTorch's convention: TF's decay of 0.99 is 0.01
    bn_eps: float = 1e-3  # TF's (PyTorch's 1e-5 measured 1-2 points lower)
    drop_connect: float = 0.2  # TF's (survival 0.8), growing linearly with block depth
    zero_init_last_bn: bool = True  # of residual branches (TF: no)

    def __post_init__(self) -> None:
        where = f"proxy {self.name!r}"
        for name in ("resolution", "epochs", "batch_size"):
            positive_int(name, getattr(self, name), where=where)
        for name in ("classes", "images_per_class", "max_val_images"):
            positive_int(name, getattr(self, name), where=where, optional=True)
        nonnegative_int("data_seed", self.data_seed, where=where)
        if self.optimizer not in OPTIMIZERS:
            raise UserError(f"{where}: optimizer {self.optimizer!r} is not one of {OPTIMIZERS}")
        for name in ("lr", "width", "depth", "bn_eps"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or not value > 0:
                raise UserError(f"{where}: {name} must be > 0, got {value!r}")
        if not isinstance(self.routing_lr, int | float) or isinstance(self.routing_lr, bool) \
                or not self.routing_lr >= 0:
            raise UserError(f"{where}: routing_lr must be >= 0, got {self.routing_lr!r}")
        if not isinstance(self.routing_warmup, int | float) or isinstance(self.routing_warmup, bool) \
                or not 0 <= self.routing_warmup <= 1:
            raise UserError(f"{where}: routing_warmup must be a fraction of the training in "
                            f"[0, 1], got {self.routing_warmup!r}")
        for name in ("label_smoothing", "bn_momentum", "drop_connect"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or isinstance(value, bool) or not 0 <= value < 1:
                raise UserError(f"{where}: {name} must be in [0, 1), got {value!r}")
        if not isinstance(self.zero_init_last_bn, bool):
            raise UserError(f"{where}: zero_init_last_bn must be true or false, "
                            f"got {self.zero_init_last_bn!r}")

    def adapt(self, spec: ArchSpec, num_classes: int) -> ArchSpec:
        """The model actually trained: the candidate with the proxy's classes, width and depth."""
        adapted = spec.scale_width(self.width) if self.width != 1 else spec
        if self.depth != 1:
            groups = tuple(
                replace(g, repeats=max(1, math.ceil(g.repeats * self.depth)))
                for g in adapted.groups
            )
            adapted = replace(adapted, groups=groups)
        return replace(adapted, num_classes=num_classes)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, stored: dict[str, Any]) -> ProxyConfig:
        """A proxy recorded earlier (a study's, a checkpoint's); a field the recording
        ccsearch did not have yet takes its default, one it had and this one lacks is
        dropped."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in stored.items() if k in known})

    def changed_fields(self, stored: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
        """The fields in which this proxy differs from ``stored``, a proxy recorded earlier:
        ``{field: (recorded, now)}``, in field order."""
        before = {f.name: f.default for f in fields(self)} | stored
        return {k: (before.get(k), v) for k, v in self.to_dict().items() if before.get(k) != v}


PRESETS: dict[str, ProxyConfig] = {
    # The embedded default: generated stroke glyphs (20 classes) at 16px on a half-width
    # copy of the candidate, 4 epochs: 9-19 s of training per seed on 2 CPU cores of an
    # Intel Xeon, 19-51 s on an AMD EPYC (on 1x1 maps a CondConv layer is E times its
    # static layer's work); ~80-84% top-1 for MnasNet-A1; a seed-to-seed Kendall tau over 8
    # candidates of 0.07-0.79 in nine measurements (benchmarks/README.md): one seed does
    # not rank reliably; means of 2 seeds (``repeats: 2``) did, with tau 0.74 and 0.83 on
    # two draws.  No drop-connect and a one-epoch warm-up: both cut the seed
    # spread of layouts with CondConv in many groups.  A smoke test, not ImageNet.
    "smoke": ProxyConfig(
        name="smoke",
        data="glyphs",
        resolution=16,
        epochs=4,
        batch_size=64,
        lr=0.05,
        warmup_epochs=1.0,
        crop_padding=1,
        flip=False,  # a flipped glyph is another glyph
        width=0.5,
        drop_connect=0.0,
    ),
    # The embedded default before it (kept to compare with, and fast for tests): the
    # bundled digits at 32px, 6-11 s per candidate, ~92% for MnasNet-A1; it saturates and
    # ranks 8 candidates with a Kendall tau of 0.30.
    "smoke-digits": ProxyConfig(
        name="smoke-digits",
        data="digits",
        resolution=32,
        epochs=4,
        batch_size=64,
        lr=0.04,
        warmup_epochs=0.5,
        crop_padding=2,
        flip=False,  # flipped digits are other digits
        width=0.5,
    ),
    # 100 ImageNet classes at 64px, 500 images each, 10 epochs: the common NAS proxy.
    "imagenet100-64px": ProxyConfig(
        name="imagenet100-64px",
        data="imagenet",
        resolution=64,
        classes=100,
        images_per_class=500,
        epochs=10,
        batch_size=256,
        lr=0.4,
        warmup_epochs=1,
        weight_decay=4e-5,
        crop_padding=4,
        flip=True,
    ),
    # Imagenet32 (downsampled ImageNet, all 1000 classes), 5 epochs.
    "imagenet32": ProxyConfig(
        name="imagenet32",
        data="imagenet-downsampled",
        resolution=32,
        images_per_class=300,
        epochs=5,
        batch_size=256,
        lr=0.4,
        warmup_epochs=1,
        weight_decay=4e-5,
        max_val_images=10_000,
    ),
    "cifar10": ProxyConfig(
        name="cifar10",
        data="cifar10",
        resolution=32,
        epochs=10,
        batch_size=128,
        lr=0.2,
        warmup_epochs=1,
        weight_decay=5e-4,
    ),
}


def get_proxy(name_or_path: str | Path | ProxyConfig, **overrides: Any) -> ProxyConfig:
    """A preset by name, or a YAML file of ``ProxyConfig`` fields; ``overrides`` replace fields."""
    if isinstance(name_or_path, ProxyConfig):
        proxy = name_or_path
    else:
        found = resolve_name_or_path(
            name_or_path, PRESETS, what="proxy",
            unknown=f"unknown proxy preset {str(name_or_path)!r}; presets: {', '.join(PRESETS)} "
            "(or a .yaml file)",
        )  # fmt: skip
        proxy = _load_yaml(found) if isinstance(found, Path) else PRESETS[found]
    overrides = {k: v for k, v in overrides.items() if v is not None}
    return replace(proxy, **overrides) if overrides else proxy


def _load_yaml(path: Path) -> ProxyConfig:
    data = load_yaml_mapping(path)
    check_fields(path, data, {f.name for f in fields(ProxyConfig)}, "proxy")
    data.setdefault("name", path.stem)
    try:
        return ProxyConfig(**data)
    except UserError as err:
        raise UserError(f"{path}: {err}") from None


def load_proxy_data(proxy: ProxyConfig, data: str | None = None) -> ProxyData:
    """The data a proxy trains on: ``data`` (a CLI ``--data`` string) or the proxy's default,
    subset with the proxy's ``data_seed``."""
    source, root = parse_data_arg(data, default=proxy.data)
    if root is None and source not in EMBEDDED_SOURCES:
        raise UserError(
            f"proxy {proxy.name!r} reads {source}: give its location with --data PATH "
            f"(or --data {DEFAULT_SOURCE} for the embedded smoke test)"
        )
    return load_data(
        source,
        root,
        resolution=proxy.resolution,
        classes=proxy.classes,
        images_per_class=proxy.images_per_class,
        seed=proxy.data_seed,
    )
