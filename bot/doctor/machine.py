"""Python, torch and CUDA, bitsandbytes' kernels, and free GPU memory against each local
model's estimated footprint."""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass
from pathlib import Path

from bot.config import ModelSpec, Settings
from bot.doctor.models import hub_cached
from bot.doctor.report import Check, FAIL, first_line, gib, OK, WARN

MIN_PYTHON = (3, 11)
BF16_BYTES = 2  # what an unquantized model takes per parameter on a GPU (load_recipe: bf16)

# -- Python, torch, CUDA, bitsandbytes ----------------------------------------------------------

def python_check() -> Check:
    version = ".".join(map(str, sys.version_info[:3]))
    if sys.version_info[:2] < MIN_PYTHON:
        return Check(FAIL, "python", f"{version} ({sys.executable})",
                     f"modelbot needs Python {'.'.join(map(str, MIN_PYTHON))} or newer: recreate the virtualenv with it")
    return Check(OK, "python", f"{version} ({sys.executable})")


@dataclass
class TorchProbe:
    """What torch says about the device the models would run on."""

    version: str = ""
    cuda_build: str | None = None  # torch.version.cuda; None: a CPU-only build
    device: str = "cpu"  # what `device: auto` resolves to
    cuda_devices: int = 0
    gpu_name: str = ""
    free_bytes: int = 0
    total_bytes: int = 0
    error: str | None = None  # torch missing or broken, or the configured GPU absent


def probe_torch(setting: str) -> TorchProbe:
    try:
        import torch
    except Exception as exc:  # noqa: BLE001 - a broken install is the finding
        return TorchProbe(error=f"cannot import torch ({first_line(exc)})")
    probe = TorchProbe(version=torch.__version__, cuda_build=torch.version.cuda)
    try:
        probe.cuda_devices = torch.cuda.device_count() if torch.cuda.is_available() else 0
    except Exception as exc:  # noqa: BLE001 - a driver mismatch raises here
        probe.error = f"CUDA is broken: {first_line(exc)}"
        return probe
    probe.device = setting if setting != "auto" else ("cuda" if probe.cuda_devices else "cpu")
    if probe.device.startswith("cuda"):
        index = int(probe.device.partition(":")[2] or 0)
        if index >= probe.cuda_devices:
            probe.error = (f"device: {setting} but torch sees {probe.cuda_devices} CUDA GPU(s)"
                           + ("" if probe.cuda_build else " (this torch is a CPU-only build)"))
            return probe
        try:
            probe.gpu_name = torch.cuda.get_device_name(index)
            probe.free_bytes, probe.total_bytes = (int(n) for n in torch.cuda.mem_get_info(index))
        except Exception as exc:  # noqa: BLE001
            probe.error = f"CUDA device {index} does not answer: {first_line(exc)}"
    return probe


def torch_check(probe: TorchProbe, setting: str) -> Check:
    if probe.error is not None:
        fix = ("install torch's CUDA build and the NVIDIA driver (scripts/setup picks the build when nvidia-smi "
               "works), or set device: cpu") if probe.version else "reinstall modelbot in its virtualenv (pip install -e .)"
        return Check(FAIL, "torch", probe.error + (f"; torch {probe.version}" if probe.version else ""), fix)
    build = f"CUDA {probe.cuda_build}" if probe.cuda_build else "CPU-only build"
    if probe.device.startswith("cuda"):
        return Check(OK, "torch", f"{probe.version} ({build}); {probe.device}: {probe.gpu_name}, "
                                  f"{gib(probe.free_bytes)} of {gib(probe.total_bytes)} free")
    if setting == "cpu":
        return Check(OK, "torch", f"{probe.version} ({build}); device: cpu, as configured")
    return Check(WARN, "torch", f"{probe.version} ({build}): no CUDA GPU, models run on the CPU only",
                 "on a machine with an NVIDIA GPU install torch's CUDA build (scripts/setup); "
                 "set device: cpu to make CPU-only intended")


def needs_bitsandbytes(spec: ModelSpec, device: str) -> str | None:
    """The bitsandbytes mode a local model loads with on `device` (load_recipe's rule), or None."""
    if spec.quantization == "auto":
        return "nf4" if device.startswith("cuda") else None
    return spec.quantization if spec.quantization in ("nf4", "int8") else None


