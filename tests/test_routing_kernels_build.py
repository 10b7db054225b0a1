# SPDX-License-Identifier: Apache-2.0
"""How the routing-kernel check finds what it compiles in a FlashInfer wheel,
on the real source layouts of 0.6.6, 0.6.7, 0.6.18 and 0.7.4, without nvcc or
torch: which kernel files, which ``Routing::Runner`` source, the batched-GEMM
headers and the message when they are missing, and the units nvcc is handed.

The data (tests/data/flashinfer-VERSION/, Apache-2.0, from the
flashinfer-python wheels on PyPI, unpacked with ``pip download --no-deps``):
``routing-layout.txt``, the wheel's routing and fused-MoE source names (its
first lines say how they were listed); for 0.7.4 also the first 64 lines of
``csrc/fused_moe/trtllm_backend/trtllm_fused_moe_routing_runner.cu`` (up to
``Runner::run``'s opening brace), ``include/flashinfer/trtllm/fused_moe/
runner.h`` up to the end of its ``namespace Routing``, and the ``ArtifactPath``
lines of ``flashinfer/artifacts.py``. The layout trees are rebuilt from the
names with empty files; only nvcc, the compiler, is stood in for (a script
that records what it is asked to compile)."""

from __future__ import annotations

import json
import stat
import sys
from pathlib import Path

import pytest

from vllm_moe_routing_plugin.diagnostics.routing_kernels import build

DATA = Path(__file__).with_name("data")
BACKEND = "fused_moe/trtllm_backend"
ARTIFACT_074 = "8ee504560a86b6c72b8c941d3003e8fb1804b1b6/batched_gemm-fdba669-16ba8ed"

#: The routing kernels of each release's fused-MoE JIT module
#: (``flashinfer/jit/fused_moe.py`` of the wheel: ``gen_trtllm_gen_fused_moe_
#: sm100_module``, 0.7's ``gen_trtllm_gen_routing_module``), less Llama4's and
#: the runner, relative to csrc.
JIT_ROUTING = {
    "0.6.6": [
        "trtllm_fused_moe_routing_deepseek.cu",
        "trtllm_fused_moe_routing_renormalize.cu",
    ],
    "0.6.7": sorted(
        [
            f"{BACKEND}/trtllm_fused_moe_routing_deepseek.cu",
            f"{BACKEND}/trtllm_fused_moe_routing_renormalize.cu",
        ]
        + [
            f"{BACKEND}/routingDeepSeek/{name}.cu"
            for name in (
                "launchMainKernel",
                "launchClusterKernel",
                "launchCoopKernel",
                "launchHistogramKernel",
                "launchInitExpertCounts",
                "launchOffsetsKernel",
            )
        ]
        + [
            f"{BACKEND}/routingRenormalize/{name}.cu"
            for name in (
                "launchBlockKernel",
                "launchClusterKernel",
                "launchHistogramKernel",
                "launchHistogramScoresKernel",
                "launchInitExpertCounts",
                "launchOffsetsKernel",
            )
        ]
    ),
    "0.6.18": [
        f"{BACKEND}/trtllm_fused_moe_routing_common.cu",
        f"{BACKEND}/trtllm_fused_moe_routing_custom.cu",
        f"{BACKEND}/trtllm_fused_moe_routing_deepseek.cu",
    ],
    "0.7.4": [
        f"{BACKEND}/trtllm_fused_moe_routing_common.cu",
        f"{BACKEND}/trtllm_fused_moe_routing_custom_block.cu",
        f"{BACKEND}/trtllm_fused_moe_routing_custom_cluster.cu",
        f"{BACKEND}/trtllm_fused_moe_routing_custom_cluster_large.cu",
        f"{BACKEND}/trtllm_fused_moe_routing_custom_entry.cu",
        f"{BACKEND}/trtllm_fused_moe_routing_deepseek.cu",
    ],
}


