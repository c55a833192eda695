"""Where and in what precision to compute: device and dtype choice, autocast, seeding."""

from __future__ import annotations

import contextlib
import ctypes
import os
import platform
import random
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from bigmodel.errors import UserError


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("train.device=cuda but no CUDA device is visible; use train.device=auto or cpu")
    if name == "mps" and not torch.backends.mps.is_available():
        raise UserError("train.device=mps but MPS is not available; use train.device=auto or cpu")
    return torch.device(name)


def cpu_has_native_bf16() -> bool:
    """AVX512-BF16 or AMX: bf16 matmuls run 2.5-5× faster than fp32 (`bigmodel profile` measures it)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_precision(name: str, device: torch.device) -> torch.dtype:
    """The autocast dtype (float32 means autocast off)."""
    if name == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        if device.type == "cpu" and cpu_has_native_bf16():
            return torch.bfloat16
        return torch.float32
    if name == "fp16" and device.type == "cpu":
        raise UserError("train.precision=fp16 needs a CUDA device; on the CPU use bf16 or fp32")
    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[name]


@contextlib.contextmanager
def autocast(device: torch.device, dtype: torch.dtype) -> Iterator[None]:
    if dtype == torch.float32:
        yield
    else:
        with torch.autocast(device_type=device.type, dtype=dtype):
            yield


# mallopt(3) parameters (malloc.h); glibc only.
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
KEEP_UP_TO = 1 << 30  # bytes: blocks below this come from the heap and stay there when freed


def keep_freed_memory() -> bool:
    """Have glibc's malloc keep freed blocks for reuse instead of handing them back to the OS.

    By default glibc serves blocks above 128 KiB-32 MiB with a fresh mmap and unmaps them on free, so
    every training step faults its activations in again, page by page: a quarter of the seed CNN's
    CPU time on two cores went to the kernel. This does in-process what PyTorch's CPU launcher does with
    jemalloc (LD_PRELOAD and an infinite decay time). The process's memory stays at its peak until it
    exits. Returns whether it applied (not on other C libraries)."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    mallopt = ctypes.CDLL(None).mallopt
    return bool(mallopt(M_MMAP_THRESHOLD, KEEP_UP_TO) and mallopt(M_TRIM_THRESHOLD, KEEP_UP_TO))


def release_freed_memory() -> bool:
    """Hand the pages of glibc's freed blocks back to the OS (``malloc_trim``), in every arena: a
    long-running server's memory then shows what it holds, not each buffer that varying batch shapes and
    request threads once freed. Returns whether it applied (not on other C libraries)."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    ctypes.CDLL(None).malloc_trim(0)
    return True


def seed_everything(seed: int, deterministic: bool) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
