# SPDX-License-Identifier: Apache-2.0
"""Run FlashInfer's own routing kernels on the cases (``cases.py``), compare
what the MoE GEMMs would consume with the reference router per token (expert
ids through the permutation maps, weights from ``mPtrTopKWeights``, NaN), and
hold the result against the catalogue (``bugs.py``): for each entry with
cases, ``reproduced`` or ``not reproduced``, and whether the catalogue's
install range expects it for this FlashInfer. A disagreement is a finding.

The sigmoid-limit cases are measured instead (``measure_sigmoid``): how the
weights of experts at low logits compare with the exact sigmoid's, band by
band. That is a property of every release's routing sigmoid, not a bug with
a range, so it is reported beside the entries and never fails the check;
only a limit case that could not be measured (a FlashInfer error, a lost
anchor expert, a NaN) does.
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


#: A measured weight more than this far off the exact sigmoid's is "coarse":
#: well above bf16's rounding of the weight (at most 2^-8, 0.39 %).
COARSE = 0.01


@dataclass(frozen=True)
class Band:
    """The measured experts whose logit lies in [low, high)."""

    low: float
    high: float
    samples: int
    zero: int  # came back with weight 0 (or were not routed at all)
    max_error: float  # relative, of the non-zero ones and the zeros alike (1.0)
    median_error: float

    def row(self) -> dict[str, Any]:
        return {
            "low": self.low,
            "high": self.high,
            "samples": self.samples,
            "zero": self.zero,
            "max_error": self.max_error,
            "median_error": self.median_error,
        }


@dataclass(frozen=True)
class SigmoidLimit:
    """How FlashInfer's routing sigmoid reaches the GEMMs at low logits: the
    weight of each measured expert against ``sigmoid(x) / sum`` over the
    token's measured experts and anchor, in float64."""

    bands: tuple[Band, ...]
    zero_up_to: float | None  # the highest logit whose weight came back 0
    nonzero_from: float | None  # the lowest logit whose weight did not
    coarse_up_to: float | None  # the highest logit more than COARSE off
    samples: int
    anchors_lost: int  # tokens whose logit-0 expert was not routed
    nan: int

    @property
    def valid(self) -> bool:
        return self.anchors_lost == 0 and self.nan == 0

    def row(self) -> dict[str, Any]:
        return {
            "zero_up_to": self.zero_up_to,
            "nonzero_from": self.nonzero_from,
            "coarse_up_to": self.coarse_up_to,
            "coarse_threshold": COARSE,
            "samples": self.samples,
            "anchors_lost": self.anchors_lost,
            "nan": self.nan,
            "bands": [band.row() for band in self.bands],
        }


def measure_sigmoid(case: RoutingCase, output: Output) -> SigmoidLimit:
    """The sigmoid-limit case's weights against the exact sigmoid, per band of
    one logit (``cases.BAND_LOGITS``). An expert the kernels did not route
    counts as weight 0: the GEMMs get nothing from it either."""
    import torch

    from .cases import ANCHOR_LOGIT, BAND_LOGITS, OTHER_LOGIT

    logits, _ = case.inputs()
    x = logits.double()
    measured = (x > OTHER_LOGIT) & (x != ANCHOR_LOGIT)
    planted = measured | (x == ANCHOR_LOGIT)
    exact = torch.where(planted, torch.sigmoid(x), torch.zeros_like(x))
    want = exact / exact.sum(-1, keepdim=True)
    got = torch.zeros_like(x)
    routed = (output.ids >= 0) & (output.ids < x.shape[1])
    rows = torch.arange(x.shape[0]).unsqueeze(1).expand_as(output.ids)
    got[rows[routed], output.ids[routed]] = output.weights[routed].double()
    anchor = x == ANCHOR_LOGIT
    anchors_lost = int((anchor & (got == 0)).any(-1).sum())
    nan = int(got.isnan().sum())
    at, weight, reference = x[measured], got[measured], want[measured]
    error = ((weight - reference).abs() / reference).nan_to_num(1.0)
    zero = weight == 0
    bands = []
    low, high = BAND_LOGITS
    for edge in range(int(low), int(high)):
        inside = (at >= edge) & (at < edge + 1)
        errors = error[inside]
        bands.append(
            Band(
                float(edge),
                float(edge + 1),
                int(inside.sum()),
                int(zero[inside].sum()),
                float(errors.max()) if errors.numel() else 0.0,
                float(errors.median()) if errors.numel() else 0.0,
            )
        )

    def highest(mask: torch.Tensor) -> float | None:
        return float(at[mask].max()) if bool(mask.any()) else None

    def lowest(mask: torch.Tensor) -> float | None:
        return float(at[mask].min()) if bool(mask.any()) else None

    return SigmoidLimit(
        bands=tuple(bands),
        zero_up_to=highest(zero),
        nonzero_from=lowest(~zero),
        coarse_up_to=highest(error > COARSE),
        samples=int(measured.sum()),
        anchors_lost=anchors_lost,
        nan=nan,
    )


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
    limit: SigmoidLimit | None = None  # a sigmoid-limit case's measurement

    @property
    def ran(self) -> bool:
        return self.not_run is None

    @property
    def failed(self) -> bool:
        if self.case.measures is not None:
            return self.ran and (
                self.error is not None or self.limit is None or not self.limit.valid
            )
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
        if self.case.measures is not None:
            row["measures"] = self.case.measures
            row["groups"] = self.case.n_group
        if not self.ran:
            return row | {"ran": False, "not_run": self.not_run}
        row |= {"ran": True, "passed": not self.failed, "error": self.error}
        if self.limit is not None:
            row |= self.limit.row()
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
    """The kernels' output for ``case`` against the reference router (a
    sigmoid-limit case: measured, ``measure_sigmoid``)."""
    import torch

    if case.measures == "sigmoid":
        return Result(case, limit=measure_sigmoid(case, output))
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
                expected=bug.in_range(release, vllm=None),  # FlashInfer's bugs
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
        if result.case.bug is not None or not result.failed:
            continue
        if result.case.measures is not None:
            limit = result.limit
            why = result.error or (
                f"{limit.anchors_lost} tokens lost their logit-0 expert, "
                f"{limit.nan} NaN weights"
                if limit is not None
                else "nothing measured"
            )
            out.append(
                f"limit case {result.case.name} could not be measured on FlashInfer "
                f"{version}: {why}"
            )
        else:
            out.append(
                f"control case {result.case.name} failed on FlashInfer {version} "
                "(no catalogue entry covers it)"
            )
    return out


def summarise(
    results: Sequence[Result], version: str, release: tuple[int, ...]
) -> dict[str, Any]:
    reports = entries(results, release)
    ran = [r for r in results if r.ran]
    return {
        "ran": bool(ran),
        "flashinfer": version,
        "findings": findings(results, reports, version),
        "entries": [r.row() for r in reports],
        "runs": [r.row() for r in results if r.case.measures is None],
        "limits": [r.row() for r in results if r.case.measures is not None],
        "failed_runs": sum(r.failed for r in ran),
    }


def load_kernels(binary: Path) -> Kernels:
    info = json.loads(binary.with_suffix(".json").read_text())
    return Kernels(binary, info["version"], info["methods"])
