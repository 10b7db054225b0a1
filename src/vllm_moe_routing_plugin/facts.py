# SPDX-License-Identifier: Apache-2.0
"""What is installed and which GPUs this process can see, without side effects.

Versions come from ``importlib.metadata`` (never ``import flashinfer``: its
import can raise on a companion-wheel mismatch and, per vLLM's
``vllm/utils/flashinfer.py``, may touch CUDA). GPUs come from NVML (package
``nvidia-ml-py``), which, unlike ``torch.cuda``, creates no CUDA context, so
vLLM can still fork workers after the plugin ran (vLLM issue #8893).

The edges that cannot be real on every machine (the NVML library, the
installed distributions) are parameters, so tests hand in their answers.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.metadata
import os
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from .envs import DEVICE_CAPABILITY_VAR, Capability
from .errors import describe_error

if TYPE_CHECKING:
    from packaging.requirements import Requirement

VLLM = "vllm"
TORCH = "torch"
FLASHINFER = "flashinfer-python"
FLASHINFER_CUBIN = "flashinfer-cubin"
FLASHINFER_JIT_CACHE = "flashinfer-jit-cache"
DISTRIBUTIONS: tuple[str, ...] = (
    VLLM,
    TORCH,
    FLASHINFER,
    FLASHINFER_CUBIN,
    FLASHINFER_JIT_CACHE,
)

#: The distributions the decision reads (torch is for the status report): vLLM
#: for the known ranges of its defects and whether it is newer than proven.
DECIDING: tuple[str, ...] = (VLLM, FLASHINFER, FLASHINFER_CUBIN, FLASHINFER_JIT_CACHE)

VersionOf = Callable[[str], "str | None"]


def installed_version(distribution: str) -> str | None:
    """The installed version of ``distribution``, or None if it is not installed.

    The same answer as ``importlib.metadata.version``, at about half the cost:
    that function parses the whole METADATA file with the ``email`` package
    (~0.3 ms a distribution here, paid in every vLLM process), where the
    ``Version`` field is one line of the header (core metadata spec).
    """
    try:
        dist = importlib.metadata.distribution(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None
    metadata = dist.read_text("METADATA") or dist.read_text("PKG-INFO")
    for line in (metadata or "").splitlines():
        if not line:
            break  # the end of the header
        field, _, value = line.partition(":")
        if field.strip().lower() == "version":
            return value.strip()
    return dist.version


class Gpu:
    """One GPU as this process numbers it (after ``CUDA_VISIBLE_DEVICES``)."""

    __slots__ = ("capability", "name", "ordinal", "source")

    def __init__(
        self, ordinal: int, name: str, capability: Capability, source: str
    ) -> None:
        self.ordinal = ordinal  # CUDA's device index in this process
        self.name = name
        self.capability = capability
        self.source = source  # "nvml", the override variable's name, or "assumed"


class GpuReading:
    """The GPUs, or why none could be read."""

    __slots__ = ("error", "failed", "gpus")

    def __init__(
        self, gpus: tuple[Gpu, ...], error: str | None = None, failed: bool = False
    ) -> None:
        self.gpus = gpus
        self.error = error  # why no GPU could be read, when none was
        self.failed = failed  # NVML answered init but failed a query: a WARNING


class Facts:
    """Everything the decision looks at."""

    __slots__ = ("gpu_error", "gpu_query_failed", "gpus", "versions")

    def __init__(
        self,
        versions: Mapping[str, str | None],
        gpus: tuple[Gpu, ...],
        gpu_error: str | None = None,
        gpu_query_failed: bool = False,
    ) -> None:
        self.versions = versions
        self.gpus = gpus
        self.gpu_error = gpu_error
        self.gpu_query_failed = gpu_query_failed

    def version(self, distribution: str) -> str | None:
        return self.versions.get(distribution)


def read_versions(
    distributions: Sequence[str] = DISTRIBUTIONS,
    version_of: VersionOf = installed_version,
) -> dict[str, str | None]:
    return {name: version_of(name) for name in distributions}


RequiresOf = Callable[[str], "list[str] | None"]


def base_requirements(
    distribution: str, requires_of: RequiresOf = importlib.metadata.requires
) -> list[Requirement]:
    """The requirements (``Requires-Dist``) of ``distribution`` that apply to
    a plain install on this machine: markers evaluated, extras left out;
    unparsable entries skipped. Empty when it is not installed. For the
    diagnostics only: ``packaging.requirements`` is imported on call."""
    from packaging.requirements import InvalidRequirement, Requirement

    try:
        texts = requires_of(distribution) or []
    except importlib.metadata.PackageNotFoundError:
        return []
    applying = []
    for text in texts:
        try:
            requirement = Requirement(text)
        except InvalidRequirement:
            continue
        if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
            applying.append(requirement)
    return applying


def vllm_pins(requires_of: RequiresOf = importlib.metadata.requires) -> dict[str, str]:
    """The FlashInfer versions the installed vLLM pins (``Requires-Dist``), e.g.
    ``{"flashinfer-python": "==0.6.6"}``; empty without vLLM."""
    return {
        requirement.name: str(requirement.specifier)
        for requirement in base_requirements(VLLM, requires_of)
        if requirement.name in (FLASHINFER, FLASHINFER_CUBIN, FLASHINFER_JIT_CACHE)
    }


def visible_device_entries(environ: Mapping[str, str]) -> list[str] | None:
    """``CUDA_VISIBLE_DEVICES`` split into entries; None when unset (all GPUs).

    CUDA stops at the first entry it cannot use; that is applied when the
    entries are matched against the devices NVML reports.
    """
    raw = environ.get("CUDA_VISIBLE_DEVICES")
    if raw is None:
        return None
    return [entry.strip() for entry in raw.split(",") if entry.strip()]


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def read_gpus_nvml(environ: Mapping[str, str], nvml: Any = None) -> GpuReading:
    """Capabilities of the GPUs visible to CUDA in this process, through NVML.

    ``nvml`` is the ``pynvml`` module or an object with the same functions.
    ``CUDA_VISIBLE_DEVICES`` entries may be indices or (prefixes of) UUIDs, as
    CUDA accepts them; an entry that names no device ends the list, as in CUDA.
    Any NVML failure means "no GPU visible", with the error as the reason.
    """
    if nvml is None:
        try:
            nvml = importlib.import_module("pynvml")
        except ImportError as exc:
            return GpuReading((), f"NVML bindings not importable ({exc})")
    try:
        nvml.nvmlInit()
    except Exception as exc:
        return GpuReading((), f"NVML unavailable ({describe_error(exc)})")
    try:
        count = int(nvml.nvmlDeviceGetCount())
        handles = [nvml.nvmlDeviceGetHandleByIndex(i) for i in range(count)]
        chosen = _select_visible(environ, handles, nvml)
        gpus = tuple(
            Gpu(
                ordinal=ordinal,
                name=_text(nvml.nvmlDeviceGetName(handle)),
                capability=_capability(nvml.nvmlDeviceGetCudaComputeCapability(handle)),
                source="nvml",
            )
            for ordinal, handle in enumerate(chosen)
        )
    except Exception as exc:
        return GpuReading((), f"NVML query failed ({describe_error(exc)})", failed=True)
    finally:
        with contextlib.suppress(Exception):  # shutting down is best effort
            nvml.nvmlShutdown()
    if not gpus:
        return GpuReading((), "no GPU visible to CUDA in this process")
    return GpuReading(gpus)


def _capability(value: Any) -> Capability:
    major, minor = value
    return int(major), int(minor)


def _select_visible(
    environ: Mapping[str, str], handles: list[Any], nvml: Any
) -> list[Any]:
    entries = visible_device_entries(environ)
    if entries is None:
        return handles
    uuids: list[str] | None = None
    chosen: list[Any] = []
    for entry in entries:
        if entry.lstrip("-").isdigit():
            index = int(entry)
            if not 0 <= index < len(handles):
                break
            chosen.append(handles[index])
            continue
        if uuids is None:
            uuids = [_text(nvml.nvmlDeviceGetUUID(h)) for h in handles]
        matches = [
            h for h, u in zip(handles, uuids, strict=True) if _uuid_matches(entry, u)
        ]
        if len(matches) != 1:
            break
        chosen.append(matches[0])
    return chosen


def _uuid_matches(entry: str, uuid: str) -> bool:
    """CUDA accepts a UUID with or without the ``GPU-`` prefix, or a unique prefix."""
    want = entry.lower().removeprefix("gpu-")
    have = uuid.lower().removeprefix("gpu-")
    return bool(want) and have.startswith(want)


def gpus_from_capabilities(
    capabilities: Sequence[Capability], source: str
) -> tuple[Gpu, ...]:
    return tuple(
        Gpu(ordinal=i, name="(not queried)", capability=c, source=source)
        for i, c in enumerate(capabilities)
    )


def gather(
    environ: Mapping[str, str] | None = None,
    *,
    capabilities: Sequence[Capability] | None = None,
    capability_source: str = DEVICE_CAPABILITY_VAR,
    version_of: VersionOf = installed_version,
    nvml: Any = None,
    distributions: Sequence[str] = DISTRIBUTIONS,
) -> Facts:
    """Read versions and GPUs."""
    reading = read_gpus(environ, capabilities, capability_source, nvml)
    versions = read_versions(distributions, version_of)
    return Facts(versions, reading.gpus, reading.error, reading.failed)


def read_gpus(
    environ: Mapping[str, str] | None = None,
    capabilities: Sequence[Capability] | None = None,
    capability_source: str = DEVICE_CAPABILITY_VAR,
    nvml: Any = None,
) -> GpuReading:
    """The GPUs: ``capabilities`` (from the override variable or a what-if flag)
    replaces the NVML query."""
    if capabilities is not None:
        return GpuReading(gpus_from_capabilities(capabilities, capability_source))
    return read_gpus_nvml(os.environ if environ is None else environ, nvml)
