# SPDX-License-Identifier: Apache-2.0
"""``vllm-moe-routing status``: what the plugin sees, decides and changes here.

``collect`` builds one typed report (``StatusReport``); ``render`` writes it as
text and ``StatusReport.to_json`` as the ``--json`` object. It never
initialises CUDA and never imports FlashInfer: versions come from package
metadata, GPUs from NVML, and the routing checks are vLLM's own, called in
this process (importing the target modules of vLLM, which import neither)
through ``patching.preview``, which puts everything back.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import importlib.metadata
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from packaging.specifiers import SpecifierSet
from packaging.version import Version

from .. import envs, facts, log_line, patching, policy, targets
from ..about import PLUGIN, __version__
from ..bugs import KNOWN_BUGS, RENORMALIZE_METHODS
from ..decision import Decision, Finding
from ..errors import describe_error
from ..vllm_source import imports_flashinfer, vllm_has_module
from .advice import Recommendation, never_shipped_note, recommend

ENTRY_POINT_GROUP = "vllm.general_plugins"

EntryPoints = Callable[..., Any]
MethodTable = dict[str, tuple[str, ...]]


@dataclass
class PluginEntry:
    """Whether vLLM's loader finds the plugin and may load it."""

    name: str
    value: str | None  # the entry point's object reference
    discovered: bool
    vllm_plugins: str | None  # VLLM_PLUGINS as set, or None
    allowed: bool
    problem: str | None
    version: str = __version__


@dataclass
class SettingRow:
    name: str
    raw: str | None
    value: Any
    valid: bool
    problem: str | None
    shown: str = ""  # the value used, as the user would write it: 10.0,10.3
    default: bool = True  # the variable's default is used (unset, or unreadable)


@dataclass
class GpuRow:
    index: int
    name: str
    capability: str  # "10.0"
    source: str


@dataclass
class TargetRow:
    """One target: what the decision does to it, and the routing methods its
    check accepts per quant scheme before and after."""

    target: str  # dotted path of the check
    name: str
    releases: str
    state: str
    detail: str = ""
    before: MethodTable | None = None
    after: MethodTable | None = None
    layer_check: list[str] = dataclasses.field(default_factory=list)


@dataclass
class KnownBugRow:
    """One catalogue entry against this install. ``status`` has no layers at
    hand: whether an entry hits a layer is decided when vLLM builds it."""

    id: str
    title: str
    layers: str  # the layers it hits, in words
    affected: str  # its install range, in words
    in_range: bool  # this FlashInfer (on an SM100/SM103 GPU) has it
    applies_to: list[str]  # this vLLM's targets where its layers are judged
    action: str  # what the plugin does for a layer it hits: guard, fix, warn, ignore
    hidden_action: str  # the same where the layer's deciding values are hidden
    action_note: str | None  # why ``action`` is not the one asked for, if it is not
    default_action: str  # the entry's own action (VLLM_MOE_ROUTING_KNOWN_BUGS)
    fixed_in: str | None  # the first FlashInfer without it; None: a vLLM bug
    references: list[str]
    why: str  # why the default action


@dataclass
class StatusReport:
    answer: str
    action: str
    reason: str
    line: str  # the log line this process would write
    plugin: PluginEntry
    settings: list[SettingRow]
    packages: dict[str, str | None]  # as installed
    package_notes: list[str]
    gpus: list[GpuRow]
    gpu_error: str | None
    assumed: list[str]  # facts given by what-if flags
    targets: list[TargetRow]
    vllm_problem: str | None
    problems: list[str]
    advice: Recommendation | None = None  # what to install, where known
    #: versions a what-if flag assumed instead of the installed ones
    assumed_versions: dict[str, str | None] = dataclasses.field(default_factory=dict)
    known_bugs: list[KnownBugRow] = dataclasses.field(default_factory=list)
    #: The capability ``known_bugs`` assumes where the plugin acts on none
    #: here (None: this process's own decision)
    known_bugs_gpu: str | None = None
    targets_probed: bool = True  # False with --no-targets
    #: What these packages have not been proven on (a vLLM or FlashInfer newer
    #: than the newest proven), whatever the GPU: the decision's reason says it
    #: only where the plugin acts.
    unproven: list[str] = dataclasses.field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def entry_point(
    environ: Mapping[str, str],
    entry_points: EntryPoints = importlib.metadata.entry_points,
) -> PluginEntry:
    """Whether vLLM's loader would find the plugin, and whether VLLM_PLUGINS
    lets it load (vLLM splits that list on commas and strips nothing)."""
    found = [ep for ep in entry_points(group=ENTRY_POINT_GROUP) if ep.name == PLUGIN]
    raw = environ.get("VLLM_PLUGINS")
    allowed = True
    problem = None
    if raw is not None:
        names = raw.split(",")
        allowed = PLUGIN in names
        if not allowed:
            spaced = [n for n in names if n.strip() == PLUGIN]
            problem = (
                f"VLLM_PLUGINS lists {spaced[0]!r} with spaces; "
                "vLLM does not strip them"
                if spaced
                else f"VLLM_PLUGINS={raw!r} does not list {PLUGIN}, so vLLM will "
                f"not load the plugin; add {PLUGIN} to it (comma-separated, no spaces) "
                "or unset it"
            )
    if not found:
        problem = (
            f"no entry point {PLUGIN!r} in group {ENTRY_POINT_GROUP}: "
            "vLLM will not load the plugin"
        )
    return PluginEntry(
        name=PLUGIN,
        value=found[0].value if found else None,
        discovered=bool(found),
        vllm_plugins=raw,
        allowed=allowed,
        problem=problem,
    )


