# SPDX-License-Identifier: Apache-2.0
"""What a vLLM process logs: the INFO line with the decision (plugin,
version, decision, reason with its facts, what happened to each target), the
short line when a target module is imported later, one INFO line per kind of
MoE layer a known bug is judged for, one WARNING per warned known bug
that hits a layer actually built, and one where vLLM found no kernel for a
layer whose fused kernel the plugin refused."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from .about import PLUGIN
from .envs import KNOWN_BUGS_VAR, RENORMALIZE_VAR

if TYPE_CHECKING:
    from .bugs import KnownBug
    from .decision import Decision
    from .patching import Outcome
    from .policy import Verdict
    from .targets import Target

#: The installed command that shows the whole catalogue.
STATUS_COMMAND = "vllm-moe-routing status"


def named(outcomes: Iterable[Outcome]) -> list[Outcome]:
    """The outcomes a line names: absent and untouched targets, and layer
    classes made visible as planned, are left out."""
    from .targets import Target  # loaded once the decision acts

    return [
        o
        for o in outcomes
        if o.state not in ("absent", "untouched")
        and (isinstance(o.target, Target) or o.state != "patched")
    ]


def target_part(
    outcomes: Iterable[Outcome], pending: Iterable[str] = (), probed: bool = True
) -> str:
    """What the line says about the targets (``status --no-targets`` looks at
    none: it says so rather than claim there are none)."""
    if not probed:
        return "targets not probed (--no-targets)"
    parts = [describe(o) for o in named(outcomes)]
    waiting = sorted(name.rsplit(".", 1)[-1] for name in pending)
    if waiting:
        parts.append(f"checked on import: {', '.join(waiting)}")
    return ", ".join(parts) if parts else "no TRT-LLM monolithic target in this vLLM"


def describe(outcome: Outcome) -> str:
    """``TrtLlmFp8ExpertsMonolithic +Renormalize +RenormalizeNaive``,
    ``TrtLlmBf16ExpertsMonolithic native``, ``X unrecognised (left alone: ...)``."""
    if outcome.state == "patched":
        return f"{outcome.target.name} {outcome.detail}"
    if outcome.detail:
        return f"{outcome.target.name} {outcome.state} ({outcome.detail})"
    return f"{outcome.target.name} {outcome.state}"


def decision_line(
    version: str,
    decision: Decision,
    outcomes: Iterable[Outcome] = (),
    pending: Iterable[str] = (),
    probed: bool = True,
) -> str:
    """The one INFO line each process logs, e.g. ``moe_routing 0.1.0: enable
    (flashinfer-python 0.6.7 >= 0.6.7; GPU 0-7 sm_100) - TrtLlmFp8ExpertsMonolithic
    +Renormalize +RenormalizeNaive``."""
    outcomes = list(outcomes)
    head = f"{PLUGIN} {version}: {decision.action} ({decision.reason})"
    tail = target_part(outcomes, pending, probed) if decision.acts else "vLLM unchanged"
    return f"{head} - {tail}"


def import_line(outcomes: Iterable[Outcome]) -> str:
    """The short line logged when a target module is imported after the
    decision line."""
    return f"{PLUGIN}: on import: {target_part(outcomes)}"


def chosen_kernel(layer: Any) -> str | None:
    """The experts class (or backend) vLLM chose for a layer it built: the
    quant method's ``experts_cls`` (vLLM 0.16+ for the quantized methods,
    0.20+ for BF16), else its ``*_backend`` enum."""
    method = getattr(layer, "quant_method", None)
    experts = getattr(method, "experts_cls", None)
    if isinstance(experts, type):
        return experts.__name__
    for name, value in sorted(vars(method).items()) if method is not None else ():
        if name.endswith("_backend") and hasattr(value, "name"):
            return str(value.name)
    return None


def kind(verdicts: Sequence[tuple[Target, Verdict]]) -> Any:
    """Layers of one kind: the same values, judged by the same checks (a
    verdict, and vLLM's choice of kernel, follow from the two). Cheap: it is
    computed for every layer vLLM builds."""
    return (
        verdicts[-1][1].layer.key,
        tuple(id(verdict.check) for _, verdict in verdicts),
    )


class LayerReport:
    """One layer built, from the verdicts its routing checks reached."""

    __slots__ = (
        "blind", "chosen", "fixed", "guarded", "layer", "name", "refused_renormalize",
        "warned",
    )  # fmt: skip

    def __init__(
        self,
        verdicts: Sequence[tuple[Target, Verdict]],
        chosen: str | None,
        name: str = "a MoE layer",
    ) -> None:
        self.layer = verdicts[-1][1].layer
        self.name = name
        self.chosen = chosen
        self.guarded: list[KnownBug] = []
        self.fixed: list[KnownBug] = []
        self.warned: list[tuple[KnownBug, Verdict, Target]] = []
        self.blind: set[str] = set()
        refused = any(verdict.refused for _, verdict in verdicts)
        for target, verdict in verdicts:
            self.guarded += [b for b in verdict.guarded if b not in self.guarded]
            self.blind.update(bug.layers.hidden for bug in verdict.blind)
            if refused:
                continue  # the layer left the fused routing: only the guards count
            self.fixed += [b for b in verdict.fixed if b not in self.fixed]
            for bug in verdict.warned:
                if all(bug is not seen for seen, _, _ in self.warned):
                    self.warned.append((bug, verdict, target))
        self.refused_renormalize = refused and not self.guarded

    def line(self) -> str:
        """``moe_routing: model.layers.3.mlp.experts and later layers like it:
        DeepSeekV3, 256 experts, top_k 8, n_group 1, bias, scale 1, fp8-block ->
        TrtLlmFp8ExpertsModular: flashinfer#3875 guarded``."""
        done = self._refusals()
        done += [f"{b.id} fixed" for b in self.fixed]
        done += [f"{b.id} warned" for b, _, _ in self.warned]
        kernel = f" -> {self.chosen}" if self.chosen else ""
        what = ", ".join(done) if done else "no known bug hits it"
        return (
            f"{PLUGIN}: {self.name} and later layers like it: "
            f"{self.layer.describe()}{kernel}: {what}{self._blind_note()}"
        )

    def unbuilt_line(self, error: str) -> str:
        """The WARNING where vLLM found no kernel for a layer whose fused
        kernel the plugin refused, and raised, e.g. ``moe_routing:
        model.layers.3.mlp.experts: DeepSeekV3, ..., bf16: flashinfer#3875
        guarded (the fused kernel refused); vLLM then raised
        NotImplementedError: No Unquantized MoE backend supports the
        deployment configuration.``: vLLM's automatic selection, and the BF16
        selection of vLLM 0.16 - 0.19, do not name the refusal."""
        return (
            f"{PLUGIN}: {self.name}: {self.layer.describe()}: "
            f"{', '.join(self._refusals())}{self._blind_note()} (the fused kernel "
            f"refused); vLLM then raised {error}"
        )

    def _refusals(self) -> list[str]:
        """What kept the layer off the fused routing."""
        done = [f"{b.id} guarded" for b in self.guarded]
        if self.refused_renormalize:
            done.append(f"Renormalize refused by {RENORMALIZE_VAR}=disable")
        return done

    def _blind_note(self) -> str:
        if not self.blind:
            return ""
        hidden = ", ".join(sorted(self.blind))
        return f" (its {hidden} not visible: judged as for every layer)"


def overridden_warning(bug: KnownBug, decision: Decision) -> str:
    """The WARNING where ``VLLM_MOE_ROUTING_RENORMALIZE=enable`` lets the fused
    kernels route layers an in-range known bug hits."""
    return (
        f"{PLUGIN}: {RENORMALIZE_VAR}=enable lets the fused kernels route "
        f"{bug.layers} although FlashInfer {decision.flashinfer or '(unknown)'} "
        f"{bug.wrong} for them ({bug.id}; fixed in {bug.fixed_in_text}); set it "
        "to auto unless this FlashInfer build has the fix"
    )


def layer_warning(
    bug: KnownBug,
    verdict: Verdict,
    target: Target,
    name: str = "a MoE layer",
    bug_actions: Sequence[tuple[str, str]] = (),
) -> str:
    """The WARNING for a warned known bug that hits a layer actually built,
    with the value that turns it into a guard (kept with the other entries
    already set), or the one that silences it."""
    if bug.defect is not None:
        what = f"FlashInfer's {'/'.join(bug.kernels)} {bug.wrong}"
    else:
        version = verdict.check.flashinfer or "(version unknown)"
        what = f"FlashInfer {version} {bug.wrong} (fixed in {bug.fixed_in_text})"
    kept = [(i, a) for i, a in bug_actions if i != bug.id]
    if bug.guardable:
        value = ",".join(f"{i}={a}" for i, a in [*kept, (bug.id, "guard")])
        advice = f"to keep such layers off the fused routing: {KNOWN_BUGS_VAR}={value}"
    else:
        value = ",".join(f"{i}={a}" for i, a in [*kept, (bug.id, "ignore")])
        advice = (
            "not a routing bug, so no layer can be kept off it; a fixed FlashInfer "
            f"avoids it; to silence this: {KNOWN_BUGS_VAR}={value}"
        )
    return (
        f"{PLUGIN}: {bug.id} hits {name} "
        f"({verdict.facts()}) on {target.name}: {what}; vLLM left unchanged for "
        f"it; {advice}; `{STATUS_COMMAND}` lists every known bug"
    )
