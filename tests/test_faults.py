# SPDX-License-Identifier: Apache-2.0
"""Fault injection through vLLM's real plugin loader.

Every external call the plugin makes is made to raise in turn; then vLLM's own
``load_general_plugins()`` runs (as in every vLLM process) and must return,
exactly one WARNING must name the failed step, vLLM's checks must answer as
the originals where the fault hit, and no target may be left half-patched.

Targets are patched independently: a fault on one target leaves it as vLLM
wrote it and does not stop the others from being patched.

The counts are printed at the end of the run (``faults injected``, ``escaped``,
``partial patches``) and quoted in docs/reliability.md.
"""

from __future__ import annotations

import sys
from types import ModuleType

import pytest

from support import FAULTS
from vllm_moe_routing_plugin import (
    activation,
    checks,
    facts,
    import_hook,
    patches,
    targets,
    vllm_source,
)
from vllm_support import SM100, import_target_modules

pytestmark = pytest.mark.vllm(">=0.16")

LOCATE = checks.locate  # the real one, for checking after a fault was injected


class Fault(RuntimeError):
    pass


def raise_fault(*args, **kwargs):
    raise Fault("injected")


def imported_targets():
    """Import every target module this vLLM has, as vLLM does when it builds a
    MoE layer, and return the targets present with their original answers."""
    modules = import_target_modules()
    present = {}
    for target in targets.TARGETS:
        if target.module not in modules:
            continue
        check = LOCATE(target, modules[target.module])
        if check is not None:
            present[target] = (check, check.accepted(), dict(vars(check.owner)))
    return present


TARGETS = None


def present():
    global TARGETS
    if TARGETS is None:
        TARGETS = imported_targets()
    return TARGETS


def load_plugins(monkeypatch, records):
    """vLLM's own loader, as if this process had just started."""
    import vllm.plugins

    monkeypatch.setattr(vllm.plugins, "plugins_loaded", False)
    monkeypatch.setenv("VLLM_PLUGINS", "moe_routing")
    FAULTS["injected"] += 1
    try:
        vllm.plugins.load_general_plugins()
    except BaseException:
        FAULTS["escaped"] += 1
        raise
    return failures(records)


def failures(records) -> list[str]:
    """The WARNINGs about failures (loading the plugin builds no MoE layer,
    so it warns about no known bug)."""
    return records.failures()


def assert_whole(failed: set[targets.Target] = frozenset()) -> None:
    """Each target is either as vLLM wrote it or completely patched; the failed
    ones are as vLLM wrote them."""
    current = activation.current()
    for target, (check, before, attributes) in present().items():
        outcome = current.outcomes.get(target) if current else None
        now = dict(vars(check.owner))
        untouched = now == attributes
        patched = outcome is not None and outcome.state == "patched"
        if target in failed or not patched:
            if not untouched:
                FAULTS["partial"] += 1
            assert untouched, target.name
            assert LOCATE(target, check.module).accepted() == before, target.name
        else:
            changed = {k for k in now if now[k] is not attributes.get(k)}
            expected = set(outcome.patch.attrs)
            if changed != expected:
                FAULTS["partial"] += 1
            assert changed == expected, target.name


@pytest.fixture(autouse=True)
def sm100(monkeypatch):
    for name, value in SM100.items():
        monkeypatch.setenv(name, value)


DISTRIBUTIONS = list(facts.DECIDING)  # what register() looks up


@pytest.mark.parametrize("distribution", DISTRIBUTIONS)
def test_metadata_lookup_fails(distribution, monkeypatch, records):
    present()
    real = facts.importlib.metadata.distribution

    def lookup(name):
        if name == distribution:
            raise Fault("injected")
        return real(name)

    monkeypatch.setattr(facts.importlib.metadata, "distribution", lookup)
    warnings = load_plugins(monkeypatch, records)
    assert len(warnings) == 1, warnings
    assert "reading package versions failed (Fault: injected)" in warnings[0]
    assert activation.current() is None
    assert_whole()


def fake_nvml(failing: str) -> ModuleType:
    """A ``pynvml`` module answering for one B200, except for the function that
    fails. A real module object: Python 3.13's import system asks what it finds
    in ``sys.modules`` for ``__spec__``."""
    nvml = ModuleType("pynvml")
    answers = {
        "nvmlInit": lambda: None,
        "nvmlShutdown": lambda: None,
        "nvmlDeviceGetCount": lambda: 1,
        "nvmlDeviceGetHandleByIndex": lambda i: i,
        "nvmlDeviceGetName": lambda h: "NVIDIA B200",
        "nvmlDeviceGetUUID": lambda h: "GPU-0000",
        "nvmlDeviceGetCudaComputeCapability": lambda h: (10, 0),
    }
    for name, answer in answers.items():
        setattr(nvml, name, raise_fault if name == failing else answer)
    return nvml