def _what_if_versions(
    flashinfer: str | None, installed_version: facts.VersionOf
) -> facts.VersionOf:
    if flashinfer is None:
        return installed_version

    def version_of(distribution: str) -> str | None:
        installed = installed_version(distribution)
        if distribution == facts.FLASHINFER:
            return flashinfer
        if distribution == facts.FLASHINFER_CUBIN and installed is not None:
            return flashinfer  # upgraded together with flashinfer-python
        return installed

    return version_of


def preview_targets(
    decision: Decision,
) -> tuple[list[TargetRow], list[patching.Outcome], list[str], str | None]:
    """Every target of the installed vLLM: its row, the outcomes the log line
    names, the modules left for vLLM to import, and why vLLM could not be
    looked at, if it could not. vLLM is left as it was."""
    try:
        import vllm  # noqa: F401
    except Exception as exc:
        return [], [], [], f"vLLM is not importable here ({describe_error(exc)})"
    rows: list[TargetRow] = []
    outcomes: list[patching.Outcome] = []
    pending: list[str] = []
    for target in targets.TARGETS:
        row = TargetRow(target.path, target.name, target.releases, "absent")
        rows.append(row)
        if not vllm_has_module(target.module):
            continue  # absent; the log line leaves absent targets out
        if target.module not in sys.modules and imports_flashinfer(target.module):
            row.state = "not-probed"
            row.detail = "importing it imports FlashInfer; patched when vLLM imports it"
            pending.append(target.module)
            continue
        try:
            module = importlib.import_module(target.module)
        except Exception as exc:
            outcome = patching.Outcome(
                target, "failed", f"import failed: {describe_error(exc)}"
            )
            row.state, row.detail = outcome.state, outcome.detail
            outcomes.append(outcome)
            continue
        outcome, after = patching.preview(target, module, decision)
        outcomes.append(outcome)
        row.state, row.detail = outcome.state, outcome.detail
        row.before = outcome.before or None
        row.after = after if outcome.before else None
        row.layer_check = [
            f"{plan.bug.id} {plan.done}: {plan.bug.layers}" for plan in outcome.planned
        ]
        if outcome.check is not None and outcome.check.refuses_renormalize:
            row.layer_check.insert(
                0, f"{envs.RENORMALIZE_VAR}=disable: every Renormalize layer refused"
            )
    return rows, outcomes, pending, None


def answer(decision: Decision) -> str:
    """The first line of the report: will the fused kernel route, and is it safe."""
    methods = "/".join(RENORMALIZE_METHODS)
    if decision.action == "enable" and decision.overridden:
        bugs = ", ".join(bug.id for bug in decision.overridden)
        return (
            f"{methods} MoE layers may run on the fused TRT-LLM kernels because "
            f"{envs.RENORMALIZE_VAR}=enable forces it, although this FlashInfer "
            f"has {bugs}: {decision.overridden[0].layers} may be routed wrongly."
        )
    if decision.action == "enable":
        return (
            f"{methods} MoE layers may run on the fused TRT-LLM kernels: "
            "this FlashInfer routes them correctly."
        )
    if decision.action == "guard":
        if decision.refuses_renormalize:
            return f"{methods} MoE layers are kept off the fused TRT-LLM kernels."
        guarded = [
            str(f.bug.layers)
            for f in decision.acting
            if f.action == "guard"
            and set(f.bug.layers.methods) & set(RENORMALIZE_METHODS)
        ]
        return (
            f"{'; '.join(guarded)} are kept off the fused TRT-LLM kernels; "
            "other layers keep them."
        )
    if decision.action == "not-applicable":
        return (
            "vLLM does not use the TRT-LLM MoE kernels here; "
            "the plugin changes nothing."
        )
    if decision.action == "unknown":
        return (
            "FlashInfer's version is unknown: vLLM's own choice stands, "
            "and the plugin cannot vouch for it."
        )
    return "The plugin is disabled: vLLM's own choice stands."


