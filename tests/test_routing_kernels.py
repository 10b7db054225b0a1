# SPDX-License-Identifier: Apache-2.0
"""The routing-kernel check on the CPU: its cases, the sigmoid reference
router and the comparison, reading the driver's output, the catalogue report,
and the build's reading of FlashInfer's runner. The CUDA driver is replaced by
a stand-in program that checks the case lines and input files it is handed and
answers with the reference routing (and, per mode, the faults the catalogue's
bugs produce), computed once in this process so that the stand-in starts
without torch; building and running the real kernels needs nvcc and a GPU
(docs/verify.md)."""

from __future__ import annotations

import argparse
import json
import stat
import struct
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from vllm_moe_routing_plugin import bugs  # noqa: E402
from vllm_moe_routing_plugin.diagnostics import reference, verify  # noqa: E402
from vllm_moe_routing_plugin.diagnostics.routing_kernels import (  # noqa: E402
    build,
    cases,
    check,
)


def by_name(name: str) -> cases.RoutingCase:
    return next(c for c in cases.CASES if c.name == name)


# --- cases -----------------------------------------------------------------


def test_every_case_names_a_catalogue_entry_or_is_a_control():
    named = {c.bug for c in cases.CASES} - {None}
    assert named == {
        "flashinfer#2822",
        "flashinfer#3803",
        "flashinfer#3946",
        "flashinfer#3875",
        "flashinfer#3499",
    }
    assert all(bugs.by_id(b) is not None for b in named)
    assert len({c.name for c in cases.CASES}) == len(cases.CASES)


def test_2822_cases_are_inside_its_envelope_and_its_controls_outside():
    layers = bugs.FLASHINFER_2822.layers
    for case in cases.CASES:
        if case.method != "Renormalize" or case.logits != "negative":
            continue
        inside = layers.experts[0] < case.experts <= layers.experts[1] and (
            case.top_k < layers.top_k_below
        )
        assert inside == (case.bug == "flashinfer#2822"), case.name
        logits, bias = case.inputs()
        assert bias is None and logits.dtype == torch.bfloat16 and (logits < 0).all()
    tokens = {c.tokens for c in cases.CASES if c.bug == "flashinfer#2822"}
    assert {1, 256, 257, 2048} <= tokens  # one cluster, and the histogram path


def test_underflow_cases_give_all_zero_selected_scores():
    for name in (
        "DeepSeekV3/E256/k8/T300/underflow/bias-small",
        "DeepSeekV3/E256/k8/g8.4/T300/underflow/bias-small",
    ):
        case = by_name(name)
        logits, bias = case.inputs()
        assert bias is not None
        _, weights, _, _ = reference.route_sigmoid(
            logits, bias, 8, n_group=case.n_group, topk_group=case.topk_group
        )
        # 0 / (0 + 1e-20): zeros, where an unguarded 0 / 0 is NaN
        assert (weights == 0).all() and not weights.isnan().any()


def test_glm_like_case_fails_the_cancellation_and_passes_the_sigmoids_error():
    """The case separates flashinfer#3875 from FlashInfer's sigmoid: weights
    from (sigmoid + bias) - bias in fp32 fail the comparison for most tokens;
    weights from scores 1.5 % off, either way per expert, pass it. What holds
    the case in place is its band of logits: tanh.approx's sigmoid, measured
    on an H200 with scripts/sigmoid_probe.cu, is within 1.42 % there and 25 %
    off two logits lower (the comparison lets about 9 % through)."""
    case = by_name("DeepSeekV3/E256/k8/T300/small/bias-large")
    logits, bias = case.inputs()
    assert bias is not None and (bias.float() >= 12).all()
    # the band where the H200 measured tanh.approx's sigmoid within 1.42 %
    assert logits.min() >= -13.0 and logits.max() < -12.0
    ids, weights, keys, _ = reference.route_sigmoid(logits, bias, 8)
    scores = torch.sigmoid(logits)
    cancelled = (scores + bias.float()) - bias.float()
    flip = torch.where(torch.arange(scores.numel()) % 2 == 0, 1.015, 0.985)
    coarse = scores * flip.view(scores.shape)

    def compared(scores):
        return reference.compare_routed(
            ids, reference.sigmoid_weights(scores, ids), ids, keys, weights
        )

    assert compared(cancelled).weight_errors > 0.8 * case.tokens
    assert compared(coarse).weight_errors == 0