def wheel_tree(tmp_path: Path, version: str) -> Path:
    """The wheel's ``flashinfer/`` folder with the listed sources (empty, the
    0.7.4 runner and runner.h heads and artifacts.py lines as shipped)."""
    data_dir = DATA / f"flashinfer-{version}"
    package = tmp_path / version / "flashinfer"
    for line in (data_dir / "routing-layout.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            (package / "data" / line).parent.mkdir(parents=True, exist_ok=True)
            (package / "data" / line).touch()
    (package / "_build_meta.py").write_text(f'__version__ = "{version}"\n')
    if version == "0.7.4":
        runner = package / "data/csrc" / BACKEND / "trtllm_fused_moe_routing_runner.cu"
        runner.write_text(
            (data_dir / "trtllm_fused_moe_routing_runner.cu.head").read_text()
        )
        header = package / "data" / build.RUNNER_HEADER
        header.parent.mkdir(parents=True)
        header.write_text((data_dir / "runner.h.head").read_text())
        (package / "artifacts.py").write_text(
            (data_dir / "artifacts.py.excerpt").read_text()
        )
    return package


@pytest.mark.parametrize("version", sorted(JIT_ROUTING))
def test_the_routing_kernels_are_what_flashinfer_compiles_for_routing(
    tmp_path, version
):
    sources = build.find_sources(wheel_tree(tmp_path, version), None)
    assert sources.version == version
    csrc = sources.root / "csrc"
    files = [p.relative_to(csrc).as_posix() for p in sources.routing_files()]
    assert files == JIT_ROUTING[version]
    runner = sources.runner_source.relative_to(sources.root).as_posix()
    expected = (
        build.ROUTING_RUNNER_SOURCE if version == "0.7.4" else build.RUNNER_SOURCE
    )
    assert runner == expected


def test_0_7_leaves_out_the_tvm_binding_the_cake_kernels_and_llama4(tmp_path):
    sources = build.find_sources(wheel_tree(tmp_path, "0.7.4"), None)
    names = {p.name for p in sources.routing_files()}
    listed = (DATA / "flashinfer-0.7.4/routing-layout.txt").read_text()
    # each of these is in the wheel and has "routing" in its path
    for left_out in (
        "trtllm_fused_moe_routing_binding.cu",
        "cake_deepseek_fused_routing_kernels.cu",
        "trtllm_fused_moe_routing_llama4.cu",
        "trtllm_fused_moe_routing_runner.cu",
    ):
        assert left_out in listed and left_out not in names


def test_an_unknown_layout_says_what_it_looked_for(tmp_path):
    data = tmp_path / "flashinfer" / "data"
    (data / "csrc").mkdir(parents=True)
    (data / build.RUNNER_SOURCE).touch()
    sources = build.find_sources(tmp_path, "9.9")
    with pytest.raises(build.NotBuildable, match=build.DEEPSEEK_KERNELS):
        sources.routing_files()


def test_the_0_7_runner_is_recognised_and_reads_routing_runner_h(tmp_path):
    sources = build.find_sources(wheel_tree(tmp_path, "0.7.4"), None)
    runner = sources.runner_source
    kept = build.routing_runner_source(runner.read_text(), runner.name)
    assert '#include "routing_runner.h"' in kept
    assert build.RUNNER_INCLUDE not in kept
    assert "void Runner::run(" in kept
    # nothing appended: the file closes its own namespaces
    assert kept.count("}  // namespace trtllmgen_moe") == 0
    assert kept.startswith(runner.read_text()[:200])


def test_a_0_7_runner_file_without_the_runner_is_refused():
    text = (
        DATA / "flashinfer-0.7.4/trtllm_fused_moe_routing_runner.cu.head"
    ).read_text()
    broken = text.replace("Runner::run(", "Runner::launch(")
    with pytest.raises(
        build.NotBuildable, match=r"trtllm_fused_moe_routing_runner\.cu"
    ):
        build.routing_runner_source(broken, "trtllm_fused_moe_routing_runner.cu")


def test_the_0_7_4_runner_declaration_is_called_and_read():
    runner_h = (DATA / "flashinfer-0.7.4/runner.h.head").read_text()
    call = build.runner_call(runner_h)
    assert call.startswith(
        "routingLogits, routingBias, numTokens, numExperts, topK, "
        "numFusedSharedExpert, nGroup, topkGroup, localExpertOffset"
    )
    assert call.endswith(
        "stream, dtypeLogits, normTopkProb, routing_replay_out, enable_pdl"
    )
    methods = build.routing_methods(runner_h)
    assert methods["DeepSeekV3"] == 2 and methods["MiniMax2"] == 7
    assert methods["Renormalize"] == 1
    header = build.routing_runner_header(runner_h)
    assert "KernelRunner.h" not in header
    assert header.count("{") == header.count("}")


# --- the trtllm-gen batched-GEMM headers ---------------------------------------


def headers(folder: Path, names=build.ROUTING_BMM_HEADERS) -> Path:
    for name in names:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text("#pragma once\n")
    return folder


def no_cubin_package(monkeypatch):
    """A flashinfer-cubin installed where the tests run would be looked in."""
    real = build.importlib.util.find_spec
    monkeypatch.setattr(
        build.importlib.util,
        "find_spec",
        lambda name, *a: None if name == "flashinfer_cubin" else real(name, *a),
    )


def test_missing_headers_name_the_release_artifact_and_where_it_looked(
    tmp_path, monkeypatch
):
    no_cubin_package(monkeypatch)
    sources = build.find_sources(wheel_tree(tmp_path, "0.7.4"), None)
    home = tmp_path / "home"
    with pytest.raises(build.NotBuildable) as raised:
        build.bmm_headers(sources, None, {"HOME": str(home)})
    message = str(raised.value)
    assert ARTIFACT_074 in message and "FlashInfer 0.7.4" in message
    for name in build.ROUTING_BMM_HEADERS:
        assert name in message
    cache = home / ".cache/flashinfer/cubins" / ARTIFACT_074 / "include"
    assert f"{cache / build.BMM_EXPORT} (FlashInfer's cubin cache: absent)" in message
    assert "--trtllm-headers" in message and "download-cubin" in message


def test_a_partly_fetched_cache_says_which_headers_it_lacks(tmp_path, monkeypatch):
    no_cubin_package(monkeypatch)
    sources = build.find_sources(wheel_tree(tmp_path, "0.7.4"), None)
    cubins = tmp_path / "cubins"
    headers(
        cubins / ARTIFACT_074 / "include" / build.BMM_EXPORT,
        ["trtllm/gen/DtypeDecl.h"],
    )
    env = {"FLASHINFER_CUBIN_DIR": str(cubins), "HOME": str(tmp_path / "home")}
    with pytest.raises(
        build.NotBuildable,
        match=r"FLASHINFER_CUBIN_DIR: lacks "
        r"trtllm/gen/MmaDecl\.h, trtllm/gen/CommonUtils\.h",
    ):
        build.bmm_headers(sources, None, env)


@pytest.mark.parametrize(
    "where", ["FLASHINFER_CUBIN_DIR", "FLASHINFER_WORKSPACE_BASE", "HOME"]
)
def test_the_headers_are_found_where_flashinfer_keeps_them(
    tmp_path, monkeypatch, where
):
    no_cubin_package(monkeypatch)
    sources = build.find_sources(wheel_tree(tmp_path, "0.7.4"), None)
    base = tmp_path / "base"
    cubins = (
        base if where == "FLASHINFER_CUBIN_DIR" else base / ".cache/flashinfer/cubins"
    )
    folder = headers(cubins / ARTIFACT_074 / "include" / build.BMM_EXPORT)
    env = {where: str(base)}
    if where != "HOME":
        env["HOME"] = str(tmp_path / "elsewhere")
    assert build.bmm_headers(sources, None, env) == folder


def test_trtllm_headers_prefers_the_release_artifact(tmp_path, monkeypatch):
    no_cubin_package(monkeypatch)
    sources = build.find_sources(wheel_tree(tmp_path, "0.7.4"), None)
    cubins = tmp_path / "cubins"
    # another release's headers first in name order, the release's own after
    headers(cubins / "0000/batched_gemm-0-0/include" / build.BMM_EXPORT)
    own = headers(cubins / ARTIFACT_074 / "include" / build.BMM_EXPORT)
    env = {"HOME": str(tmp_path / "home")}
    assert build.bmm_headers(sources, cubins, env) == own
    # any complete folder serves otherwise (flashinfer-cubin 0.6.13's, say)
    other = headers(tmp_path / "cubin-0.6.13/include" / build.BMM_EXPORT)
    assert build.bmm_headers(sources, other.parent.parent, env) == other
    with pytest.raises(build.NotBuildable, match="--trtllm-headers"):
        build.bmm_headers(sources, tmp_path / "nothing", env)


# --- what nvcc is asked to compile ---------------------------------------------

NVCC = """#!{python}
import json, pathlib, sys
args = sys.argv[1:]
out = pathlib.Path(args[args.index("-o") + 1])
out.write_bytes(b"")
if "-c" in args:
    with open({log!r}, "a") as log:
        log.write(json.dumps(args[args.index("-c") + 1]) + "\\n")
"""


@pytest.mark.parametrize("given", ["absolute", "relative"])
def test_0_7_builds_the_runner_and_its_kernels_only(tmp_path, monkeypatch, given):
    no_cubin_package(monkeypatch)
    package = wheel_tree(tmp_path, "0.7.4")
    sources = build.find_sources(package, None)
    common = sources.root / "csrc/nv_internal/cpp/common"
    common.mkdir(parents=True)
    for name in build.COMMON_SOURCES:
        (common / name).touch()
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "nvcc.log"
    nvcc = bin_dir / "nvcc"
    nvcc.write_text(NVCC.format(python=sys.executable, log=str(log)))
    nvcc.chmod(nvcc.stat().st_mode | stat.S_IEXEC)
    cublas = headers(tmp_path / "cublas", ["cublas_v2.h"])
    folder = headers(tmp_path / "bmm" / build.BMM_EXPORT)
    env = {
        "PATH": str(bin_dir),
        "VLLM_MOE_ROUTING_CACHE": str(tmp_path / "cache"),
        "CUBLAS_INCLUDE_DIR": str(cublas),
        "HOME": str(tmp_path / "home"),
    }
    if given == "relative":  # --trtllm-headers bmm/trtllmGen_bmm_export
        monkeypatch.chdir(tmp_path)
        binary = build.build(
            sources, "sm_90a", env, trtllm_headers=folder.relative_to(tmp_path)
        )
    else:
        binary = build.build(sources, "sm_90a", env, trtllm_headers=folder)
    linked = binary.parent / "include/flashinfer/trtllm/batched_gemm" / build.BMM_EXPORT
    assert (
        linked.resolve() == folder.resolve()
        and (linked / build.ROUTING_BMM_HEADERS[0]).is_file()
    )
    compiled = [Path(json.loads(line)) for line in log.read_text().splitlines()]
    stage = binary.parent / "src"
    units = sorted(p.relative_to(stage).as_posix() for p in compiled)
    assert units == sorted(
        [
            "routing_driver.cu",
            "routing_runner.cu",
            "llama4_stub.cu",
            *(f"common/{name}" for name in build.COMMON_SOURCES),
            *JIT_ROUTING["0.7.4"],
        ]
    )
    staged = (stage / "routing_runner.cu").read_text()
    assert '#include "routing_runner.h"' in staged and "Runner::run(" in staged
    info = json.loads(binary.with_suffix(".json").read_text())
    assert info["version"] == "0.7.4" and info["methods"]["MiniMax2"] == 7
    assert info["trtllm_headers"] == str(folder.resolve())