#: The GPU ``status`` assumes for the known bugs where the plugin acts on
#: none here (no GPU, another GPU, disabled): what an SM100 run would meet.
ASSUMED_SM100 = "10.0"


def on_sm100(
    decision: Decision,
    found: facts.Facts,
    environ: Mapping[str, str],
) -> Decision:
    """The decision whose known bugs the report lists: this process's where
    it acts (or cannot tell: ``unknown``), else the one an SM100 GPU would
    get with these packages and settings (the plugin enabled), so that a
    build host sees every entry a Blackwell run would meet, vLLM's own
    defects included, without ``--capability``."""
    if decision.acts or decision.action == "unknown":
        return decision
    enabled = envs.read({k: v for k, v in environ.items() if k != envs.DISABLE_VAR})
    gpus = facts.gpus_from_capabilities([(10, 0)], "assumed")
    return policy.decide(facts.Facts(found.versions, gpus), enabled)


def known_bug_rows(
    decision: Decision,
    outcomes: Sequence[patching.Outcome],
    probed: bool = True,
) -> list[KnownBugRow]:
    """Every catalogue entry: its layers, whether this install is in its
    range, and the targets of this vLLM where its layers are judged. A bug in
    vLLM's code is in range of this vLLM's release, and only where probing
    this vLLM's code finds it (unless the targets were not probed)."""
    rows = []
    none = tuple(Finding(bug, False, bug.action) for bug in KNOWN_BUGS)
    for finding in decision.findings or none:
        bug = finding.bug
        applies_to = [
            o.target.name
            for o in outcomes
            if any(plan.bug is bug for plan in o.planned)
        ]
        in_range = finding.in_range
        if bug.defect is not None and probed and finding.acts:
            # Probed only where acted on: an ignored defect stays in range.
            in_range = in_range and bool(applies_to)
        action, hidden_action, action_note = finding.action, finding.hidden_action, None
        done = {p.done for o in outcomes for p in o.planned if p.bug is bug}
        if action == "fix" and done == {"guarded"}:
            # No backport fits this vLLM's code: its layers are guarded.
            action = hidden_action = "guard"
            action_note = "its fix has no backport for this vLLM's code"
        rows.append(
            KnownBugRow(
                id=bug.id,
                title=bug.title,
                layers=str(bug.layers),
                affected=bug.affected,
                in_range=in_range,
                applies_to=applies_to,
                action=action,
                hidden_action=hidden_action,
                action_note=action_note,
                default_action=bug.action,
                fixed_in=bug.fixed_in_text if bug.fixed_in is not None else None,
                references=list(bug.references),
                why=bug.why,
            )
        )
    return rows


def pin_notes(versions: Mapping[str, str | None], pins: Mapping[str, str]) -> list[str]:
    """FlashInfer wheels installed outside the versions the installed vLLM pins
    (the upgrade vLLM 0.18/0.19 users make for the fast path, or a downgrade)."""
    notes = []
    for distribution, pin in pins.items():
        installed = policy.parse_version(versions.get(distribution))
        if installed is None or not pin:
            continue
        specifier = SpecifierSet(pin)
        if specifier.contains(installed, prereleases=True):
            continue
        pinned = [s.version for s in specifier if s.operator in ("==", "===")]
        if pinned and policy.parse_version(pinned[0]) is not None:
            older = installed < Version(pinned[0])
            relation = "older than" if older else "newer than"
            notes.append(
                f"{distribution} {installed} is {relation} vLLM's pin {pin}"
                + ("" if older else " (installed over it)")
            )
        else:
            notes.append(f"{distribution} {installed} is outside vLLM's pin {pin}")
    return notes


