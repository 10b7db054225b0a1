# SPDX-License-Identifier: Apache-2.0
"""Build FlashInfer's own routing kernels, from the installed wheel's sources,
into a small CUDA program (``routing_driver.cu``) for this machine's GPU.

What is compiled, and from where (nothing is vendored into this repository):

* the routing kernels: every ``.cu`` file under the wheel's ``data/csrc`` with
  "routing" in its path, except Llama4's (0.6.6: ``trtllm_fused_moe_routing_
  {renormalize,deepseek}.cu``; 0.6.7: ``fused_moe/trtllm_backend/routing*/``
  too; 0.6.8 on: ``..._routing_{common,custom,deepseek}.cu``);
* ``Routing::Runner`` from the wheel's ``csrc/trtllm_fused_moe_runner.cu``: the
  text up to ``namespace PermuteGemm1`` (its includes and the whole
  ``namespace Routing``), so the routing options each release sets (PDL, the
  packed top-k buffer, the normalisation epsilon of 0.6.15 on) are its own;
* the driver, whose call of ``Runner::run`` is written from the parameter names
  the release's ``runner.h`` declares (the list grows between releases).

Two stand-ins: ``tvm_ffi_utils.h`` (the ``.cu`` files include it only for the
TVM check macros of ``run(Data const&, void*)``; ours throws, and the driver
reports the message) and Llama4's ``run``, which the runner calls for a method
this check never uses. FlashInfer's JIT flags, with the local GPU's arch.

The trtllm-gen batched-GEMM headers (``DtypeDecl.h``: the dtype enum the
routing data carries) are not in the flashinfer-python wheel from 0.6.8 on:
FlashInfer fetches them with its cubins. They are looked up in flashinfer-cubin,
FlashInfer's cubin cache, or ``--trtllm-headers``.

Binaries are cached per FlashInfer version, arch and build recipe under
``~/.cache/vllm-moe-routing/routing-kernels/``; the compiles take minutes of
one core each (the DeepSeek and custom-routing files the longest).
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import importlib.util
import json
import os
import re
import shutil
import subprocess
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).parent
DRIVER = HERE / "routing_driver.cu"
TVM_STUB = HERE / "tvm_ffi_utils.h"
CACHE_ENV = "VLLM_MOE_ROUTING_CACHE"
JOBS_ENV = "VLLM_MOE_ROUTING_BUILD_JOBS"
SPLIT_ENV = "VLLM_MOE_ROUTING_SPLIT_COMPILE"

FLAGS = (
    "-std=c++17",
    "-O3",
    "-use_fast_math",
    "--expt-relaxed-constexpr",
    "-static-global-template-stub=false",
    "-DCUTE_SM90_EXTENDED_MMA_SHAPES_ENABLED",
    "-DFLASHINFER_ENABLE_FP8_E8M0",
    "-DFLASHINFER_ENABLE_FP4_E2M1",
    "-DFLASHINFER_ENABLE_F16",
    "-DFLASHINFER_ENABLE_BF16",
    "-DFLASHINFER_ENABLE_FP8_E4M3",
    "-DFLASHINFER_ENABLE_FP8_E5M2",
    "-DTLLM_GEN_EXPORT_INTERFACE",
    "-DTLLM_ENABLE_CUDA",
    "-DENABLE_BF16",
    "-DENABLE_FP8",
    "-DENABLE_FP4",
)

BMM_EXPORT = "trtllmGen_bmm_export"
RUNNER_HEADER = "include/flashinfer/trtllm/fused_moe/runner.h"
RUNNER_SOURCE = "csrc/trtllm_fused_moe_runner.cu"
COMMON_SOURCES = ("envUtils.cpp", "logger.cpp", "stringUtils.cpp", "tllmException.cpp")

#: The driver's variable for each ``Routing::Runner::run`` parameter a release
#: declares (runner.h). An unknown name stops the build: a new parameter needs a
#: decision, not a default.
RUNNER_PARAMETERS = {
    name: name
    for name in (
        "routingLogits",
        "routingBias",
        "numTokens",
        "numExperts",
        "topK",
        "numFusedSharedExpert",
        "localExpertOffset",
        "localNumExperts",
        "routedScalingFactor",
        "routingExpertIndexes",
        "expertCountHistogram",
        "permutedIdxSize",
        "expandedIdxToPermutedIdx",
        "permutedIdxToExpandedIdx",
        "permutedIdxToTokenIdx",
        "expertIds",
        "expertWeights",
        "numTokensPerExpert",
        "ctaIdxXyToBatchIdx",
        "ctaIdxXyToMnLimit",
        "numNonExitingCtas",
        "dtypeElt",
        "dtypeBias",
        "useRoutingScalesOnInput",
        "useDeepSeekFp8",
        "routingMethodType",
        "stream",
        "dtypeLogits",
        "normTopkProb",
        "routing_replay_out",
        "enable_pdl",
    )
} | {
    "nGroups": "nGroup",
    "nGroup": "nGroup",
    "topkGroups": "topkGroup",
    "topkGroup": "topkGroup",
}


class NotBuildable(Exception):
    """The routing kernels cannot be built here; the message says what is needed."""


@dataclass(frozen=True)
class Sources:
    """The installed (or given) FlashInfer wheel's ``data`` tree."""

    root: Path  # .../flashinfer/data
    version: str

    def routing_files(self) -> list[Path]:
        csrc = self.root / "csrc"
        return sorted(
            path
            for path in csrc.rglob("*.cu")
            if "routing" in path.relative_to(csrc).as_posix().lower()
            and "llama4" not in path.name.lower()
        )


