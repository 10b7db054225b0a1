# SPDX-License-Identifier: Apache-2.0
"""``vllm-moe-routing status``: what the plugin sees, decides and changes here.

It never initialises CUDA and never imports FlashInfer: versions come from
package metadata, GPUs from NVML, and the routing checks are vLLM's own,
called in this process (importing the target modules of vLLM, which import
neither) and put back afterwards.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import json
import os
import sys
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from . import facts as facts_
from . import policy, report, settings, targets
from .plugin import plugin_version, vllm_has_module

ENTRY_POINT_GROUP = "vllm.general_plugins"


def entry_point() -> dict[str, Any]:
    """Whether vLLM's loader would find the plugin, and whether VLLM_PLUGINS
    lets it load (vLLM splits that list on commas and strips nothing)."""
    found = [
        ep
        for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)
        if ep.name == report.PLUGIN
    ]
    raw = os.environ.get("VLLM_PLUGINS")
    allowed = True
    problem = None
    if raw is not None:
        names = raw.split(",")
        allowed = report.PLUGIN in names
        if not allowed:
            spaced = [n for n in names if n.strip() == report.PLUGIN]
            problem = (
                f"VLLM_PLUGINS lists {spaced[0]!r} with spaces; "
                "vLLM does not strip them"
                if spaced
                else f"VLLM_PLUGINS={raw!r} does not list {report.PLUGIN}"
            )
    if not found:
        problem = (
            f"no entry point {report.PLUGIN!r} in group {ENTRY_POINT_GROUP}: "
            "vLLM will not load the plugin"
        )
    return {
        "name": report.PLUGIN,
        "value": found[0].value if found else None,
        "discovered": bool(found),
        "vllm_plugins": raw,
        "allowed": allowed,
        "problem": problem,
    }


def _what_if_versions(flashinfer: str | None) -> facts_.VersionOf:
    if flashinfer is None:
        return facts_.installed_version

    def version_of(distribution: str) -> str | None:
        installed = facts_.installed_version(distribution)
        if distribution == facts_.FLASHINFER:
            return flashinfer
        if distribution == facts_.FLASHINFER_CUBIN and installed is not None:
            return flashinfer  # upgraded together with flashinfer-python
        return installed

    return version_of


def _targets(decision: policy.Decision) -> tuple[list[dict[str, Any]], str | None]:
    """Apply the decision to every target of the installed vLLM, record before
    and after, and put everything back."""
    try:
        import vllm  # noqa: F401
    except Exception as exc:
        return [], f"vLLM is not importable here ({targets._describe(exc)})"
    rows: list[dict[str, Any]] = []
    for target in targets.TARGETS:
        row: dict[str, Any] = {
            "target": target.path,
            "name": target.name,
            "releases": target.releases,
            "state": "absent",
            "detail": "",
            "before": None,
            "after": None,
        }
        rows.append(row)
        if not vllm_has_module(target.module):
            continue
        try:
            module = importlib.import_module(target.module)
        except Exception as exc:
            row.update(
                state="failed", detail=f"import failed: {targets._describe(exc)}"
            )
            continue
        outcome = targets.apply(target, module, decision)
        try:
            after = targets.accepted_after(outcome) if outcome.before else None
            if (
                after is not None
                and outcome.patch is not None
                and outcome.patch.attr == "is_supported_config"
            ):
                # The routing check is unchanged; the guard refuses the methods
                # for the layers inside the bug's envelope.
                after = {
                    scheme: tuple(m for m in names if m not in policy.METHODS)
                    for scheme, names in after.items()
                }
        finally:
            if outcome.patch is not None:
                outcome.patch.undo()
        row.update(
            state=outcome.state,
            detail=outcome.detail,
            before=outcome.before or None,
            after=after if outcome.before else None,
        )
    return rows, None


def answer(decision: policy.Decision) -> str:
    """The first line of the report: will the fused kernel route, and is it safe."""
    methods = "/".join(policy.METHODS)
    if decision.action == "enable":
        return (
            f"{methods} MoE layers may run on the fused TRT-LLM kernels: "
            "this FlashInfer routes them correctly."
        )
    if decision.action == "guard":
        assert decision.guard is not None
        if decision.guard.everywhere:
            return f"{methods} MoE layers are kept off the fused TRT-LLM kernels."
        return (
            f"{methods} MoE layers where {decision.guard.scope} are kept off the "
            "fused TRT-LLM kernels; other layers keep them."
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


def collect(args: argparse.Namespace, environ: Mapping[str, str]) -> dict[str, Any]:
    config = settings.read(environ)
    assumed: list[str] = []
    capabilities = config.capabilities
    source = settings.DEVICE_CAPABILITY
    if args.capability is not None:
        capabilities, source = args.capability, "assumed (--capability)"
        assumed.append("gpus")
    if args.flashinfer is not None:
        assumed.append(facts_.FLASHINFER)
    found = facts_.gather(
        environ,
        capabilities=capabilities,
        capability_source=source,
        version_of=_what_if_versions(args.flashinfer),
    )
    decision = policy.decide(found, config)
    rows, vllm_problem = _targets(decision) if not args.no_targets else ([], None)
    plugin = entry_point()
    problems = [p for p in (plugin["problem"],) if p]
    problems += list(config.problems)
    problems += list(policy.companion_notes(found))
    return {
        "answer": answer(decision),
        "action": decision.action,
        "reason": decision.reason,
        "line": report.decision_line(
            plugin_version(),
            decision,
            [targets.Outcome(_target(r), r["state"], r["detail"]) for r in rows],
        ),
        "plugin": {**plugin, "version": plugin_version()},
        "settings": [
            {
                "name": r.name,
                "raw": r.raw,
                "value": list(r.value) if isinstance(r.value, tuple) else r.value,
                "valid": r.valid,
                "problem": r.problem,
            }
            for r in config.readings
        ],
        "packages": dict(found.versions),
        "gpus": [
            {
                "index": g.index,
                "name": g.name,
                "capability": f"{g.capability[0]}.{g.capability[1]}",
                "source": g.source,
            }
            for g in found.gpus
        ],
        "gpu_error": found.gpu_error,
        "assumed": assumed,
        "targets": rows,
        "vllm_problem": vllm_problem,
        "problems": problems,
    }


def _target(row: Mapping[str, Any]) -> targets.Target:
    return next(t for t in targets.TARGETS if t.path == row["target"])


def _methods(table: Mapping[str, Sequence[str]] | None) -> list[str]:
    if not table:
        return []
    return [f"{scheme}: {' '.join(names) or '-'}" for scheme, names in table.items()]


def render(status: Mapping[str, Any]) -> str:
    out: list[str] = []
    add = out.append
    add(status["answer"])
    add(f"decision  {status['action']}: {status['reason']}")
    if status["assumed"]:
        add(f"assumed   {', '.join(status['assumed'])} (what-if flags)")
    for problem in status["problems"]:
        add(f"problem   {problem}")
    add("")
    add("targets")
    if status["vllm_problem"]:
        add(f"  {status['vllm_problem']}")
    present = [r for r in status["targets"] if r["state"] != "absent"]
    absent = [r["name"] for r in status["targets"] if r["state"] == "absent"]
    width = max((len(r["name"]) for r in present), default=0)
    for row in present:
        add(f"  {row['name']:<{width}}  {row['state']:<9} {row['detail']}".rstrip())
        pairs = zip(_methods(row["before"]), _methods(row["after"]), strict=True)
        for before, after in pairs:
            add(f"  {'':<{width}}    before {before}")
            add(f"  {'':<{width}}    after  {after}")
    if absent:
        add(f"  absent in this vLLM: {', '.join(absent)}")
    add("")
    plugin = status["plugin"]
    add("plugin")
    add(f"  version       {plugin['version']}")
    discovered = "discovered" if plugin["discovered"] else "NOT discovered"
    add(f"  entry point   {plugin['name']} = {plugin['value']} ({discovered})")
    vp = plugin["vllm_plugins"]
    allowed = "allows it" if plugin["allowed"] else "EXCLUDES it"
    listed = "unset (all plugins load)" if vp is None else f"{vp!r} {allowed}"
    add(f"  VLLM_PLUGINS  {listed}")
    add("settings")
    name_width = max(len(s["name"]) for s in status["settings"])
    for s in status["settings"]:
        raw = "unset" if s["raw"] is None else repr(s["raw"])
        mark = "" if s["valid"] else "  INVALID, default used"
        add(f"  {s['name']:<{name_width}}  {raw} -> {s['value']}{mark}")
    add("packages")
    for name, version in status["packages"].items():
        add(f"  {name:<21} {version or 'not installed'}")
    add("gpus")
    if not status["gpus"]:
        add(f"  none ({status['gpu_error']})")
    for gpu in status["gpus"]:
        sm = "sm_" + gpu["capability"].replace(".", "")
        add(f"  {gpu['index']}  {gpu['name']}  {sm}  {gpu['source']}")
    add("")
    add(f"log line: {status['line']}")
    return "\n".join(out)


def _capabilities(text: str) -> tuple[settings.Capability, ...]:
    try:
        return settings.parse_capabilities(text)
    except settings.InvalidValue as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def _version(text: str) -> str:
    if policy.parse_version(text) is None:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comparable version")
    return text


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="vllm-moe-routing",
        description="Align vLLM's TRT-LLM MoE routing support with FlashInfer.",
    )
    commands = top.add_subparsers(dest="command")
    status = commands.add_parser(
        "status", help="what the plugin sees, decides and changes here (default)"
    )
    for p in (top, status):
        p.add_argument("--json", action="store_true", help="one JSON object")
        p.add_argument(
            "--capability",
            type=_capabilities,
            metavar="10.0[,10.0...]",
            help="assume GPUs of these compute capabilities",
        )
        p.add_argument(
            "--flashinfer",
            type=_version,
            metavar="VERSION",
            help="assume this flashinfer-python (and -cubin) version",
        )
        p.add_argument(
            "--no-targets", action="store_true", help="do not import vLLM's targets"
        )
    return top


@contextmanager
def _stdout_to_stderr() -> Iterator[None]:
    """Send what vLLM prints while its modules load (its log handler writes to
    stdout) to stderr, so stdout carries the report alone (``--json``)."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        os.dup2(2, 1)
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    with _stdout_to_stderr():
        status = collect(args, os.environ)
    if args.json:
        print(json.dumps(status, indent=2))
    else:
        print(render(status))
    return 1 if status["problems"] else 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
