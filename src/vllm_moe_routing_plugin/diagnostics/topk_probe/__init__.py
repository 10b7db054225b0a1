# SPDX-License-Identifier: Apache-2.0
"""The top-k probe: FlashInfer's routing top-k header, compiled into a small
CUDA program and run on this machine's GPU against the reference.

The fused MoE kernels only run on SM100/SM103, but the top-k they route with
(``include/flashinfer/trtllm/fused_moe/RoutingKernelTopK.cuh``) is plain CUDA
that any GPU of compute capability 9.0 or newer runs. flashinfer#2822 lives in
it: up to 0.6.6 its two-stage reduction (129-512 experts, top_k < 10) lets
uninitialised candidates into the top-k. The probe calls it the way the
Renormalize routing kernels do (``topk_probe.cu``) and compares the experts
it picks with ``reference.top_k`` on the same keys.

Header versions differ in their template tiers; the probe knows the layout of
<= 0.6.6 and of 0.6.7 onwards (checked up to 0.7.4) and refuses others with
"unsupported FlashInfer header version".
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import struct
import subprocess
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ...facts import FLASHINFER, installed_version
from .. import reference
from ..cases import Case

HEADER = "RoutingKernelTopK.cuh"
SOURCE = Path(__file__).with_name("topk_probe.cu")


class NotRunnable(Exception):
    """The probe cannot run here; the message says why."""


@dataclass(frozen=True)
class Header:
    path: Path
    layout: str  # "66" (<= 0.6.6) or "67" (>= 0.6.7)
    version: str

    @property
    def release(self) -> tuple[int, ...]:
        from ...policy import parse_version

        parsed = parse_version(self.version)
        if parsed is not None:
            return parsed.release
        return (0, 6, 6) if self.layout == "66" else (0, 6, 7)


def layout_of(text: str) -> str | None:
    """Which template tiers the header has, from what it declares."""
    if "namespace moe::dev::routing" not in text or "namespace topk" not in text:
        return None
    signature = "Type (&value)[N],"
    if "static constexpr int MaxNumTopK = 10;" in text and "N <= 16" in text:
        return "66" if signature in text else None
    if (
        "static constexpr int MaxSupportedTopExperts = 32;" in text
        and "N <= 64" in text
    ):
        return "67" if signature in text else None
    return None


def find_header(include: str | os.PathLike[str] | None, version: str | None) -> Header:
    """The header of the installed flashinfer-python wheel, or the one found
    under ``include`` (a FlashInfer source tree, wheel tree or include folder)."""
    if include is None:
        spec = importlib.util.find_spec("flashinfer")  # locates, does not import
        if spec is None or not spec.submodule_search_locations:
            raise NotRunnable(
                "flashinfer-python is not installed (or pass --flashinfer-include)"
            )
        root = Path(next(iter(spec.submodule_search_locations)))
        version = version or installed_version(FLASHINFER) or "unknown"
    else:
        root = Path(include)
        if version is None:
            marker = next(iter(root.rglob("version.txt")), None)
            version = marker.read_text().strip() if marker else "unknown"
    found = sorted(root.rglob(HEADER))
    if not found:
        raise NotRunnable(f"no {HEADER} under {root}")
    path = found[0]
    layout = layout_of(path.read_text(encoding="utf-8", errors="replace"))
    if layout is None:
        raise NotRunnable(f"unsupported FlashInfer header version ({version}: {path})")
    return Header(path, layout, version)


def compile_probe(header: Header, workdir: Path) -> Path:
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        raise NotRunnable("no CUDA compiler (nvcc) on PATH")
    binary = workdir / f"topk_probe_{header.layout}"
    command = [
        nvcc,
        "-O2",
        "-std=c++17",
        "-arch=native",
        f"-DPROBE_LAYOUT={header.layout}",
        f"-I{header.path.parent}",
        str(SOURCE),
        "-o",
        str(binary),
    ]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise NotRunnable(f"nvcc failed: {result.stderr.strip()[-2000:]}")
    return binary


@dataclass(frozen=True)
class Run:
    """One case with one key kind, as the probe saw it."""

    case: Case
    keys: (
        str  # "bf16 logits" (Renormalize) or "fp32 softmax" (RenormalizeNaive <= 0.6.7)
    )
    comparison: reference.Comparison

    def row(self) -> dict[str, Any]:
        c = self.comparison
        return {
            "case": self.case.name,
            "keys": self.keys,
            "in_bug_envelope": self.case.in_bug_envelope,
            "tokens": c.tokens,
            "wrong_experts": c.wrong_experts,
            "invalid_ids": c.invalid_ids,
            "near_ties": c.near_ties,
            "passed": c.passed,
        }


def key_kinds(header: Header) -> list[str]:
    kinds = ["bf16 logits"]
    if header.release < reference.DTYPE_AWARE_ROUTING:
        kinds.append("fp32 softmax")  # RenormalizeNaive's own path before 0.6.8
    return kinds


def keys_for(case: Case, kind: str, header: Header) -> Any:
    logits = case.logits()
    method: reference.Method = (
        "renormalize" if kind == "bf16 logits" else "renormalize_naive"
    )
    key = reference.keys(logits, method, header.release)
    import torch

    return key.to(torch.bfloat16) if kind == "bf16 logits" else key.float()


def run(header: Header, cases: Iterable[Case], binary: Path | None = None) -> list[Run]:
    """Compile (unless given a binary), run every case, compare."""
    import torch

    cases = list(cases)
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        binary = binary or compile_probe(header, workdir)
        jobs = [(case, kind) for case in cases for kind in key_kinds(header)]
        inputs = workdir / "input.bin"
        keys_by_job = []
        with inputs.open("wb") as handle:
            handle.write(struct.pack("<i", len(jobs)))
            for case, kind in jobs:
                key = keys_for(case, kind, header)
                keys_by_job.append(key)
                bf16 = key.dtype == torch.bfloat16
                handle.write(
                    struct.pack("<4i", case.tokens, case.experts, case.top_k, int(bf16))
                )
                raw = key.contiguous().view(torch.int16 if bf16 else torch.int32)
                handle.write(raw.numpy().tobytes())
        outputs = workdir / "output.bin"
        result = subprocess.run(
            [str(binary), str(inputs), str(outputs)],
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            raise NotRunnable(f"probe failed: {result.stderr.strip()[-2000:]}")
        data = outputs.read_bytes()
    runs = []
    offset = 0
    for (case, kind), key in zip(jobs, keys_by_job, strict=True):
        n = case.tokens * case.top_k
        ids = torch.frombuffer(
            bytearray(data[offset : offset + 4 * n]), dtype=torch.int32
        )
        offset += 8 * n  # ids, then the keys the probe returned
        ids = ids.view(case.tokens, case.top_k)
        want = reference.top_k(key.float(), case.top_k)
        comparison = reference.compare(ids, want, key.float())
        runs.append(Run(case, kind, comparison))
    return runs
