# SPDX-License-Identifier: Apache-2.0
"""``vllm-moe-routing status`` in a fresh process of this environment."""

import json
import subprocess
import sys

import pytest

from support import FLASHINFER, VLLM
from vllm_moe_routing_plugin.diagnostics import advice, cli
from vllm_moe_routing_plugin.diagnostics import status as status_report


def status(*args, env=None):
    import os

    result = subprocess.run(
        [sys.executable, "-m", "vllm_moe_routing_plugin", "status", *args],
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    return result


def test_json_keys_and_what_if_flags():
    result = status("--json", "--capability", "10.0,10.0", "--flashinfer", "0.6.7")
    assert result.returncode == 0, result.stdout + result.stderr
    data = json.loads(result.stdout)
    for key in (
        "action",
        "reason",
        "plugin",
        "settings",
        "packages",
        "gpus",
        "targets",
    ):
        assert key in data
    assert data["action"] == "enable"
    assert data["reason"] == "flashinfer-python 0.6.7 >= 0.6.7; GPU 0-1 sm_100"
    assert data["assumed"] == ["gpus", "flashinfer-python"]
    assert [g["capability"] for g in data["gpus"]] == ["10.0", "10.0"]
    assert data["plugin"]["discovered"] is True
    assert data["plugin"]["value"] == "vllm_moe_routing_plugin:register"


def test_guard_what_if():
    data = json.loads(
        status("--json", "--capability", "10.0", "--flashinfer", "0.6.6").stdout
    )
    assert data["action"] == "guard"
    assert "flashinfer#2822" in data["reason"]


def test_invalid_setting_exits_1():
    result = status(env={"VLLM_MOE_ROUTING_RENORMALIZE": "sometimes"})
    assert result.returncode == 1
    assert "VLLM_MOE_ROUTING_RENORMALIZE='sometimes' is not valid" in result.stdout


def test_plugins_allow_list_with_spaces_exits_1():
    result = status(
        "--json", env={"VLLM_PLUGINS": "lora_filesystem_resolver, moe_routing"}
    )
    assert result.returncode == 1
    data = json.loads(result.stdout)
    assert data["plugin"]["allowed"] is False
    assert "with spaces" in data["plugin"]["problem"]


@pytest.mark.parametrize(
    "args", [["--capability", "sm100"], ["--flashinfer", "new"], ["frobnicate"]]
)
def test_usage_errors_exit_2(args):
    assert status(*args).returncode == 2


def test_human_report_answers_first():
    result = status("--capability", "9.0")
    assert result.returncode == 0
    lines = result.stdout.splitlines()
    assert lines[0] == (
        "vLLM does not use the TRT-LLM MoE kernels here; the plugin changes nothing."
    )
    assert lines[1] == (
        "decision  not-applicable: GPU 0 sm_90; the TRT-LLM MoE kernels run only on "
        "sm_100/sm_103"
    )


NO_SIDE_EFFECTS = """
import sys
from vllm_moe_routing_plugin.diagnostics import advice, cli
from vllm_moe_routing_plugin.diagnostics import status as status_report
code = cli.main(["status", "--capability", "10.0"])
import torch
print("flashinfer imported:", any(m.split(".")[0] == "flashinfer" for m in sys.modules))
print("cuda initialised:", torch.cuda.is_initialized())
"""


@pytest.mark.vllm(">=0.16")
def test_status_imports_no_flashinfer_and_creates_no_cuda_context():
    result = subprocess.run(
        [sys.executable, "-c", NO_SIDE_EFFECTS],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "flashinfer imported: False" in result.stdout
    assert "cuda initialised: False" in result.stdout


@pytest.mark.vllm("==0.19.1")
@pytest.mark.flashinfer(">=0.6.7")
def test_targets_before_and_after_on_0_19():
    data = json.loads(status("--json", "--capability", "10.0").stdout)
    rows = {r["name"]: r for r in data["targets"]}
    fp8 = rows["TrtLlmFp8ExpertsMonolithic"]
    assert fp8["state"] == "patched"
    assert fp8["before"]["fp8-block"] == ["DeepSeekV3", "Simulated"]
    assert set(fp8["after"]["fp8-block"]) == {
        "DeepSeekV3",
        "Simulated",
        "Renormalize",
        "RenormalizeNaive",
    }
    assert rows["TrtLlmBf16ExpertsMonolithic"]["state"] == "absent"
    assert data["package_notes"] == [
        f"flashinfer-python {FLASHINFER} is newer than vLLM's pin ==0.6.6 "
        "(installed over it)",
        f"flashinfer-cubin {FLASHINFER} is newer than vLLM's pin ==0.6.6 "
        "(installed over it)",
        *(
            [advice.never_shipped_note(data["packages"])]
            if FLASHINFER == "0.6.7"
            else []
        ),
    ]
    if FLASHINFER == "0.6.7":
        assert "vLLM PR #38188" in data["package_notes"][-1]
    assert data["advice"] is None  # the fix is installed: nothing to advise


@pytest.mark.vllm(">=0.26")
def test_targets_on_the_newest_vllm_are_native():
    data = json.loads(status("--json", "--capability", "10.0").stdout)
    assert data["action"] == "enable"
    rows = {r["name"]: r for r in data["targets"]}
    for name in (
        "TrtLlmFp8ExpertsMonolithic",
        "TrtLlmBf16ExpertsMonolithic",
        "TrtLlmNvFp4ExpertsMonolithic",
        "TrtLlmMxfp4ExpertsMonolithic",
    ):
        assert rows[name]["state"] == "native", rows[name]
        assert rows[name]["before"] == rows[name]["after"]
    assert rows["TrtLlmFp8Experts"]["state"] == "absent"
    assert data["line"].endswith("TrtLlmMxint4ExpertsMonolithic native")


@pytest.mark.vllm(">=0.26")
def test_guard_what_if_on_the_newest_vllm_shows_the_refusal():
    data = json.loads(
        status("--json", "--capability", "10.0", "--flashinfer", "0.6.6").stdout
    )
    rows = {r["name"]: r for r in data["targets"]}
    fp8 = rows["TrtLlmFp8ExpertsMonolithic"]
    assert fp8["state"] == "patched"
    assert fp8["detail"] == (
        "-Renormalize -RenormalizeNaive for 128 < experts <= 512 with top_k < 10"
    )
    assert "Renormalize" in fp8["before"]["fp8-block"]
    assert "Renormalize" not in fp8["after"]["fp8-block"]


@pytest.mark.no_vllm
def test_status_without_vllm():
    result = status("--json", "--capability", "10.0", "--flashinfer", "0.6.7")
    data = json.loads(result.stdout)
    assert data["action"] == "enable"
    assert data["packages"]["vllm"] is None
    assert data["vllm_problem"].startswith("vLLM is not importable here")
    assert data["targets"] == []
    assert VLLM is None


def _collect(**edges):
    args = cli.parser().parse_args(["status", "--capability", "10.0", "--no-targets"])
    return status_report.collect(args, {}, **edges)


def test_entry_point_not_discoverable_exits_1():
    report = _collect(entry_points=lambda group: [])
    data = report.to_json()
    assert data["plugin"]["discovered"] is False
    assert "vLLM will not load the plugin" in data["plugin"]["problem"]
    assert status_report.exit_status(report) == 1


def test_companion_wheel_mismatch_exits_1():
    def installed_version(distribution):
        return {"flashinfer-python": "0.6.7", "flashinfer-cubin": "0.6.6"}.get(
            distribution
        )

    report = _collect(installed_version=installed_version)
    data = report.to_json()
    assert data["action"] == "enable"
    assert any("flashinfer-cubin 0.6.6 differs" in p for p in data["problems"])
    assert status_report.exit_status(report) == 1


def test_pin_notes():
    assert status_report.pin_notes(
        {"flashinfer-python": "0.6.7", "flashinfer-cubin": "0.6.6"},
        {"flashinfer-python": "==0.6.6", "flashinfer-cubin": "==0.6.6"},
    ) == [
        "flashinfer-python 0.6.7 is newer than vLLM's pin ==0.6.6 (installed over it)"
    ]
    assert status_report.pin_notes(
        {"flashinfer-python": "0.6.6"}, {"flashinfer-python": "==0.7.2.post1"}
    ) == ["flashinfer-python 0.6.6 is older than vLLM's pin ==0.7.2.post1"]