NVML_QUERIES = [
    "nvmlDeviceGetCount",
    "nvmlDeviceGetHandleByIndex",
    "nvmlDeviceGetName",
    "nvmlDeviceGetCudaComputeCapability",
]


@pytest.mark.parametrize("failing", NVML_QUERIES)
def test_nvml_query_fails(failing, monkeypatch, records):
    present()
    monkeypatch.delenv("VLLM_MOE_ROUTING_DEVICE_CAPABILITY")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    monkeypatch.setitem(sys.modules, "pynvml", fake_nvml(failing))
    warnings = load_plugins(monkeypatch, records)
    assert len(warnings) == 1, warnings
    assert "NVML query failed (Fault: injected)" in warnings[0]
    assert activation.current().decision.action == "not-applicable"
    assert_whole()


def test_nvml_init_fails_is_the_no_gpu_answer(monkeypatch, records):
    """A host without an NVIDIA driver answers nvmlInit with an error: that is
    the normal "no GPU" case, said in the INFO line, not a WARNING."""
    present()
    monkeypatch.delenv("VLLM_MOE_ROUTING_DEVICE_CAPABILITY")
    monkeypatch.setitem(sys.modules, "pynvml", fake_nvml("nvmlInit"))
    warnings = load_plugins(monkeypatch, records)
    assert warnings == []
    decision = activation.current().decision
    assert decision.action == "not-applicable"
    assert "NVML unavailable (Fault: injected)" in decision.reason
    assert_whole()


def test_registration_with_vllm_envs_fails(monkeypatch, records):
    present()
    monkeypatch.setitem(sys.modules, "vllm.envs", None)
    warnings = load_plugins(monkeypatch, records)
    assert len(warnings) == 1, warnings
    assert "registering the plugin's variables with vLLM failed" in warnings[0]
    assert activation.current() is not None  # the decision still stands
    assert_whole()


def test_logger_fails(monkeypatch, records):
    present()
    monkeypatch.setattr(activation.logger, "info", raise_fault)
    warnings = load_plugins(monkeypatch, records)
    assert len(warnings) == 1, warnings
    assert "logging the decision failed (Fault: injected)" in warnings[0]
    assert activation.current() is None
    assert_whole()


def _target_names():
    import vllm  # noqa: F401

    return [t.name for t in present()]


def pytest_generate_tests(metafunc):
    if "target_name" in metafunc.fixturenames:
        try:
            names = _target_names()
        except Exception:
            names = []
        metafunc.parametrize("target_name", names or ["(no vLLM)"])


@pytest.mark.parametrize("operation", ["read", "write"])
def test_target_attribute_fails(operation, target_name, monkeypatch, records):
    chosen = next((t for t in present() if t.name == target_name), None)
    if chosen is None:
        pytest.skip("no target in this vLLM")
    if operation == "read":
        real = checks.locate

        def locate(target, module):
            if target is chosen:
                raise Fault("injected")
            return real(target, module)

        monkeypatch.setattr(checks, "locate", locate)
    else:
        real_apply = patches.Patch.apply

        def apply(self):
            if self.owner is present()[chosen][0].owner and (
                self.attr in (chosen.check, "is_supported_config")
            ):
                raise Fault("injected")
            return real_apply(self)

        monkeypatch.setattr(patches.Patch, "apply", apply)
    # Take the decision that changes this target: enable or guard.
    _, before, _ = present()[chosen]
    accepts = all(
        {"Renormalize", "RenormalizeNaive"} <= set(names) for names in before.values()
    )
    monkeypatch.setenv(
        "VLLM_MOE_ROUTING_RENORMALIZE", "disable" if accepts else "enable"
    )
    warnings = load_plugins(monkeypatch, records)
    assert len(warnings) == 1, warnings
    assert warnings[0].startswith(f"moe_routing: {chosen.name} failed (left alone: ")
    assert "Fault: injected" in warnings[0]
    assert activation.current().outcomes[chosen].state == "failed"
    assert_whole({chosen})


def test_hook_fails_to_watch_an_import(monkeypatch, records):
    fp8 = "vllm.model_executor.layers.fused_moe.experts.trtllm_fp8_moe"
    if vllm_source.vllm_module_file(fp8) is None:
        pytest.skip("no FP8 target module in this vLLM")
    present()
    monkeypatch.delitem(
        sys.modules, fp8
    )  # imported again below, as if for the first time
    monkeypatch.setattr(import_hook, "_CallbackLoader", raise_fault)
    warnings = load_plugins(monkeypatch, records)
    assert warnings == []
    module = __import__(fp8, fromlist=["_"])
    warnings = failures(records)
    assert len(warnings) == 1, warnings
    assert f"watching the import of {fp8} failed (Fault: injected)" in warnings[0]
    assert not any(
        checks.is_ours(v)
        for cls in vars(module).values()
        if isinstance(cls, type)
        for v in vars(cls).values()
    )