def find_sources(
    include: str | os.PathLike[str] | None, version: str | None
) -> Sources:
    """The wheel's data tree: of the installed flashinfer-python (located, not
    imported), or under ``include`` (a wheel or site-packages tree)."""
    from ...facts import FLASHINFER, installed_version

    if include is None:
        spec = importlib.util.find_spec("flashinfer")
        if spec is None or not spec.submodule_search_locations:
            raise NotBuildable(
                "flashinfer-python is not installed (or pass --flashinfer-include)"
            )
        base = Path(next(iter(spec.submodule_search_locations)))
        version = version or installed_version(FLASHINFER)
    else:
        base = Path(include)
    candidates = [base / "data", base / "flashinfer" / "data", base]
    root = next((c for c in candidates if (c / RUNNER_SOURCE).is_file()), None)
    if root is None:
        raise NotBuildable(
            f"no FlashInfer sources ({RUNNER_SOURCE}) under {base}: the routing "
            "check compiles the wheel's own kernels"
        )
    if version is None:  # the wheel's flashinfer/_build_meta.py: __version__ = "0.6.6"
        meta = root.parent / "_build_meta.py"
        found = (
            re.search(r"__version__\s*=\s*[\"']([^\"']+)", meta.read_text())
            if meta.is_file()
            else None
        )
        version = found.group(1) if found else None
    if not version:
        raise NotBuildable(
            f"unknown FlashInfer version of {root} (pass --flashinfer-version)"
        )
    return Sources(root, version)


def runner_parameters(runner_h: str) -> list[str]:
    """The parameter names of ``Routing::Runner::run`` as ``runner.h`` declares it."""
    block = runner_h.split("namespace Routing", 1)
    if len(block) != 2:
        raise NotBuildable("runner.h declares no namespace Routing")
    match = re.search(r"\bvoid\s+run\s*\((.*?)\)\s*;", block[1], re.S)
    if match is None:
        raise NotBuildable("runner.h declares no Routing::Runner::run")
    names = []
    for parameter in match.group(1).split(","):
        declarator = parameter.split("=", 1)[0].strip()
        name = re.findall(r"[A-Za-z_][A-Za-z0-9_]*", declarator)
        if not name:
            raise NotBuildable(f"cannot read Runner::run parameter {parameter!r}")
        names.append(name[-1])
    return names


def runner_call(runner_h: str) -> str:
    """The driver's argument list for this release's ``Runner::run``."""
    names = runner_parameters(runner_h)
    unknown = [n for n in names if n not in RUNNER_PARAMETERS]
    if unknown:
        raise NotBuildable(
            f"Routing::Runner::run takes parameters this check does not know: {unknown}"
        )
    return ", ".join(RUNNER_PARAMETERS[n] for n in names)


RUNNER_INCLUDE = '#include "flashinfer/trtllm/fused_moe/runner.h"'
GEMM_INCLUDE = re.compile(
    r'^#include "flashinfer/trtllm/batched_gemm/KernelRunner\.h"\n', re.M
)
CLOSE = (
    "}  // namespace trtllmgen_moe\n"
    "}  // namespace kernels\n"
    "}  // namespace tensorrt_llm\n"
)


