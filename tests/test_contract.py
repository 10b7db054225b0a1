# SPDX-License-Identifier: Apache-2.0
"""The contract with each vLLM release, checked against the installed one.

``RELEASES`` is written from the vLLM wheels' source (README "What it changes,
per vLLM release"; the evidence is in the project's research notes), not from
running the plugin: which targets a release has, and whether each one's
routing check accepts Renormalize/RenormalizeNaive before the plugin. From it
follow the states the plugin must report, and what the checks must answer
after it, for ``enable`` (FlashInfer >= 0.6.7) and ``guard`` (< 0.6.7; injected
where the installed FlashInfer is fixed), plus the decision the installed
FlashInfer must produce. The ``matrix`` sessions of noxfile.py run this file in one
environment per release and FlashInfer variant; scripts/matrix_row.py then
records what docs/compatibility.md shows (this file only asserts).
"""

from __future__ import annotations

import pytest
from packaging.version import Version

from support import (
    FLASHINFER,
    LINE_HEAD,
    NEWEST_PROVEN_VLLM,
    VLLM,
    expected,
    versions,
)
from vllm_moe_routing_plugin import activation, bugs, checks, patching, targets
from vllm_moe_routing_plugin.envs import KNOWN_BUGS_VAR
from vllm_support import BOTH, SM100, import_target_modules, methods

FP8 = "TrtLlmFp8ExpertsMonolithic"
FP8_017 = "TrtLlmFp8Experts"
BF16 = "TrtLlmBf16ExpertsMonolithic"
BF16_020 = "TrtLlmBf16Experts"
BF16_FN = "flashinfer_trtllm_moe._supports_routing_method_bf16"
FP8_FN = "flashinfer_trtllm_moe._supports_routing_method"
NVFP4 = "TrtLlmNvFp4ExpertsMonolithic"
NVFP4_FN = "flashinfer_fp4_moe._supports_routing_method"
MXFP4 = "TrtLlmMxfp4ExpertsMonolithic"
MXINT4 = "TrtLlmMxint4ExpertsMonolithic"

# release -> {target present in it: accepts Renormalize/RenormalizeNaive natively}
_020 = {FP8: True, BF16_020: True, NVFP4: True, MXFP4: True}
_023 = {**_020, MXINT4: True}
_026 = {FP8: True, BF16: True, NVFP4: True, MXFP4: True, MXINT4: True}
RELEASES: dict[str, dict[str, bool]] = {
    "0.16.0": {FP8_FN: True, BF16_FN: True, NVFP4_FN: True},
    "0.17.1": {FP8_017: True, BF16_FN: True, NVFP4: True},
    # vLLM PR #37605 removed both methods from the FP8 monolithic class.
    "0.18.1": {FP8: False, BF16_FN: True, NVFP4: True},
    "0.19.1": {FP8: False, BF16_FN: True, NVFP4: True, MXFP4: True},
    # vLLM PR #38859 restored them.
    "0.20.2": _020,
    "0.22.1": _020,
    "0.25.1": _023,
    "0.26.0": _026,
    "0.30.0": _026,
    "0.33.0": _026,
    "0.34.0": _026,
}
FUNCTIONS = {BF16_FN, FP8_FN, NVFP4_FN}
RAISES_FOR_UNKNOWN_SCHEME = {FP8, FP8_017, FP8_FN}

#: The Renormalize contract alone: the catalogue's other entries (which change
#: other routing methods on some releases) are set to ``ignore`` here and
#: tested on the releases they reach in test_known_bugs.py.
RENORMALIZE_ONLY = {
    **SM100,
    KNOWN_BUGS_VAR: ",".join(
        f"{bug.id}=ignore" for bug in bugs.KNOWN_BUGS if bug is not bugs.FLASHINFER_2822
    ),
}

CONTRACT = expected(RELEASES, VLLM, NEWEST_PROVEN_VLLM)
pytestmark = pytest.mark.skipif(
    CONTRACT is None, reason=f"no contract written for vLLM {VLLM}"
)


def expected_state(name: str, action: str) -> str:
    accepts = CONTRACT[name]
    if action == "enable":
        return "native" if accepts else "patched"
    return "patched" if accepts else "native"


def installed_action() -> str:
    fixed = FLASHINFER is not None and Version(FLASHINFER).release >= (0, 6, 7)
    return "enable" if fixed else "guard"


