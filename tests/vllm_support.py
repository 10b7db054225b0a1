# SPDX-License-Identifier: Apache-2.0
"""Helpers for tests that run against the installed vLLM.

The one edge no machine here has is an SM100 GPU: ``answer_sm100`` makes
vLLM's platform object and FlashInfer-presence check answer as a CUDA device
of compute capability 10.0 (FlashInfer 0.7.x does not import without a CUDA
runtime, so ``has_flashinfer_trtllm_fused_moe`` is false here). Everything
else is vLLM's own code.
"""

from __future__ import annotations

import importlib
import inspect
import os
import subprocess
import sys

import pytest

FUSED_MOE = "vllm.model_executor.layers.fused_moe"
FP8 = f"{FUSED_MOE}.experts.trtllm_fp8_moe"
BF16 = f"{FUSED_MOE}.experts.trtllm_bf16_moe"
TRTLLM_FUNCTIONS = f"{FUSED_MOE}.flashinfer_trtllm_moe"
SM100 = {"VLLM_MOE_ROUTING_DEVICE_CAPABILITY": "10.0"}
BOTH = {"Renormalize", "RenormalizeNaive"}


def module(name: str):
    return importlib.import_module(name)


def import_target_modules() -> dict:
    """Import every target module this vLLM ships, as vLLM does when it builds
    MoE layers (so an active plugin patches them at once); by name."""
    import vllm  # noqa: F401 - vllm_module_file looks in the imported package

    from vllm_moe_routing_plugin import targets, vllm_source

    return {
        name: module(name)
        for name in targets.target_modules()
        if vllm_source.vllm_module_file(name) is not None
    }


def methods():
    return module(f"{FUSED_MOE}.config").RoutingMethodType


def key(name: str | None):
    if name is None:
        return None
    return getattr(
        module("vllm.model_executor.layers.quantization.utils.quant_utils"), name
    )


FP8_BLOCK = ("kFp8Static128BlockSym", "kFp8Dynamic128Sym")
MXFP8 = ("kMxfp8Static", "kMxfp8Dynamic")
FP8_PER_TENSOR = ("kFp8StaticTensorSym", "kFp8StaticTensorSym")


def accepted(check, scheme=(None, None), call="method") -> set[str]:
    """Names of the RoutingMethodType members ``check`` accepts for ``scheme``."""
    wk, ak = key(scheme[0]), key(scheme[1])
    names = set()
    for member in methods():
        if call == "method":
            ok = check(member, wk, ak)
        elif call == "function":
            ok = check(member)
        else:
            ok = check(wk, ak, member)
        if ok:
            names.add(member.name)
    return names


#: Edges this run answered instead of the real machine; conftest prints them
#: at the end of the run.
SIMULATED: list[str] = []


def simulated(what: str) -> None:
    print(f"simulated: {what}")
    if what not in SIMULATED:
        SIMULATED.append(what)


def answer_sm100(monkeypatch: pytest.MonkeyPatch, *modules: str) -> None:
    """Import ``modules``, then answer vLLM's platform as CUDA SM100 and
    FlashInfer's kernels as present (the ``has_flashinfer*`` checks those
    modules imported)."""
    from vllm.platforms import current_platform
    from vllm.platforms.interface import DeviceCapability

    # Import first: some of vLLM's modules probe CUDA features at import time.
    imported = [module(name) for name in modules]
    simulated("CUDA platform of compute capability 10.0 (vLLM's current_platform)")
    simulated("FlashInfer's kernels present (vLLM's has_flashinfer* checks)")
    answers = {
        "is_cuda": lambda: True,
        "get_device_capability": lambda device_id=0: DeviceCapability(10, 0),
        "is_device_capability_family": lambda family, device_id=0: family == 100,
        "is_device_capability": lambda capability, device_id=0: (
            capability in (100, (10, 0))
        ),
    }
    for name, answer in answers.items():
        monkeypatch.setattr(current_platform, name, answer, raising=False)
    for target in imported:
        for attr in dir(target):
            if attr.startswith("has_flashinfer"):
                monkeypatch.setattr(target, attr, lambda: True)


def moe_config(num_experts: int, top_k: int, routing: str = "Renormalize"):
    """A real ``FusedMoEConfig`` for one MoE layer (BF16 activations)."""
    import torch

    config = module(f"{FUSED_MOE}.config")
    activation = module(f"{FUSED_MOE}.activation").MoEActivation
    parameters = inspect.signature(config.FusedMoEConfig).parameters
    kwargs = dict(
        num_experts=num_experts,
        experts_per_token=top_k,
        hidden_dim=2048,
        num_local_experts=num_experts,
        num_logical_experts=num_experts,
        activation=activation.SILU,
        device="cpu",
        routing_method=getattr(config.RoutingMethodType, routing),
        moe_parallel_config=config.FusedMoEParallelConfig.make_no_parallel(),
        in_dtype=torch.bfloat16,
        router_logits_dtype=torch.bfloat16,
    )
    for size in ("intermediate_size", "intermediate_size_per_partition"):
        if size in parameters:
            kwargs[size] = 512
    return config.FusedMoEConfig(**kwargs)


def supported(cls, config, scheme):
    mk = module(f"{FUSED_MOE}.modular_kernel")
    return cls.is_supported_config(
        cls,
        config,
        key(scheme[0]),
        key(scheme[1]),
        mk.FusedMoEActivationFormat.Standard,
    )


def run_python(code: str, env: dict[str, str] | None = None, timeout: int = 300):
    """Run ``code`` in a fresh interpreter of this environment."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, "-c", code],
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
