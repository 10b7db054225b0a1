# SPDX-License-Identifier: Apache-2.0
"""The newest vLLM (0.33.0 in CI): the FP8 and BF16 monolithic classes accept
Renormalize natively (vLLM PR #38859) and vLLM pins a fixed FlashInfer, so the
plugin changes nothing; with an old FlashInfer under it, the shape-aware guard
moves exactly the layers the bug reaches off the fused kernel."""

import pytest

from support import LINE_HEAD, versions
from vllm_moe_routing_plugin import activation
from vllm_support import (
    BF16,
    BOTH,
    FP8,
    FP8_BLOCK,
    FP8_PER_TENSOR,
    FUSED_MOE,
    MXFP4,
    NVFP4,
    SM100,
    accepted,
    answer_sm100,
    key,
    module,
    moe_config,
    run_python,
    supported,
)

pytestmark = pytest.mark.vllm(">=0.26")

BUGGY = versions(flashinfer_python="0.6.6", flashinfer_cubin="0.6.6")


@pytest.fixture
def classes():
    fp8 = module(FP8)
    bf16 = module(BF16)
    return {
        "fp8": fp8.TrtLlmFp8ExpertsMonolithic,
        "fp8-modular": fp8.TrtLlmFp8ExpertsModular,
        "bf16": bf16.TrtLlmBf16ExpertsMonolithic,
        "bf16-modular": bf16.TrtLlmBf16ExpertsModular,
    }


def snapshot(classes):
    return {name: dict(vars(cls)) for name, cls in classes.items()}


@pytest.mark.flashinfer(">=0.6.18")  # no catalogue entry of FlashInfer in range
def test_enable_is_native_and_replaces_nothing(classes, records):
    before = snapshot(classes)
    current = activation.activate(SM100)
    assert current.decision.action == "enable"
    states = {o.target.name: o.state for o in current.outcomes.values()}
    assert states["TrtLlmFp8ExpertsMonolithic"] == "native"
    assert states["TrtLlmBf16ExpertsMonolithic"] == "native"
    assert snapshot(classes) == before
    assert accepted(classes["fp8"]._supports_routing_method, FP8_BLOCK) >= BOTH
    line = records.lines()[0]
    assert "TrtLlmFp8ExpertsMonolithic native" in line
    assert "TrtLlmBf16ExpertsMonolithic native" in line


@pytest.mark.parametrize(
    ("cls", "scheme"),
    [("fp8", FP8_BLOCK), ("fp8", FP8_PER_TENSOR), ("bf16", (None, None))],
)
def test_guard_refuses_only_layers_inside_the_bug_envelope(
    classes, cls, scheme, monkeypatch
):
    answer_sm100(monkeypatch, FP8, BF16)
    monolithic = classes[cls]
    qwen35 = moe_config(256, 8, "Renormalize")
    qwen3_30b = moe_config(128, 8, "Renormalize")
    qwen3_next = moe_config(512, 10, "RenormalizeNaive")
    deepseek = moe_config(256, 8, "DeepSeekV3")
    # Without the plugin vLLM takes the fused kernel for all of them.
    assert supported(monolithic, qwen35, scheme) == (True, None)
    modular = classes[f"{cls}-modular"]
    modular_before = supported(modular, qwen35, scheme)
    current = activation.activate(SM100, version_of=BUGGY)
    assert current.decision.action == "guard"
    ok, reason = supported(monolithic, qwen35, scheme)
    assert not ok
    label = {FP8_BLOCK: "fp8-block", FP8_PER_TENSOR: "fp8-per-tensor"}.get(
        scheme, "bf16"
    )
    assert reason == (
        "FlashInfer 0.6.6 routes Renormalize wrongly for Renormalize/RenormalizeNaive "
        "layers with 128 < experts <= 512 and top_k < 10 (flashinfer#2822; fixed in "
        f"0.6.7; this layer: Renormalize, 256 experts, top_k 8, {label})"
    )
    assert (
        supported(monolithic, moe_config(160, 8, "RenormalizeNaive"), scheme)[0]
        is False
    )
    assert supported(monolithic, qwen3_30b, scheme) == (True, None)
    assert supported(monolithic, qwen3_next, scheme) == (True, None)
    if cls == "fp8":
        assert supported(monolithic, deepseek, scheme) == (True, None)
    # The modular class routes in PyTorch: its answer is vLLM's own.
    assert supported(modular, qwen35, scheme) == modular_before
    activation.deactivate()
    assert supported(monolithic, qwen35, scheme) == (True, None)


def test_guard_is_undone_exactly(classes):
    before = snapshot(classes)
    current = activation.activate(SM100, version_of=BUGGY)
    states = {o.target.name: o.state for o in current.outcomes.values()}
    assert states["TrtLlmFp8ExpertsMonolithic"] == "patched"
    assert states["TrtLlmBf16ExpertsMonolithic"] == "patched"
    assert "is_supported_config" in vars(classes["fp8"])
    activation.deactivate()
    assert snapshot(classes) == before


def test_forced_disable_refuses_every_shape(classes, monkeypatch):
    answer_sm100(monkeypatch, FP8, BF16)
    activation.activate({**SM100, "VLLM_MOE_ROUTING_RENORMALIZE": "disable"})
    ok, reason = supported(classes["fp8"], moe_config(128, 8), FP8_BLOCK)
    assert not ok
    assert "VLLM_MOE_ROUTING_RENORMALIZE=disable" in reason
    assert supported(classes["fp8"], moe_config(256, 8, "DeepSeekV3"), FP8_BLOCK)[0]