def import_targets() -> dict[str, targets.Target]:
    """Import every target module of this vLLM (as vLLM would), so the plugin
    patches at once; the targets whose module exists, by name."""
    modules = import_target_modules()
    return {t.name: t for t in targets.TARGETS if t.module in modules}


def routing_table(check: checks.RoutingCheck) -> dict[str, dict[str, bool]]:
    return {
        scheme: {m: m in names for m in (x.name for x in methods())}
        for scheme, names in check.accepted().items()
    }


@pytest.mark.parametrize("action", ["enable", "guard"])
def test_targets_states_and_answers(action):
    import sys

    import vllm  # noqa: F401

    present = import_targets()
    checks_found = {}
    for name, target in present.items():
        check = checks.locate(target, sys.modules[target.module])
        if check is not None:
            checks_found[name] = check
    assert set(checks_found) == set(CONTRACT), "targets present in this vLLM"
    originals = {name: routing_table(p) for name, p in checks_found.items()}
    for name, table in originals.items():
        for scheme, answers in table.items():
            accepts = answers["Renormalize"] and answers["RenormalizeNaive"]
            assert accepts is CONTRACT[name], (name, scheme)

    injected = "0.7.4" if action == "enable" else "0.6.6"
    current = activation.activate(
        RENORMALIZE_ONLY,
        version_of=versions(flashinfer_python=injected, flashinfer_cubin=injected),
    )
    assert current.decision.action == action
    states = {o.target.name: o.state for o in current.outcomes.values()}
    for name in CONTRACT:
        assert states[name] == expected_state(name, action), name
    assert f"{LINE_HEAD}: {action} (" in current.line()

    for name, check in checks_found.items():
        now = check.reread()
        after = routing_table(now)
        assert set(after) == set(originals[name]), name  # same quant schemes
        for scheme, answers in after.items():
            before = originals[name][scheme]
            for method, accepted in answers.items():
                if method in BOTH:
                    continue
                assert accepted == before[method], (name, scheme, method)
            renormalize = {answers[m] for m in BOTH}
            if action == "enable":
                assert renormalize == {True}, (name, scheme)
            elif name in FUNCTIONS:
                assert renormalize == {False}, (name, scheme)
            else:
                # Classes keep their routing check; is_supported_config guards.
                assert renormalize == {CONTRACT[name]}, (name, scheme)
                guarded = checks.is_ours(vars(check.owner).get("is_supported_config"))
                assert guarded is CONTRACT[name], name
        if name in RAISES_FOR_UNKNOWN_SCHEME:
            call = checks.caller(check.target, now.check)
            with pytest.raises(ValueError, match="Unsupported quantization scheme"):
                call(methods().Renormalize, None, None)

    activation.deactivate()
    for name, check in checks_found.items():
        assert routing_table(check.reread()) == originals[name], name
        assert not checks.is_ours(vars(check.owner).get("is_supported_config"))


def test_installed_flashinfer_decides():
    import_targets()
    current = activation.activate(SM100)
    action = installed_action()
    assert current.decision.action == action
    line = current.line()
    assert f"{LINE_HEAD}: {action} (flashinfer-python {FLASHINFER} " in line


#: Where each release builds a MoE layer (``scripts/layer_evidence.py``).
LAYER_CLASS = {
    release: "FusedMoE" if Version(release) < Version("0.24") else "RoutedExperts"
    for release in RELEASES
}


def test_the_layer_class_is_recognised():
    """Every release's layer class sets the values the layer checks read
    before asking its oracle for the kernel: the plugin watches it, and only
    it (from vLLM 0.24 ``layer.FusedMoE`` is a factory function)."""
    import importlib

    import vllm  # noqa: F401 - vllm_has_module looks in the imported package

    from vllm_moe_routing_plugin.vllm_source import vllm_has_module

    outcomes = {}
    for layer_class in targets.LAYER_CLASSES:
        if not vllm_has_module(layer_class.module):
            continue
        module = importlib.import_module(layer_class.module)
        outcome = patching.watch_layers(layer_class, module, lambda build: None)
        outcomes[layer_class.owner] = outcome.state
        if outcome.patch is not None:
            outcome.patch.undo()
    expected = LAYER_CLASS[VLLM]
    assert outcomes[expected] == "patched", outcomes
    assert {k: v for k, v in outcomes.items() if k != expected} in (
        {},
        {"FusedMoE": "absent"},
        {"RoutedExperts": "absent"},
    ), outcomes
