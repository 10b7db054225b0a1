# SPDX-License-Identifier: Apache-2.0
"""The kernel check around the kernels it cannot run here (they need SM100):
the arguments it builds, against the shapes FlashInfer's launcher checks and
the installed FlashInfer's real signatures; and the comparison itself, through
stand-in kernels on the CPU (passed in as the ``fused_moe`` module)."""

from __future__ import annotations

import importlib.metadata
import inspect
import json
from types import SimpleNamespace
from typing import Any

import pytest
from packaging.version import Version

torch = pytest.importorskip("torch")

from vllm_moe_routing_plugin.diagnostics import (  # noqa: E402
    cases,
    kernel_check,
    reference,
    verify,
)
from vllm_moe_routing_plugin.facts import gpus_from_capabilities  # noqa: E402

SMALL = kernel_check.Shape(hidden=256, intermediate=128)
PAIRS = {pair.name: pair for pair in kernel_check.PAIRS}
FP8 = torch.float8_e4m3fn
F32 = torch.float32
BF16 = torch.bfloat16


def built(pair: kernel_check.Pair, experts: int, tokens: int) -> dict[str, Any]:
    generator = torch.Generator().manual_seed(0)
    return {
        **pair.weights(experts, SMALL, generator, "cpu"),
        **pair.activations(tokens, SMALL, generator, "cpu"),
    }


