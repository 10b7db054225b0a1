# SPDX-License-Identifier: Apache-2.0
"""The decision table (README, "What the plugin decides"), row by row."""

import logging

import pytest

from vllm_moe_routing_plugin import bugs, decision, envs, policy
from vllm_moe_routing_plugin.facts import Facts, gpus_from_capabilities
from vllm_moe_routing_plugin.layers import LayerFacts

B200 = gpus_from_capabilities([(10, 0)] * 8, "test")


def facts(flashinfer="0.6.7", gpus=B200, error=None, **others):
    versions = {"vllm": "0.19.1", "flashinfer-python": flashinfer}
    versions.update({k.replace("_", "-"): v for k, v in others.items()})
    return Facts(versions, gpus, error)


def decide(f, **env):
    return policy.decide(f, envs.read(env))


def test_disabled_wins_over_everything():
    d = decide(facts(), VLLM_MOE_ROUTING_PLUGIN_DISABLE="1")
    assert (d.action, d.reason) == ("disabled", "VLLM_MOE_ROUTING_PLUGIN_DISABLE=1")


def test_no_gpu_is_not_applicable_with_the_nvml_error():
    d = decide(facts(gpus=(), error="NVML unavailable (NVMLError: Driver Not Loaded)"))
    assert d.action == "not-applicable"
    assert "Driver Not Loaded" in d.reason


@pytest.mark.parametrize("capability", [(9, 0), (12, 0), (10, 1), (11, 0)])
def test_gpu_outside_sm100_sm103_is_not_applicable(capability):
    gpus = gpus_from_capabilities([(10, 0), capability], "test")
    d = decide(facts(gpus=gpus))
    assert d.action == "not-applicable"
    assert f"sm_{capability[0]}{capability[1]}" in d.reason


def test_forced_values_still_need_an_applicable_gpu():
    gpus = gpus_from_capabilities([(9, 0)], "test")
    assert decide(facts(gpus=gpus), VLLM_MOE_ROUTING_RENORMALIZE="enable").action == (
        "not-applicable"
    )


@pytest.mark.parametrize("version", [None, "0.0.0+unknown", "not-a-version", ""])
def test_unknown_flashinfer(version):
    d = decide(facts(flashinfer=version))
    assert d.action == "unknown"
    assert not d.acts


@pytest.mark.parametrize(
    "version",
    ["0.6.7", "0.6.7+cu130", "0.6.7.post3", "0.6.7.dev20260324", "0.6.8rc1", "0.7.4"],
)
def test_fixed_flashinfer_enables(version):
    d = decide(facts(flashinfer=version))
    assert d.action == "enable"
    assert d.reason == f"flashinfer-python {version} >= 0.6.7; GPU 0-7 sm_100"


@pytest.mark.parametrize("version", ["0.6.6", "0.6.6.dev20260318", "0.6.3", "0.5.3"])
def test_buggy_flashinfer_guards_the_envelope(version):
    d = decide(facts(flashinfer=version))
    assert d.action == "guard"
    assert not d.refuses_renormalize
    assert "flashinfer#2822" in d.reason
    renormalize = d.findings[0]
    assert renormalize.bug.id == "flashinfer#2822"
    assert (renormalize.in_range, renormalize.action) == (True, "guard")


def renormalize_check(d):
    """The layer check a monolithic target of the decision gets for
    flashinfer#2822 (what patching plans there)."""
    plans = tuple(
        policy.Planned(f.bug, "guarded", "guarded")
        for f in d.acting
        if f.bug.id == "flashinfer#2822"
    )
    return policy.LayerCheck(plans, d.refuses_renormalize, d.flashinfer)


def refuses(check, experts, top_k):
    layer = LayerFacts("Renormalize", "fp8-block", experts, top_k)
    return check.judge(layer).refused