def routing_runner_header(runner_h: str) -> str:
    """``runner.h`` up to the end of its ``Routing`` namespace (the method enum,
    the buffer sizes, ``Routing::Runner``), without the batched-GEMM runner
    (``KernelRunner.h``): that needs the trtllm-gen GEMM headers of the exact
    cubin release, which routing does not use (their ``DtypeDecl.h`` is all the
    routing code reads)."""
    head, found, _ = runner_h.partition("}  // namespace Routing")
    if not found or "namespace Routing {" not in head:
        raise NotBuildable("unrecognised runner.h layout")
    head = GEMM_INCLUDE.sub("", head)
    # runner.h's own includes are relative to its folder; the copy lives elsewhere
    head = re.sub(
        r'^#include "([^/"]+)"',
        r'#include "flashinfer/trtllm/fused_moe/\1"',
        head,
        flags=re.M,
    )
    return head + "}  // namespace Routing\n" + CLOSE


def routing_runner_source(runner_cu: str) -> str:
    """The wheel's ``Routing`` namespace of ``trtllm_fused_moe_runner.cu``, with
    its includes (``runner.h`` as ``routing_runner_header``); the GEMM runners
    after it are left out (they need the trtllm-gen GEMM library, which routing
    does not use)."""
    head, found, _ = runner_cu.partition("namespace PermuteGemm1 {")
    if not found or "namespace Routing {" not in head or RUNNER_INCLUDE not in head:
        raise NotBuildable("unrecognised trtllm_fused_moe_runner.cu layout")
    head = GEMM_INCLUDE.sub("", head).replace(
        RUNNER_INCLUDE, '#include "routing_runner.h"'
    )
    return head + CLOSE


def routing_methods(runner_h: str) -> dict[str, int]:
    """``RoutingMethodType``'s members and values, as this release declares them
    (MiniMax2 appears in 0.6.8; values move)."""
    match = re.search(r"enum class RoutingMethodType[^{]*\{(.*?)\};", runner_h, re.S)
    if match is None:
        raise NotBuildable("runner.h declares no RoutingMethodType")
    body = re.sub(r"//[^\n]*", "", match.group(1))
    return {name: int(value) for name, value in re.findall(r"(\w+)\s*=\s*(\d+)", body)}


LLAMA4_STUB = """#include <cuda_fp8.h>
#include <stdexcept>
#include "flashinfer/trtllm/fused_moe/RoutingKernel.h"
namespace moe::dev::routing::routingLlama4 {
void run(Data const&, void*) {
  throw std::runtime_error("Llama4 routing is not built by the routing check");
}
}  // namespace moe::dev::routing::routingLlama4
"""


def bmm_headers(
    sources: Sources,
    explicit: str | os.PathLike[str] | None,
    environ: Mapping[str, str],
) -> Path:
    """The ``trtllmGen_bmm_export`` folder: in the wheel (up to ~0.6.4), the one
    ``--trtllm-headers`` names, flashinfer-cubin's, or FlashInfer's cubin cache,
    preferring the artifact this release names (``artifacts.py``)."""
    in_wheel = sources.root / "include/flashinfer/trtllm/batched_gemm" / BMM_EXPORT
    if in_wheel.is_dir():
        return in_wheel
    if explicit is not None:
        path = Path(explicit)
        found = path if path.name == BMM_EXPORT else next(path.rglob(BMM_EXPORT), None)
        if found is None or not found.is_dir():
            raise NotBuildable(f"no {BMM_EXPORT} folder under {path}")
        return found
    artifact = _bmm_artifact(sources)
    roots = []
    spec = importlib.util.find_spec("flashinfer_cubin")
    if spec is not None and spec.submodule_search_locations:
        roots.append(Path(next(iter(spec.submodule_search_locations))) / "cubins")
    cubin_dir = environ.get("FLASHINFER_CUBIN_DIR")
    roots.append(
        Path(cubin_dir) if cubin_dir else Path.home() / ".cache/flashinfer/cubins"
    )
    for root in roots:
        if artifact and (root / artifact / "include" / BMM_EXPORT).is_dir():
            return root / artifact / "include" / BMM_EXPORT
    raise NotBuildable(
        "needs the trtllm-gen batched-GEMM headers FlashInfer fetches with its cubins "
        f"({artifact or 'batched_gemm'}/include/{BMM_EXPORT}): install the matching "
        "flashinfer-cubin, or pass --trtllm-headers"
    )


