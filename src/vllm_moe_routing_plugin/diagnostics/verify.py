# SPDX-License-Identifier: Apache-2.0
"""``vllm-moe-routing verify``: is in-kernel Renormalize routing trustworthy on
this machine? Runs what the machine can run: the top-k probe (any CUDA GPU of
compute capability >= 9.0 with nvcc) and the kernel check (SM100/SM103 only).
Exit 0 pass, 1 mismatch, 2 nothing could run here."""

from __future__ import annotations

import argparse
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


def render(result: Mapping[str, Any]) -> str:
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
