# SPDX-License-Identifier: Apache-2.0
"""The reference router, the comparison rule, the adversarial cases, and the
probe and kernel-check plumbing, on the CPU. The probe's CUDA program is
replaced by a stand-in program only where a GPU is needed to run it; the
headers are FlashInfer's own (tests/data, Apache-2.0, from the 0.6.6, 0.6.7
and 0.7.4 wheels)."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from vllm_moe_routing_plugin.diagnostics import (  # noqa: E402
    cases,
    reference,
    topk_probe,
)

DATA = Path(__file__).with_name("data")


def test_three_formulations_agree_without_near_ties():
    logits = (torch.randn(512, 256) * 2 - 5).to(torch.bfloat16)
    ids_vllm, w_vllm = reference.route(logits, 8, "vllm")
    for method, version in [
        ("renormalize", (0, 6, 7)),
        ("renormalize_naive", (0, 6, 7)),
        ("renormalize_naive", (0, 7, 4)),
    ]:
        ids, w = reference.route(logits, 8, method, version)
        key = reference.keys(logits, method, version)
        result = reference.compare(ids, ids_vllm, key, w, w_vllm)
        assert result.wrong_experts == 0 and result.weight_errors == 0, method


def test_ties_go_to_the_lower_expert_index():
    logits = torch.zeros(1, 8, dtype=torch.bfloat16) - 1
    ids, weights = reference.route(logits, 3, "renormalize")
    assert ids.tolist() == [[0, 1, 2]]
    assert torch.allclose(weights, torch.full((1, 3), 1 / 3), atol=4e-3)


def test_which_keys_the_kernel_reads():
    logits = torch.tensor([[1.0001, 1.0002, -3.0]], dtype=torch.float32)
    # <= 0.6.7 reads fp32 logits as bf16: both become 1.0
    assert reference.keys(logits, "renormalize", (0, 6, 7)).tolist()[0][:2] == [
        1.0,
        1.0,
    ]
    assert reference.keys(logits, "renormalize", (0, 6, 8))[0, 1] > 1.0001
    naive_old = reference.keys(logits, "renormalize_naive", (0, 6, 7))
    assert torch.allclose(naive_old.sum(-1), torch.ones(1))


def test_compare_flags_garbage_and_excuses_genuine_near_ties():
    key = torch.tensor([[5.0, 4.0, 3.0, 2.0, 1.0, 0.0]])
    ref = reference.top_k(key, 3)
    assert reference.compare(ref, ref, key).passed
    wrong = torch.tensor([[0, 1, 4]])
    assert reference.compare(wrong, ref, key).wrong_experts == 1
    invalid = torch.tensor([[0, 1, 7]])
    assert reference.compare(invalid, ref, key).invalid_ids == 1
    repeated = torch.tensor([[0, 0, 1]])
    assert reference.compare(repeated, ref, key).invalid_ids == 1
    tied = torch.tensor([[5.0, 4.0, 3.0, 3.0, 1.0, 0.0]])
    other = torch.tensor([[0, 1, 3]])
    result = reference.compare(other, reference.top_k(tied, 3), tied)
    assert result.passed and result.near_ties == 1


def test_compare_weights():
    key = torch.tensor([[3.0, 2.0, 1.0, 0.0]])
    ids, w = reference.route(key, 2, "renormalize", (0, 7, 4))
    assert reference.compare(ids, ids, key, w, w).passed
    bad = w.clone()
    bad[0, 0] += 0.1
    assert reference.compare(ids, ids, key, bad, w).weight_errors == 1


def test_adversarial_cases():
    grid = cases.adversarial()
    assert len(grid) == 4 * 3 * 9 * 6
    assert {c.tokens for c in grid} == {1, 4, 5, 16, 17, 256, 257, 1024, 4096}
    negative = cases.Case(256, 8, 64, "shift", -20.0).logits()
    assert (negative < 0).all()
    tied = cases.Case(256, 8, 64, "tied").logits()
    assert tied[0].unique().numel() < 40
    for case in (cases.Case(160, 8, 17, "large"), cases.Case(512, 4, 5, "shift", 0.0)):
        x = case.logits()
        assert x.dtype == torch.bfloat16 and not (x == 0).any() and not x.isnan().any()
    assert cases.Case(256, 8, 1, "tied").in_bug_envelope
    assert not cases.Case(512, 10, 1, "tied").in_bug_envelope


@pytest.mark.parametrize(
    ("version", "layout"), [("0.6.6", "66"), ("0.6.7", "67"), ("0.7.4", "67")]
)
def test_header_layouts_of_real_flashinfer_headers(version, layout):
    header = topk_probe.find_header(DATA / f"flashinfer-{version}", None)
    assert (header.layout, header.version) == (layout, version)


def test_unknown_header_is_refused(tmp_path):
    (tmp_path / "RoutingKernelTopK.cuh").write_text("namespace other {}")
    with pytest.raises(
        topk_probe.NotRunnable, match="unsupported FlashInfer header version"
    ):
        topk_probe.find_header(tmp_path, "9.9.9")


STAND_IN = """
import struct, sys, torch
data = open(sys.argv[1], "rb").read()
count, = struct.unpack_from("<i", data, 0)
offset, out = 4, open(sys.argv[2], "wb")
for _ in range(count):
    t, e, k, bf16 = struct.unpack_from("<4i", data, offset)
    offset += 16
    size = t * e * (2 if bf16 else 4)
    raw = torch.frombuffer(bytearray(data[offset:offset + size]),
                           dtype=torch.int16 if bf16 else torch.int32)
    offset += size
    keys = raw.view(torch.bfloat16 if bf16 else torch.float32).view(t, e).float()
    order = torch.sort(keys, dim=-1, descending=True, stable=True).indices
    ids = order[:, :k].to(torch.int32)
    if MODE == "garbage" and e > 128 and k < 10:
        ids[:, -1] = e + 3  # an out-of-range expert, as flashinfer#2822 produced
    out.write(ids.numpy().tobytes())
    out.write(torch.gather(keys, -1, ids.long().clamp(0, e - 1)).numpy().tobytes())
