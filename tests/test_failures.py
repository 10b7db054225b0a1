# SPDX-License-Identifier: Apache-2.0
"""A failure in any step becomes one WARNING naming the step; nothing escapes
``register()`` (vLLM does not catch what a general plugin raises) and nothing
stays patched."""

import logging
import sys

import pytest

from vllm_moe_routing_plugin import (
    activation,
    checks,
    decision,
    envs,
    facts,
    import_hook,
    patching,
    policy,
    register,
    targets,
)


class Boom(RuntimeError):
    pass


def boom(*args, **kwargs):
    raise Boom("injected")


pytestmark = pytest.mark.vllm(">=0.16")

STEPS = [
    (envs, "read", "reading settings"),
    (facts, "read_gpus", "reading GPUs"),
    (facts, "read_versions", "reading package versions"),
    (policy, "decide", "deciding"),
    (import_hook.ImportHook, "install", "installing the import hook"),
]


@pytest.mark.parametrize(("owner", "name", "step"), STEPS, ids=[s[2] for s in STEPS])
def test_failing_step_is_one_warning(owner, name, step, monkeypatch, records):
    monkeypatch.setenv("VLLM_MOE_ROUTING_DEVICE_CAPABILITY", "10.0")
    monkeypatch.setenv("VLLM_MOE_ROUTING_RENORMALIZE", "enable")
    monkeypatch.setattr(owner, name, boom)
    meta_path = list(sys.meta_path)
    register()
    warnings = records.failures()
    assert len(warnings) == 1, warnings
    assert f": {step} failed (" in warnings[0]
    assert warnings[0].endswith("; vLLM left unchanged")
    assert activation.current() is None
    assert sys.meta_path == meta_path


def test_failing_registration_with_vllm_is_a_warning_and_the_plugin_goes_on(
    monkeypatch, records
):
    monkeypatch.setitem(sys.modules, "vllm.envs", None)  # import of it raises
    monkeypatch.setenv("VLLM_MOE_ROUTING_DEVICE_CAPABILITY", "9.0")
    register()
    warnings = records.lines(logging.WARNING)
    assert len(warnings) == 1
    assert "registering the plugin's variables with vLLM failed" in warnings[0]
    assert activation.current().decision.action == "not-applicable"


def test_failing_target_is_left_alone_and_reported(monkeypatch, records):
    monkeypatch.setattr(checks, "locate", boom)
    outcome = patching.apply(targets.TARGETS[0], sys.modules[__name__], _enable())
    assert outcome.state == "failed"
    assert "Boom: injected" in outcome.detail
    assert outcome.patch is None


def test_invalid_setting_is_a_warning_and_the_default(monkeypatch, records):
    monkeypatch.setenv("VLLM_MOE_ROUTING_RENORMALIZE", "sometimes")
    monkeypatch.setenv("VLLM_MOE_ROUTING_DEVICE_CAPABILITY", "9.0")
    register()
    warnings = records.lines(logging.WARNING)
    assert warnings == [
        "moe_routing: VLLM_MOE_ROUTING_RENORMALIZE='sometimes' is not valid "
        "(expected auto, enable or disable); using the default auto"
    ]
    assert activation.current().decision.action == "not-applicable"


def test_an_unreadable_off_switch_is_a_warning_and_disables(monkeypatch, records):
    monkeypatch.setenv("VLLM_MOE_ROUTING_PLUGIN_DISABLE", "y")
    monkeypatch.setenv("VLLM_MOE_ROUTING_DEVICE_CAPABILITY", "10.0")
    register()
    assert records.lines(logging.WARNING) == [
        "moe_routing: VLLM_MOE_ROUTING_PLUGIN_DISABLE='y' is not valid "
        "(1/true/yes/on mean on, 0/false/no/off mean off, in any case); taken as "
        "on: the plugin is disabled, since an off switch set to a value it cannot "
        "read is taken as set"
    ]
    decision = activation.current().decision
    assert (decision.action, decision.reason) == (
        "disabled",
        "VLLM_MOE_ROUTING_PLUGIN_DISABLE='y', taken as 1",
    )
    assert not decision.acts  # nothing patched


def _enable():
    return decision.Decision("enable", "test")


def test_a_misspelt_setting_is_one_warning_naming_the_setting_meant(
    monkeypatch, records
):
    """Through vLLM's own ``vllm.envs``: vLLM's VLLM_MOE_ROUTING_SIMULATION_STRATEGY
    is vLLM's, not a misspelling."""
    monkeypatch.setenv("VLLM_MOE_ROUTING_PLUGIN_DISABL", "1")
    monkeypatch.setenv("VLLM_MOE_ROUTING_SIMULATION_STRATEGY", "uniform_random")
    monkeypatch.setenv("VLLM_MOE_ROUTING_DEVICE_CAPABILITY", "10.0")
    register()
    assert records.lines(logging.WARNING) == [
        "moe_routing: VLLM_MOE_ROUTING_PLUGIN_DISABL is not a setting of the plugin "
        "or vLLM (did you mean VLLM_MOE_ROUTING_PLUGIN_DISABLE?); ignored"
    ]
    assert activation.current().decision.action != "disabled"
