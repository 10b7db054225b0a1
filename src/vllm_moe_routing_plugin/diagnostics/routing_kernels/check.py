# SPDX-License-Identifier: Apache-2.0
"""Run FlashInfer's own routing kernels on the cases (``cases.py``), compare
what the MoE GEMMs would consume with the reference router per token (expert
ids through the permutation maps, weights from ``mPtrTopKWeights``, NaN), and
hold the result against the catalogue (``bugs.py``): for each entry with
cases, ``reproduced`` or ``not reproduced``, and whether the catalogue's
install range expects it for this FlashInfer. A disagreement is a finding.
"""

from __future__ import annotations

import json
import subprocess
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ... import bugs
from .. import reference
from .cases import RoutingCase

if TYPE_CHECKING:
    import torch

RECORD = (
    4  # int32 GEMM expert, float32 weight, int32 packed expert, float32 packed score
)
HEADER = 5  # int32 tokens, top_k, permuted size, non-exiting CTAs, tile


@dataclass(frozen=True)
class Kernels:
    """A built driver, with the routing methods its release declares."""

    binary: Path
    version: str
    methods: Mapping[str, int]


@dataclass(frozen=True)
class Output:
    """What the kernels produced for one case, as the GEMMs would read it."""

    ids: torch.Tensor  # int64 [T, K]: -1 where the permutation maps lose the slot
    weights: torch.Tensor  # float32 [T, K] (bf16 values)
    packed_ids: torch.Tensor  # int64 [T, K], mPtrTopKPacked
    permuted_size: int


@dataclass(frozen=True)
class Result:
    case: RoutingCase
    comparison: reference.Comparison | None = None
    not_run: str | None = (
        None  # why the case did not run (a release without the method)
    )
    error: str | None = None  # a FlashInfer check or a CUDA error
    packed_disagrees: int = (
        0  # tokens whose packed top-k differs from the GEMMs' experts
    )

    @property
    def ran(self) -> bool:
        return self.not_run is None

    @property
    def failed(self) -> bool:
        return self.ran and (self.error is not None or not self.comparison_passed)

    @property
    def comparison_passed(self) -> bool:
        return self.comparison is not None and self.comparison.passed

    def row(self) -> dict[str, Any]:
        c = self.comparison
        row: dict[str, Any] = {
            "case": self.case.name,
            "bug": self.case.bug,
            "tokens": self.case.tokens,
        }
        if not self.ran:
            return row | {"ran": False, "not_run": self.not_run}
        row |= {"ran": True, "passed": not self.failed, "error": self.error}
        if c is not None:
            row |= {
                "wrong_experts": c.wrong_experts,
                "invalid_ids": c.invalid_ids,
                "nan_weights": c.nan_weights,
                "weight_errors": c.weight_errors,
                "zero_weights": c.zero_weights,
                "near_ties": c.near_ties,
                "packed_disagrees": self.packed_disagrees,
            }
        return row


def decode(data: bytes) -> Output:
    """The driver's output file for one case."""
    import torch

    header = torch.frombuffer(bytearray(data[: HEADER * 4]), dtype=torch.int32).tolist()
    tokens, top_k, permuted_size = header[0], header[1], header[2]
    body = bytearray(data[HEADER * 4 :])
    if len(body) != tokens * top_k * RECORD * 4:
        raise ValueError(f"truncated output: {len(body)} bytes for {tokens} x {top_k}")
    as_int = torch.frombuffer(body, dtype=torch.int32).view(tokens, top_k, RECORD)
    as_float = torch.frombuffer(body, dtype=torch.float32).view(tokens, top_k, RECORD)
    return Output(
        ids=as_int[..., 0].long(),
        weights=as_float[..., 1].clone(),
        packed_ids=as_int[..., 2].long(),
        permuted_size=permuted_size,
    )


def compare(case: RoutingCase, output: Output, release: tuple[int, ...]) -> Result:
    """The kernels' output for ``case`` against the reference router."""
    import torch

    logits, bias = case.inputs()
    group_scores = None
    if case.method == "Renormalize":
        ids, weights = reference.route(logits, case.top_k, "renormalize", release)
        keys = reference.keys(logits, "renormalize", release)
    else:
        ids, weights, keys, group_scores = reference.route_sigmoid(
            logits,
            bias if bias is not None else torch.zeros(case.experts),
            case.top_k,
            n_group=case.n_group,
            topk_group=case.topk_group,
            scale=case.scale,
        )
    comparison = reference.compare_routed(
        output.ids,
        output.weights,
        ids,
        keys,
        weights,
        group_scores=group_scores,
        topk_group=case.topk_group,
    )
    packed = torch.sort(output.packed_ids, -1).values
    gemm = torch.sort(output.ids, -1).values
    return Result(
        case,
        comparison=comparison,
        packed_disagrees=int((packed != gemm).any(-1).sum()),
    )


def _tensor_bytes(tensor: torch.Tensor) -> bytes:
    import torch

    if tensor.dtype == torch.bfloat16:
        tensor = tensor.view(torch.int16)
    data: bytes = tensor.contiguous().numpy().tobytes()
    return data