def _bmm_artifact(sources: Sources) -> str | None:
    artifacts = sources.root.parent / "artifacts.py"
    if not artifacts.is_file():
        return None
    match = re.search(
        r"TRTLLM_GEN_BMM:\s*str\s*=\s*\(?\s*\"([0-9a-f]{40}/batched_gemm-[^\"]+?)/?\"",
        artifacts.read_text(),
    )
    return match.group(1) if match else None


def cublas_include(environ: Mapping[str, str]) -> Path | None:
    """A folder with ``cublas_v2.h`` (``cudaUtils.h`` includes it), from the CUDA
    toolkit or the nvidia-cublas wheel; None if the toolkit has it already."""
    nvcc = shutil.which("nvcc", path=environ.get("PATH"))
    if (
        nvcc is not None
        and (Path(nvcc).resolve().parent.parent / "include/cublas_v2.h").is_file()
    ):
        return None
    if environ.get("CUBLAS_INCLUDE_DIR"):
        return Path(environ["CUBLAS_INCLUDE_DIR"])
    for package in ("nvidia.cu13", "nvidia.cublas"):
        try:
            spec = importlib.util.find_spec(package)
        except ModuleNotFoundError:
            continue
        for location in (spec.submodule_search_locations or []) if spec else []:
            if (Path(location) / "include/cublas_v2.h").is_file():
                return Path(location) / "include"
    raise NotBuildable(
        "needs the cuBLAS headers (cublas_v2.h): install nvidia-cublas or set "
        "CUBLAS_INCLUDE_DIR"
    )


def cache_root(environ: Mapping[str, str]) -> Path:
    if environ.get(CACHE_ENV):
        return Path(environ[CACHE_ENV])
    base = environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "vllm-moe-routing" / "routing-kernels"


def _digest(*parts: bytes) -> str:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part)
    return digest.hexdigest()[:10]


def kernel_key() -> str:
    """Changes when what the kernels are compiled with changes."""
    return _digest(TVM_STUB.read_bytes(), " ".join(FLAGS).encode())


def build_dir(version: str, arch: str, environ: Mapping[str, str]) -> Path:
    """One folder per FlashInfer version, arch and kernel recipe: the kernels'
    objects, and a driver per driver source."""
    return cache_root(environ) / f"flashinfer-{version}-{arch}-{kernel_key()}"


def binary_path(version: str, arch: str, environ: Mapping[str, str]) -> Path:
    driver = _digest(DRIVER.read_bytes())
    return build_dir(version, arch, environ) / f"routing_driver-{driver}"