def test_guard_envelope_is_the_bug_shape():
    check = renormalize_check(decide(facts(flashinfer="0.6.6")))
    assert refuses(check, 256, 8)  # Qwen3.5-35B-A3B / 122B-A10B
    assert refuses(check, 160, 8)  # Qwen3-Coder-480B
    assert refuses(check, 512, 9)
    assert not refuses(check, 128, 8)  # Qwen3-30B-A3B, Qwen3-235B-A22B, gpt-oss-120b
    assert not refuses(check, 32, 4)  # gpt-oss-20b
    assert not refuses(check, 512, 10)  # Qwen3-Next
    assert not refuses(check, 1024, 8)
    assert check.judge(LayerFacts("Renormalize", "bf16", 256, 8)).reason() == (
        "FlashInfer 0.6.6 routes Renormalize wrongly for Renormalize/RenormalizeNaive "
        "layers with 128 < experts <= 512 and top_k < 10 (flashinfer#2822; fixed in "
        "0.6.7; this layer: Renormalize, 256 experts, top_k 8, bf16)"
    )


def test_forced_enable_and_disable():
    forced = decide(facts("0.6.6"), VLLM_MOE_ROUTING_RENORMALIZE="enable")
    assert forced.action == "enable"
    assert not renormalize_check(forced).planned  # flashinfer#2822 ignored
    d = decide(facts("0.7.4"), VLLM_MOE_ROUTING_RENORMALIZE="disable")
    assert d.action == "guard"
    assert d.refuses_renormalize and refuses(renormalize_check(d), 128, 8)
    assert "VLLM_MOE_ROUTING_RENORMALIZE=disable" in d.reason


def test_forced_values_override_an_unknown_version():
    d = decide(facts(None), VLLM_MOE_ROUTING_RENORMALIZE="enable")
    assert d.action == "enable"


def test_lower_of_python_and_jit_cache_counts():
    d = decide(facts("0.6.7", flashinfer_jit_cache="0.6.6+cu129"))
    assert d.action == "guard"
    assert "flashinfer-jit-cache 0.6.6+cu129" in d.reason
    assert decide(facts("0.6.7", flashinfer_jit_cache="0.6.7+cu130")).action == "enable"
    assert decide(facts("0.6.6", flashinfer_jit_cache="0.6.8+cu130")).action == "guard"
    # FlashInfer 0.7 ignores a jit-cache of another version: its own kernels run
    ignored = decide(facts("0.7.4", flashinfer_jit_cache="0.6.6+cu129"))
    assert ignored.action == "enable"
    assert ignored.reason.startswith(
        "flashinfer-python 0.7.4 (flashinfer-jit-cache ignored) >= 0.6.7;"
    )


def test_unparsable_jit_cache_is_unknown():
    assert decide(facts("0.6.7", flashinfer_jit_cache="garbage")).action == "unknown"


def test_cubin_mismatch_is_reported():
    d = decide(facts("0.6.7", flashinfer_cubin="0.6.6"))
    assert d.action == "enable"
    assert d.notes == (
        "flashinfer-cubin 0.6.6 differs from flashinfer-python 0.6.7: FlashInfer 0.6.x "
        "refuses to import then (install both at the same version)",
    )
    assert decide(facts("0.6.7", flashinfer_cubin="0.6.7")).notes == ()


def test_a_leftover_companion_on_flashinfer_0_7_is_named_as_ignored():
    """FlashInfer 0.7.x ignores a companion of another version (its
    ``jit/env.py``): a flashinfer-cubin 0.6.8.post1 installed for vLLM 0.19
    stays behind after an upgrade to vLLM 0.34 + FlashInfer 0.7.4."""
    d = decide(
        facts(
            "0.7.4",
            flashinfer_cubin="0.6.8.post1",
            flashinfer_jit_cache="0.7.2.post1+cu130",
        )
    )
    assert d.action == "enable"
    assert d.notes == (
        "flashinfer-cubin 0.6.8.post1 differs from flashinfer-python 0.7.4: "
        "FlashInfer 0.7 ignores it and downloads its cubins when first used "
        "(`pip uninstall flashinfer-cubin` removes the leftover)",
        "flashinfer-jit-cache 0.7.2.post1+cu130 does not match flashinfer-python "
        "0.7.4: FlashInfer 0.7 ignores it and compiles its kernels when first used "
        "(`pip uninstall flashinfer-jit-cache` removes the leftover)",
    )


