# SPDX-License-Identifier: Apache-2.0
"""``vllm-moe-routing status`` in a fresh process of this environment."""

import json
import os
import subprocess
import sys

import pytest

from support import FLASHINFER, VLLM
from vllm_moe_routing_plugin.diagnostics import advice, cli, verify
from vllm_moe_routing_plugin.diagnostics import status as status_report


@pytest.fixture
def status(monkeypatch, capsys):
    """``vllm-moe-routing status ARGS`` in this process, as ``main`` runs it
    (each run puts vLLM's checks back); what needs a fresh process (vLLM's
    import output, no FlashInfer or CUDA context) uses ``command``."""

    if VLLM is not None:
        # What vLLM logs while its modules first load goes to the stream its
        # handler holds, here pytest's: let it out before the command runs.
        from vllm_support import import_target_modules

        import_target_modules()

    def run(*args, env=None):
        for name, value in (env or {}).items():
            monkeypatch.setenv(name, value)
        capsys.readouterr()
        try:
            code = cli.main(["status", *args])
        except SystemExit as exit:  # argparse's usage errors
            code = exit.code
        out, err = capsys.readouterr()
        return subprocess.CompletedProcess(args, code, out, err)

    return run


def test_json_keys_and_what_if_flags(status):
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


def test_guard_what_if(status):
    data = json.loads(
        status("--json", "--capability", "10.0", "--flashinfer", "0.6.6").stdout
    )
    assert data["action"] == "guard"
    assert "flashinfer#2822" in data["reason"]


def test_invalid_setting_exits_1(status):
    result = status(env={"VLLM_MOE_ROUTING_RENORMALIZE": "sometimes"})
    assert result.returncode == 1
    assert "VLLM_MOE_ROUTING_RENORMALIZE='sometimes' is not valid" in result.stdout


def test_a_misspelt_setting_is_a_row_and_a_problem_and_exits_1(status):
    env = {"VLLM_MOE_ROUTING_KNOWN_BUG": "flashinfer#3946=guard"}
    text = status(env=env)
    assert text.returncode == 1
    message = (
        "VLLM_MOE_ROUTING_KNOWN_BUG is not a setting of the plugin or vLLM (did you "
        "mean VLLM_MOE_ROUTING_KNOWN_BUGS?); ignored"
    )
    assert f"problem   {message}" in text.stdout.splitlines()
    assert (
        "  VLLM_MOE_ROUTING_KNOWN_BUG          'flashinfer#3946=guard' -> ignored  "
        "NOT A SETTING (see problem)"
    ) in text.stdout.splitlines()
    data = json.loads(status("--json", env=env).stdout)
    row = [s for s in data["settings"] if s["name"] == "VLLM_MOE_ROUTING_KNOWN_BUG"]
    assert row == [
        {
            "name": "VLLM_MOE_ROUTING_KNOWN_BUG",
            "raw": "flashinfer#3946=guard",
            "value": None,
            "valid": False,
            "problem": message,
            "shown": "ignored",
            "default": True,
        }
    ]
    assert message in data["problems"]


def test_plugins_allow_list_with_spaces_exits_1(status):
    result = status(
        "--json", env={"VLLM_PLUGINS": "lora_filesystem_resolver, moe_routing"}
    )
    assert result.returncode == 1
    data = json.loads(result.stdout)
    assert data["plugin"]["allowed"] is False
    assert "with spaces" in data["plugin"]["problem"]


@pytest.mark.parametrize(
    "args",
    [
        ["--capability", "sm100"],
        ["--capability", "10.30"],
        ["--flashinfer", "new"],
        ["frobnicate"],
        ["verify", "--arch", "banana"],
        ["verify", "--arch", "sm_99x"],
        ["verify", "--flashinfer-version", "notaversion"],
    ],
)
def test_usage_errors_exit_2(args, status):
    assert status(*args).returncode == 2


def test_human_report_answers_first(status):
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


@pytest.mark.processes
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
def test_targets_before_and_after_on_0_19(status):
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
@pytest.mark.flashinfer(">=0.6.18")  # no catalogue entry of FlashInfer in range
def test_targets_on_the_newest_vllm_are_native(status):
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
    # vLLM's MXINT4 class still drops the layer's scale (vllm#32437).
    mxint4 = rows["TrtLlmMxint4ExpertsMonolithic"]
    assert mxint4["layer_check"] == [
        "vllm#32437 guarded: DeepSeekV3 layers whose routed_scaling_factor into the "
        "kernel is not 1"
    ]
    assert data["line"].endswith("TrtLlmMxint4ExpertsMonolithic checks each layer")


