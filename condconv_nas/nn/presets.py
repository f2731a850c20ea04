"""Named base architectures: EfficientNet-B0, CondConv-EfficientNet-B0, MobileNetV2 and proxies."""

from __future__ import annotations

from collections.abc import Callable

from .spec import ArchSpec, SpecError, StageSpec

__all__ = ["PRESETS", "get_preset", "preset_names"]

# (expand, kernel, stride, out_channels, repeats) per stage, as in Tan & Le 2019, Table 1.
_EFFNET_B0 = ((1, 3, 1, 16, 1), (6, 3, 2, 24, 2), (6, 5, 2, 40, 2), (6, 3, 2, 80, 3),
              (6, 5, 1, 112, 3), (6, 5, 2, 192, 4), (6, 3, 1, 320, 1))
# (t, c, n, s) of Sandler et al. 2018, Table 2, reordered to (expand, kernel, stride, out, repeats).
_MBV2 = ((1, 3, 1, 16, 1), (6, 3, 2, 24, 2), (6, 3, 2, 32, 3), (6, 3, 2, 64, 4),
         (6, 3, 1, 96, 3), (6, 3, 2, 160, 3), (6, 3, 1, 320, 1))
# Proxies: stem stride 1, the last stage dropped, at most 2 repeats, and half the channels (the
# EfficientNet rounding of 0.5x), so a 28/32 px input ends at 4x4 and an epoch of Fashion-MNIST
# takes under a minute on 2 CPU cores.
_EFFNET_PROXY = ((1, 3, 1, 8, 1), (6, 3, 2, 16, 2), (6, 5, 2, 24, 2), (6, 3, 2, 40, 2),
                 (6, 5, 1, 56, 2), (6, 5, 1, 96, 2))
_MBV2_PROXY = ((1, 3, 1, 8, 1), (6, 3, 2, 16, 2), (6, 3, 2, 16, 2), (6, 3, 2, 32, 2),
               (6, 3, 1, 48, 2), (6, 3, 1, 80, 2))


def _stages(table: tuple, se_ratio: float, experts: int = 0, condconv_last: int = 3
            ) -> tuple[StageSpec, ...]:
    n = len(table)
    return tuple(
        StageSpec(repeats=r, kernel=k, stride=s, expand=float(e), out_channels=c,
                  se_ratio=se_ratio, experts=(experts if i >= n - condconv_last else 0,))
        for i, (e, k, s, c, r) in enumerate(table)
    )


def _effnet(name: str, experts: int = 0) -> ArchSpec:
    return ArchSpec(name=name, stages=_stages(_EFFNET_B0, 0.25, experts), act="swish")


def _mbv2(name: str) -> ArchSpec:
    return ArchSpec(name=name, stages=_stages(_MBV2, 0.0), act="relu6")


def _proxy(name: str, size: int, experts: int = 0, mbv2: bool = False) -> ArchSpec:
    # 28 px is Fashion-MNIST (1 channel), 32 px is CIFAR (3 channels); both 10 classes by default.
    table, se, act = (_MBV2_PROXY, 0.0, "relu6") if mbv2 else (_EFFNET_PROXY, 0.25, "swish")
    return ArchSpec(name=name, stages=_stages(table, se, experts), act=act, stem_channels=16,
                    stem_stride=1, head_channels=320, input_size=size, in_channels=1 if size == 28 else 3,
                    num_classes=10, dropout=0.1)


def _registry() -> dict[str, Callable[[], ArchSpec]]:
    table: dict[str, Callable[[], ArchSpec]] = {
        "efficientnet_b0": lambda: _effnet("efficientnet_b0"),
        "condconv_efficientnet_b0_4e": lambda: _effnet("condconv_efficientnet_b0_4e", 4),
        "condconv_efficientnet_b0_8e": lambda: _effnet("condconv_efficientnet_b0_8e", 8),
        "mobilenet_v2": lambda: _mbv2("mobilenet_v2"),
    }
    for size in (28, 32):
        for base, experts in (("efficientnet_b0", 0), ("condconv_efficientnet_b0_4e", 4),
                              ("condconv_efficientnet_b0_8e", 8)):
            name = f"{base}_proxy{size}"
            table[name] = lambda n=name, s=size, e=experts: _proxy(n, s, e)
        name = f"mobilenet_v2_proxy{size}"
        table[name] = lambda n=name, s=size: _proxy(n, s, mbv2=True)
    return table


PRESETS: dict[str, Callable[[], ArchSpec]] = _registry()


def preset_names() -> list[str]:
    """Every preset name, in listing order."""
    return list(PRESETS)


def get_preset(name: str) -> ArchSpec:
    """The preset's spec; an unknown name raises SpecError listing the known ones."""
    if name not in PRESETS:
        raise SpecError(f"preset {name!r} is unknown; choose from: {', '.join(PRESETS)}")
    return PRESETS[name]()
