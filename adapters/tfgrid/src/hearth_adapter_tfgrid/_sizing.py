"""Caps to slices: 1 slice = 1 vCPU + 4 GB RAM (+ the node's disk per slice), coupled 1:4."""

from __future__ import annotations

import math
from typing import Any

from hearth_adaptersdk import ResourceCaps

MB_PER_SLICE = 4096
CPU_PER_SLICE = 1


def slices_for(caps: ResourceCaps, disk_gb_per_slice: int | None) -> tuple[int, list[str], list[str]]:
    """(slices, how each cap counted, problems): enough slices for every cap asked."""
    values: dict[str, Any] = caps.model_dump(exclude_none=True)
    reasons: list[str] = []
    needed = 1
    if "cpu" in values:
        count = math.ceil(values.pop("cpu") / CPU_PER_SLICE)
        reasons.append(f"cpu {caps.cpu:g} / {CPU_PER_SLICE} per slice = {count}")
        needed = max(needed, count)
    if "memory_mb" in values:
        count = math.ceil(values.pop("memory_mb") / MB_PER_SLICE)
        reasons.append(f"memory {caps.memory_mb} MB / {MB_PER_SLICE} MB per slice = {count}")
        needed = max(needed, count)
    problems: list[str] = []
    if "storage_mb" in values:
        storage = values.pop("storage_mb")
        if disk_gb_per_slice:
            count = math.ceil(storage / (disk_gb_per_slice * 1024))
            reasons.append(f"storage {storage} MB / {disk_gb_per_slice * 1024} MB per slice = {count}")
            needed = max(needed, count)
    problems += [f"resource_caps.{key}: TFGrid slices cannot express it" for key in sorted(values)]
    return needed, reasons, problems
