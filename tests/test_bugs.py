# SPDX-License-Identifier: Apache-2.0
"""The known-bug catalogue: consistent with the targets, and the one source
the decision, the guard (its reason, the targets it reaches), the log line and
the README's table read."""

import enum
from pathlib import Path
from types import SimpleNamespace

import pytest

from support import STAND_IN_TARGET, Methods, stand_in_module, supported
from vllm_moe_routing_plugin import bugs, envs, log_line, patching, policy, targets
from vllm_moe_routing_plugin.facts import Facts, gpus_from_capabilities

B200 = gpus_from_capabilities([(10, 0)], "test")
README = Path(__file__).resolve().parents[1] / "README.md"
KNOWN_BUGS_DOC = README.with_name("docs") / "known-bugs.md"
#: RoutingMethodType member names of vLLM 0.16 - 0.33.
VLLM_METHODS = {
    "Default", "Renormalize", "DeepSeekV3", "Llama4", "RenormalizeNaive", "TopK",
    "SigmoidRenorm", "MiniMax2", "Sigmoid", "Unspecified", "DeepseekV4", "Custom",
    "Simulated",
}  # fmt: skip


def decide(flashinfer: str, **env: str) -> policy.Decision:
    return policy.decide(Facts({"flashinfer-python": flashinfer}, B200), envs.read(env))


def test_entries_name_the_plugins_targets_and_methods():
    names = {target.name for target in targets.TARGETS}
    assert set(bugs.MONOLITHIC_TARGETS) == names
    assert len({bug.id for bug in bugs.KNOWN_BUGS}) == len(bugs.KNOWN_BUGS)
    for bug in bugs.KNOWN_BUGS:
        assert set(bug.targets) <= names, bug.id
        assert set(bug.methods) <= VLLM_METHODS, bug.id
        assert bug.id in bug.references
        assert bug.kernels and bug.affected and bug.remove_when and bug.why
        assert bug.action in ("guard", "warn"), bug.id
        # A FlashInfer bug has a fixed release; a bug in vLLM's code a probe.
        assert (bug.fixed_in is None) == (bug.defect is not None), bug.id
        assert bug.guardable or bug.action == "warn", bug.id
        if bug.defect is not None:
            assert set(bug.defect.callers) <= set(bug.targets), bug.id
        assert bug is bugs.by_id(bug.id)


@pytest.mark.parametrize(
    ("flashinfer", "affected"),
    [
        ("0.6.3", {"flashinfer#2822", "flashinfer#3803", "flashinfer#3946",
                   "flashinfer#2642", "flashinfer#4237"}),
        ("0.6.6", {"flashinfer#2822", "flashinfer#3803", "flashinfer#3946",
                   "flashinfer#4237"}),
        ("0.6.8.post1", {"flashinfer#3803", "flashinfer#3946", "flashinfer#3875",
                         "flashinfer#3499", "flashinfer#4237"}),
        ("0.6.12", {"flashinfer#3803", "flashinfer#3946", "flashinfer#3875",
                    "flashinfer#3499", "flashinfer#4237"}),
        ("0.6.14", {"flashinfer#3803", "flashinfer#3946", "flashinfer#3875",
                    "flashinfer#4237"}),
        ("0.6.16.post3", {"flashinfer#3946", "flashinfer#3875", "flashinfer#4486"}),
        ("0.6.18.post1", set()),
        ("0.7.2.post1", set()),
    ],
)  # fmt: skip
def test_which_flashinfer_releases_each_entry_affects(flashinfer, affected):
    """The ranges established from the wheels' sources (docs/known-bugs.md).
    The bug in vLLM's own code is affected everywhere: probing decides."""
    findings = decide(flashinfer).findings
    assert [f.bug.id for f in findings] == [bug.id for bug in bugs.KNOWN_BUGS]
    assert {f.bug.id for f in findings if f.affected} == affected | {"vllm#43769"}


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