def test_the_glm_like_scores_also_run_without_the_large_bias():
    """A control that separates FlashInfer's sigmoid precision from the
    cancellation under the bias: same scores, bias ~0.05."""
    with_bias = by_name("DeepSeekV3/E256/k8/T300/small/bias-large")
    without = by_name("DeepSeekV3/E256/k8/T300/small/bias-small")
    assert without.bug is None
    assert torch.equal(with_bias.inputs()[0], without.inputs()[0])
    bias = without.inputs()[1]
    assert bias is not None and bias.abs().max() < 1


def test_minimax2_case_scales_by_three():
    case = by_name("MiniMax2/E256/k8/T300/randn/bias-small/scale3")
    logits, bias = case.inputs()
    assert bias is not None and case.n_group == 0
    _, weights, _, _ = reference.route_sigmoid(logits, bias, 8, scale=case.scale)
    assert torch.allclose(weights.sum(-1), torch.full((300,), 3.0), atol=5e-2)


def test_inputs_are_deterministic():
    case = by_name("DeepSeekV3/E256/k8/g8.4/T300/randn/bias-small")
    a, b = case.inputs(), case.inputs()
    assert torch.equal(a[0], b[0]) and a[1] is not None and torch.equal(a[1], b[1])


# --- reference and comparison ------------------------------------------------


def test_grouped_reference_picks_only_from_the_best_groups():
    logits = torch.full((1, 16), -4.0)
    logits[0, 0] = 4.0  # group 0 (experts 0-3) holds the best expert
    logits[0, 4:6] = 3.0  # group 1: two good experts
    logits[0, 12] = 3.5  # group 3: one good expert, weak second
    bias = torch.zeros(16)
    ids, weights, keys, groups = reference.route_sigmoid(
        logits, bias, 3, n_group=4, topk_group=2
    )
    assert sorted(ids[0].tolist()) == [0, 4, 5]  # group 3 is not chosen
    assert groups is not None and keys[0, 12] == float("-inf")
    assert torch.allclose(weights.sum(-1), torch.ones(1), atol=1e-2)


def test_bias_decides_selection_but_not_weights():
    logits = torch.tensor([[0.0, 0.0, 2.0, -2.0]])
    bias = torch.tensor([0.0, 1.0, -5.0, 5.0])
    ids, weights, _, _ = reference.route_sigmoid(logits, bias, 2)
    assert ids.tolist() == [[3, 1]]
    s = torch.sigmoid(torch.tensor([-2.0, 0.0]))
    assert torch.allclose(weights[0], (s / s.sum()).to(torch.bfloat16).float())


def test_compare_routed_flags_nan_wrong_weights_and_wrong_experts():
    logits = torch.randn(4, 32)
    bias = torch.zeros(32)
    ids, weights, keys, _ = reference.route_sigmoid(logits, bias, 4)
    assert reference.compare_routed(ids, weights, ids, keys, weights).passed
    nan = weights.clone()
    nan[1] = float("nan")
    result = reference.compare_routed(ids, nan, ids, keys, weights)
    assert (result.nan_weights, result.passed) == (1, False)
    zero = weights.clone()
    zero[2] = 0.0  # flashinfer#3875 on 0.6.15 - 0.6.17: the output vanishes
    vanished = reference.compare_routed(ids, zero, ids, keys, weights)
    assert (vanished.weight_errors, vanished.zero_weights) == (1, 1)
    coarse = weights.clone()
    coarse[0, 0] *= 1.1  # a weight 10 % off
    assert reference.compare_routed(ids, coarse, ids, keys, weights).weight_errors == 1
    other = ids.clone()
    other[3, 0] = int(torch.argsort(keys[3])[0])  # the worst expert
    assert (
        reference.compare_routed(other, weights, ids, keys, weights).wrong_experts == 1
    )