def test_describe_gpus_folds_ranges():
    gpus = gpus_from_capabilities([(10, 0), (10, 0), (10, 3), (10, 0)], "t")
    assert decision.describe_gpus(gpus) == "GPU 0-1 sm_100, 2 sm_103, 3 sm_100"


def test_a_forced_enable_names_the_bug_it_lets_through(records):
    """``VLLM_MOE_ROUTING_RENORMALIZE=enable`` over a FlashInfer that has
    flashinfer#2822 is the user's call (a backported build), but it must not
    read as a vouch: the reason, ``status``'s answer and a WARNING name it."""
    from support import versions
    from vllm_moe_routing_plugin import activation
    from vllm_moe_routing_plugin.diagnostics import status

    d = decide(facts("0.6.6"), VLLM_MOE_ROUTING_RENORMALIZE="enable")
    assert d.reason == (
        "forced by VLLM_MOE_ROUTING_RENORMALIZE=enable over flashinfer#2822 "
        "(flashinfer-python 0.6.6); GPU 0-7 sm_100"
    )
    assert [bug.id for bug in d.overridden] == ["flashinfer#2822"]
    assert status.answer(d) == (
        "Renormalize/RenormalizeNaive MoE layers may run on the fused TRT-LLM "
        "kernels because VLLM_MOE_ROUTING_RENORMALIZE=enable forces it, although "
        "this FlashInfer has flashinfer#2822: Renormalize/RenormalizeNaive layers "
        "with 128 < experts <= 512 and top_k < 10 may be routed wrongly."
    )
    fixed = decide(facts("0.6.7"), VLLM_MOE_ROUTING_RENORMALIZE="enable")
    assert fixed.overridden == ()
    assert (
        fixed.reason == "forced by VLLM_MOE_ROUTING_RENORMALIZE=enable; GPU 0-7 sm_100"
    )

    activation.activate(
        {
            "VLLM_MOE_ROUTING_DEVICE_CAPABILITY": "10.0",
            "VLLM_MOE_ROUTING_RENORMALIZE": "enable",
        },
        version_of=versions(flashinfer_python="0.6.6", flashinfer_cubin="0.6.6"),
        register_env=lambda: True,
    )
    assert records.lines(logging.WARNING) == [
        "moe_routing: VLLM_MOE_ROUTING_RENORMALIZE=enable lets the fused kernels "
        "route Renormalize/RenormalizeNaive layers with 128 < experts <= 512 and "
        "top_k < 10 although FlashInfer 0.6.6 routes Renormalize wrongly for them "
        "(flashinfer#2822; fixed in 0.6.7); set it to auto unless this FlashInfer "
        "build has the fix"
    ]


def test_a_known_bugs_item_that_cannot_be_honoured_is_a_warning(records):
    """A transposed id (flashinfer#3964 for #3946) must not pass as
    protection: a WARNING names it, and the decision line stays the
    decision."""
    from support import LINE_HEAD, versions
    from vllm_moe_routing_plugin import activation

    current = activation.activate(
        {
            "VLLM_MOE_ROUTING_DEVICE_CAPABILITY": "10.0",
            "VLLM_MOE_ROUTING_KNOWN_BUGS": (
                "flashinfer#3964=guard,flashinfer#4237=guard"
            ),
        },
        version_of=versions(flashinfer_python="0.6.14", flashinfer_cubin="0.6.14"),
        register_env=lambda: True,
    )
    assert records.lines(logging.WARNING) == [
        "moe_routing: VLLM_MOE_ROUTING_KNOWN_BUGS names flashinfer#3964, not a known "
        "bug; ignored",
        "moe_routing: VLLM_MOE_ROUTING_KNOWN_BUGS: flashinfer#4237 cannot be guarded "
        "(not a routing bug); it stays warn",
    ]
    assert current.line().startswith(f"{LINE_HEAD}: enable (")
    assert "note" not in current.line()