"""


def stand_in(tmp_path, mode):
    script = tmp_path / f"probe_{mode}"
    script.write_text(f"#!{sys.executable}\nMODE = {mode!r}\n" + STAND_IN)
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return script


@pytest.mark.parametrize(("mode", "failures"), [("right", 0), ("garbage", 4)])
def test_probe_plumbing_with_a_stand_in_program(tmp_path, mode, failures):
    header = topk_probe.find_header(DATA / "flashinfer-0.6.6", None)
    selected = [cases.Case(e, k, 5, "shift", -5.0) for e in (128, 256) for k in (4, 10)]
    selected += [cases.Case(256, 8, 3, "tied")]
    runs = topk_probe.run(header, selected, binary=stand_in(tmp_path, mode))
    assert len(runs) == len(selected) * 2  # bf16 logits and fp32 softmax keys
    assert sum(not r.comparison.passed for r in runs) == failures
    for r in runs:
        if not r.comparison.passed:
            assert r.case.in_bug_envelope and r.comparison.invalid_ids == r.case.tokens


def test_verify_here_runs_nothing_and_exits_2():
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "vllm_moe_routing_plugin",
            "verify",
            "--quick",
            "--json",
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "CUDA_VISIBLE_DEVICES": ""},
        timeout=300,
        check=False,
    )
    assert result.returncode == 2, result.stderr
    data = json.loads(result.stdout)
    assert data["verdict"] == "nothing could run on this machine"
    assert data["kernel"]["not_run"] == "needs SM100"
    assert data["probe"]["not_run"].startswith("needs a CUDA GPU")
    text = subprocess.run(
        [sys.executable, "-m", "vllm_moe_routing_plugin", "verify", "--quick"],
        capture_output=True,
        text=True,
        env={**os.environ, "CUDA_VISIBLE_DEVICES": ""},
        timeout=300,
        check=False,
    ).stdout
    assert "kernel check: not run: needs SM100" in text


def test_verify_probe_table_renders():
    from vllm_moe_routing_plugin.diagnostics import verify

    row = {
        "case": "E256/k8/T5/randn-5",
        "keys": "bf16 logits",
        "in_bug_envelope": True,
        "tokens": 5,
        "wrong_experts": 0,
        "invalid_ids": 5,
        "near_ties": 0,
        "passed": False,
    }
    result = {
        "verdict": verify.verdict({"ran": True, "failed_runs": 1}, {"ran": False}),
        "gpus": ["NVIDIA H200 sm_90"],
        "probe": {
            "ran": True,
            "flashinfer": "0.6.6",
            "runs": [row],
            "failed_runs": 1,
            "wrong_tokens": 5,
            "tokens": 5,
            "header": "h",
        },
        "kernel": {"ran": False, "not_run": "needs SM100"},
    }
    text = verify.render(result)
    assert text.splitlines()[0].startswith("verdict: MISMATCH")
    assert "E256/k8/T5/randn-5" in text and "FAIL" in text
    assert verify.verify_exit(result) == 1