def test_compare_routed_excuses_a_near_tie_between_groups():
    keys = torch.tensor([[1.0, 0.9, 0.5, 0.4, 0.2, 0.1]])
    groups = torch.tensor([[1.9, 0.9, 0.9]])  # groups 1 and 2 tie for the second place
    want = torch.tensor([[0, 1, 2]])
    got = torch.tensor([[0, 1, 4]])
    w = torch.full((1, 3), 1 / 3)
    strict = reference.compare_routed(got, w, want, keys, w)
    assert strict.wrong_experts == 1
    tied = reference.compare_routed(got, w, want, keys, w, groups, topk_group=2)
    assert tied.passed and tied.near_ties == 1


# --- the driver's output, a stand-in driver, the report ---------------------


def driver_file(ids, weights, packed=None) -> bytes:
    tokens, k = ids.shape
    packed = ids if packed is None else packed
    data = struct.pack("<5i", tokens, k, tokens * k, 1, 8)
    for t in range(tokens):
        for j in range(k):
            data += struct.pack(
                "<ifif", int(ids[t, j]), float(weights[t, j]), int(packed[t, j]), 0.0
            )
    return data


def test_decode_reads_what_the_driver_writes():
    ids = torch.tensor([[3, 1], [0, -1]])
    weights = torch.tensor([[0.75, 0.25], [float("nan"), 1.0]])
    out = check.decode(driver_file(ids, weights))
    assert out.ids.tolist() == ids.tolist() and out.permuted_size == 4
    assert out.weights[1, 0].isnan() and out.weights[0, 0] == 0.75
    with pytest.raises(ValueError, match="truncated"):
        check.decode(driver_file(ids, weights)[:-4])


STAND_IN = """
import json, sys
from pathlib import Path
cases_file, out, first = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
for index, line in enumerate(Path(cases_file).read_text().splitlines()):
    if index < first or not line:
        continue
    fields = line.split()
    if len(fields) != 12:
        sys.exit("unexpected case line: " + line)
    # what routing_driver.cu reads, in its order and types
    (name, method, t, e, k, g, tg, scale, ldt, lf, bdt, bf) = fields
    known = ANSWERS / name.replace("/", "_")
    case = json.loads((known / "case.json").read_text())
    read = {
        "method": int(method), "tokens": int(t), "experts": int(e), "top_k": int(k),
        "n_group": int(g), "topk_group": int(tg), "scale": float(scale),
        "logits_dtype": ldt, "bias_dtype": bdt,
    }
    if read != case | {"method": METHODS[case["method"]]}:
        sys.exit("unexpected case line: " + line)
    for given, expected in ((lf, "logits"), (bf, "bias")):
        if (known / expected).exists() and (
            Path(given).read_bytes() != (known / expected).read_bytes()
        ):
            sys.exit(f"unexpected {expected} for {fields[0]}")
    if MODE == "crash" and index == 1:
        sys.exit(3)
    answer = "right" if MODE == "crash" else MODE  # "crash" answers right, then dies
    (out / f"{index}.bin").write_bytes((known / answer).read_bytes())
"""


def as_bytes(tensor: torch.Tensor) -> bytes:
    if tensor.dtype == torch.bfloat16:
        tensor = tensor.view(torch.int16)
    return tensor.contiguous().numpy().tobytes()


def answers(case: cases.RoutingCase) -> dict[str, bytes]:
    """What the stand-in driver writes for ``case``, per fault mode: the
    reference routing, and the same with the faults the catalogue's bugs put
    in the kernels' output, in the driver's output format; for the sigmoid
    methods also FlashInfer's sigmoid formula, ``0.5 * tanh(0.5 x) + 0.5``,
    in fp32 ("tanh"), and the first expert of each token unmapped."""
    logits, bias = case.inputs()
    if case.logits_dtype == "bf16":
        logits = logits.to(torch.bfloat16).float()
    if case.method == "Renormalize":
        ids, w = reference.route(
            logits.to(torch.bfloat16), case.top_k, "renormalize", (0, 6, 7)
        )
    else:
        ids, w, _, _ = reference.route_sigmoid(
            logits,
            torch.zeros(case.experts) if bias is None else bias.float(),
            case.top_k,
            n_group=case.n_group,
            topk_group=case.topk_group,
            scale=case.scale,
        )
    nan, garbage = w, ids
    if case.method != "Renormalize" and (torch.sigmoid(logits) == 0).all():
        nan = torch.full_like(w, float("nan"))  # flashinfer#3803 / #3946
    in_2822 = case.method == "Renormalize" and case.experts > 128 and case.top_k < 10
    if in_2822 and (logits < 0).all():
        garbage = ids.clone()
        garbage[:, -1] = 0  # expert 0 with a garbage score, as flashinfer#2822 does
    modes = {
        "right": driver_file(ids, w),
        "garbage": driver_file(garbage, w),
        "nan": driver_file(ids, nan),
    }
    if case.method != "Renormalize":
        tanh = 0.5 * torch.tanh(0.5 * logits.float()) + 0.5
        modes["tanh"] = driver_file(ids, reference.sigmoid_weights(tanh, ids))
        unmapped = ids.clone()
        unmapped[:, 0] = -1
        modes["unmapped"] = driver_file(unmapped, w)
    return modes


