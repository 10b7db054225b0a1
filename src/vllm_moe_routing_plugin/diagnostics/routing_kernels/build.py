# SPDX-License-Identifier: Apache-2.0
"""Build FlashInfer's own routing kernels, from the installed wheel's sources,
into a small CUDA program (``routing_driver.cu``) for this machine's GPU.

What is compiled, and from where (nothing is vendored into this repository):

* the routing kernels ``Routing::Runner`` dispatches to: the
  ``trtllm_fused_moe_routing_*.cu`` files next to the DeepSeek one, and the
  ``routing*/`` folders beside it, except Llama4's (0.6.6: ``csrc/..._routing_
  {renormalize,deepseek}.cu``; 0.6.7: ``fused_moe/trtllm_backend/`` and its
  ``routing{DeepSeek,Renormalize}/``; 0.6.8 - 0.6.18: ``..._routing_{common,
  custom,deepseek}.cu``; 0.7.x: ``..._routing_{common,deepseek}.cu`` and
  ``..._routing_custom_{block,cluster,cluster_large,entry}.cu``). That is the
  list FlashInfer 0.7's own standalone routing module compiles
  (``gen_trtllm_gen_routing_module`` in ``flashinfer/jit/fused_moe.py``) less
  its TVM-FFI binding; the other files with "routing" in their name (0.7's
  ``trtllm_fused_moe_routing_binding.cu``, which needs the real TVM FFI, and
  ``cake_deepseek_fused_routing*``, a separate fused op) are not built;
* ``Routing::Runner`` itself, from its own file in 0.7.x
  (``fused_moe/trtllm_backend/trtllm_fused_moe_routing_runner.cu``: "split out
  of trtllm_fused_moe_runner.cu so it can be linked into the standalone
  trtllm_gen_routing module", its opening comment says) or, up to 0.6.x,
  from ``csrc/trtllm_fused_moe_runner.cu``: the text up to ``namespace
  PermuteGemm1`` (its includes and the whole ``namespace Routing``); so the
  routing options each release sets (PDL, the packed top-k buffer, the
  normalisation epsilon of 0.6.15 on) are its own;
* the driver, whose call of ``Runner::run`` is written from the parameter names
  the release's ``runner.h`` declares (the list grows between releases).

Two stand-ins: ``tvm_ffi_utils.h`` (the ``.cu`` files include it only for the
TVM check macros of ``run(Data const&, void*)``; ours throws, and the driver
reports the message) and Llama4's ``run``, which the runner calls for a method
this check never uses. FlashInfer's JIT flags, with the local GPU's arch.

The trtllm-gen batched-GEMM headers (``trtllmGen_bmm_export``: the dtype enum
the routing data carries, ``DtypeDecl.h`` and what it includes) are not in the
flashinfer-python wheel from 0.6.8 on: FlashInfer fetches them with its cubins
(0.7.x at JIT time, into its cubin cache; flashinfer-cubin ships them for
0.6.x). They are looked up where FlashInfer itself reads them
(``FLASHINFER_CUBIN_DIR``, flashinfer-cubin, ``~/.cache/flashinfer/cubins``,
``jit/env.py``), under the artifact the release names (``artifacts.py``), or
taken from ``--trtllm-headers``.

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

from ... import envs

HERE = Path(__file__).parent
DRIVER = HERE / "routing_driver.cu"
TVM_STUB = HERE / "tvm_ffi_utils.h"
CACHE_ENV = envs.BUILD_CACHE_VAR
JOBS_ENV = envs.BUILD_JOBS_VAR
SPLIT_ENV = envs.SPLIT_COMPILE_VAR

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
#: ``Routing::Runner`` with the GEMM runners after it (FlashInfer 0.6.x).
RUNNER_SOURCE = "csrc/trtllm_fused_moe_runner.cu"
#: ``Routing::Runner`` alone (FlashInfer 0.7.0 on).
ROUTING_RUNNER_SOURCE = (
    "csrc/fused_moe/trtllm_backend/trtllm_fused_moe_routing_runner.cu"
)
#: The DeepSeek routing kernels: every release has them, next to the others.
DEEPSEEK_KERNELS = "trtllm_fused_moe_routing_deepseek.cu"
#: What the routing code includes from ``trtllmGen_bmm_export`` (``nvcc -M``
#: of every unit, FlashInfer 0.7.4: runner.h, RoutingKernel.h and DevKernel.h
#: include DtypeDecl.h and SfLayoutDecl.h, DtypeDecl.h includes MmaDecl.h, and
#: that CommonUtils.h). FlashInfer 0.7 fetches them with the rest of its
#: ``BMM_EXPORT_HEADERS`` (``jit/fused_moe.py``).
ROUTING_BMM_HEADERS = (
    "trtllm/gen/DtypeDecl.h",
    "trtllm/gen/MmaDecl.h",
    "trtllm/gen/CommonUtils.h",
    "trtllm/gen/SfLayoutDecl.h",
)
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

    @property
    def runner_source(self) -> Path:
        """The file that defines ``Routing::Runner::run``: its own file from
        FlashInfer 0.7.0, ``trtllm_fused_moe_runner.cu`` before."""
        split = self.root / ROUTING_RUNNER_SOURCE
        return split if split.is_file() else self.root / RUNNER_SOURCE

    def kernel_folder(self) -> Path:
        """The folder of the routing kernels: where the DeepSeek ones are
        (``csrc`` up to 0.6.6, ``csrc/fused_moe/trtllm_backend`` from 0.6.7)."""
        csrc = self.root / "csrc"
        found = sorted(csrc.rglob(DEEPSEEK_KERNELS))
        if len(found) != 1:
            where = ", ".join(str(p.relative_to(csrc)) for p in found) or "none"
            raise NotBuildable(
                f"unrecognised FlashInfer source layout under {csrc}: expected one "
                f"{DEEPSEEK_KERNELS} (the routing kernels' folder), found {where}"
            )
        return found[0].parent

    def routing_files(self) -> list[Path]:
        """The routing kernels ``Routing::Runner`` calls: the
        ``trtllm_fused_moe_routing_*.cu`` files of the kernels' folder and the
        ``.cu`` files of its ``routing*/`` folders (0.6.7), without Llama4's
        (stood in for), the runner (built from ``runner_source``) and a TVM-FFI
        binding (it needs the real TVM FFI; 0.7's sits in ``csrc``)."""
        folder = self.kernel_folder()
        found = list(folder.glob("trtllm_fused_moe_routing_*.cu"))
        for sub in sorted(folder.glob("routing*")):
            if sub.is_dir():
                found += sub.glob("*.cu")
        skipped = (self.runner_source.resolve(),)
        return sorted(
            path
            for path in found
            if "llama4" not in path.relative_to(folder).as_posix().lower()
            and not path.name.endswith("_binding.cu")
            and path.resolve() not in skipped
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
    root = next(
        (
            c
            for c in candidates
            if (c / ROUTING_RUNNER_SOURCE).is_file() or (c / RUNNER_SOURCE).is_file()
        ),
        None,
    )
    if root is None:
        raise NotBuildable(
            f"no FlashInfer sources ({ROUTING_RUNNER_SOURCE} or {RUNNER_SOURCE}) "
            f"under {base}: the routing check compiles the wheel's own kernels"
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


def routing_runner_source(runner_cu: str, name: str = RUNNER_SOURCE) -> str:
    """``Routing::Runner``'s definition with its includes, ``runner.h`` as
    ``routing_runner_header``. FlashInfer 0.7 gives it a file of its own
    (``ROUTING_RUNNER_SOURCE``), kept whole; before, it opens
    ``trtllm_fused_moe_runner.cu``, whose GEMM runners after it are left out
    (they need the trtllm-gen GEMM library, which routing does not use)."""
    head, found, _ = runner_cu.partition("namespace PermuteGemm1 {")
    if found:
        head += CLOSE
    else:  # 0.7.x: the runner's own file, closing its namespaces itself
        head = runner_cu
    if (
        "namespace Routing {" not in head
        or "Runner::run(" not in head
        or RUNNER_INCLUDE not in head
    ):
        raise NotBuildable(
            f"unrecognised {Path(name).name} layout: expected the definition of "
            f"Routing::Runner::run, with {RUNNER_INCLUDE}, in a namespace Routing "
            "(FlashInfer 0.6.x: before namespace PermuteGemm1 in "
            f"{Path(RUNNER_SOURCE).name}; 0.7.x: {Path(ROUTING_RUNNER_SOURCE).name})"
        )
    return GEMM_INCLUDE.sub("", head).replace(
        RUNNER_INCLUDE, '#include "routing_runner.h"'
    )


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
    """The ``trtllmGen_bmm_export`` folder: in the wheel (up to ~0.6.4), under
    the folder ``--trtllm-headers`` names, or in one of FlashInfer's cubin
    folders (``cubin_folders``) under the artifact this release names
    (``artifacts.py``). A folder counts only with every header the routing
    code includes (``ROUTING_BMM_HEADERS``): FlashInfer 0.7 fetches the
    headers one by one, so a cache can hold some of them."""
    in_wheel = sources.root / "include/flashinfer/trtllm/batched_gemm" / BMM_EXPORT
    if in_wheel.is_dir():
        return in_wheel
    artifact = _bmm_artifact(sources)
    if explicit is not None:
        path = Path(explicit)
        candidates = [path] if path.name == BMM_EXPORT else []
        if artifact:
            candidates.append(path / artifact / "include" / BMM_EXPORT)
        candidates += sorted(path.rglob(BMM_EXPORT))
        for candidate in candidates:
            if not _missing_headers(candidate):
                return candidate
        raise NotBuildable(
            f"--trtllm-headers {path}: no {BMM_EXPORT} folder there with "
            f"{', '.join(ROUTING_BMM_HEADERS)}"
            + (
                f" ({candidates[0]} lacks {', '.join(_missing_headers(candidates[0]))})"
                if candidates
                else ""
            )
        )
    if artifact is None:
        raise NotBuildable(
            f"needs the trtllm-gen batched-GEMM headers ({BMM_EXPORT}: "
            f"{', '.join(ROUTING_BMM_HEADERS)}), which the flashinfer-python wheel "
            f"does not ship, and {sources.root.parent / 'artifacts.py'} names no "
            "batched-GEMM artifact to find them by: pass --trtllm-headers"
        )
    looked = []
    for where, root in cubin_folders(environ):
        folder = root / artifact / "include" / BMM_EXPORT
        missing = _missing_headers(folder)
        if not missing:
            return folder
        state = "lacks " + ", ".join(missing) if folder.is_dir() else "absent"
        looked.append(f"{folder} ({where}: {state})")
    raise NotBuildable(
        f"needs the trtllm-gen batched-GEMM headers {', '.join(ROUTING_BMM_HEADERS)} "
        f"of FlashInfer {sources.version}'s artifact {artifact} "
        f"(include/{BMM_EXPORT}/), which the flashinfer-python wheel does not "
        f"ship; looked in {'; '.join(looked)}. FlashInfer 0.7 fetches them into "
        "its cubin cache when it first builds its fused-MoE or routing module "
        "(or with `python -m flashinfer download-cubin`); flashinfer-cubin ships "
        "them for 0.6.x releases; or pass --trtllm-headers PATH (another "
        "release's folder serves if it compiles: the routing code uses only its "
        "Dtype enum, and the driver is built against the same copy)"
    )


def cubin_folders(environ: Mapping[str, str]) -> list[tuple[str, Path]]:
    """Where FlashInfer keeps its cubins and the headers fetched with them, in
    the order it reads them (``_get_cubin_dir`` in ``flashinfer/jit/env.py``,
    0.6.x and 0.7.x): ``FLASHINFER_CUBIN_DIR``, the flashinfer-cubin package
    (FlashInfer ignores one of another version; its artifact folder is
    release-specific anyway), then ``.cache/flashinfer/cubins`` under
    ``FLASHINFER_WORKSPACE_BASE`` or the home folder."""
    folders = []
    if environ.get("FLASHINFER_CUBIN_DIR"):
        folders.append(("FLASHINFER_CUBIN_DIR", Path(environ["FLASHINFER_CUBIN_DIR"])))
    spec = importlib.util.find_spec("flashinfer_cubin")
    if spec is not None and spec.submodule_search_locations:
        package = Path(next(iter(spec.submodule_search_locations)))
        folders.append(("flashinfer-cubin", package / "cubins"))
    base = environ.get("FLASHINFER_WORKSPACE_BASE") or environ.get("HOME")
    cache = Path(base) if base else Path.home()
    folders.append(("FlashInfer's cubin cache", cache / ".cache/flashinfer/cubins"))
    return folders


def _missing_headers(folder: Path) -> list[str]:
    return [h for h in ROUTING_BMM_HEADERS if not (folder / h).is_file()]


def _bmm_artifact(sources: Sources) -> str | None:
    """``ArtifactPath.TRTLLM_GEN_BMM`` of the wheel's ``artifacts.py``, e.g.
    ``8ee5.../batched_gemm-fdba669-16ba8ed`` (0.7.2.post1 and 0.7.4)."""
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
        if path.parent != csrc:  # the kernels' own headers next to them (0.6.7 on)
            for sibling in path.parent.glob("*.cuh"):
                shutil.copyfile(sibling, target.parent / sibling.name)
        units.append(target)
    shutil.copyfile(TVM_STUB, stage / TVM_STUB.name)
    runner_h = (sources.root / RUNNER_HEADER).read_text()
    (stage / "routing_runner.h").write_text(routing_runner_header(runner_h))
    runner = sources.runner_source
    (stage / "routing_runner.cu").write_text(
        routing_runner_source(runner.read_text(), runner.name)
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
    """Point ``link`` at ``target``, by its absolute path: a relative one (as
    ``--trtllm-headers`` may give) would be read from the link's own folder.
    A cache copied from another machine holds links to its paths."""
    target = target.resolve()
    if link.is_symlink() or link.exists():
        if link.resolve() == target:
            return
        link.unlink()
    link.symlink_to(target, target_is_directory=target.is_dir())


def _nvcc(command: list[str]) -> None:
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise NotBuildable(f"nvcc failed: {result.stderr.strip()[-3000:]}")
