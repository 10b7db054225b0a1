# SPDX-License-Identifier: Apache-2.0
"""``vllm-moe-routing verify``: is in-kernel routing trustworthy on this
machine? Runs what the machine can run: the routing-kernel check (FlashInfer's
own routing kernels, built from the installed wheel's sources, on any GPU of
compute capability >= 9.0 with nvcc; ``routing_kernels``), the top-k probe
(the same GPUs) and the kernel check (SM100/SM103 only). A routing-kernel
result that disagrees with the catalogue (``bugs.py``) is a finding, printed
first. Exit 0 pass, 1 mismatch, 2 nothing could run here."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from .. import facts, policy

if TYPE_CHECKING:
    from .kernel_check import PairReport


QUICK_TOKENS = (1, 17, 257)


def verify(args: argparse.Namespace, environ: Mapping[str, str]) -> dict[str, Any]:
    """Run what this machine can run: the top-k probe (any CUDA GPU of compute
    capability >= 9.0 with nvcc), the kernel check (SM100/SM103 only)."""
    from . import cases, kernel_check, topk_probe

    tokens = QUICK_TOKENS if args.quick else cases.TOKENS
    selected = cases.adversarial(tokens=tokens)
    gpus = facts.read_gpus_nvml(environ).gpus
    result: dict[str, Any] = {
        "gpus": [f"{g.name} sm_{g.capability[0]}{g.capability[1]}" for g in gpus],
        "cases": len(selected),
    }
    probe_report: dict[str, Any] = {"ran": False}
    try:
        if getattr(args, "no_topk_probe", False):
            raise topk_probe.NotRunnable("skipped (--no-topk-probe)")
        if not gpus or max(g.capability for g in gpus) < (9, 0):
            raise topk_probe.NotRunnable(
                "needs a CUDA GPU of compute capability 9.0 or newer"
            )
        header = topk_probe.find_header(
            args.flashinfer_include, args.flashinfer_version
        )
        probe_report.update(flashinfer=header.version, header=str(header.path))
        rows = [r.row() for r in topk_probe.run(header, selected)]
        probe_report.update(
            ran=True,
            runs=rows,
            failed_runs=sum(not r["passed"] for r in rows),
            wrong_tokens=sum(r["wrong_experts"] + r["invalid_ids"] for r in rows),
            tokens=sum(r["tokens"] for r in rows),
        )
    except topk_probe.NotRunnable as exc:
        probe_report["not_run"] = str(exc)
    result["probe"] = probe_report
    reason = kernel_check.unavailable(gpus)
    if reason is not None:
        kernel_report: dict[str, Any] = {"ran": False, "not_run": reason}
    else:
        version = policy.parse_version(facts.installed_version(facts.FLASHINFER))
        release = version.release if version else (0, 0, 0)
        kernel_report = summarise_kernel_check(kernel_check.check(selected, release))
    result["kernel"] = kernel_report
    routing_report = routing_check(args, gpus, environ)
    result["routing"] = routing_report
    result["verdict"] = verdict(routing_report, probe_report, kernel_report)
    return result


def gpu_arch(gpus: Sequence[facts.Gpu]) -> str | None:
    """nvcc's arch for the newest GPU here (``sm_90a``), None below 9.0: the
    routing kernels are guarded by ``__CUDA_ARCH__ >= 900``."""
    if not gpus:
        return None
    major, minor = max(g.capability for g in gpus)
    return None if major < 9 else f"sm_{major}{minor}a"


def routing_check(
    args: argparse.Namespace, gpus: Sequence[facts.Gpu], environ: Mapping[str, str]
) -> dict[str, Any]:
    """FlashInfer's own routing kernels on the cases, against the reference
    and the catalogue; ``{"ran": False, "not_run": why}`` where it cannot."""
    from .routing_kernels import build, cases, check

    if getattr(args, "no_routing_kernels", False):
        return {"ran": False, "not_run": "skipped (--no-routing-kernels)"}
    local = gpu_arch(gpus)
    arch = getattr(args, "arch", None) or local
    if arch is None:
        return {
            "ran": False,
            "not_run": "needs a CUDA GPU of compute capability 9.0 or newer",
        }
    import importlib.util

    if importlib.util.find_spec("torch") is None:
        return {"ran": False, "not_run": "needs PyTorch (the reference router)"}
    version = args.flashinfer_version
    if version is None and args.flashinfer_include is None:
        version = facts.installed_version(facts.FLASHINFER)
    try:
        binary = build.binary_path(version, arch, environ) if version else None
        if binary is None or not binary.is_file():
            sources = build.find_sources(args.flashinfer_include, version)
            binary = build.build(
                sources,
                arch,
                environ,
                trtllm_headers=getattr(args, "trtllm_headers", None),
                log=lambda line: print(
                    f"vllm-moe-routing: {line}", file=sys.stderr, flush=True
                ),
            )
    except build.NotBuildable as exc:
        return {"ran": False, "not_run": str(exc)}
    if arch != local:  # built for another machine's GPU (--arch): cached for it
        return {
            "ran": False,
            "not_run": f"built for {arch} ({binary}); no {arch} GPU here to run it",
        }
    kernels = check.load_kernels(binary)
    parsed = policy.parse_version(kernels.version)
    release = parsed.release if parsed else (0, 0, 0)
    selected = cases.quick() if args.quick else cases.CASES
    results = check.run(kernels, selected, release)
    return check.summarise(results, kernels.version, release) | {
        "arch": arch,
        "binary": str(binary),
    }


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
        return "MISMATCH: in-kernel routing is not trustworthy here"
    return "pass"


def verify_exit(result: Mapping[str, Any]) -> int:
    """0 pass, 1 mismatch, 2 nothing could run on this machine."""
    if result["verdict"] == "pass":
        return 0
    return 1 if result["verdict"].startswith("MISMATCH") else 2


def render(result: Mapping[str, Any]) -> str:
    routing = result.get("routing", {"ran": False, "not_run": "not asked"})
    out = [f"FINDING: {finding}" for finding in routing.get("findings", [])]
    out += [
        f"verdict: {result['verdict']}",
        f"gpus: {', '.join(result['gpus']) or 'none'}",
    ]
    out += render_routing(routing)
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


def render_routing(report: Mapping[str, Any]) -> list[str]:
    if not report["ran"]:
        return [f"routing kernels: not run: {report['not_run']}"]
    out = [
        f"routing kernels: FlashInfer {report['flashinfer']} ({report['arch']}): "
        f"{report['failed_runs']} of {len(report['runs'])} cases failed"
    ]
    for entry in report["entries"]:
        agrees = (
            "as the catalogue expects" if entry["agrees"] else "CATALOGUE DISAGREES"
        )
        out.append(
            f"  {entry['bug']:<16} {entry['observed']:<15} "
            f"(affected {entry['affected']}; {entry['failed']} of {entry['ran']} "
            f"cases failed) {agrees}"
        )
    out.append(
        f"  {'case':<50} {'bug':<16} {'wrong':>5} {'inval':>5} {'nan':>5} "
        f"{'zero':>5} {'weight':>6}  result"
    )
    for row in report["runs"]:
        bug = row["bug"] or "control"
        if not row["ran"]:
            out.append(f"  {row['case']:<50} {bug:<16} not run: {row['not_run']}")
            continue
        keys = ("wrong_experts", "invalid_ids", "nan_weights", "zero_weights")
        counts = [row.get(k, "-") for k in (*keys, "weight_errors")]
        result_ = "pass" if row["passed"] else "FAIL"
        if row["error"]:
            result_ += f" ({row['error']})"
        out.append(
            f"  {row['case']:<50} {bug:<16} {counts[0]:>5} {counts[1]:>5} "
            f"{counts[2]:>5} {counts[3]:>5} {counts[4]:>6}  {result_}"
        )
    return out + render_limits(report.get("limits", []))


def render_limits(limits: Sequence[Mapping[str, Any]]) -> list[str]:
    """The sigmoid-limit cases: where FlashInfer's routing sigmoid gives 0 or
    coarse weights, per band of logits (a measured limit of every release,
    not a catalogue entry: it neither passes nor fails the check)."""
    ran = [row for row in limits if row["ran"] and row.get("bands")]
    out = [
        f"  sigmoid limit: {row['case']} not measured: "
        + (row.get("not_run") or row.get("error") or "no weights")
        for row in limits
        if row not in ran
    ]
    if not ran:
        return out
    out.append(
        "  sigmoid limit (measured, not a catalogue entry): the weight of an expert "
        "at logit x beside one at 0, against the exact sigmoid"
    )
    titles = [
        "no groups" if row["groups"] <= 1 else f"{row['groups']} groups" for row in ran
    ]

    def at(value: float | None) -> str:
        return "none" if value is None else f"{value:.2f}"

    for row, title in zip(ran, titles, strict=True):
        out.append(
            f"    {title}: weight 0 up to a logit of {at(row['zero_up_to'])} "
            f"(first non-zero at {at(row['nonzero_from'])}), more than "
            f"{row['coarse_threshold']:.0%} off up to {at(row['coarse_up_to'])}; "
            f"{row['samples']} experts" + ("" if row["passed"] else "; NOT MEASURED")
        )
    out.append(
        "    logits    "
        + "".join(f"  {title:>9}  zero  max err  median" for title in titles)
    )
    for index, band in enumerate(ran[0]["bands"]):
        line = f"    [{band['low']:g},{band['high']:g})".ljust(14)
        for row in ran:
            cell = row["bands"][index]
            line += (
                f"  {cell['samples']:>9}  {cell['zero']:>4}  "
                f"{cell['max_error']:>7.1%}  {cell['median_error']:>6.1%}"
            )
        out.append(line)
    return out