def run(
    kernels: Kernels,
    selected: Sequence[RoutingCase],
    release: tuple[int, ...],
    workdir: Path | None = None,
) -> list[Result]:
    """Run every case the release has a method for, in one process of the
    driver (resumed after a case that kills it), and compare."""
    import torch

    with tempfile.TemporaryDirectory(prefix="routing-check-") as scratch:
        work = workdir or Path(scratch)
        work.mkdir(parents=True, exist_ok=True)
        lines: list[str] = []
        results: dict[int, Result] = {}
        for index, case in enumerate(selected):
            method = kernels.methods.get(case.method)
            if method is None:
                results[index] = Result(
                    case,
                    not_run=(
                        f"FlashInfer {kernels.version} has no {case.method} routing"
                    ),
                )
                lines.append("")
                continue
            logits, bias = case.inputs()
            logits = logits.to(
                torch.bfloat16 if case.logits_dtype == "bf16" else torch.float32
            )
            (work / f"{index}.logits").write_bytes(_tensor_bytes(logits))
            bias_dtype = "none"
            if bias is not None:
                (work / f"{index}.bias").write_bytes(_tensor_bytes(bias))
                bias_dtype = "bf16"
            lines.append(
                f"{case.name} {method} {case.tokens} {case.experts} {case.top_k} "
                f"{case.n_group} {case.topk_group} {case.scale!r} {case.logits_dtype} "
                f"{work / f'{index}.logits'} {bias_dtype} {work / f'{index}.bias'}"
            )
        (work / "cases.txt").write_text("\n".join(lines) + "\n")
        first = 0
        while first < len(selected):
            done = subprocess.run(
                [str(kernels.binary), str(work / "cases.txt"), str(work), str(first)],
                capture_output=True,
                text=True,
                check=False,
            )
            if done.returncode == 0:
                break
            crashed = next(
                (
                    i
                    for i in range(first, len(selected))
                    if i not in results
                    and not (work / f"{i}.bin").exists()
                    and not (work / f"{i}.err").exists()
                ),
                None,
            )
            if crashed is None:
                break
            message = (done.stderr.strip() or f"exit {done.returncode}").splitlines()[
                -1
            ]
            results[crashed] = Result(selected[crashed], error=message)
            first = crashed + 1
        for index, case in enumerate(selected):
            if index in results:
                continue
            error_file = work / f"{index}.err"
            if error_file.exists():
                results[index] = Result(case, error=error_file.read_text().strip())
            elif (work / f"{index}.bin").exists():
                output = decode((work / f"{index}.bin").read_bytes())
                results[index] = compare(case, output, release)
            else:
                results[index] = Result(case, error="the driver wrote nothing")
        return [results[i] for i in range(len(selected))]


@dataclass(frozen=True)
class EntryReport:
    """One catalogue entry's cases on this FlashInfer."""

    bug: str
    expected: bool  # the catalogue's install range has this FlashInfer
    ran: int
    failed: int
    affected: str  # the range in words
    cases: list[str] = field(default_factory=list)

    @property
    def reproduced(self) -> bool | None:
        return None if not self.ran else self.failed > 0

    @property
    def agrees(self) -> bool:
        return self.reproduced is None or self.reproduced == self.expected

    def row(self) -> dict[str, Any]:
        observed = {None: "no case ran", True: "reproduced", False: "not reproduced"}
        return {
            "bug": self.bug,
            "affected": self.affected,
            "catalogue_expects": "reproduced" if self.expected else "not reproduced",
            "observed": observed[self.reproduced],
            "agrees": self.agrees,
            "ran": self.ran,
            "failed": self.failed,
            "failed_cases": self.cases,
        }


def entries(results: Iterable[Result], release: tuple[int, ...]) -> list[EntryReport]:
    """Per catalogue entry with cases: what ran, what failed, and what the
    catalogue expects for this release."""
    by_bug: dict[str, list[Result]] = {}
    for result in results:
        if result.case.bug is not None:
            by_bug.setdefault(result.case.bug, []).append(result)
    reports = []
    for bug_id, found in by_bug.items():
        bug = bugs.by_id(bug_id)
        if bug is None:
            raise ValueError(f"case names {bug_id}, which the catalogue does not have")
        ran = [r for r in found if r.ran]
        failed = [r for r in ran if r.failed]
        reports.append(
            EntryReport(
                bug=bug_id,
                expected=bug.in_range(release),
                ran=len(ran),
                failed=len(failed),
                affected=bug.affected,
                cases=[r.case.name for r in failed],
            )
        )
    return reports


def findings(
    results: Sequence[Result], reports: Sequence[EntryReport], version: str
) -> list[str]:
    """What disagrees with the catalogue, in words: printed first."""
    out = []
    for report in reports:
        if report.agrees:
            continue
        if report.reproduced:
            out.append(
                f"{report.bug} reproduced on FlashInfer {version}, which the catalogue "
                f"says does not have it (affected {report.affected}): "
                f"{report.failed} of {report.ran} cases failed "
                f"({', '.join(report.cases)})"
            )
        else:
            out.append(
                f"{report.bug} not reproduced on FlashInfer {version}, which the "
                f"catalogue says has it (affected {report.affected}): its {report.ran} "
                "cases passed"
            )
    for result in results:
        if result.case.bug is None and result.failed:
            out.append(
                f"control case {result.case.name} failed on FlashInfer {version} "
                "(no catalogue entry covers it)"
            )
    return out


def summarise(
    results: Sequence[Result], version: str, release: tuple[int, ...]
) -> dict[str, Any]:
    reports = entries(results, release)
    rows = [r.row() for r in results]
    ran = [r for r in results if r.ran]
    return {
        "ran": bool(ran),
        "flashinfer": version,
        "findings": findings(results, reports, version),
        "entries": [r.row() for r in reports],
        "runs": rows,
        "failed_runs": sum(r.failed for r in ran),
    }


def load_kernels(binary: Path) -> Kernels:
    info = json.loads(binary.with_suffix(".json").read_text())
    return Kernels(binary, info["version"], info["methods"])