# The shapes FlashInfer's launcher checks (csrc/trtllm_fused_moe_kernel_launcher.cu
# of 0.6.7 - 0.7.2): BlockMajorK [E, K/128, M, 128] is the only BF16 layout; FP8
# DeepSeek block scales are [.., M/128, K/128] and [hidden/128, tokens] for the
# hidden states; per-tensor output scales are [local_num_experts].
E, T, H, N = 160, 5, SMALL.hidden, SMALL.intermediate  # N: intermediate
EXPECTED = {
    "bf16": {
        "gemm1_weights": ((E, H // 128, 2 * N, 128), BF16),
        "gemm2_weights": ((E, N // 128, H, 128), BF16),
        "hidden_states": ((T, H), BF16),
    },
    "fp8-block-scale": {
        "gemm1_weights": ((E, 2 * N, H), FP8),
        "gemm1_weights_scale": ((E, 2 * N // 128, H // 128), F32),
        "gemm2_weights": ((E, H, N), FP8),
        "gemm2_weights_scale": ((E, H // 128, N // 128), F32),
        "hidden_states": ((T, H), FP8),
        "hidden_states_scale": ((H // 128, T), F32),
    },
    "fp8-per-tensor": {
        "gemm1_weights": ((E, 2 * N, H), FP8),
        "output1_scales_scalar": ((E,), F32),
        "output1_scales_gate_scalar": ((E,), F32),
        "gemm2_weights": ((E, H, N), FP8),
        "output2_scales_scalar": ((E,), F32),
        "hidden_states": ((T, H), FP8),
    },
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_inputs_have_the_shapes_flashinfer_checks(name):
    arguments = built(PAIRS[name], E, T)
    assert {k: (tuple(v.shape), v.dtype) for k, v in arguments.items()} == EXPECTED[
        name
    ]
    assert all(torch.isfinite(v.float()).all() for v in arguments.values())


def test_keywords_passes_what_the_function_declares():
    def old(routing_logits, hidden_states, top_k): ...

    def open_ended(routing_logits, **rest): ...

    arguments = {"routing_logits": 1, "hidden_states": 2, "top_k": 3, "extra": 4}
    assert kernel_check.keywords(old, arguments) == {
        "routing_logits": 1,
        "hidden_states": 2,
        "top_k": 3,
    }
    assert kernel_check.keywords(open_ended, arguments) == arguments


def test_a_missing_kernel_is_named():
    fused_moe = SimpleNamespace(trtllm_fp8_per_tensor_scale_moe=print)
    assert (
        kernel_check.missing(PAIRS["fp8-per-tensor"], fused_moe)
        == "this FlashInfer has no trtllm_fp8_per_tensor_scale_routed_moe"
    )
    assert kernel_check.missing(PAIRS["bf16"], fused_moe) == (
        "this FlashInfer has no trtllm_bf16_moe / trtllm_bf16_routed_moe"
    )


def test_kernel_check_needs_sm100():
    assert (
        kernel_check.unavailable(gpus_from_capabilities([(9, 0)], "t")) == "needs SM100"
    )
    assert kernel_check.unavailable(()) == "needs SM100"


def test_routed_kernel_argument_packing():
    ids = torch.tensor([[3, 1]])
    weights = torch.tensor([[0.75, 0.25]])

    def packed_api(topk_ids: torch.Tensor):
        """Packed expert ids and weights."""

    packed = kernel_check.routed_argument(ids, weights, packed_api)
    assert (packed >> 16).tolist() == [[3, 1]]
    bits = (packed & 0xFFFF).to(torch.int16).view(torch.bfloat16).float()
    assert bits.tolist() == [[0.75, 0.25]]

    def pair_api(topk_ids: torch.Tensor | tuple[torch.Tensor, torch.Tensor]):
        """Alternatively a ``(topk_ids, topk_weights)`` pair."""

    pair = kernel_check.routed_argument(ids, weights, pair_api)
    assert isinstance(pair, tuple) and pair[0].dtype == torch.int32


# The installed FlashInfer's own functions (imported, never called): every
# argument the check builds must be one they take, and every argument they
# require must be built.
ALLOWED_TO_DROP = {
    ("bf16", "monolithic"): {"routing_replay_out"},  # < 0.6.8
    ("bf16", "routed"): {"routing_bias"},  # the BF16 routed kernel has none
    ("fp8-block-scale", "monolithic"): {"routing_replay_out"},
    ("fp8-block-scale", "routed"): set(),
    ("fp8-per-tensor", "monolithic"): {"routing_replay_out"},
    ("fp8-per-tensor", "routed"): set(),
}


# The first release, of those tested (0.6.3 - 0.7.2), that has the routed twin.
ROUTED_TWIN_SINCE = {
    "bf16": "0.6.6",
    "fp8-block-scale": "0.6.3",
    "fp8-per-tensor": "0.6.18",
}


@pytest.fixture(scope="module")
def fused_moe():
    try:
        from flashinfer import fused_moe
    except Exception as exc:  # not installed (plain), or does not import
        pytest.skip(f"flashinfer.fused_moe does not import: {exc}")
    return fused_moe


@pytest.mark.parametrize("name", sorted(PAIRS))
def test_arguments_bind_to_the_installed_flashinfer(name, fused_moe):
    pair = PAIRS[name]
    installed = Version(importlib.metadata.version("flashinfer-python"))
    reason = kernel_check.missing(pair, fused_moe)
    assert (reason is None) == (installed >= Version(ROUTED_TWIN_SINCE[name]))
    if reason is not None:
        assert reason == f"this FlashInfer has no {pair.routed}"
        return
    case = cases.Case(E, 8, T, "shift", -5.0)
    arguments = built(pair, E, T)
    weights = {k: v for k, v in arguments.items() if k in EXPECTED[name]}
    shared = kernel_check.shared_arguments(pair, case, weights, arguments, SMALL)
    logits = case.logits()
    ids, routing_weights = reference.route(logits, 8, "renormalize")
    for role, extra in (
        ("monolithic", {"routing_logits": logits, "routing_replay_out": None}),
        ("routed", {"topk_ids": None}),
    ):
        function = getattr(fused_moe, getattr(pair, role))
        if role == "routed":
            extra["topk_ids"] = kernel_check.routed_argument(
                ids, routing_weights, function
            )
        offered = {**shared, **extra}
        passed = kernel_check.keywords(function, offered)
        inspect.signature(function).bind(**passed)  # nothing required is missing
        assert set(offered) - set(passed) <= ALLOWED_TO_DROP[name, role]


# Stand-in kernels: route with the reference (or, with ``bug``, send every
# all-negative token of the bug's envelope to the neighbouring experts, as
# flashinfer#2822 sends them to wrong ones), then mix one fixed vector per
# expert by the routing weights.
DIRECTIONS = torch.randn(512, SMALL.hidden, generator=torch.Generator().manual_seed(1))


def mix(ids: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    directions = DIRECTIONS.to(ids.device)
    return (weights.float()[..., None] * directions[ids.long()]).sum(1)


def stand_in(
    *,
    bug: bool = False,
    replay: bool = True,
    pair_api: bool = False,
    fail_from_call: int | None = None,
) -> tuple[SimpleNamespace, list[dict[str, Any]]]:
    calls: list[dict[str, Any]] = []

    def route(routing_logits, top_k, num_experts):
        if fail_from_call is not None and len(calls) >= fail_from_call:
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        ids, weights = reference.route(routing_logits, top_k, "renormalize")
        if bug and 128 < num_experts <= 512 and top_k < 10:
            negative = (routing_logits < 0).all(-1, keepdim=True)
            ids = torch.where(negative, (ids + 1) % num_experts, ids)
        return ids, weights

    def with_replay(routing_logits, top_k, num_experts, routing_replay_out, **rest):
        calls.append({"role": "monolithic", **rest})
        ids, weights = route(routing_logits, top_k, num_experts)
        routing_replay_out.copy_(ids)
        return [mix(ids, weights)]

    def without_replay(routing_logits, top_k, num_experts, **rest):
        calls.append({"role": "monolithic", **rest})
        return mix(*route(routing_logits, top_k, num_experts))

    def packed(topk_ids: torch.Tensor, **rest):
        """Packed ``(expert_id << 16) | bf16 weight`` only."""
        calls.append({"role": "routed", **rest})
        weights = (topk_ids & 0xFFFF).to(torch.int16).view(torch.bfloat16)
        return mix(topk_ids >> 16, weights)

    def pair(topk_ids: torch.Tensor | tuple[torch.Tensor, torch.Tensor], **rest):
        """Packed, or a ``(topk_ids, topk_weights)`` pair."""
        calls.append({"role": "routed", **rest})
        return [mix(*topk_ids)]

    monolithic = with_replay if replay else without_replay
    routed = pair if pair_api else packed
    module = SimpleNamespace()
    for p in kernel_check.PAIRS:
        setattr(module, p.monolithic, monolithic)
        setattr(module, p.routed, routed)
    return module, calls


FEW = cases.adversarial(experts=(128, 160), top_ks=(4, 10), tokens=(1, 5))


def negative_rows(case: cases.Case) -> int:
    return int((case.logits() < 0).all(-1).sum())


@pytest.mark.parametrize("name", sorted(PAIRS))
@pytest.mark.parametrize("replay", [True, False])
def test_a_correct_kernel_passes_every_case(name, replay):
    module, calls = stand_in(replay=replay, pair_api=name == "bf16")
    report = kernel_check.check_pair(PAIRS[name], FEW, (0, 6, 7), module, "cpu", SMALL)
    assert report.not_run is None and len(report.runs) == len(FEW)
    assert all(run.passed for run in report.runs)
    assert min(run.min_cosine for run in report.runs) > 0.999
    assert all((run.selected is not None) == replay for run in report.runs)
    # both kernels got the pair's own inputs
    assert set(EXPECTED[name]) <= set(calls[0]) and set(EXPECTED[name]) <= set(calls[1])


@pytest.mark.parametrize("replay", [True, False])
def test_the_bug_fails_exactly_the_cases_it_reaches(replay):
    module, _ = stand_in(bug=True, replay=replay)
    report = kernel_check.check_pair(
        PAIRS["fp8-block-scale"], FEW, (0, 6, 6), module, "cpu", SMALL
    )
    failed = {run.case for run in report.runs if not run.passed}
    expected = {c for c in FEW if c.in_bug_envelope and negative_rows(c)}
    assert failed == expected and len(expected) >= 4
    for run in report.runs:
        if run.case in expected:
            assert run.low_cosine_tokens == negative_rows(run.case)
            if replay:
                assert run.selected.wrong_experts == negative_rows(run.case)


def test_a_kernel_that_raises_first_is_not_run_and_later_fails_the_case():
    module, _ = stand_in(fail_from_call=0)
    report = kernel_check.check_pair(
        PAIRS["bf16"], FEW, (0, 6, 7), module, "cpu", SMALL
    )
    assert report.runs == ()
    assert (
        report.not_run
        == "RuntimeError: CUDA error: an illegal memory access was encountered"
    )

    module, _ = stand_in(fail_from_call=6)  # 3 cases ran (two calls each)
    report = kernel_check.check_pair(
        PAIRS["bf16"], FEW, (0, 6, 7), module, "cpu", SMALL
    )
    assert [run.passed for run in report.runs[:4]] == [True, True, True, False]
    assert report.runs[3].error.startswith("RuntimeError: CUDA error")
    assert len(report.runs) == len(FEW)
    kernel = verify.summarise_kernel_check([report])
    json.loads(json.dumps(kernel), parse_constant=pytest.fail)  # strict JSON
    assert kernel["runs"][3]["min_cosine"] is None
    line = next(
        line
        for line in verify.render(
            {
                "verdict": "v",
                "gpus": [],
                "probe": {"ran": False, "not_run": "-"},
                "kernel": kernel,
            }
        ).splitlines()
        if FEW[3].name in line
    )
    assert line.split()[2:5] == ["-", "-", "FAIL"]


def test_check_runs_the_pairs_this_flashinfer_has():
    module, _ = stand_in()
    del module.trtllm_fp8_per_tensor_scale_routed_moe
    reports = kernel_check.check(FEW[:2], (0, 6, 7), module, "cpu", SMALL)
    assert [(r.pair, len(r.runs), r.not_run) for r in reports] == [
        ("bf16", 2, None),
        ("fp8-block-scale", 2, None),
        (
            "fp8-per-tensor",
            0,
            "this FlashInfer has no trtllm_fp8_per_tensor_scale_routed_moe",
        ),
    ]


def test_verify_reports_and_renders_the_kernel_check():
    module, _ = stand_in(bug=True)
    del module.trtllm_fp8_per_tensor_scale_routed_moe
    reports = kernel_check.check(FEW, (0, 6, 6), module, "cpu", SMALL)
    kernel = verify.summarise_kernel_check(reports)
    failing = sum(c.in_bug_envelope and negative_rows(c) > 0 for c in FEW)
    assert kernel["ran"] and kernel["failed_runs"] == 2 * failing
    assert kernel["pairs"]["fp8-per-tensor"] == {
        "ran": False,
        "not_run": "this FlashInfer has no trtllm_fp8_per_tensor_scale_routed_moe",
    }
    assert kernel["pairs"]["bf16"] == {
        "ran": True,
        "runs": len(FEW),
        "failed_runs": failing,
    }
    result = {
        "verdict": verify.verdict({"ran": False}, kernel),
        "gpus": ["NVIDIA B200 sm_100"],
        "probe": {"ran": False, "not_run": "no nvcc"},
        "kernel": kernel,
    }
    text = verify.render(result)
    assert text.splitlines()[0].startswith("verdict: MISMATCH")
    assert f"kernel check: {2 * failing} of {2 * len(FEW)} runs failed" in text
    assert "  fp8-per-tensor: not run: this FlashInfer has no" in text
    assert "E160/k4/T5/randn-20" in text and "FAIL" in text
    assert verify.verify_exit(result) == 1


def test_a_kernel_check_with_no_pair_says_why():
    kernel = verify.summarise_kernel_check(
        [kernel_check.PairReport("bf16", (), "RuntimeError: no kernel for sm_120")]
    )
    assert kernel["not_run"] == "bf16: RuntimeError: no kernel for sm_120"
    assert verify.verify_exit({"verdict": verify.verdict({"ran": False}, kernel)}) == 2


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("name", sorted(PAIRS))
def test_the_check_runs_on_a_cuda_gpu(name):
    """Everything but the two FlashInfer calls, on a CUDA device at the size
    ``verify`` uses (the layer, 512 experts, 4096 tokens)."""
    module, calls = stand_in(bug=True)
    few = cases.adversarial(experts=(160, 512), top_ks=(8,), tokens=(1, 257, 4096))
    report = kernel_check.check_pair(PAIRS[name], few, (0, 6, 6), module, "cuda")
    assert report.not_run is None, report.not_run
    failed = {run.case for run in report.runs if not run.passed}
    assert failed == {c for c in few if c.in_bug_envelope and negative_rows(c)}
    assert all(v.is_cuda for call in calls for v in call.values() if torch.is_tensor(v))
    weights = calls[-1]["gemm1_weights"]
    assert weights.shape[0] == 512 and weights.numel() == 512 * 2 * 512 * 1024