@pytest.mark.parametrize(
    ("vllm", "flashinfer", "said"),
    [
        ("0.34.0", "0.7.4", []),
        ("0.19.1", "0.6.8.post1", []),
        ("0.34.1", "0.7.4", ["vLLM 0.34.1 is newer than the newest proven, 0.34.0"]),
        (
            "0.35.0.dev12",
            "0.7.4",
            [
                "vLLM 0.35.0.dev12 is newer than the newest proven, 0.34.0: targets "
                "found by shape, vLLM defects by probing its code"
            ],
        ),
        (
            "0.34.0",
            "0.8.0",
            ["FlashInfer 0.8.0 is newer than the newest proven, 0.7.4"],
        ),
        ("0.35.0", "0.7.5", ["vLLM 0.35.0 is newer", "FlashInfer 0.7.5 is newer"]),
    ],
)
def test_a_release_newer_than_proven_is_named_in_the_reason(vllm, flashinfer, said):
    """The decision still follows the table (targets by shape, bugs from their
    ranges); its reason says what it has not been proven on, once each, and
    nothing on a proven release."""
    proven = decide(facts(flashinfer, vllm="0.34.0"))
    d = decide(facts(flashinfer, vllm=vllm))
    assert d.action == proven.action == "enable"

    def flashinfer_in_range(decision):
        return [f.in_range for f in decision.findings if f.bug.defect is None]

    assert flashinfer_in_range(d) == flashinfer_in_range(proven)
    notes = d.reason.split("; ")[2:]
    assert len(notes) == len(said)
    for note, start in zip(notes, said, strict=True):
        assert note.startswith(start), note
    if said:
        assert any(n.endswith("targets found by shape, vLLM defects from their known "
                              "ranges") or n.endswith("known bugs from their ranges")
                   or n.endswith("(a pre-release or build the known ranges "
                                 "cannot place)")
                   for n in notes)  # fmt: skip
    else:
        assert d.reason == (f"flashinfer-python {flashinfer} >= 0.6.7; GPU 0-7 sm_100")


def test_ignoring_an_in_range_guard_is_a_warning_naming_what_goes_through():
    d = decide(
        facts("0.6.16", vllm="0.26.0"),
        VLLM_MOE_ROUTING_KNOWN_BUGS=(
            "flashinfer#3875=ignore,vllm#32437=ignore,flashinfer#3946=ignore"
        ),
    )  # flashinfer#3946 is warned by default: ignoring it guards nothing less
    assert bugs.FLASHINFER_3946.action == "warn"
    assert d.notes == (
        "VLLM_MOE_ROUTING_KNOWN_BUGS: flashinfer#3875=ignore lets "
        + str(bugs.FLASHINFER_3875.layers)
        + " through unguarded although this install is in its range ("
        + bugs.FLASHINFER_3875.affected
        + "): "
        + "/".join(bugs.FLASHINFER_3875.kernels)
        + f" {bugs.FLASHINFER_3875.wrong} for them",
        "VLLM_MOE_ROUTING_KNOWN_BUGS: vllm#32437=ignore lets "
        + str(bugs.VLLM_32437.layers)
        + " through unguarded although this install is in its range ("
        + bugs.VLLM_32437.affected
        + "): "
        + "/".join(bugs.VLLM_32437.kernels)
        + f" {bugs.VLLM_32437.wrong} for them",
    )
    # out of range, or the entry's own action: nothing to say
    fixed = decide(
        facts("0.6.18"), VLLM_MOE_ROUTING_KNOWN_BUGS="flashinfer#3946=ignore"
    )
    assert fixed.notes == ()