def collect(
    args: argparse.Namespace,
    environ: Mapping[str, str],
    *,
    installed_version: facts.VersionOf = facts.installed_version,
    entry_points: EntryPoints = importlib.metadata.entry_points,
    requires_of: facts.RequiresOf = importlib.metadata.requires,
) -> StatusReport:
    """Everything the report shows. The keyword arguments are the
    package-metadata edges, for tests."""
    settings = envs.read(environ)
    assumed: list[str] = []
    capabilities = settings.capabilities
    source = envs.DEVICE_CAPABILITY_VAR
    if args.capability is not None:
        capabilities, source = args.capability, "assumed (--capability)"
        assumed.append("gpus")
    if args.flashinfer is not None:
        assumed.append(facts.FLASHINFER)
    found = facts.gather(
        environ,
        capabilities=capabilities,
        capability_source=source,
        version_of=_what_if_versions(args.flashinfer, installed_version),
    )
    # What is installed is a fact; what a what-if flag assumes is not, and the
    # report keeps the two apart (pin notes are about what is installed).
    installed = facts.read_versions(facts.DISTRIBUTIONS, installed_version)
    assumed_versions = {
        name: version
        for name, version in found.versions.items()
        if version != installed.get(name)
    }
    decision = policy.decide(found, settings)
    planning = on_sm100(decision, found, environ)
    rows: list[TargetRow] = []
    outcomes: list[patching.Outcome] = []
    planned_outcomes: list[patching.Outcome] = []
    pending: list[str] = []
    vllm_problem = None
    if not args.no_targets:
        rows, outcomes, pending, vllm_problem = preview_targets(decision)
        planned_outcomes = outcomes
        if planning is not decision:
            planned_outcomes = preview_targets(planning)[1]
    plugin = entry_point(environ, entry_points)
    problems = [p for p in (plugin.problem,) if p]
    problems += list(settings.problems)
    problems += list(policy.companion_notes(found))
    honoured, bug_notes = policy.bug_settings(settings)
    problems += list(bug_notes)
    return StatusReport(
        answer=answer(decision),
        action=decision.action,
        reason=decision.reason,
        line=log_line.decision_line(
            __version__, decision, outcomes, pending, probed=not args.no_targets
        ),
        plugin=plugin,
        settings=[_setting_row(r, honoured, bug_notes) for r in settings.readings]
        + [_undefined_row(u) for u in settings.undefined],
        packages=installed,
        assumed_versions=assumed_versions,
        package_notes=[
            *pin_notes(installed, facts.vllm_pins(requires_of)),
            *filter(None, [never_shipped_note(found.versions)]),
        ],
        gpus=[
            GpuRow(
                index=g.ordinal,
                name=g.name,
                capability=f"{g.capability[0]}.{g.capability[1]}",
                source=g.source,
            )
            for g in found.gpus
        ],
        gpu_error=found.gpu_error,
        assumed=assumed,
        targets=rows,
        vllm_problem=vllm_problem,
        problems=problems,
        advice=recommend(decision, installed),
        known_bugs=known_bug_rows(
            planning, planned_outcomes, probed=not args.no_targets
        ),
        known_bugs_gpu=None if planning is decision else ASSUMED_SM100,
        unproven=list(
            policy.unproven_notes(
                policy.parse_version(found.version(facts.VLLM)),
                policy.parse_version(found.version(facts.FLASHINFER)),
            )
        ),
        targets_probed=not args.no_targets,
    )


def _default(name: str) -> Any:
    return next(v.default for v in envs.VARIABLES if v.name == name)


def _methods(table: Mapping[str, Sequence[str]] | None) -> list[str]:
    if not table:
        return []
    return [f"{scheme}: {' '.join(names) or '-'}" for scheme, names in table.items()]


def _setting_row(
    reading: envs.Reading,
    honoured: Mapping[str, str],
    bug_notes: Sequence[str],
) -> SettingRow:
    """One variable as set and as used. A ``VLLM_MOE_ROUTING_KNOWN_BUGS``
    item that parses but cannot be honoured (an unknown id, a guard for a bug
    that is not a routing bug) is left out of the value used, and the row is
    marked, as for an item that does not parse."""
    value, valid, problem = reading.value, reading.valid, reading.problem
    if reading.name == envs.KNOWN_BUGS_VAR and bug_notes:
        value = tuple((i, a) for i, a in reading.value if honoured.get(i) == a)
        valid = False
        problem = "; ".join(filter(None, [problem, *bug_notes]))
    return SettingRow(
        name=reading.name,
        raw=reading.raw,
        value=list(value) if isinstance(value, tuple) else value,
        valid=valid,
        problem=problem,
        shown=envs.show(reading.name, value),
        default=value == _default(reading.name),
    )


def _undefined_row(variable: envs.UndefinedVariable) -> SettingRow:
    """A variable with the plugin's prefix that nothing defines: set, and
    ignored (``value`` None, ``shown`` "ignored")."""
    return SettingRow(
        name=variable.name,
        raw=variable.raw,
        value=None,
        valid=False,
        problem=variable.message,
        shown="ignored",
    )


