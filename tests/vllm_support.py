# SPDX-License-Identifier: Apache-2.0
"""Helpers for tests that run against the installed vLLM.

The one edge no machine here has is an SM100 GPU: ``answer_sm100`` makes
vLLM's platform object and FlashInfer-presence check answer as a CUDA device
of compute capability 10.0 (FlashInfer 0.7.x does not import without a CUDA
runtime, so ``has_flashinfer_trtllm_fused_moe`` is false here). Everything
else is vLLM's own code.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import os
import subprocess
import sys

import pytest

from support import SIMULATED

FUSED_MOE = "vllm.model_executor.layers.fused_moe"
FP8 = f"{FUSED_MOE}.experts.trtllm_fp8_moe"
BF16 = f"{FUSED_MOE}.experts.trtllm_bf16_moe"
NVFP4 = f"{FUSED_MOE}.experts.trtllm_nvfp4_moe"
MXFP4 = f"{FUSED_MOE}.experts.trtllm_mxfp4_moe"
TRTLLM_FUNCTIONS = f"{FUSED_MOE}.flashinfer_trtllm_moe"
SM100 = {"VLLM_MOE_ROUTING_DEVICE_CAPABILITY": "10.0"}


def _vllm_below(release):
    from packaging.version import Version

    from support import VLLM

    return VLLM is not None and Version(VLLM).release < release


VLLM_BELOW_0_20 = _vllm_below((0, 20))
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


def simulated(what: str) -> None:
    print(f"simulated: {what}")
    if what not in SIMULATED:
        SIMULATED.append(what)


def _as_int(capability) -> int:
    """vLLM writes capabilities as 100 or (10, 0)."""
    if isinstance(capability, tuple):
        return capability[0] * 10 + capability[1]
    return int(capability)


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
        "has_device_capability": lambda capability, device_id=0: (
            _as_int(capability) <= 100
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


# Real MoE layers, built through vLLM's own constructor and backend oracle.


class Model:
    """The routing values a model family's vLLM model file hands ``FusedMoE``
    (``config`` is the checkpoint's ``routed_scaling_factor``)."""

    def __init__(
        self,
        name,
        experts,
        top_k,
        *,
        scoring="softmax",
        n_group=None,
        topk_group=None,
        bias=False,
        scale=1.0,
        scales_output=False,
        scale_into_layer_from=(0, 0),
    ):
        self.name = name
        self.experts = experts
        self.top_k = top_k
        self.scoring = scoring
        self.n_group = n_group
        self.topk_group = topk_group
        self.bias = bias
        self.scale = scale
        # deepseek_v2.py and glm4_moe.py scale the output themselves: vLLM
        # 0.16 - 0.19 pass routed_scaling_factor=1.0 into the layer, 0.20+
        # pass the config's value with apply_routed_scale_to_output=True
        # (test_model_files_scale_as_assumed checks the installed files).
        self.scales_output = scales_output
        # The first vLLM release whose model file passes the scale into the
        # layer (bailing_moe.py: 0.20); older ones pass none.
        self.scale_into_layer_from = scale_into_layer_from

    def __repr__(self):
        return self.name

    def kwargs(self, signature):
        import torch

        kwargs = dict(num_experts=self.experts, top_k=self.top_k, renormalize=True)
        if self.scoring == "softmax":
            return kwargs
        kwargs.update(scoring_func=self.scoring)
        if self.n_group is not None:
            kwargs.update(
                use_grouped_topk=True,
                num_expert_group=self.n_group,
                topk_group=self.topk_group,
            )
        if self.bias:
            kwargs["e_score_correction_bias"] = torch.zeros(self.experts)
        if self.scales_output:
            if "apply_routed_scale_to_output" in signature:
                kwargs.update(
                    routed_scaling_factor=self.scale, apply_routed_scale_to_output=True
                )
            else:
                kwargs["routed_scaling_factor"] = 1.0
        elif self.scale != 1.0 and not _vllm_below(self.scale_into_layer_from):
            kwargs["routed_scaling_factor"] = self.scale
        return kwargs


DEEPSEEK = dict(scoring="sigmoid", bias=True, scales_output=True)
MODELS = {
    m.name: m
    for m in [
        Model("GLM-4.5-Air", 128, 8, n_group=1, topk_group=1, **DEEPSEEK),
        Model("GLM-5", 256, 8, n_group=1, topk_group=1, scale=2.5, **DEEPSEEK),
        Model("DeepSeek-V3", 256, 8, n_group=8, topk_group=4, scale=2.5, **DEEPSEEK),
        Model("Kimi-K2", 384, 8, n_group=1, topk_group=1, scale=2.827, **DEEPSEEK),
        Model("MiniMax-M2", 256, 8, scoring="sigmoid", bias=True),
        Model("Step-3.5", 288, 8, scoring="sigmoid", bias=True, scale=3.0),
        # afmoe.py and bailing_moe.py (from vLLM 0.20) pass their scale into
        # the layer, which hands it to the kernel.
        Model(
            "Trinity-Mini",
            128,
            8,
            scoring="sigmoid",
            n_group=1,
            topk_group=1,
            bias=True,
            scale=2.826,
        ),
        Model(
            "Ling-2.0",
            256,
            8,
            scoring="sigmoid",
            n_group=8,
            topk_group=4,
            bias=True,
            scale=2.5,
            scale_into_layer_from=(0, 20),
        ),
        Model("Qwen3-30B-A3B", 128, 8),
        Model("Qwen3.5-35B-A3B", 256, 8),
    ]
}

#: Modules that read the platform when imported: imported before it is
#: answered as SM100 (the online FP8 module asks vLLM's C++ ops otherwise).
_IMPORT_FIRST = (
    "vllm.model_executor.layers.quantization.fp8",
    "vllm.model_executor.layers.quantization.online.fp8",
)


def _fused_moe_modules():
    import pkgutil

    names = []
    for package in (f"{FUSED_MOE}.oracle", f"{FUSED_MOE}.experts"):
        try:
            path = module(package).__path__
        except ImportError:
            continue
        for info in pkgutil.iter_modules(path):
            name = f"{package}.{info.name}"
            if package.endswith("experts") and "trtllm" not in info.name:
                continue
            names.append(name)
    return names


_DISTRIBUTED = []


def one_process_group():
    """vLLM's distributed state for one process, over gloo (once per run)."""
    if _DISTRIBUTED:
        return
    import socket

    from vllm.config import DeviceConfig, VllmConfig, set_current_vllm_config
    from vllm.distributed import (
        ensure_model_parallel_initialized,
        init_distributed_environment,
    )

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with set_current_vllm_config(VllmConfig(device_config=DeviceConfig("cpu"))):
        init_distributed_environment(
            world_size=1,
            rank=0,
            local_rank=0,
            distributed_init_method=f"tcp://127.0.0.1:{port}",
            backend="gloo",
        )
        ensure_model_parallel_initialized(1, 1)
    _DISTRIBUTED.append(True)


class LayerBuilder:
    """Builds MoE layers with vLLM's ``FusedMoE`` (``FusedMoEFactory`` from
    0.27) in a ``VllmConfig`` on the CPU device, the platform answered as
    SM100 and FlashInfer's kernels as present, and says which experts class
    (or backend) vLLM's oracle chose."""

    def __init__(self, monkeypatch):
        import torch

        one_process_group()
        for name in _IMPORT_FIRST:
            with contextlib.suppress(ImportError):
                module(name)
        if VLLM_BELOW_0_20:
            # BF16 TRT-LLM is opt-in before vLLM 0.20.
            monkeypatch.setenv("VLLM_USE_FLASHINFER_MOE_FP16", "1")
            monkeypatch.setenv("VLLM_FLASHINFER_MOE_BACKEND", "latency")
        monkeypatch.setenv("VLLM_DISABLE_SHARED_EXPERTS_STREAM", "1")
        answer_sm100(monkeypatch, *_fused_moe_modules())
        fused_moe = module(FUSED_MOE)
        self.factory = getattr(fused_moe, "FusedMoE", None) or fused_moe.FusedMoEFactory
        self.signature = inspect.signature(self.factory).parameters
        self.dtype = torch.bfloat16
        self.count = 0

    def quant_config(self, quant):
        if quant == "bf16":
            return None
        fp8 = module("vllm.model_executor.layers.quantization.fp8")
        return fp8.Fp8Config(
            is_checkpoint_fp8_serialized=True,
            activation_scheme="dynamic",
            weight_block_size=[128, 128],
        )

    def build(self, model, quant="bf16", prefix=None, moe_backend=None):
        """The built layer (vLLM's ``FusedMoE`` or ``MoERunner``); with
        ``moe_backend``, as ``vllm serve --moe-backend`` asks for it."""
        from vllm.config import DeviceConfig, VllmConfig, set_current_vllm_config

        self.count += 1
        prefix = prefix or f"model.layers.{self.count}.mlp.experts"
        config = {"device_config": DeviceConfig("cpu")}
        if moe_backend is not None:
            from vllm.config import KernelConfig

            config["kernel_config"] = KernelConfig(moe_backend=moe_backend)
        with set_current_vllm_config(VllmConfig(**config)):
            return self.factory(
                hidden_size=128,
                intermediate_size=128,
                params_dtype=self.dtype,
                quant_config=self.quant_config(quant),
                prefix=prefix,
                **model.kwargs(self.signature),
            )

    def choice(self, model, quant="bf16"):
        """The experts class vLLM chose for a layer of ``model``, or its
        backend's name where the quant method keeps no class (0.16 - 0.19
        BF16); ``"no backend"`` where vLLM found none on this machine."""
        try:
            layer = self.build(model, quant)
        except (NotImplementedError, ValueError) as exc:
            if "backend" not in str(exc).lower():
                raise
            return "no backend"
        experts = getattr(layer, "routed_experts", layer)
        method = experts.quant_method
        cls = getattr(method, "experts_cls", None)
        if cls is not None:
            return cls.__name__
        return method.unquantized_backend.name
