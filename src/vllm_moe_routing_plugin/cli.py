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
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from packaging.specifiers import SpecifierSet
from packaging.version import Version

from . import facts as facts_
from . import policy, report, settings, targets
from .plugin import imports_flashinfer, plugin_version, vllm_has_module
from .report import describe_error

if TYPE_CHECKING:
    from .kernel_check import PairReport

ENTRY_POINT_GROUP = "vllm.general_plugins"


EntryPoints = Callable[..., Any]


def entry_point(
    environ: Mapping[str, str],
    entry_points: EntryPoints = importlib.metadata.entry_points,
) -> dict[str, Any]:
    """Whether vLLM's loader would find the plugin, and whether VLLM_PLUGINS
    lets it load (vLLM splits that list on commas and strips nothing)."""
    found = [
        ep for ep in entry_points(group=ENTRY_POINT_GROUP) if ep.name == report.PLUGIN
    ]
    raw = environ.get("VLLM_PLUGINS")
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


def _what_if_versions(
    flashinfer: str | None, installed_version: facts_.VersionOf
) -> facts_.VersionOf:
    if flashinfer is None:
        return installed_version

    def version_of(distribution: str) -> str | None:
        installed = installed_version(distribution)
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
        return [], f"vLLM is not importable here ({describe_error(exc)})"
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
        if target.module not in sys.modules and imports_flashinfer(target.module):
            row.update(
                state="not-probed",
                detail="importing it imports FlashInfer; patched when vLLM imports it",
            )
            continue
        try:
            module = importlib.import_module(target.module)
        except Exception as exc:
            row.update(state="failed", detail=f"import failed: {describe_error(exc)}")
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
    installed_version: facts_.VersionOf = facts_.installed_version,
    entry_points: EntryPoints = importlib.metadata.entry_points,
    requires_of: Callable[[str], list[str] | None] = importlib.metadata.requires,
) -> dict[str, Any]:
    """Everything the report shows, as plain data (the ``--json`` object).
    The keyword arguments are the package-metadata edges, for tests."""
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
        version_of=_what_if_versions(args.flashinfer, installed_version),
    )
    decision = policy.decide(found, config)
    rows, vllm_problem = _targets(decision) if not args.no_targets else ([], None)
    plugin = entry_point(environ, entry_points)
    problems = [p for p in (plugin["problem"],) if p]
    problems += list(config.problems)
    problems += list(policy.companion_notes(found))
    pending = [_target(r).module for r in rows if r["state"] == "not-probed"]
    return {
        "answer": answer(decision),
        "action": decision.action,
        "reason": decision.reason,
        "line": report.decision_line(
            plugin_version(),
            decision,
            [
                targets.Outcome(_target(r), r["state"], r["detail"])
                for r in rows
                if r["state"] != "not-probed"
            ],
            pending,
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
        "package_notes": pin_notes(found.versions, facts_.vllm_pins(requires_of)),
        "gpus": [
            {
                "index": g.ordinal,
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
        add(f"  {row['name']:<{width}}  {row['state']:<10} {row['detail']}".rstrip())
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
    for note in status["package_notes"]:
        add(f"  note: {note}")
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


QUICK_TOKENS = (1, 17, 257)


def verify(args: argparse.Namespace, environ: Mapping[str, str]) -> dict[str, Any]:
    """Run what this machine can run: the top-k probe (any CUDA GPU of compute
    capability >= 9.0 with nvcc), the kernel check (SM100/SM103 only)."""
    from . import cases as cases_
    from . import kernel_check, probe

    tokens = QUICK_TOKENS if args.quick else cases_.TOKENS
    selected = cases_.adversarial(tokens=tokens)
    gpus = facts_.read_gpus_nvml(environ).gpus
    result: dict[str, Any] = {
        "gpus": [f"{g.name} sm_{g.capability[0]}{g.capability[1]}" for g in gpus],
        "cases": len(selected),
    }
    probe_report: dict[str, Any] = {"ran": False}
    try:
        if not gpus or max(g.capability for g in gpus) < (9, 0):
            raise probe.NotRunnable(
                "needs a CUDA GPU of compute capability 9.0 or newer"
            )
        header = probe.find_header(args.flashinfer_include, args.flashinfer_version)
        probe_report.update(flashinfer=header.version, header=str(header.path))
        rows = [r.row() for r in probe.run(header, selected)]
        probe_report.update(
            ran=True,
            runs=rows,
            failed_runs=sum(not r["passed"] for r in rows),
            wrong_tokens=sum(r["wrong_experts"] + r["invalid_ids"] for r in rows),
            tokens=sum(r["tokens"] for r in rows),
        )
    except probe.NotRunnable as exc:
        probe_report["not_run"] = str(exc)
    result["probe"] = probe_report
    reason = kernel_check.unavailable(gpus)
    if reason is not None:
        kernel_report: dict[str, Any] = {"ran": False, "not_run": reason}
    else:
        version = policy.parse_version(facts_.installed_version(facts_.FLASHINFER))
        release = version.release if version else (0, 0, 0)
        kernel_report = summarise_kernel_check(kernel_check.check(selected, release))
    result["kernel"] = kernel_report
    result["verdict"] = verdict(probe_report, kernel_report)
    return result


def summarise_kernel_check(
    reports: Sequence[PairReport],
) -> dict[str, Any]:
    """The kernel check's JSON: per pair, ran or why not; a row per run."""
    ran = [r for r in reports if r.not_run is None]
    rows = [run.row() for r in ran for run in r.runs]
    summary: dict[str, Any] = {
        "ran": bool(ran),
        "pairs": {
            r.pair: (
                {"ran": False, "not_run": r.not_run}
                if r.not_run is not None
                else {
                    "ran": True,
                    "runs": len(r.runs),
                    "failed_runs": sum(not run.passed for run in r.runs),
                }
            )
            for r in reports
        },
        "runs": rows,
        "failed_runs": sum(not row["passed"] for row in rows),
    }
    if not ran:
        summary["not_run"] = "; ".join(f"{r.pair}: {r.not_run}" for r in reports)
    return summary


def verdict(*reports: Mapping[str, Any]) -> str:
    ran = [r for r in reports if r["ran"]]
    if not ran:
        return "nothing could run on this machine"
    if any(r["failed_runs"] for r in ran):
        return "MISMATCH: in-kernel Renormalize routing is not trustworthy here"
    return "pass"


def verify_exit(result: Mapping[str, Any]) -> int:
    """0 pass, 1 mismatch, 2 nothing could run on this machine."""
    if result["verdict"] == "pass":
        return 0
    return 1 if result["verdict"].startswith("MISMATCH") else 2


def render_verify(result: Mapping[str, Any]) -> str:
    out = [
        f"verdict: {result['verdict']}",
        f"gpus: {', '.join(result['gpus']) or 'none'}",
    ]
    probe_report = result["probe"]
    if not probe_report["ran"]:
        out.append(f"top-k probe: not run: {probe_report['not_run']}")
    else:
        out.append(
            f"top-k probe: FlashInfer {probe_report['flashinfer']}: "
            f"{probe_report['failed_runs']} of {len(probe_report['runs'])} "
            "runs failed, "
            f"{probe_report['wrong_tokens']} of {probe_report['tokens']} tokens routed "
            "to wrong experts"
        )
        out.append(
            f"  {'case':<28} {'keys':<13} {'tokens':>6} {'wrong':>6} {'invalid':>7} "
            f"{'ties':>5}  result"
        )
        for row in probe_report["runs"]:
            out.append(
                f"  {row['case']:<28} {row['keys']:<13} {row['tokens']:>6} "
                f"{row['wrong_experts']:>6} {row['invalid_ids']:>7} "
                f"{row['near_ties']:>5}  " + ("pass" if row["passed"] else "FAIL")
            )
    kernel_report = result["kernel"]
    if not kernel_report["ran"]:
        out.append(f"kernel check: not run: {kernel_report['not_run']}")
    else:
        out.append(
            f"kernel check: {kernel_report['failed_runs']} of "
            f"{len(kernel_report['runs'])} runs failed"
        )
        for name, pair in kernel_report["pairs"].items():
            out.append(
                f"  {name}: {pair['runs']} runs, {pair['failed_runs']} failed"
                if pair["ran"]
                else f"  {name}: not run: {pair['not_run']}"
            )
        out.append(
            f"  {'pair':<15} {'case':<28} {'min cosine':>10} {'wrong':>5}  result"
        )
        for row in kernel_report["runs"]:
            wrong = "-" if row["wrong_experts"] is None else row["wrong_experts"]
            cosine = "-" if row["min_cosine"] is None else f"{row['min_cosine']:.4f}"
            result_ = "pass" if row["passed"] else "FAIL"
            if row["error"]:
                result_ += f" ({row['error']})"
            out.append(
                f"  {row['pair']:<15} {row['case']:<28} {cosine:>10} "
                f"{wrong:>5}  {result_}"
            )
    return "\n".join(out)


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
    check = commands.add_parser(
        "verify", help="check FlashInfer's in-kernel routing on this machine's GPU"
    )
    check.add_argument("--json", action="store_true", help="one JSON object")
    check.add_argument(
        "--flashinfer-include",
        metavar="PATH",
        help="a FlashInfer source, wheel or include tree instead of the installed one",
    )
    check.add_argument(
        "--flashinfer-version", metavar="VERSION", help="the version of that tree"
    )
    check.add_argument(
        "--quick", action="store_true", help=f"token counts {QUICK_TOKENS} only"
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
    if args.command == "verify":
        result = verify(args, os.environ)
        print(json.dumps(result, indent=2) if args.json else render_verify(result))
        return verify_exit(result)
    with _stdout_to_stderr():
        status = collect(args, os.environ)
    if args.json:
        print(json.dumps(status, indent=2))
    else:
        print(render(status))
    return exit_status(status)


def exit_status(status: Mapping[str, Any]) -> int:
    """0: the plugin will load and act as reported; 1: something stops it from
    working as intended (see ``problems``). Usage errors exit 2 (argparse)."""
    return 1 if status["problems"] else 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