@pytest.mark.vllm(">=0.26")
def test_an_ignored_vllm_defect_stays_in_range_and_its_class_native(status):
    """``VLLM_MOE_ROUTING_KNOWN_BUGS=vllm#32437=ignore``: the entry is still in
    range of this vLLM (the user switched its guard off, not the bug), and
    vLLM's MXINT4 class is left as vLLM has it."""
    env = {"VLLM_MOE_ROUTING_KNOWN_BUGS": "vllm#32437=ignore"}
    data = json.loads(status("--json", "--capability", "10.0", env=env).stdout)
    row = next(r for r in data["known_bugs"] if r["id"] == "vllm#32437")
    assert (row["in_range"], row["action"], row["applies_to"]) == (True, "ignore", [])
    rows = {r["name"]: r for r in data["targets"]}
    assert rows["TrtLlmMxint4ExpertsMonolithic"]["state"] == "native"


@pytest.mark.vllm(">=0.26")
def test_guard_what_if_on_the_newest_vllm_shows_the_refusal(status):
    data = json.loads(
        status("--json", "--capability", "10.0", "--flashinfer", "0.6.6").stdout
    )
    rows = {r["name"]: r for r in data["targets"]}
    fp8 = rows["TrtLlmFp8ExpertsMonolithic"]
    assert (fp8["state"], fp8["detail"]) == ("patched", "checks each layer")
    assert fp8["layer_check"][0] == (
        "flashinfer#2822 guarded: Renormalize/RenormalizeNaive layers with "
        "128 < experts <= 512 and top_k < 10"
    )
    # The routing check is vLLM's; the layer check refuses the layers inside.
    assert "Renormalize" in fp8["before"]["fp8-block"]
    assert fp8["after"] == fp8["before"]


@pytest.mark.no_vllm
def test_status_without_vllm(status):
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


@pytest.mark.parametrize(
    ("vllm", "said"),
    [
        ("0.34.0", None),
        (
            "0.35.0",
            "vLLM 0.35.0 is newer than the newest proven, 0.34.0: targets found by "
            "shape, vLLM defects from their known ranges",
        ),
    ],
)
def test_status_names_a_release_newer_than_proven_on_its_first_screen(vllm, said):
    versions = {"vllm": vllm, "flashinfer-python": "0.7.4"}
    report = _collect(installed_version=versions.get, requires_of=lambda name: [])
    second_line = status_report.render(report).splitlines()[1]
    assert second_line.startswith("decision  enable: flashinfer-python 0.7.4 >= 0.6.7")
    assert (said is not None and second_line.endswith(f"; {said}")) or (
        said is None and "newer than" not in status_report.render(report)
    ), second_line
    # the INFO line vLLM would log
    assert said in report.line if said is not None else "newer than" not in report.line


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


def command(*args, env=None, stderr=subprocess.PIPE):
    """``vllm-moe-routing ARGS`` in a fresh process of this environment."""
    return subprocess.run(
        [sys.executable, "-m", "vllm_moe_routing_plugin", *args],
        env={**os.environ, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=stderr,
        text=True,
        timeout=300,
        check=False,
    )


@pytest.mark.parametrize(
    "args",
    [
        ["--json", "--capability", "10.0", "--flashinfer", "0.6.6", "status"],
        ["status", "--json", "--capability", "10.0", "--flashinfer", "0.6.6"],
        ["--json", "--capability", "10.0", "status", "--flashinfer", "0.6.6"],
        ["--json", "--capability", "10.0", "--flashinfer", "0.6.6"],
    ],
)
def test_options_count_before_and_after_the_command(args):
    result = command(*args, "--no-targets")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert (data["action"], data["assumed"]) == ("guard", ["gpus", "flashinfer-python"])
    assert data["reason"] == (
        "flashinfer-python 0.6.6 < 0.6.7 (flashinfer#2822); GPU 0 sm_100"
    )


@pytest.mark.parametrize("args", [["--json", "verify"], ["verify", "--json"]])
def test_json_before_or_after_verify_is_honoured(args, capsys):
    code = cli.main(args)
    result = json.loads(capsys.readouterr().out)
    assert set(result) >= {"gpus", "probe", "kernel", "verdict"}
    assert code == verify.verify_exit(result)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--capability", "10.0", "verify"],
            "--capability applies to status only, not verify",
        ),
        (
            ["--no-targets", "--flashinfer", "0.6.7", "bindings"],
            "--flashinfer, --no-targets applies to status only, not bindings",
        ),
        (
            ["verify", "--capability", "10.0"],
            "--capability applies to status only, not verify",
        ),
        (["bindings", "--frobnicate"], "unrecognized arguments: --frobnicate"),
    ],
)
def test_status_options_with_another_command_are_a_usage_error(args, message, capsys):
    with pytest.raises(SystemExit) as exited:
        cli.main(args)
    assert exited.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"vllm-moe-routing: error: {message}"
    )


def test_version():
    from vllm_moe_routing_plugin import __version__

    result = command("--version")
    assert (result.returncode, result.stdout, result.stderr) == (
        0,
        f"vllm-moe-routing {__version__}\n",
        "",
    )


