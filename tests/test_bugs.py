# SPDX-License-Identifier: Apache-2.0
"""The known-bug catalogue: consistent with the targets, and the one source
the decision, the guard (its reason, the targets it reaches) and the README's
table read."""

from pathlib import Path

import pytest

from support import STAND_IN_TARGET, Methods, stand_in_module, supported
from vllm_moe_routing_plugin import bugs, envs, patching, policy, targets
from vllm_moe_routing_plugin.facts import Facts, gpus_from_capabilities

B200 = gpus_from_capabilities([(10, 0)], "test")
README = Path(__file__).resolve().parents[1] / "README.md"


def decide(flashinfer: str) -> policy.Decision:
    return policy.decide(Facts({"flashinfer-python": flashinfer}, B200), envs.read({}))


def test_entries_name_the_plugins_targets_and_methods():
    names = {target.name for target in targets.TARGETS}
    assert set(bugs.MONOLITHIC_TARGETS) == names
    for bug in bugs.KNOWN_BUGS:
        assert set(bug.targets) <= names, bug.id
        assert set(bug.methods) <= set(bugs.RENORMALIZE_METHODS), bug.id
        assert bug.id in bug.references
        assert bug.kernels and bug.affected and bug.remove_when


@pytest.mark.parametrize(
    ("experts", "top_k", "inside"),
    [(128, 8, False), (129, 8, True), (256, 8, True), (512, 9, True),
     (513, 8, False), (256, 10, False), (160, 8, True), (32, 4, False)],
)  # fmt: skip
def test_flashinfer_2822_envelope(experts, top_k, inside):
    assert bugs.FLASHINFER_2822.envelope.contains(experts, top_k) is inside


def test_guard_reason_is_read_from_the_entry():
    decision = decide("0.6.6")
    assert decision.action == "guard"
    assert decision.reason.startswith(
        "flashinfer-python 0.6.6 < 0.6.7 (flashinfer#2822)"
    )
    assert decision.guard is not None
    assert decision.guard.reason(256, 8) == (
        "FlashInfer 0.6.6 routes Renormalize wrongly for 128 < experts <= 512 with "
        "top_k < 10 (flashinfer#2822; fixed in 0.6.7; this layer: 256 experts, top_k 8)"
    )


def test_a_new_entry_reaches_the_decision(monkeypatch):
    later = bugs.FLASHINFER_2822.replace(
        id="flashinfer#9999", wrong="routes it wrongly too", fixed_in=(0, 7, 0)
    )
    monkeypatch.setattr(policy, "KNOWN_BUGS", (bugs.FLASHINFER_2822, later))
    decision = decide("0.6.8")
    assert decision.action == "guard"
    assert decision.reason.startswith(
        "flashinfer-python 0.6.8 < 0.7.0 (flashinfer#9999)"
    )
    assert decide("0.7.0").reason.startswith("flashinfer-python 0.7.0 >= 0.7.0")


class Experts:
    is_supported_config = staticmethod(supported)

    @staticmethod
    def _supports_routing_method(routing_method, weight_key, activation_key):
        return routing_method in (Methods.Renormalize, Methods.RenormalizeNaive)


@pytest.mark.parametrize(("reached", "state"), [(True, "patched"), (False, "native")])
def test_guard_changes_only_the_targets_an_entry_reaches(reached, state):
    cls = type("Experts", (Experts,), {})
    module = stand_in_module(cls)
    bug = bugs.FLASHINFER_2822.replace(targets=("Experts",) if reached else ())
    decision = policy.Decision("guard", "test", guard=policy.Guard((bug,), "0.6.6"))
    outcome = patching.apply(STAND_IN_TARGET, module, decision)
    assert outcome.state == state
    assert ("is_supported_config" in vars(cls)) is reached
    if outcome.patch is not None:
        outcome.patch.undo()
    assert "is_supported_config" not in vars(cls)


def readme_row(bug: bugs.KnownBug) -> str:
    return (
        f"| {bug.id} | {bug.title} | {', '.join(bug.methods)} | {bug.envelope} | "
        f"{bug.affected} | {bug.fixed_in_text} |"
    )


def test_readme_table_is_the_catalogue():
    text = README.read_text(encoding="utf-8")
    for bug in bugs.KNOWN_BUGS:
        assert readme_row(bug) in text, readme_row(bug)