def test_default_actions_and_what_a_user_can_change():
    d = decide("0.6.11.post2", VLLM_MOE_ROUTING_KNOWN_BUGS=(
        "flashinfer#3946=guard,flashinfer#4237=ignore,flashinfer#3499=warn,"
        "flashinfer#2642=guard,flashinfer#2822=warn,flashinfer#1=guard"
    ))  # fmt: skip
    actions = {f.bug.id: f.action for f in d.findings}
    assert actions == {
        "flashinfer#2822": "none",  # VLLM_MOE_ROUTING_RENORMALIZE governs it
        "flashinfer#3803": "warn",
        "flashinfer#3946": "guard",
        "flashinfer#3875": "warn",
        "flashinfer#3499": "warn",
        "vllm#43769": "guard",
        "flashinfer#2642": "warn",  # not a routing bug: cannot be guarded
        "flashinfer#4237": "none",
        "flashinfer#4486": "warn",
    }
    assert d.notes == (
        "VLLM_MOE_ROUTING_KNOWN_BUGS: flashinfer#2642 cannot be guarded (not a "
        "routing bug); it stays warn",
        "VLLM_MOE_ROUTING_KNOWN_BUGS cannot set flashinfer#2822; "
        "VLLM_MOE_ROUTING_RENORMALIZE governs it",
        "VLLM_MOE_ROUTING_KNOWN_BUGS names flashinfer#1, not a known bug; ignored",
    )
    assert d.action == "enable"
    assert d.guard is not None
    assert [bug.id for bug in d.guard.bugs] == ["flashinfer#3946", "vllm#43769"]
    assert d.guard.methods == ("DeepSeekV3",)


def test_renormalize_decision_is_unchanged_by_other_entries():
    guard = decide("0.6.6").guard
    assert [bug.id for bug in guard.bugs] == ["flashinfer#2822", "vllm#43769"]
    assert guard.scope == "128 < experts <= 512 with top_k < 10"
    for version, action in [("0.6.6", "guard"), ("0.6.8.post1", "enable")]:
        d = decide(version)
        assert d.action == action
        assert d.reason.startswith(
            f"flashinfer-python {version} {'<' if action == 'guard' else '>='} 0.6.7"
        )


class Routing(enum.IntEnum):
    """A ``RoutingMethodType`` with the sigmoid methods too."""

    Renormalize = 1
    DeepSeekV3 = 2
    RenormalizeNaive = 4
    MiniMax2 = 7


class SigmoidExperts:
    """A monolithic class that accepts Renormalize, DeepSeekV3 and MiniMax2."""

    is_supported_config = staticmethod(supported)

    @staticmethod
    def _supports_routing_method(routing_method, weight_key, activation_key):
        return routing_method in (
            Routing.Renormalize, Routing.RenormalizeNaive, Routing.DeepSeekV3,
            Routing.MiniMax2,
        )  # fmt: skip

    def apply(self, router_logits, routed_scaling_factor=None):
        return kernel(routing_logits=router_logits)


def experts_accepting(*accepted: Routing) -> type:
    """A fresh ``Experts`` class whose routing check accepts only ``accepted``."""

    def _supports_routing_method(routing_method, weight_key, activation_key):
        return routing_method in accepted

    check = staticmethod(_supports_routing_method)
    return type("Experts", (SigmoidExperts,), {"_supports_routing_method": check})


def kernel(**kwargs):
    return kwargs


def config(method: str, experts: int = 256, top_k: int = 8):
    routing = getattr(Routing, method)
    return SimpleNamespace(num_experts=experts, experts_per_token=top_k,
                           routing_method=routing)  # fmt: skip


def entry(bug: bugs.KnownBug) -> bugs.KnownBug:
    return bug.replace(targets=("Experts",))


def guarding(bug: bugs.KnownBug, flashinfer: str = "0.6.8.post1") -> policy.Decision:
    """An ``enable`` decision that guards one entry, found to affect the install."""
    return policy.Decision(
        "enable",
        "test",
        guard=policy.Guard((bug,), flashinfer),
        findings=(policy.Finding(bug, True, "guard"),),
    )


def test_a_guard_entry_refuses_its_method_for_every_shape_and_says_why():
    cls = type("Experts", (SigmoidExperts,), {})
    decision = guarding(entry(bugs.FLASHINFER_3499), "0.6.11.post2")
    outcome = patching.apply(STAND_IN_TARGET, stand_in_module(cls, Routing), decision)
    assert (outcome.state, outcome.detail) == ("patched", "-MiniMax2 for all shapes")
    assert outcome.bugs == ("flashinfer#3499",)
    check = cls.is_supported_config
    assert check(cls, config("MiniMax2", 32, 2), None, None, None) == (
        False,
        "FlashInfer 0.6.11.post2 routes MiniMax2 with a route scale of 1.0 "
        "(flashinfer#3499; fixed in 0.6.13; this layer: 32 experts, top_k 2)",
    )
    for method in ("Renormalize", "DeepSeekV3"):
        assert check(cls, config(method), None, None, None) == (True, None)
    assert patching.accepted_after(outcome) is None  # its module is not imported
    assert log_line.import_line([outcome], decision) == (
        "moe_routing: on import: Experts -MiniMax2 for all shapes; "
        "known bugs: flashinfer#3499 guarded"
    )
    outcome.patch.undo()
    assert "is_supported_config" not in vars(cls)