def bitsandbytes_check(probe: TorchProbe, local: list[ModelSpec]) -> Check:
    wanted = {spec.name: mode for spec in local if (mode := needs_bitsandbytes(spec, probe.device))}
    if not wanted:
        try:
            from importlib.metadata import PackageNotFoundError, version

            installed = version("bitsandbytes")
        except PackageNotFoundError:
            return Check(OK, "bitsandbytes", "not installed; no model here loads in nf4 or int8")
        return Check(OK, "bitsandbytes", f"{installed}; kernels not tried: no model here loads in nf4 or int8 "
                                         f"on {probe.device}")
    users = ", ".join(f"{name} ({mode})" for name, mode in wanted.items())
    error = try_bitsandbytes(probe.device, set(wanted.values()))
    if error is None:
        return Check(OK, "bitsandbytes", f"{_bnb_version()}: kernels work on {probe.device} (for {users})")
    fix = ("install a bitsandbytes build for this CUDA (pip install -U bitsandbytes), "
           "or set quantization: none on these models" if probe.device.startswith("cuda")
           else "pip install -U bitsandbytes, or set quantization: auto (full precision on a CPU)")
    return Check(FAIL, "bitsandbytes", f"{error}; needed by {users}", fix)


def try_bitsandbytes(device: str, modes: set[str]) -> str | None:
    """Quantize a small tensor the way NF4 / int8 loading does; None if it worked, else why not."""
    quiet = logging.getLogger("bitsandbytes")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # its optional-kernel notices are not this check's finding
    try:
        import bitsandbytes.functional as functional
        import torch

        weights = torch.randn(64, 64, device=device, dtype=torch.bfloat16 if device != "cpu" else torch.float32)
        if "nf4" in modes:
            packed, state = functional.quantize_4bit(weights, quant_type="nf4")
            if not torch.allclose(functional.dequantize_4bit(packed, state), weights, atol=0.5, rtol=0.5):
                return "bitsandbytes' 4-bit kernels give wrong results"
        if "int8" in modes:
            functional.int8_vectorwise_quant(weights.to(torch.float16 if device != "cpu" else torch.float32))
        if device.startswith("cuda"):
            torch.cuda.synchronize()
    except Exception as exc:  # noqa: BLE001 - a missing library, a kernel not built for this GPU, ...
        return f"bitsandbytes' kernels fail on {device}: {first_line(exc)}"
    finally:
        quiet.setLevel(level)
    return None


def _bnb_version() -> str:
    import bitsandbytes

    return str(bitsandbytes.__version__)


# -- GPU memory against each local model's footprint -------------------------------------------

def memory_checks(probe: TorchProbe, local: list[ModelSpec], settings: Settings) -> list[Check]:
    if not probe.device.startswith("cuda"):
        return [Check(OK, "gpu memory", "skipped: models run on the CPU")]
    room = probe.free_bytes
    where = f"{gib(room)} free on {probe.device}"
    budget = settings.worker.memory_budget
    if settings.worker.memory_budget_fraction:
        budget = int(settings.worker.memory_budget_fraction * probe.total_bytes)
    if budget is not None and budget < room:
        room, where = budget, f"worker.memory_budget {gib(budget)}"
    return [_memory_check(spec, probe.device, room, where, settings.cache_dir) for spec in local]


def estimate_footprint(spec: ModelSpec, device: str, cache_dir: Path) -> tuple[int, str] | None:
    """(bytes, mode) once loaded: the safetensors headers' parameter count times the worker's
    bytes per parameter for the mode; None when the weights are not on this machine yet."""
    from bot.worker.residency import BYTES_PER_PARAMETER, _count_parameters

    directory = checkpoint_directory(spec, cache_dir)
    parameters = _count_parameters(directory) if directory is not None else 0
    if not parameters:
        return None
    mode = needs_bitsandbytes(spec, device) or "none"
    return int(parameters * BYTES_PER_PARAMETER.get(mode, BF16_BYTES)), mode


def _memory_check(spec: ModelSpec, device: str, room: int, where: str, cache_dir: Path) -> Check:
    name = f"gpu memory {spec.name}"
    estimate = estimate_footprint(spec, device, cache_dir)
    if estimate is None:
        return Check(OK, name, "size known after its first load (weights not on this machine yet)")
    size, mode = estimate
    detail = f"about {gib(size)} in {mode}, {where}"
    if size > room:
        smaller = "use quantization: nf4, " if mode != "nf4" else ""
        return Check(FAIL, name, detail, f"{smaller}pick a smaller model, or free the GPU (nvidia-smi shows who holds it)")
    if size > 0.9 * room:
        return Check(WARN, name, detail + ": little room left for the KV cache",
                     "long conversations and batches may run out of memory; free some or use a smaller model")
    return Check(OK, name, detail)


def checkpoint_directory(spec: ModelSpec, cache_dir: Path) -> Path | None:
    """The folder holding the model's config.json (and weights) on this machine, if any."""
    from bot.sources import SourceError, checkpoint_location, resolve_source

    try:
        resolved = resolve_source(spec.source)
    except SourceError:
        return None
    if resolved.kind == "hub":
        cached = hub_cached(resolved.location, "config.json")
        return Path(cached).parent if cached else None
    location = checkpoint_location(resolved, cache_dir)
    return Path(location) if location else None