def build(
    sources: Sources,
    arch: str,
    environ: Mapping[str, str],
    *,
    trtllm_headers: str | os.PathLike[str] | None = None,
    log: Callable[[str], None] = lambda _: None,
) -> Path:
    """The driver for this FlashInfer and arch (``sm_90a``, ``sm_100a``), from the
    cache or built now (one nvcc at a time; objects kept, so an interrupted
    build resumes)."""
    binary = binary_path(sources.version, arch, environ)
    if binary.is_file():
        return binary
    nvcc = shutil.which("nvcc", path=environ.get("PATH"))
    if nvcc is None:
        raise NotBuildable(
            "needs the CUDA compiler (nvcc) on PATH to build FlashInfer's routing "
            "kernels"
        )
    work = binary.parent
    stage = work / "src"
    overlay = work / "include"
    objects = work / "obj"
    for folder in (stage, overlay / "flashinfer/trtllm/batched_gemm", objects):
        folder.mkdir(parents=True, exist_ok=True)
    link = overlay / "flashinfer/trtllm/batched_gemm" / BMM_EXPORT
    _link(link, bmm_headers(sources, trtllm_headers, environ))
    csrc = sources.root / "csrc"
    units: list[Path] = []
    for path in sources.routing_files():
        relative = path.relative_to(csrc)
        target = stage / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
        if path.parent != csrc:  # the kernels' own headers next to them (0.6.7)
            for sibling in path.parent.glob("*.cuh"):
                shutil.copyfile(sibling, target.parent / sibling.name)
        units.append(target)
    shutil.copyfile(TVM_STUB, stage / TVM_STUB.name)
    runner_h = (sources.root / RUNNER_HEADER).read_text()
    (stage / "routing_runner.h").write_text(routing_runner_header(runner_h))
    (stage / "routing_runner.cu").write_text(
        routing_runner_source((sources.root / RUNNER_SOURCE).read_text())
    )
    (stage / "llama4_stub.cu").write_text(LLAMA4_STUB)
    (stage / "routing_call.h").write_text(
        f"#define ROUTING_RUNNER_ARGS {runner_call(runner_h)}\n"
    )
    shutil.copyfile(DRIVER, stage / DRIVER.name)
    if not units:
        raise NotBuildable(f"no routing kernels under {csrc}")
    # The small units first: an incompatible release fails in seconds, not after
    # the kernels' minutes.
    small = [stage / DRIVER.name, stage / "routing_runner.cu", stage / "llama4_stub.cu"]
    # TensorRT-LLM's logger and exceptions, which the kernels' checks call
    # (FlashInfer's JIT builds the same files into its fused-MoE module).
    for name in COMMON_SOURCES:
        source = csrc / "nv_internal/cpp/common" / name
        if source.is_file():
            (stage / "common").mkdir(exist_ok=True)
            shutil.copyfile(source, stage / "common" / name)
            small.append(stage / "common" / name)
    units = [*small, *units]
    includes = [
        f"-I{stage}",
        f"-I{overlay}",
        f"-I{sources.root / 'include'}",
        f"-I{csrc}",
    ]
    includes += [f"-I{csrc / 'nv_internal'}", f"-I{csrc / 'nv_internal/include'}"]
    includes += [
        f"-I{sources.root / 'cutlass/include'}",
        f"-I{sources.root / 'spdlog/include'}",
    ]
    cublas = cublas_include(environ)
    if cublas is not None:  # only cuBLAS's own headers, never the wheel's CUDA runtime
        only = overlay / "cublas"
        only.mkdir(exist_ok=True)
        for header in cublas.glob("cublas*.h"):
            _link(only / header.name, header)
        includes.append(f"-I{only}")
    number = arch.removeprefix("sm_")
    gencode = f"-gencode=arch=compute_{number},code=sm_{number}"

    def compile_unit(unit: Path) -> str:
        # Named by content: a changed driver or stand-in is rebuilt, the kernels kept.
        name = unit.relative_to(stage).as_posix().replace("/", "__")
        obj = objects / f"{name}-{_digest(unit.read_bytes())}.o"
        extra = ["-include", str(stage / "routing_call.h")] if unit == units[0] else []
        if not obj.is_file():
            log(
                f"nvcc {unit.relative_to(stage)} (FlashInfer {sources.version}, {arch})"
            )
            partial = obj.with_suffix(f".o.{os.getpid()}.part")
            command = [
                nvcc,
                *FLAGS,
                gencode,
                *split,
                *includes,
                *extra,
                "-c",
                str(unit),
            ]
            _nvcc([*command, "-o", str(partial)])
            partial.rename(obj)
        return str(obj)

    # One nvcc at a time unless VLLM_MOE_ROUTING_BUILD_JOBS says otherwise (each
    # takes a core and a few GB for minutes).
    jobs = max(1, int(environ.get(JOBS_ENV, "1") or 1))
    # nvcc's --split-compile runs the optimiser and ptxas of one file on several
    # threads (the DeepSeek and custom-routing files take 15+ CPU minutes each);
    # code generation is the same per function, only scheduled in parallel.
    threads = environ.get(SPLIT_ENV)
    split = [f"--split-compile={int(threads)}"] if threads else []
    built = [compile_unit(unit) for unit in small]
    with concurrent.futures.ThreadPoolExecutor(jobs) as pool:
        built += list(pool.map(compile_unit, units[len(small) :]))
    partial = binary.with_suffix(f".{os.getpid()}.part")
    _nvcc([nvcc, gencode, *built, "-o", str(partial), "-ldl"])
    info = {
        "version": sources.version,
        "arch": arch,
        "methods": routing_methods(runner_h),
        "sources": str(sources.root),
        "trtllm_headers": str(link.resolve()),
        "flags": [*FLAGS, gencode],
        "split_compile": threads,
    }
    binary.with_suffix(".json").write_text(json.dumps(info, indent=2) + "\n")
    partial.rename(binary)
    return binary


def _link(link: Path, target: Path) -> None:
    """Point ``link`` at ``target`` (a cache copied from another machine holds
    links to its paths)."""
    if link.is_symlink() or link.exists():
        if link.resolve() == target.resolve():
            return
        link.unlink()
    link.symlink_to(target, target_is_directory=target.is_dir())


def _nvcc(command: list[str]) -> None:
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise NotBuildable(f"nvcc failed: {result.stderr.strip()[-3000:]}")
