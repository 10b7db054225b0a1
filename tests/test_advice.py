# SPDX-License-Identifier: Apache-2.0
"""The FlashInfer advice for vLLM 0.18 / 0.19 and what ``status`` says of it.

The decision comes from the real policy; package versions are handed in (the
edge: FlashInfer versions this environment does not have).
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from vllm_moe_routing_plugin import decision, envs, facts, policy
from vllm_moe_routing_plugin.diagnostics import advice

SM100 = (facts.Gpu(0, "B200", (10, 0), "assumed"),)
ADVISED = {a.flashinfer for a in advice.ADVICE}


def decided(versions: dict[str, str | None], environ=None) -> decision.Decision:
    return policy.decide(facts.Facts(versions, SM100), envs.read(environ or {}))


def pinned(vllm: str, cubin: bool = True, **extra: str) -> dict[str, str | None]:
    versions: dict[str, str | None] = {
        facts.VLLM: vllm,
        facts.FLASHINFER: "0.6.6",
        facts.FLASHINFER_CUBIN: "0.6.6" if cubin else None,
    }
    versions.update(extra)
    return versions


@pytest.mark.parametrize("advised", advice.ADVICE, ids=lambda a: a.flashinfer)
def test_every_advised_flashinfer_has_the_fix(advised):
    """Advice that left the guard in place would be worthless: the decision
    with the advised FlashInfer installed is ``enable``."""
    version = policy.parse_version(advised.flashinfer)
    assert version is not None
    assert decided({facts.FLASHINFER: str(version)}).action == "enable"


@pytest.mark.parametrize("vllm, cubin", [("0.19.1", True), ("0.18.1", False)])
def test_the_guard_of_an_unfixed_pin_comes_with_the_install_command(vllm, cubin):
    versions = pinned(vllm, cubin)
    decision = decided(versions)
    assert decision.action == "guard"
    recommendation = advice.recommend(decision, versions)
    assert recommendation is not None
    x = recommendation.flashinfer
    cubin_wheel = f' "flashinfer-cubin=={x}"' if cubin else ""
    wheels = f'"flashinfer-python=={x}"{cubin_wheel}'
    assert recommendation.command == f"pip install --no-deps {wheels}"
    assert "vLLM PR #38188" in recommendation.reason


def test_a_jit_cache_wheel_is_upgraded_from_its_own_index():
    versions = pinned("0.19.1", **{facts.FLASHINFER_JIT_CACHE: "0.6.6+cu129"})
    recommendation = advice.recommend(decided(versions), versions)
    assert recommendation is not None
    x = recommendation.flashinfer
    assert recommendation.command.endswith(
        f' "flashinfer-jit-cache=={x}+cu129" '
        "--extra-index-url https://flashinfer.ai/whl/cu129"
    )


@pytest.mark.parametrize(
    "versions, environ",
    [
        # the fix is installed: nothing to advise
        ({facts.VLLM: "0.19.1", facts.FLASHINFER: "0.6.7"}, {}),
        # a guard the user asked for is not a reason to install anything
        (pinned("0.19.1"), {envs.RENORMALIZE_VAR: "disable"}),
        # a vLLM whose calls were not checked
        (pinned("0.17.1"), {}),
        (pinned("0.19.0"), {}),
    ],
)
def test_no_advice_where_it_does_not_apply(versions, environ):
    assert advice.recommend(decided(versions, environ), versions) is None


@pytest.mark.parametrize(
    "flashinfer, vllm, noted",
    [
        ("0.6.7", "0.19.1", True),
        ("0.6.7.post3", "0.18.0", True),
        ("0.6.8.post1", "0.19.1", False),
        ("0.6.7", "0.20.2", False),
        ("0.6.6", "0.19.1", False),
    ],
)
def test_flashinfer_0_6_7_on_0_18_or_0_19_cites_vllm_pr_38188(flashinfer, vllm, noted):
    note = advice.never_shipped_note({facts.FLASHINFER: flashinfer, facts.VLLM: vllm})
    assert (note is not None) == noted
    if noted:
        assert note is not None and note.startswith(advice.PR_38188)


@pytest.mark.processes
@pytest.mark.vllm("==0.19.1")
@pytest.mark.flashinfer("==0.6.6")
def test_status_on_vllm_0_19_1_as_pinned_names_the_advised_install():
    run = [sys.executable, "-m", "vllm_moe_routing_plugin", "status"]
    run += ["--capability", "10.0"]
    result = subprocess.run([*run, "--json"], capture_output=True, text=True)
    data = json.loads(result.stdout)
    assert data["action"] == "guard"
    advised = advice.for_vllm("0.19.1")
    assert advised is not None
    x = advised.flashinfer
    assert data["advice"]["flashinfer"] == x
    command = f'pip install --no-deps "flashinfer-python=={x}" "flashinfer-cubin=={x}"'
    assert data["advice"]["command"] == command
    text = subprocess.run(run, capture_output=True, text=True, check=False).stdout
    assert f"advice    {command}" in text.splitlines()


@pytest.mark.vllm("==0.19.1")
@pytest.mark.flashinfer(">0.6.6")
def test_the_test_commands_patch_path_installs_the_advised_flashinfer():
    """noxfile.py's ADVISED_FLASHINFER follows the advice: the test command
    proves the install the README and ``status`` tell users to make."""
    advised = advice.for_vllm("0.19.1")
    assert advised is not None
    assert facts.installed_version(facts.FLASHINFER) == advised.flashinfer


def test_printed_pointers_are_published_urls_of_pages_that_exist():
    """What the plugin prints points to the published docs (``pyproject.toml``'s
    ``Source``), never to a path only a clone has; and each page exists."""
    import re
    from pathlib import Path

    from vllm_moe_routing_plugin import about

    root = Path(__file__).resolve().parents[1]
    pyproject = (root / "pyproject.toml").read_text(encoding="utf-8")
    assert f'Source = "{about.REPOSITORY}"' in pyproject
    printed = " ".join(a.reason for a in advice.ADVICE)
    urls = re.findall(r"https://\S+", printed)
    assert urls
    assert "docs/" not in re.sub(r"https://\S+", "", printed)
    for url in urls:
        page = url.removeprefix(about.docs_url(""))
        assert page != url, url
        assert (root / "docs" / page).is_file(), url