def render(status: StatusReport) -> str:
    out: list[str] = []
    add = out.append
    add(status.answer)
    add(f"decision  {status.action}: {status.reason}")
    if status.assumed:
        add(f"assumed   {', '.join(status.assumed)} (what-if flags)")
    if status.known_bugs_gpu is not None:  # else the decision's reason says it
        for note in status.unproven:
            add(f"unproven  {note}")
    for problem in status.problems:
        add(f"problem   {problem}")
    if status.advice is not None:
        add(f"advice    {status.advice.command}")
        add(f"          {status.advice.reason}")
    add("")
    if status.known_bugs_gpu is None:
        add("known bugs (each MoE layer is judged when vLLM builds it)")
    else:
        add(
            f"known bugs (the plugin acts on none here: {status.action}; with these "
            f"packages an SM100/SM103 GPU would meet, as --capability "
            f"{status.known_bugs_gpu} shows:)"
        )
    in_range = [b for b in status.known_bugs if b.in_range]
    width = max((len(b.id) for b in in_range), default=0)
    for bug in in_range:
        where = ", ".join(bug.applies_to) or "no target of this vLLM"
        if not status.targets_probed:
            where = "targets not probed (--no-targets)"
        action = bug.action
        if bug.hidden_action != bug.action:
            action += f" ({bug.hidden_action} where the layer's values are hidden)"
        if bug.action_note:
            action += f" ({bug.action_note})"
        add(f"  {bug.id:<{width}}  {action}; in range ({bug.affected}); at {where}")
        add(f"  {'':<{width}}  hits {bug.layers}")
        add(f"  {'':<{width}}  {bug.title}")
    others = [f"{b.id} ({b.affected})" for b in status.known_bugs if not b.in_range]
    if others:
        add(f"  not in range of this install: {', '.join(others)}")
    add("")
    add("targets")
    if not status.targets_probed:
        add("  not probed (--no-targets)")
    if status.vllm_problem:
        add(f"  {status.vllm_problem}")
    present = [r for r in status.targets if r.state != "absent"]
    absent = [r.name for r in status.targets if r.state == "absent"]
    width = max((len(r.name) for r in present), default=0)
    for row in present:
        add(f"  {row.name:<{width}}  {row.state:<10} {row.detail}".rstrip())
        pairs = zip(_methods(row.before), _methods(row.after), strict=True)
        for before, after in pairs:
            add(f"  {'':<{width}}    before {before}")
            add(f"  {'':<{width}}    after  {after}")
        for planned in row.layer_check:
            add(f"  {'':<{width}}    layers {planned}")
    if absent:
        add(f"  absent in this vLLM: {', '.join(absent)}")
    add("")
    plugin = status.plugin
    add("plugin")
    add(f"  version       {plugin.version}")
    discovered = "discovered" if plugin.discovered else "NOT discovered"
    add(f"  entry point   {plugin.name} = {plugin.value} ({discovered})")
    allowed = "allows it" if plugin.allowed else "EXCLUDES it"
    listed = (
        "unset (all plugins load)"
        if plugin.vllm_plugins is None
        else f"{plugin.vllm_plugins!r} {allowed}"
    )
    add(f"  VLLM_PLUGINS  {listed}")
    add("settings")
    name_width = max(len(s.name) for s in status.settings)
    for s in status.settings:
        raw = "unset" if s.raw is None else repr(s.raw)
        mark = ""
        if s.shown == "ignored":
            mark = "  NOT A SETTING (see problem)"
        elif not s.valid:
            used = "default used" if s.default else "used as shown (see problem)"
            mark = f"  INVALID, {used}"
        add(f"  {s.name:<{name_width}}  {raw} -> {s.shown}{mark}")
    add("packages")
    for name, version in status.packages.items():
        line = f"  {name:<21} {version or 'not installed'}"
        if name in status.assumed_versions:
            line += f" (assumed {status.assumed_versions[name]} by --flashinfer)"
        add(line)
    for note in status.package_notes:
        add(f"  note: {note}")
    add("gpus")
    if not status.gpus:
        add(f"  none ({status.gpu_error})")
    for gpu in status.gpus:
        sm = "sm_" + gpu.capability.replace(".", "")
        add(f"  {gpu.index}  {gpu.name}  {sm}  {gpu.source}")
    add("")
    add(f"log line: {status.line}")
    return "\n".join(out)


def exit_status(status: StatusReport) -> int:
    """0: the plugin will load and act as reported; 1: something stops it from
    working as intended (see ``problems``). Usage errors exit 2 (argparse)."""
    return 1 if status.problems else 0