@pytest.mark.parametrize(
    "args",
    [
        ["verify", "--json"],
        ["status", "--json", "--capability", "10.0", "--no-targets"],
        ["status", "--capability", "10.0", "--no-targets"],
    ],
)
def test_a_reader_that_leaves_early_ends_the_command_quietly(args):
    """``vllm-moe-routing verify --json | head -c1``: the reader is gone
    before the report is written (here: before the process starts)."""
    with subprocess.Popen(
        [sys.executable, "-m", "vllm_moe_routing_plugin", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as process:
        process.stdout.close()
        stderr = process.stderr.read()
        code = process.wait(timeout=300)
    assert (code, stderr) == (cli.CLOSED_STDOUT, "")


def test_settings_are_shown_as_the_user_writes_them():
    result = command(
        "status",
        "--no-targets",
        env={
            "VLLM_MOE_ROUTING_DEVICE_CAPABILITY": "10.0, 10.3",
            "VLLM_MOE_ROUTING_KNOWN_BUGS": "flashinfer#3946=guard,flashinfer#4237=of",
            "VLLM_MOE_ROUTING_PLUGIN_DISABLE": "",
            "VLLM_MOE_ROUTING_RENORMALIZE": "",
        },
    )
    lines = result.stdout.splitlines()
    start = lines.index("settings")
    assert lines[start + 1 : start + 5] == [
        "  VLLM_MOE_ROUTING_PLUGIN_DISABLE     '' -> 0",
        "  VLLM_MOE_ROUTING_RENORMALIZE        '' -> auto",
        "  VLLM_MOE_ROUTING_DEVICE_CAPABILITY  '10.0, 10.3' -> 10.0,10.3",
        "  VLLM_MOE_ROUTING_KNOWN_BUGS         "
        "'flashinfer#3946=guard,flashinfer#4237=of' -> flashinfer#3946=guard  "
        "INVALID, used as shown (see problem)",
    ]
    assert (
        "problem   VLLM_MOE_ROUTING_KNOWN_BUGS: item 'flashinfer#4237=of' is not "
        "valid (the action must be guard, fix, warn or ignore); it is skipped, the "
        "other items apply"
    ) in lines
    assert result.returncode == 1


def test_an_unreadable_off_switch_reports_the_plugin_disabled():
    result = command(
        "status", "--json", "--no-targets", env={"VLLM_MOE_ROUTING_PLUGIN_DISABLE": "y"}
    )
    data = json.loads(result.stdout)
    assert (result.returncode, data["action"], data["reason"]) == (
        1,
        "disabled",
        "VLLM_MOE_ROUTING_PLUGIN_DISABLE='y', taken as 1",
    )


def test_the_guard_answer_names_the_layers_kept_off():
    result = command("--capability", "10.0", "--flashinfer", "0.6.6", "--no-targets")
    assert result.stdout.splitlines()[0] == (
        "Renormalize/RenormalizeNaive layers with 128 < experts <= 512 and top_k < 10 "
        "are kept off the fused TRT-LLM kernels; other layers keep them."
    )


@pytest.mark.processes
@pytest.mark.vllm(">=0.16")
def test_vllms_import_noise_stays_out_of_the_report():
    """vLLM logs ``Failed to import from vllm._C`` (no GPU here) and Triton
    notes while its modules load; neither belongs to the report, and stderr
    gets no progress note when it is not a terminal."""
    result = command("status", "--capability", "9.0")
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout.splitlines()[0] == (
        "vLLM does not use the TRT-LLM MoE kernels here; the plugin changes nothing."
    )


@pytest.mark.processes
@pytest.mark.vllm(">=0.16")
def test_a_terminal_gets_a_note_while_vllm_loads():
    import pty

    primary, secondary = pty.openpty()
    try:
        result = command("status", "--capability", "9.0", stderr=secondary)
        os.close(secondary)
        secondary = -1
        seen = b""
        while True:
            try:
                chunk = os.read(primary, 4096)
            except OSError:  # EIO: the terminal's other end is closed
                break
            if not chunk:
                break
            seen += chunk
    finally:
        os.close(primary)
        if secondary != -1:
            os.close(secondary)
    assert result.returncode == 0
    assert seen.decode() == (
        "vllm-moe-routing: importing vLLM's fused-MoE modules to ask their routing "
        "checks ...\r\n"
    )


def test_a_what_if_flashinfer_is_not_shown_as_installed():
    """``--flashinfer`` plans for a FlashInfer that is not there: the report
    keeps it apart from what is installed, and notes about vLLM's pins speak
    of what is installed."""

    def installed_version(distribution):
        return {
            "vllm": "0.19.1",
            "flashinfer-python": "0.6.6",
            "flashinfer-cubin": "0.6.6",
        }.get(distribution)

    def requires_of(distribution):
        if distribution == "vllm":
            return ["flashinfer-python==0.6.6", "flashinfer-cubin==0.6.6"]
        return []

    args = cli.parser().parse_args(
        ["status", "--capability", "10.0", "--flashinfer", "0.6.8.post1",
         "--no-targets"]
    )  # fmt: skip
    report = status_report.collect(
        args, {}, installed_version=installed_version, requires_of=requires_of
    )
    assert report.action == "enable"  # decided on the assumed version
    assert report.packages["flashinfer-python"] == "0.6.6"
    assert report.packages["flashinfer-cubin"] == "0.6.6"
    assert report.assumed_versions == {
        "flashinfer-python": "0.6.8.post1",
        "flashinfer-cubin": "0.6.8.post1",
    }
    assert report.package_notes == []  # nothing is installed over the pins
    text = status_report.render(report)
    assert "  flashinfer-python     0.6.6 (assumed 0.6.8.post1 by --flashinfer)" in (
        text.splitlines()
    )


def test_no_targets_does_not_claim_this_vllm_has_none():
    report = _collect(installed_version={"flashinfer-python": "0.6.7"}.get)
    assert report.action == "enable"
    assert report.line.endswith(" - targets not probed (--no-targets)"), report.line


def test_a_known_bugs_item_that_cannot_be_honoured_is_not_shown_as_used():
    args = cli.parser().parse_args(["status", "--capability", "10.0", "--no-targets"])
    report = status_report.collect(
        args,
        {
            "VLLM_MOE_ROUTING_KNOWN_BUGS": (
                "flashinfer#3946=guard,flashinfer#3964=guard,flashinfer#4237=guard"
            )
        },
    )
    row = next(r for r in report.settings if r.name == "VLLM_MOE_ROUTING_KNOWN_BUGS")
    assert row.shown == "flashinfer#3946=guard"
    assert not row.valid
    assert "names flashinfer#3964, not a known bug" in row.problem
    assert "flashinfer#4237 cannot be guarded" in row.problem
    assert "INVALID, used as shown" in status_report.render(report)
    assert status_report.exit_status(report) == 1


def test_no_targets_says_the_targets_were_not_probed():
    args = cli.parser().parse_args(
        ["status", "--capability", "10.0", "--flashinfer", "0.6.14", "--no-targets"]
    )
    report = status_report.collect(args, {})
    assert report.targets_probed is False
    text = status_report.render(report).splitlines()
    assert text[text.index("targets") + 1] == "  not probed (--no-targets)"
    entry = next(line for line in text if line.startswith("  flashinfer#3875 "))
    assert entry.endswith("; at targets not probed (--no-targets)"), entry


def test_an_assumed_flashinfer_version_is_read_as_a_version():
    args = cli.parser().parse_args(
        [
            "status",
            "--capability",
            "10.0",
            "--flashinfer",
            " 0.6.7+cu130 ",
            "--no-targets",
        ]
    )
    report = status_report.collect(args, {})
    assert report.reason == "flashinfer-python 0.6.7+cu130 >= 0.6.7; GPU 0 sm_100"


def test_an_allow_list_without_the_plugin_says_how_to_let_it_load():
    entry = status_report.entry_point({"VLLM_PLUGINS": "lora_filesystem_resolver"})
    assert entry.allowed is False
    assert entry.problem == (
        "VLLM_PLUGINS='lora_filesystem_resolver' does not list moe_routing, so vLLM "
        "will not load the plugin; add moe_routing to it (comma-separated, no "
        "spaces) or unset it"
    )


@pytest.mark.parametrize("capability", ["9.0", None])
def test_status_without_an_sm100_gpu_names_an_unproven_release_too(capability):
    """The plugin acts on nothing here, but the known-bugs section is built
    from ranges the newer release was not proven against: the first screen
    says so, and the JSON's ``unproven``."""
    argv = ["status", "--no-targets"]
    argv += ["--capability", capability] if capability else []
    args = cli.parser().parse_args(argv)
    versions = {"vllm": "0.35.0", "flashinfer-python": "0.8.0"}
    report = status_report.collect(
        args, {}, installed_version=versions.get, requires_of=lambda name: []
    )
    assert report.action == "not-applicable"
    lines = status_report.render(report).splitlines()
    first_screen = lines[: lines.index("")]
    said = [line for line in first_screen if line.startswith("unproven  ")]
    assert said == [
        "unproven  vLLM 0.35.0 is newer than the newest proven, 0.34.0: targets "
        "found by shape, vLLM defects from their known ranges",
        "unproven  FlashInfer 0.8.0 is newer than the newest proven, 0.7.4: known "
        "bugs from their ranges",
    ]
    assert report.to_json()["unproven"] == [line[10:] for line in said]