def test_a_warn_entry_changes_nothing_and_is_named_once():
    cls = type("Experts", (SigmoidExperts,), {})
    nan = entry(bugs.FLASHINFER_3946)
    decision = policy.Decision(
        "enable", "test", findings=(policy.Finding(nan, True, "warn"),)
    )
    outcome = patching.apply(STAND_IN_TARGET, stand_in_module(cls, Routing), decision)
    assert (outcome.state, outcome.patch, outcome.bugs) == (
        "native",
        None,
        ("flashinfer#3946",),
    )
    assert set(vars(cls)) == set(vars(type("Experts", (SigmoidExperts,), {})))
    line = log_line.decision_line("0.1.0", decision, [outcome])
    assert line == (
        "moe_routing 0.1.0: enable (test) - Experts native; "
        "known bugs: flashinfer#3946 warned"
    )
    assert log_line.warning(decision.findings) == (
        "moe_routing: known bugs reach this install, vLLM left unchanged for them: "
        "flashinfer#3946 (divides grouped DeepSeekV3 routing weights by a zero sum; "
        "fixed in FlashInfer 0.6.17); VLLM_MOE_ROUTING_KNOWN_BUGS=<id>=guard keeps "
        "the layers a routing bug reaches off the fused routing (flashinfer#3946); "
        "docs/known-bugs.md"
    )


def test_an_entry_reaches_only_where_vllm_lets_its_method_in():
    cls = experts_accepting(Routing.Renormalize, Routing.RenormalizeNaive)
    decision = guarding(entry(bugs.FLASHINFER_3499))
    outcome = patching.apply(STAND_IN_TARGET, stand_in_module(cls, Routing), decision)
    assert (outcome.state, outcome.bugs) == ("native", ())
    assert "is_supported_config" not in vars(cls)


def passing_apply(self, router_logits, routed_scaling_factor=None):
    return kernel(
        routing_logits=router_logits, routed_scaling_factor=routed_scaling_factor
    )


@pytest.mark.parametrize("passes", [True, False])
def test_a_vllm_defect_is_found_by_probing_vllms_code(passes):
    apply = passing_apply if passes else SigmoidExperts.apply
    cls = type("Experts", (SigmoidExperts,), {"apply": apply})
    defect = bugs.VLLM_43769.defect
    scale = entry(bugs.VLLM_43769).replace(
        defect=bugs.VllmDefect(defect.keyword, {"Experts": "Experts.apply"})
    )
    decision = guarding(scale)
    outcome = patching.apply(STAND_IN_TARGET, stand_in_module(cls, Routing), decision)
    if passes:
        assert (outcome.state, outcome.bugs) == ("native", ())
        return
    assert (outcome.state, outcome.detail) == ("patched", "-DeepSeekV3 for all shapes")
    assert outcome.bugs == ("vllm#43769",)
    assert cls.is_supported_config(cls, config("DeepSeekV3"), None, None, None) == (
        False,
        "FlashInfer's trtllm_bf16_moe is called by vLLM without "
        "routed_scaling_factor for DeepSeekV3 routing (vllm#43769; this layer: "
        "256 experts, top_k 8)",
    )
    outcome.patch.undo()


def test_widening_and_guarding_one_class_undo_together():
    """vLLM 0.18/0.19's FP8 class lacks Renormalize (widened on ``enable``)
    while a guarded entry refuses another method: two patches, one outcome."""

    cls = experts_accepting(Routing.DeepSeekV3, Routing.MiniMax2)
    written = dict(vars(cls))
    decision = guarding(entry(bugs.FLASHINFER_3499))
    outcome = patching.apply(STAND_IN_TARGET, stand_in_module(cls, Routing), decision)
    assert outcome.detail == ("+Renormalize +RenormalizeNaive -MiniMax2 for all shapes")
    assert outcome.patch.attrs == ("_supports_routing_method", "is_supported_config")
    assert cls._supports_routing_method(Routing.Renormalize, None, None)
    outcome.patch.undo()
    assert dict(vars(cls)) == written


def readme_row(bug: bugs.KnownBug) -> str:
    methods = ", ".join(bug.methods) or "every"
    return (
        f"| {bug.id} | {bug.title} | {methods} | {bug.scope} | {bug.affected} | "
        f"{bug.fixed_in_text if bug.fixed_in else 'probed'} | {bug.action} |"
    )


def test_readme_table_is_the_catalogue():
    text = README.read_text(encoding="utf-8")
    for bug in bugs.KNOWN_BUGS:
        assert readme_row(bug) in text, readme_row(bug)


def test_known_bugs_doc_has_a_section_per_entry():
    text = KNOWN_BUGS_DOC.read_text(encoding="utf-8")
    for bug in bugs.KNOWN_BUGS:
        assert f"## {bug.id}:" in text, bug.id
