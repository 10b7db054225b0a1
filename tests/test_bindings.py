# SPDX-License-Identifier: Apache-2.0
"""The binding check: every reference vLLM's source makes into FlashInfer,
bound to the installed FlashInfer.

The scanner is exercised on small vLLM-shaped trees; the check itself on the
installed vLLM and FlashInfer, where the environment has them (the release
matrix and the ``bindings`` sessions install vLLM 0.18.1 / 0.19.1 with each
candidate FlashInfer).
"""

from __future__ import annotations

import importlib.util
import json
import sys
import textwrap
from pathlib import Path

import pytest

from vllm_moe_routing_plugin import facts
from vllm_moe_routing_plugin.diagnostics import advice, bindings, cli


def tree(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / "vllm" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    return root / "vllm"


VLLM_LIKE = {
    "__init__.py": "",
    "utils/__init__.py": "",
    "utils/flashinfer.py": """
        def _lazy_import_wrapper(module_name, attr_name):
            ...
        fused = _lazy_import_wrapper("flashinfer.fused_moe", "fused")
        def has_it():
            required = [("flashinfer.fused_moe", "fused"), ("flashinfer", "gone")]
            return fused(1, x=2)
    """,
    "model_executor/layers/fused_moe/experts/a.py": """
        import flashinfer
        from flashinfer.fused_moe import RoutingMethodType as R, fused as direct
        from vllm.utils.flashinfer import fused as lazy
        from .....utils import flashinfer as fi_utils

        def apply(args, kwargs):
            flashinfer.fused_moe.fused(1, 2, top_k=3)
            direct(routing_logits=1)
            lazy(*args, **kwargs)
            fi_utils.fused(a=1)
            return R.Renormalize
    """,
    "attention/b.py": """
        def f():
            import flashinfer.decode as dec
            return dec.run(1)
    """,
    "unrelated.py": "import os\n",
}


def test_the_scanner_finds_imports_names_and_calls_through_every_alias(tmp_path):
    root = tree(tmp_path, VLLM_LIKE)
    found = {
        (r.kind, r.target, r.file, r.positional, r.keywords, r.unpacked)
        for r in bindings.scan(root)
    }
    experts = "model_executor/layers/fused_moe/experts/a.py"
    utils = "utils/flashinfer.py"
    assert found == {
        ("import", "flashinfer", experts, 0, (), False),
        ("import", "flashinfer.fused_moe.RoutingMethodType", experts, 0, (), False),
        ("import", "flashinfer.fused_moe.fused", experts, 0, (), False),
        ("call", "flashinfer.fused_moe.fused", experts, 2, ("top_k",), False),
        ("call", "flashinfer.fused_moe.fused", experts, 0, ("routing_logits",), False),
        # through vLLM's lazy wrapper, imported by name and through its module
        ("call", "flashinfer.fused_moe.fused", experts, 0, (), True),
        ("call", "flashinfer.fused_moe.fused", experts, 0, ("a",), False),
        (
            "name",
            "flashinfer.fused_moe.RoutingMethodType.Renormalize",
            experts,
            0,
            (),
            False,
        ),
        ("name", "flashinfer.fused_moe.fused", utils, 0, (), False),
        ("name", "flashinfer.gone", utils, 0, (), False),
        ("call", "flashinfer.fused_moe.fused", utils, 1, ("x",), False),
        ("import", "flashinfer.decode", "attention/b.py", 0, (), False),
        ("call", "flashinfer.decode.run", "attention/b.py", 1, (), False),
    }
    moe = {r.file for r in bindings.scan(root) if r.moe}
    assert moe == {experts, utils}


FLASHINFER_LIKE = {
    "flashinfer/__init__.py": "from . import fused_moe\n",
    "flashinfer/fused_moe.py": """
        import enum
        class RoutingMethodType(enum.IntEnum):
            Default = 0
            Renormalize = 1
            MiniMax2 = 7
        def fused(routing_logits=None, top_k=1, *, a=None, x=None):
            ...
    """,
}


@pytest.fixture
def flashinfer_stand_in(tmp_path, monkeypatch):
    """A FlashInfer of known signatures on ``sys.path`` (an environment
    without the real one)."""
    if importlib.util.find_spec("flashinfer") is not None:
        pytest.skip("a real FlashInfer is installed here")
    site = tmp_path / "site"
    for name, text in FLASHINFER_LIKE.items():
        path = site / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    monkeypatch.syspath_prepend(str(site))
    yield
    for name in [m for m in sys.modules if m.split(".")[0] == "flashinfer"]:
        del sys.modules[name]


def test_each_reference_is_bound_or_says_why_not(tmp_path, flashinfer_stand_in):
    root = tree(tmp_path, VLLM_LIKE)
    checked = {
        (c.reference.target, c.reference.line, c.state, c.detail)
        for c in map(bindings.check, bindings.scan(root))
        if c.state != "binds"
    }
    assert checked == {
        ("flashinfer.gone", 6, "missing", "module has no 'gone'"),
        # top_k passed by position and by name
        (
            "flashinfer.fused_moe.fused",
            8,
            "does-not-bind",
            "multiple values for argument 'top_k'",
        ),
        ("flashinfer.decode", 3, "missing", "module has no 'decode'"),
        ("flashinfer.decode.run", 4, "missing", "module has no 'decode'"),
    }


def test_a_flashinfer_that_does_not_import_fails_the_check_once(
    tmp_path, flashinfer_stand_in, capsys
):
    (tmp_path / "site" / "flashinfer" / "__init__.py").write_text(
        "raise RuntimeError('flashinfer-cubin 0.6.6 does not match 0.6.8.post1')\n"
    )
    versions = {"vllm": "0.19.1", "flashinfer-python": "0.6.8.post1"}
    report = bindings.run(tree(tmp_path, VLLM_LIKE), version_of=versions.get)
    assert report.import_error == (
        "RuntimeError: flashinfer-cubin 0.6.6 does not match 0.6.8.post1"
    )
    assert report.checked == []
    assert not report.ok
    assert bindings.exit_status(report) == 1


def test_the_cuda_bindings_clash_says_what_to_run(tmp_path, flashinfer_stand_in):
    """uv's install of vLLM 0.33 / 0.34 can leave cuda-python 12.6's copy of
    cuda.bindings on disk over cuda-bindings 13's; FlashInfer then fails to
    import with this error (met in this project's environments)."""
    (tmp_path / "site" / "flashinfer" / "__init__.py").write_text(
        "raise AttributeError(\"module 'cuda.bindings.runtime' has no attribute "
        "'cudaLibrary_t'\")\n"
    )
    versions = {
        "vllm": "0.34.0", "flashinfer-python": "0.7.4",
        "cuda-python": "12.6.2.post1", "cuda-bindings": "13.5.0",
    }  # fmt: skip
    report = bindings.run(tree(tmp_path, VLLM_LIKE), version_of=versions.get)
    assert report.import_advice == (
        "cuda-python 12.6.2.post1 overwrote files of cuda-bindings 13.5.0; write them "
        "again: pip install --force-reinstall --no-deps cuda-bindings==13.5.0 (uv: uv "
        "pip install --reinstall-package cuda-bindings cuda-bindings==13.5.0)"
    )
    assert f"  what to run: {report.import_advice}" in bindings.render(report)
    assert bindings.exit_status(report) == 1
    assert (
        bindings.import_advice("ImportError: no module named cuda", versions.get)
        is None
    )
    del versions["cuda-python"]
    assert bindings.import_advice(report.import_error, versions.get) is None


def test_routing_numbers_vllm_passes_are_named_as_flashinfer_reads_them(
    tmp_path, flashinfer_stand_in
):
    root = tree(
        tmp_path,
        {
            "model_executor/layers/fused_moe/config.py": """
                class RoutingMethodType(IntEnum):
                    Default = (0,)
                    Renormalize = (1,)
                    Simulated = (7,)
                    Unspecified = 8.0
            """
        },
    )
    meanings = bindings.routing_meanings(bindings.vllm_routing_methods(root))
    assert [(m.value, m.vllm, m.flashinfer) for m in meanings] == [
        (0, "Default", "Default"),
        (1, "Renormalize", "Renormalize"),
        (7, "Simulated", "MiniMax2"),
        (8, "Unspecified", None),
    ]


def test_without_vllm_the_command_says_so_and_exits_2(tmp_path, capsys, monkeypatch):
    if bindings.vllm_root() is not None:
        pytest.skip("vLLM is installed here")
    assert cli.main(["bindings", "--json"]) == 2
    report = json.loads(capsys.readouterr().out)
    assert report["error"] == "vLLM is not installed"
    assert report["ok"] is False


needs_vllm_and_flashinfer = pytest.mark.skipif(
    bindings.vllm_root() is None or facts.installed_version(facts.FLASHINFER) is None,
    reason="needs vLLM and FlashInfer installed",
)


#: References of vLLM's fused-MoE code that fail with the FlashInfer vLLM
#: itself pins: vLLM's mistakes, not FlashInfer's. vLLM 0.18's
#: ``has_flashinfer_cutedsl_grouped_gemm_nt_masked`` asks FlashInfer for
#: ``silu_and_scaled_nvfp4_experts_quantize``, a name no FlashInfer has (the
#: function is ``silu_and_mul_scaled_nvfp4_experts_quantize``), so vLLM 0.18
#: never finds its CuteDSL MoE kernels; 0.19 asks for the right name.
FAILING_WITH_THE_PIN = {
    "0.18.1": {"flashinfer.silu_and_scaled_nvfp4_experts_quantize"},
}


@needs_vllm_and_flashinfer
def test_vllms_fused_moe_calls_bind_to_its_pinned_or_advised_flashinfer():
    """In an environment of vLLM with the FlashInfer it pins, or with the one
    advised for it: every reference of vLLM's fused-MoE code binds, and the
    routing methods the plugin lets through mean the same to FlashInfer."""
    vllm = facts.installed_version(facts.VLLM)
    installed = facts.installed_version(facts.FLASHINFER)
    pinned = facts.vllm_pins().get(facts.FLASHINFER, "").removeprefix("==")
    advised = advice.for_vllm(vllm)
    if advised is None:
        pytest.skip(f"no FlashInfer advice for vLLM {vllm}")
    if installed not in {pinned, advised.flashinfer}:
        pytest.skip(f"FlashInfer {installed} is neither vLLM {vllm}'s pin nor advised")
    report = bindings.run()
    assert report.error is None
    failing = {c.reference.target for c in report.failures(moe=True)}
    assert failing == FAILING_WITH_THE_PIN.get(vllm, set())
    assert report.summary(moe=True)["calls_bind"] > 20
    meaning = {m.vllm: m.flashinfer for m in report.routing_methods}
    assert meaning["Renormalize"] == "Renormalize"
    assert meaning["RenormalizeNaive"] == "RenormalizeNaive"


@needs_vllm_and_flashinfer
def test_the_command_prints_the_report_and_exits_by_it(capsys):
    code = cli.main(["bindings", "--json"])
    report = json.loads(capsys.readouterr().out)
    assert code == (0 if report["ok"] else 1)
    assert report["vllm"] == facts.installed_version(facts.VLLM)
    if report["import_error"] is None:
        assert report["moe"]["calls"] >= report["moe"]["calls_bind"] > 0
    else:  # FlashInfer does not import here: said once, nothing bound
        assert report["moe"]["calls"] == 0
        assert code == 1


CHECKS_TREE = {
    "model_executor/layers/fused_moe/config.py": """
        class RoutingMethodType(IntEnum):
            DeepSeekV3 = (2,)
            Custom = (6,)
            Simulated = (7,)
            Unspecified = 8.0
    """,
    "model_executor/layers/fused_moe/experts/trtllm_fp8_moe.py": """
        class TrtLlmFp8ExpertsMonolithic:
            @staticmethod
            def _supports_routing_method(routing_method, weight_key, activation_key):
                return routing_method in [
                    RoutingMethodType.DeepSeekV3,
                    RoutingMethodType.Simulated,
                ]
    """,
    "model_executor/layers/quantization/utils/flashinfer_fp4_moe.py": """
        from vllm.model_executor.layers.fused_moe import config
        def _supports_routing_method(routing_method):
            return routing_method in [config.RoutingMethodType.Custom]
    """,
}


def test_each_routing_number_named_differently_says_whether_it_matters(tmp_path):
    """A number FlashInfer names differently matters only where one of vLLM's
    routing checks of the fused kernels lets a layer routed so onto
    FlashInfer's in-kernel routing; the routing simulator is a testing aid."""
    checks = bindings.accepted_routing_methods(tree(tmp_path, CHECKS_TREE))
    assert checks == {
        "TrtLlmFp8ExpertsMonolithic": {"DeepSeekV3", "Simulated"},
        "flashinfer_fp4_moe._supports_routing_method": {"Custom"},
    }
    judged = [
        bindings.judge(bindings.EnumMeaning(value, vllm, flashinfer), checks)
        for value, vllm, flashinfer in [
            (2, "DeepSeekV3", "DeepSeekV3"),
            (6, "Custom", "SigmoidRenorm"),
            (7, "Simulated", "MiniMax2"),
            (8, "Unspecified", None),
        ]
    ]
    assert [(m.matters, m.accepted_by, m.why) for m in judged] == [
        (False, (), ""),
        (
            True,
            ("flashinfer_fp4_moe._supports_routing_method",),
            "MATTERS: flashinfer_fp4_moe._supports_routing_method accepts Custom, "
            "so a layer routed so reaches FlashInfer's in-kernel routing, and "
            "FlashInfer routes such a layer as SigmoidRenorm, not as Custom: "
            "wrong experts",
        ),
        (
            False,
            ("TrtLlmFp8ExpertsMonolithic",),
            "matters only for testing: TrtLlmFp8ExpertsMonolithic accepts "
            "Simulated, which only vLLM's routing simulator "
            "(VLLM_MOE_ROUTING_SIMULATION_STRATEGY, a testing aid) gives a layer; "
            "FlashInfer routes such a layer as MiniMax2, not as Simulated",
        ),
        (
            False,
            (),
            "does not matter: no routing check of vLLM's fused TRT-LLM kernels "
            "accepts Unspecified, so a layer routed so never reaches FlashInfer's "
            "in-kernel routing (vLLM routes it before the kernel, or picks another "
            "kernel)",
        ),
    ]
    report = bindings.Report("0.19.1", "0.6.8.post1", routing_methods=judged)
    assert not report.ok
    assert bindings.exit_status(report) == 1  # a served model would be misrouted
    assert bindings.render(report).splitlines()[-7:] == [
        "  routing-method numbers vLLM passes that FlashInfer names differently:",
        "    6: vLLM Custom, FlashInfer SigmoidRenorm",
        f"       {judged[1].why}",
        "    7: vLLM Simulated, FlashInfer MiniMax2",
        f"       {judged[2].why}",
        "    8: vLLM Unspecified, FlashInfer (none)",
        f"       {judged[3].why}",
    ]
    report.routing_methods = [judged[0], judged[2], judged[3]]
    assert report.ok


def test_without_vllm_the_text_says_what_is_missing(capsys):
    if bindings.vllm_root() is not None:
        pytest.skip("vLLM is installed here")
    flashinfer = facts.installed_version(facts.FLASHINFER)
    assert cli.main(["bindings"]) == 2
    assert capsys.readouterr().out.splitlines() == [
        "Nothing checked: vLLM is not installed in this environment"
        + (f" (flashinfer-python {flashinfer} is)." if flashinfer else "."),
        "This check binds the installed vLLM's calls into FlashInfer to the installed "
        "FlashInfer: run it where both are installed, the way you serve.",
    ]


#: What ``bindings`` says about the routing numbers vLLM 0.19.1 and each
#: FlashInfer name differently (vLLM's checks accept Simulated, not Custom).
SIMULATED_019 = (
    "matters only for testing: TrtLlmFp8ExpertsMonolithic, "
    "TrtLlmNvFp4ExpertsMonolithic accept Simulated, which only vLLM's routing "
    "simulator (VLLM_MOE_ROUTING_SIMULATION_STRATEGY, a testing aid) gives a layer; "
)
NEVER_READ = (
    "does not matter: no routing check of vLLM's fused TRT-LLM kernels accepts "
    "{}, so a layer routed so never reaches FlashInfer's in-kernel routing (vLLM "
    "routes it before the kernel, or picks another kernel)"
)
ROUTING_LINES_019 = {
    "0.6.8.post1": [
        "    6: vLLM Custom, FlashInfer SigmoidRenorm",
        "       " + NEVER_READ.format("Custom"),
        "    7: vLLM Simulated, FlashInfer MiniMax2",
        "       " + SIMULATED_019 + "FlashInfer routes such a layer as MiniMax2, "
        "not as Simulated",
    ],
    "0.6.6": [
        "    6: vLLM Custom, FlashInfer Unspecified",
        "       " + NEVER_READ.format("Custom"),
        "    7: vLLM Simulated, FlashInfer (none)",
        "       " + SIMULATED_019 + "FlashInfer knows no routing method 7",
        "    8: vLLM Unspecified, FlashInfer (none)",
        "       " + NEVER_READ.format("Unspecified"),
    ],
}


@pytest.mark.vllm("==0.19.1")
def test_the_installed_routing_numbers_say_whether_they_matter(capsys):
    installed = facts.installed_version(facts.FLASHINFER)
    if installed not in ROUTING_LINES_019:
        pytest.skip(f"no expectation for FlashInfer {installed}")
    assert cli.main(["bindings"]) == 0
    lines = capsys.readouterr().out.splitlines()
    start = lines.index(
        "  routing-method numbers vLLM passes that FlashInfer names differently:"
    )
    assert lines[start + 1 :] == ROUTING_LINES_019[installed]