@pytest.fixture(scope="module")
def answers_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Per case of ``SMALL``: the case line and input files ``check.run``
    must hand the driver, and the stand-in's answer in each mode, computed
    here once so that the stand-in process starts without torch."""
    root = tmp_path_factory.mktemp("answers")
    for case in SMALL + LIMITS:
        known = root / case.name.replace("/", "_")
        known.mkdir()
        logits, bias = case.inputs()
        dtype = torch.bfloat16 if case.logits_dtype == "bf16" else torch.float32
        (known / "logits").write_bytes(as_bytes(logits.to(dtype)))
        if bias is not None:
            (known / "bias").write_bytes(as_bytes(bias))
        expected = {
            "method": case.method,  # its number is the stand-in's methods'
            "tokens": case.tokens,
            "experts": case.experts,
            "top_k": case.top_k,
            "n_group": case.n_group,
            "topk_group": case.topk_group,
            "scale": case.scale,
            "logits_dtype": case.logits_dtype,
            "bias_dtype": "none" if bias is None else "bf16",
        }
        (known / "case.json").write_text(json.dumps(expected))
        for mode, output in answers(case).items():
            (known / mode).write_bytes(output)
    return root


@pytest.fixture
def stand_in(tmp_path: Path, answers_dir: Path):
    def kernels(mode: str, methods: dict[str, int]) -> check.Kernels:
        script = tmp_path / f"driver_{mode}"
        script.write_text(
            f"#!{sys.executable}\nfrom pathlib import Path\nMODE = {mode!r}\n"
            f"METHODS = {methods!r}\nANSWERS = Path({str(answers_dir)!r})\n" + STAND_IN
        )
        script.chmod(script.stat().st_mode | stat.S_IEXEC)
        return check.Kernels(script, "test", methods)

    return kernels


OLD = {"Renormalize": 1, "DeepSeekV3": 2}
NEW = {"Renormalize": 1, "DeepSeekV3": 2, "MiniMax2": 7}
SMALL = (
    by_name("Renormalize/E256/k8/T17/negative"),
    by_name("Renormalize/E128/k8/T17/negative"),
    by_name("DeepSeekV3/E256/k8/T1/underflow/bias-small"),
    by_name("DeepSeekV3/E256/k8/g8.4/T1/underflow/bias-small"),
    by_name("MiniMax2/E256/k8/T1/randn/bias-small/scale3"),
    by_name("DeepSeekV3/E256/k8/T300/randn/bias-small"),
)
LIMITS = tuple(c for c in cases.CASES if c.measures is not None)


def test_right_kernels_pass_every_case(stand_in):
    results = check.run(stand_in("right", NEW), SMALL, (0, 6, 18))
    assert [r.failed for r in results] == [False] * len(SMALL)
    assert all(r.comparison is not None for r in results)


def test_a_release_without_minimax2_does_not_run_its_case(stand_in):
    results = check.run(stand_in("right", OLD), SMALL, (0, 6, 7))
    minimax = [r for r in results if r.case.method == "MiniMax2"]
    assert minimax and all(not r.ran for r in minimax)
    assert "has no MiniMax2 routing" in (minimax[0].not_run or "")
    report = {e.bug: e for e in check.entries(results, (0, 6, 7))}
    assert report["flashinfer#3499"].reproduced is None
    assert report["flashinfer#3499"].agrees


def test_a_crashing_case_is_reported_and_the_rest_still_run(stand_in):
    results = check.run(stand_in("crash", NEW), SMALL, (0, 6, 18))
    assert results[1].failed and results[1].error == "exit 3"
    assert [r.failed for i, r in enumerate(results) if i != 1] == [False] * 5


def test_report_says_reproduced_as_the_catalogue_expects(stand_in):
    kernels = stand_in("garbage", OLD)
    results = check.run(kernels, SMALL[:2], (0, 6, 6))
    assert [r.failed for r in results] == [True, False]  # the control passes
    (entry,) = check.entries(results, (0, 6, 6))
    assert (entry.bug, entry.reproduced, entry.expected) == (
        "flashinfer#2822",
        True,
        True,
    )
    summary = check.summarise(results, "0.6.6", (0, 6, 6))
    assert summary["findings"] == []
    assert summary["entries"][0]["observed"] == "reproduced"


def test_a_disagreement_with_the_catalogue_is_a_finding(stand_in):
    # the same wrong routing on a release the catalogue says is fixed
    results = check.run(stand_in("garbage", OLD), SMALL[:2], (0, 6, 7))
    summary = check.summarise(results, "0.6.7", (0, 6, 7))
    (finding,) = summary["findings"]
    assert finding.startswith("flashinfer#2822 reproduced on FlashInfer 0.6.7")
    # and a release the catalogue says has it, where nothing fails
    results = check.run(stand_in("right", OLD), SMALL[2:4], (0, 6, 14))
    found = check.summarise(results, "0.6.14", (0, 6, 14))["findings"]
    assert len(found) == 2 and all(
        "not reproduced on FlashInfer 0.6.14" in f for f in found
    )


def test_nan_weights_reproduce_the_underflow_entries(stand_in):
    results = check.run(stand_in("nan", NEW), SMALL[2:4], (0, 6, 14))
    assert all(r.comparison and r.comparison.nan_weights == 1 for r in results)
    report = {e.bug: e for e in check.entries(results, (0, 6, 14))}
    assert report["flashinfer#3803"].reproduced and report["flashinfer#3803"].agrees
    assert report["flashinfer#3946"].reproduced and report["flashinfer#3946"].agrees


def test_a_failing_control_is_a_finding():
    case = by_name("Renormalize/E128/k8/T17/negative")
    result = check.Result(case, error="check failed")
    (finding,) = check.findings([result], [], "0.6.7")
    assert finding.startswith("control case Renormalize/E128/k8/T17/negative failed")


def test_render_prints_findings_first_and_exits_1(stand_in):
    results = check.run(stand_in("garbage", OLD), SMALL[:2], (0, 6, 7))
    routing = check.summarise(results, "0.6.7", (0, 6, 7)) | {"arch": "sm_90a"}
    result = {
        "gpus": ["NVIDIA H200 sm_90"],
        "routing": routing,
        "probe": {"ran": False, "not_run": "skipped"},
        "kernel": {"ran": False, "not_run": "needs SM100"},
    }
    result["verdict"] = verify.verdict(routing, result["probe"], result["kernel"])
    lines = verify.render(result).splitlines()
    assert lines[0].startswith(
        "FINDING: flashinfer#2822 reproduced on FlashInfer 0.6.7"
    )
    assert lines[1].startswith("verdict: MISMATCH")
    assert any("CATALOGUE DISAGREES" in line for line in lines)
    assert verify.verify_exit(result) == 1


# --- the sigmoid limit: measured, never a finding ----------------------------


def test_the_limit_cases_measure_both_sigmoid_paths():
    assert [(c.method, c.n_group, c.bias, c.bug) for c in LIMITS] == [
        ("DeepSeekV3", 1, "zero", None),
        ("DeepSeekV3", 8, "zero", None),
    ]
    for case in LIMITS:
        logits, bias = case.inputs()
        assert bias is not None and (bias == 0).all()
        planted = logits > cases.OTHER_LOGIT
        assert (planted.sum(-1) == case.top_k).all()
        assert ((logits == cases.ANCHOR_LOGIT).sum(-1) == 1).all()
        # every planted expert in the first group, where the anchor wins it
        group = case.experts // case.n_group
        assert not planted[:, group:].any() or case.n_group == 1
        band = logits[planted & (logits != cases.ANCHOR_LOGIT)]
        assert band.min() >= cases.BAND_LOGITS[0] and band.max() < cases.BAND_LOGITS[1]


def test_an_exact_sigmoid_measures_no_limit(stand_in):
    results = check.run(stand_in("right", NEW), LIMITS, (0, 7, 4))
    summary = check.summarise(results, "0.7.4", (0, 7, 4))
    assert summary["failed_runs"] == 0 and summary["findings"] == []
    assert summary["runs"] == [] and len(summary["limits"]) == 2
    for row in summary["limits"]:
        assert row["zero_up_to"] is None and row["coarse_up_to"] is None
        assert sum(b["samples"] for b in row["bands"]) == row["samples"] == 2048 * 7
        assert max(b["max_error"] for b in row["bands"]) < 2**-8  # bf16 rounding


def test_flashinfers_sigmoid_formula_is_reported_as_a_limit(stand_in):
    """fp32 ``0.5 * tanh(0.5 x) + 0.5`` (exactly rounded tanh on the CPU;
    the GPU's tanh.approx is coarser): 0 below about -18, where 0.5 * tanh
    rounds to -0.5, more than 1 % off below about -13. Reported band by band,
    and the check still passes: a limit is no catalogue entry."""
    results = check.run(stand_in("tanh", NEW), LIMITS, (0, 7, 4))
    summary = check.summarise(results, "0.7.4", (0, 7, 4))
    assert summary["failed_runs"] == 0 and summary["findings"] == []
    for row in summary["limits"]:
        assert -19 < row["zero_up_to"] < -17 and -19 < row["nonzero_from"] < -17
        assert -14 < row["coarse_up_to"] < -12
        bands = {b["low"]: b for b in row["bands"]}
        assert bands[-20.0]["zero"] == bands[-20.0]["samples"] > 0
        assert bands[-17.0]["zero"] == 0 and bands[-17.0]["max_error"] > 0.1
        assert bands[-8.0]["max_error"] < 2**-8
    routing = summary | {"arch": "sm_90a"}
    lines = verify.render_routing(routing)
    assert any(line.startswith("  sigmoid limit (measured") for line in lines)
    assert any("no groups: weight 0 up to a logit of -18" in line for line in lines)
    assert any(line.strip().startswith("[-17,-16)") for line in lines)


def test_a_limit_that_cannot_be_measured_is_a_finding(stand_in):
    results = check.run(stand_in("unmapped", NEW), LIMITS[:1], (0, 7, 4))
    (result,) = results
    assert result.failed and result.limit is not None
    assert result.limit.anchors_lost == 2048
    (finding,) = check.summarise(results, "0.7.4", (0, 7, 4))["findings"]
    assert finding.startswith(
        "limit case DeepSeekV3/E256/k8/T2048/bands/bias-zero could not be measured"
    )


# --- verify's routing check without a GPU or nvcc ----------------------------


def namespace(**changes):
    values = {
        "flashinfer_include": None,
        "flashinfer_version": None,
        "trtllm_headers": None,
        "no_routing_kernels": False,
        "quick": True,
    }
    return argparse.Namespace(**(values | changes))


def test_routing_check_says_what_it_needs():
    from vllm_moe_routing_plugin import facts

    assert verify.routing_check(namespace(), [], {})["not_run"].startswith(
        "needs a CUDA GPU of compute capability 9.0"
    )
    ampere = [facts.Gpu(0, "NVIDIA A100", (8, 0), "nvml")]
    assert verify.routing_check(namespace(), ampere, {})["ran"] is False
    hopper = [facts.Gpu(0, "NVIDIA H200", (9, 0), "nvml")]
    assert verify.gpu_arch(hopper) == "sm_90a"
    report = verify.routing_check(
        namespace(flashinfer_version="0.6.6"),
        hopper,
        {"PATH": "/nonexistent", "VLLM_MOE_ROUTING_CACHE": "/nonexistent"},
    )
    assert report["ran"] is False
    assert "nvcc" in report["not_run"] or "flashinfer-python" in report["not_run"]


def test_build_needs_nvcc(tmp_path):
    data = tmp_path / "flashinfer" / "data"
    (data / "csrc").mkdir(parents=True)
    (data / build.RUNNER_SOURCE).write_text("namespace Routing {}")
    sources = build.find_sources(tmp_path, "0.6.6")
    env = {"PATH": str(tmp_path), "VLLM_MOE_ROUTING_CACHE": str(tmp_path / "cache")}
    with pytest.raises(build.NotBuildable, match="nvcc"):
        build.build(sources, "sm_90a", env)


def test_sources_outside_a_wheel_are_refused(tmp_path):
    with pytest.raises(build.NotBuildable, match="no FlashInfer sources"):
        build.find_sources(tmp_path, "0.6.6")


# --- reading FlashInfer's runner ----------------------------------------------

RUNNER_H_066 = """
namespace Routing {
enum class RoutingMethodType : int64_t {
  // Default: Softmax -> TopK
  Default = 0,
  Renormalize = 1,
  DeepSeekV3 = 2,
  Unspecified = 6,
};
class Runner {
 public:
  void run(void* routingLogits, void* routingBias, int32_t numTokens,
           int32_t numExperts, int32_t topK, int32_t nGroups, int32_t topkGroups,
           float routedScalingFactor,
           cudaStream_t stream);
};
}  // namespace Routing
"""

RUNNER_H_0618 = RUNNER_H_066.replace(
    "int32_t topK, int32_t nGroups",
    "int32_t topK, int32_t numFusedSharedExpert, int32_t nGroups",
).replace(
    "cudaStream_t stream);",
    "cudaStream_t stream, bool normTopkProb = true,"
    " int16_t* routing_replay_out = nullptr, bool enable_pdl = true);",
)


def test_runner_call_follows_the_release_declaration():
    assert build.runner_call(RUNNER_H_066) == (
        "routingLogits, routingBias, numTokens, numExperts, topK, nGroup, topkGroup, "
        "routedScalingFactor, stream"
    )
    call = build.runner_call(RUNNER_H_0618)
    assert "topK, numFusedSharedExpert, nGroup" in call
    assert call.endswith("stream, normTopkProb, routing_replay_out, enable_pdl")


def test_an_unknown_runner_parameter_stops_the_build():
    text = RUNNER_H_066.replace(
        "cudaStream_t stream);", "cudaStream_t stream, int newKnob);"
    )
    with pytest.raises(build.NotBuildable, match="newKnob"):
        build.runner_call(text)


def test_routing_methods_are_read_from_the_release():
    assert build.routing_methods(RUNNER_H_066) == {
        "Default": 0,
        "Renormalize": 1,
        "DeepSeekV3": 2,
        "Unspecified": 6,
    }


def test_the_runner_source_keeps_routing_and_drops_the_gemms():
    source = (
        '#include "flashinfer/trtllm/batched_gemm/KernelRunner.h"\n'
        '#include "flashinfer/trtllm/fused_moe/runner.h"\n'
        "namespace tensorrt_llm {\nnamespace kernels {\n"
        "namespace trtllmgen_moe {\nnamespace Routing {\nvoid Runner::run() {}\n"
        "}  // namespace Routing\n\nnamespace PermuteGemm1 {\nvoid gemm();\n}\n"
    )
    kept = build.routing_runner_source(source)
    assert "Runner::run" in kept and "PermuteGemm1" not in kept
    assert '#include "routing_runner.h"' in kept and "KernelRunner" not in kept
    assert kept.count("{") == kept.count("}")
    with pytest.raises(build.NotBuildable):
        build.routing_runner_source("namespace Other {}")


def test_the_runner_header_keeps_routing_without_the_gemm_runner():
    header = (
        '#include "DevKernel.h"\n'
        '#include "flashinfer/trtllm/batched_gemm/KernelRunner.h"\n'
        "namespace tensorrt_llm {\nnamespace kernels {\nnamespace trtllmgen_moe {\n"
        + RUNNER_H_066
        + "namespace MoE {\nclass Runner { TrtllmGenBatchedGemmRunner mRunner; };\n}\n"
        "}\n}\n}\n"
    )
    kept = build.routing_runner_header(header)
    assert '#include "flashinfer/trtllm/fused_moe/DevKernel.h"' in kept
    assert "KernelRunner" not in kept and "TrtllmGenBatchedGemmRunner" not in kept
    assert "enum class RoutingMethodType" in kept
    assert kept.count("{") == kept.count("}")
