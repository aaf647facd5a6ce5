"""A small table of machines people ask "will it run on ..." about: memory and memory bandwidth.

Units: memory in GB (10^9 bytes, as vendors print them) and bandwidth in GB/s (10^9 bytes/s).
Reading "80 GB" as 80 * 10^9 bytes is the cautious choice: an H100's 80 GB of HBM is 80 GiB on the
chips, of which the driver shows about 79.6 GiB (85.5 * 10^9 bytes), and some of that goes to the
CUDA context.

Two numbers decide the estimator's verdicts:
    fits             weights + KV cache + overhead <= usable memory
    decode tokens/s  <= bandwidth / bytes read per token   (batch 1: every touched weight, and the
                       whole KV cache, must come out of memory once per generated token)

Apple's unified memory is shared with the CPU: by default macOS lets the GPU wire about 75% of it
(raise it with `sudo sysctl iogpu.wired_limit_mb=...`), so `usable_fraction` is 0.75 there. AMD's
Strix Halo laptops are alike: of 128 GB, up to 96 GB can be given to the GPU (0.75 again).
docs/estimator.md gives the source of every entry.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from minimoe.errors import MinimoeError


class HardwareError(MinimoeError, ValueError):
    """An unknown hardware name, or custom memory/bandwidth values that are not positive numbers."""


@dataclass(frozen=True)
class Hardware:
    name: str                    # as printed
    memory_gb: float             # memory per device, GB (10^9 bytes)
    bandwidth_gbs: float         # memory bandwidth per device, GB/s
    usable_fraction: float = 1.0  # share of memory a model may use (Apple: the GPU's wired limit)
    note: str = ""

    @property
    def usable_bytes(self) -> int:
        return int(self.memory_gb * 1e9 * self.usable_fraction)


HARDWARE: dict[str, Hardware] = {
    "b200": Hardware("B200 180 GB", 180, 8000, note="HBM3e, 8 TB/s (DGX B200: 8 GPUs, 1,440 GB, 64 TB/s)"),
    "h200": Hardware("H200 141 GB", 141, 4800, note="HBM3e, 4.8 TB/s"),
    "h100": Hardware("H100 SXM 80 GB", 80, 3350, note="HBM3, 3.35 TB/s"),
    "a100": Hardware("A100 SXM 80 GB", 80, 2039, note="HBM2e, 2.0 TB/s"),
    "rtx-5090": Hardware("RTX 5090 32 GB", 32, 1792, note="GDDR7, 512-bit at 28 Gb/s"),
    "rtx-4090": Hardware("RTX 4090 24 GB", 24, 1008, note="GDDR6X, 384-bit at 21 Gb/s"),
    "m4-max": Hardware("Apple M4 Max 128 GB", 128, 546, usable_fraction=0.75,
                       note="unified memory; the GPU may wire ~75% by default"),
    "m3-max": Hardware("Apple M3 Max 128 GB", 128, 400, usable_fraction=0.75,
                       note="unified memory; the GPU may wire ~75% by default"),
    "strix-halo": Hardware("AMD Ryzen AI Max+ 395 laptop, 128 GB", 128, 256, usable_fraction=0.75,
                           note="Strix Halo: LPDDR5X-8000 on a 256-bit bus = 256 GB/s; up to 96 GB "
                                "for the GPU"),
    "laptop-64gb": Hardware("Laptop, 64 GB dual-channel DDR5-5600", 64, 89.6,
                            note="2 channels x 8 bytes x 5600 MT/s = 89.6 GB/s; CPU inference"),
    "ddr5-desktop": Hardware("Desktop, 64 GB dual-channel DDR5-5600", 64, 89.6,
                             note="2 channels x 8 bytes x 5600 MT/s = 89.6 GB/s; CPU inference"),
}


# Links between a host's memory and a GPU, GB/s in one direction (for expert offload,
# minimoe/inspect/serving.py): lanes x transfer rate x 128/130 (the line code) / 8 bits.
LINKS: dict[str, float] = {
    "pcie3-x16": 15.75,     # 8 GT/s x 16 lanes x 128/130 / 8
    "pcie4-x16": 31.5,      # 16 GT/s
    "pcie5-x16": 63.0,      # 32 GT/s
}


def get_link(name: str) -> float:
    """A link's bandwidth in GB/s by name (pcie4-x16, ...)."""
    bw = {_key(k): v for k, v in LINKS.items()}.get(_key(name))
    if bw is None:
        raise HardwareError(f"unknown link {name!r}; known: {', '.join(LINKS)}")
    return bw


def _key(name: str) -> str:
    """'RTX 4090', 'rtx_4090' and 'rtx-4090' are all 'rtx4090'."""
    return re.sub(r"[^a-z0-9]", "", str(name).lower())


_BY_KEY = {_key(k): v for k, v in HARDWARE.items()}


def get_hardware(name: str | None = None, memory_gb: float | None = None,
                 bandwidth_gbs: float | None = None) -> Hardware:
    """A table entry by name (case, spaces and dashes ignored), or a custom device.

    With a name, memory_gb/bandwidth_gbs override that entry's values; without one, both are needed.
    """
    for what, v in (("memory_gb", memory_gb), ("bandwidth_gbs", bandwidth_gbs)):
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0):
            raise HardwareError(f"{what} must be a positive number, found {v!r}")
    if name is None:
        if memory_gb is None or bandwidth_gbs is None:
            raise HardwareError("a custom device needs both memory_gb and bandwidth_gbs "
                                f"(found memory_gb={memory_gb!r}, bandwidth_gbs={bandwidth_gbs!r})")
        return Hardware(f"custom {memory_gb:g} GB, {bandwidth_gbs:g} GB/s", memory_gb, bandwidth_gbs)
    hw = _BY_KEY.get(_key(name))
    if hw is None:
        raise HardwareError(f"unknown hardware {name!r}; known: {', '.join(HARDWARE)} "
                            f"(or give --memory-gb and --bandwidth-gbs)")
    if memory_gb is not None or bandwidth_gbs is not None:
        hw = Hardware(hw.name + " (custom)", memory_gb or hw.memory_gb, bandwidth_gbs or hw.bandwidth_gbs,
                      hw.usable_fraction, hw.note)
    return hw
