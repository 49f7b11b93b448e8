"""Memory on the device the models live on: how much there is, how much is in use, and
giving it back after a model is unloaded."""

from __future__ import annotations

import ctypes
import gc
import os
import sys


def device_total_bytes(device: str) -> int:
    """What the device has: the GPU's memory, or the machine's RAM for the CPU."""
    if device.startswith("cuda"):
        import torch

        return int(torch.cuda.mem_get_info(torch.device(device))[1])
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 16 * 2**30  # a platform without sysconf: assume a modest machine


def used_bytes(device: str) -> int:
    """Memory in use now: the CUDA allocator's count on a GPU, the process's RSS on the CPU."""
    if device.startswith("cuda"):
        import torch

        return int(torch.cuda.memory_allocated(torch.device(device)))
    return process_rss_bytes()


def process_rss_bytes() -> int:
    try:
        with open("/proc/self/statm", encoding="ascii") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        import resource  # peak, not current: the best portable fallback

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak if sys.platform == "darwin" else peak * 1024


def release_freed_memory() -> None:
    """After dropping a model: collect it, return cached GPU blocks and the C heap to the OS."""
    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
    except ImportError:
        pass
    if sys.platform.startswith("linux"):
        try:
            # glibc keeps freed small allocations in its arenas; without this RSS would not drop
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):
            pass


def is_out_of_memory(exc: BaseException) -> bool:
    name = type(exc).__name__
    return "OutOfMemory" in name or "out of memory" in str(exc).lower()