def test_routing_checks_and_their_errors_are_unchanged_under_guard(classes):
    check = classes["fp8"]._supports_routing_method
    from vllm_support import methods

    before = {s: accepted(check, s) for s in (FP8_BLOCK, FP8_PER_TENSOR)}
    activation.activate(SM100, version_of=BUGGY)
    after = {s: accepted(classes["fp8"]._supports_routing_method, s) for s in before}
    assert after == before
    with pytest.raises(ValueError, match="Unsupported quantization scheme"):
        classes["fp8"]._supports_routing_method(methods().Renormalize, None, None)


DEFERRED = """
import logging
import vllm.plugins
vllm.plugins.load_general_plugins()  # as LLM() / vllm serve do before logging is set up
print("vllm logger configured:", bool(logging.getLogger("vllm").handlers), flush=True)
from vllm.logger import _configure_vllm_root_logger
_configure_vllm_root_logger()
import vllm.model_executor.layers.fused_moe.experts.trtllm_fp8_moe
"""


@pytest.mark.processes
@pytest.mark.vllm(">=0.31")
def test_line_dropped_before_logging_is_configured_arrives_on_import():
    result = run_python(DEFERRED, SM100)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "vllm logger configured: False" in out
    lines = [line for line in out.splitlines() if "moe_routing" in line]
    # The decision line once, when the first watched module is imported
    # after logging is up; the targets imported after it, in short lines.
    decisions = [line for line in lines if f"{LINE_HEAD}: enable (" in line]
    assert len(decisions) == 1, out
    assert all(
        "moe_routing: on import:" in line for line in lines if line not in decisions
    ), out
    assert "TrtLlmFp8ExpertsMonolithic native" in out
    assert out.index("vllm logger configured") < out.index(LINE_HEAD)


#: vLLM 0.34's monolithic classes and a quant scheme of each: NVFP4's base
#: class has its own ``is_supported_config`` from 0.34 (SWIGLUSTEP needs
#: per-tensor activation scales), and the base check knows a new activation
#: format (``PaddedStandard``, DeepEP v2).
MONOLITHIC_0_34 = {
    "TrtLlmFp8ExpertsMonolithic": (FP8, FP8_BLOCK),
    "TrtLlmBf16ExpertsMonolithic": (BF16, (None, None)),
    "TrtLlmNvFp4ExpertsMonolithic": (NVFP4, ("kNvfp4Static", "kNvfp4Dynamic")),
    "TrtLlmMxfp4ExpertsMonolithic": (MXFP4, ("kMxfp4Static", None)),
}


def every_answer(cls, scheme):
    """``is_supported_config`` over activations, activation formats, quant
    keys and layer shapes, as vLLM's oracle can ask it."""
    import dataclasses

    mk = module(f"{FUSED_MOE}.modular_kernel")
    activations = module(f"{FUSED_MOE}.activation").MoEActivation
    answers = {}
    layers = {"qwen3.5": (256, 8), "qwen3-30b": (128, 8)}
    keys = {
        "as vLLM pairs them": scheme,
        "per-token nvfp4": (scheme[0], "kNvfp4DynamicToken"),
    }
    for layer, (experts, top_k) in layers.items():
        for activation_name in ("SILU", "SWIGLUSTEP"):
            config = dataclasses.replace(
                moe_config(experts, top_k),
                activation=getattr(activations, activation_name),
            )
            for fmt in mk.FusedMoEActivationFormat:
                for keys_name, (wk, ak) in keys.items():
                    try:
                        answer = cls.is_supported_config(
                            cls, config, key(wk), key(ak), fmt
                        )
                    except (AttributeError, ValueError) as exc:
                        answer = type(exc).__name__
                    answers[(layer, activation_name, fmt.name, keys_name)] = answer
    return answers


@pytest.mark.vllm(">=0.34")
@pytest.mark.parametrize("name", list(MONOLITHIC_0_34))
def test_the_guard_keeps_every_answer_vllm_gives_but_the_bugs(name, monkeypatch):
    """Under the flashinfer#2822 guard, each class answers exactly as vLLM
    does (its own refusals and their reasons, the NVFP4 base's SWIGLUSTEP
    check, every activation format), except that the Qwen3.5-shaped layers
    vLLM accepts are refused."""
    path, scheme = MONOLITHIC_0_34[name]
    answer_sm100(monkeypatch, path)
    cls = getattr(module(path), name)
    before = every_answer(cls, scheme)
    if name == "TrtLlmNvFp4ExpertsMonolithic":
        assert "SWIGLUSTEP requires per-tensor" in str(list(before.values()))
    others = {
        n: dict(vars(c))
        for n, c in vars(module(path)).items()
        if isinstance(c, type) and c.__module__ == path and c is not cls
    }  # the modular classes (0.34: TrtLlmMxfp4Mxfp8ExpertsModular, ...) and bases
    assert any(a == (True, None) for a in before.values())
    assert len({str(a) for a in before.values()}) > 2  # vLLM refuses some itself
    current = activation.activate(SM100, version_of=BUGGY)
    assert current.decision.action == "guard"
    after = every_answer(cls, scheme)
    changed = {k for k in before if after[k] != before[k]}
    accepted_qwen35 = {
        k for k, a in before.items() if k[0] == "qwen3.5" and a == (True, None)
    }
    assert changed == accepted_qwen35 != set()
    for k in changed:
        assert after[k][0] is False and "flashinfer#2822" in after[k][1], after[k]
    assert {
        n: dict(vars(c)) for n, c in vars(module(path)).items() if n in others
    } == others
    activation.deactivate()
    assert every_answer(cls, scheme) == before
