# SPDX-License-Identifier: Apache-2.0
"""Bad input never raises, and the decision is monotone in FlashInfer's
version (property-based, hypothesis)."""

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from packaging.version import Version

from vllm_moe_routing_plugin import envs, policy
from vllm_moe_routing_plugin.facts import Facts, gpus_from_capabilities

B200 = gpus_from_capabilities([(10, 0)], "test")
VARIABLES = [v.name for v in envs.VARIABLES]
REAL_WORLD = [
    "0.6.7+cu130",
    "0.6.7.post3",
    "0.6.7.dev20260324",
    "0.6.6.dev20260318",
    "0.6.8rc1",
    "0.0.0+unknown",
    "",
    "   ",
    "0.6.6",
    "0.7.4",
]


def decide(version, **env):
    facts = Facts({"flashinfer-python": version}, B200)
    return policy.decide(facts, envs.read(env))


@given(name=st.sampled_from(VARIABLES), value=st.text())
def test_any_value_of_any_variable_is_read_without_raising(name, value):
    config = envs.read({name: value})
    assert config.renormalize in ("auto", "enable", "disable")
    assert isinstance(config.disabled, bool)
    for problem in config.problems:
        assert name in problem


capability = st.tuples(st.integers(1, 99), st.integers(0, 9))  # CUDA: one-digit minor


@given(
    listed=st.lists(capability, min_size=1, max_size=8),
    space=st.sampled_from(["", " ", "  "]),
)
def test_capability_lists_are_read_as_written(listed, space):
    raw = f",{space}".join(f"{space}{major}.{minor}" for major, minor in listed)
    config = envs.read({envs.DEVICE_CAPABILITY_VAR: raw})
    assert (config.capabilities, config.problems) == (tuple(listed), ())


@given(
    listed=st.lists(capability, min_size=1, max_size=4),
    spoiled=st.sampled_from(
        ["10", "10.0.0", "sm100", "ten.0", "10,", "\u0661\u0660.0", "."]
    ),
    where=st.integers(0, 4),
)
def test_a_capability_list_with_one_bad_item_is_rejected_whole(listed, spoiled, where):
    items = [f"{major}.{minor}" for major, minor in listed]
    items.insert(min(where, len(items)), spoiled)
    config = envs.read({envs.DEVICE_CAPABILITY_VAR: ",".join(items)})
    assert config.capabilities is None
    assert envs.DEVICE_CAPABILITY_VAR in config.problems[0]


@given(version=st.one_of(st.text(), st.sampled_from(REAL_WORLD)))
@settings(suppress_health_check=[HealthCheck.too_slow])
def test_any_version_string_decides_without_raising(version):
    decision = decide(version)
    assert decision.action in ("unknown", "enable", "guard")
    parsed = policy.parse_version(version)
    if decision.action == "enable":
        assert parsed is not None and parsed.release >= (0, 6, 7)


releases = st.lists(st.integers(0, 12), min_size=1, max_size=4).map(tuple)
suffixes = st.sampled_from(
    ["", "rc1", "a0", ".post3", ".dev20260324", "+cu130", "+local.1"]
)
versions = st.builds(
    lambda release, suffix: ".".join(map(str, release)) + suffix, releases, suffixes
)


@given(a=versions, b=versions)
def test_decision_is_monotone_in_the_flashinfer_version(a, b):
    if Version(a) > Version(b):
        a, b = b, a
    if decide(a).action == "enable":
        assert decide(b).action == "enable"


@given(version=versions)
def test_never_enable_below_the_fix_unless_forced(version):
    below = Version(version).release < (0, 6, 7)
    action = decide(version).action
    if below:
        assert action != "enable"
    forced = decide(version, VLLM_MOE_ROUTING_RENORMALIZE="enable").action
    assert forced == "enable"


@pytest.mark.parametrize(
    ("version", "action"),
    [
        ("0.6.7+cu130", "enable"),
        ("0.6.7.post3", "enable"),
        ("0.6.7.dev20260324", "enable"),
        ("0.6.6.dev20260318", "guard"),  # fixed nightly that sorts below 0.6.6
        ("0.6.8rc1", "enable"),
        ("0.0.0+unknown", "unknown"),
        ("", "unknown"),
        ("   ", "unknown"),
    ],
)
def test_real_world_spellings(version, action):
    assert decide(version).action == action
