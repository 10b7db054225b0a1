# SPDX-License-Identifier: Apache-2.0
import pytest

from vllm_moe_routing_plugin import envs


@pytest.mark.parametrize("raw", ["1", "true", "YES", " on ", "True"])
def test_disable_accepts_true_spellings(raw):
    assert envs.read({envs.DISABLE_VAR: raw}).disabled is True


@pytest.mark.parametrize("raw", ["0", "false", "No", " OFF ", ""])
def test_disable_accepts_false_spellings(raw):
    config = envs.read({envs.DISABLE_VAR: raw})
    assert config.disabled is False
    assert config.problems == ()


def test_invalid_value_names_variable_and_value_and_uses_default():
    config = envs.read({envs.DISABLE_VAR: "maybe", envs.RENORMALIZE_VAR: "force"})
    assert config.disabled is False
    assert config.renormalize == "auto"
    assert len(config.problems) == 2
    assert "VLLM_MOE_ROUTING_PLUGIN_DISABLE='maybe'" in config.problems[0]
    assert "VLLM_MOE_ROUTING_RENORMALIZE='force'" in config.problems[1]


@pytest.mark.parametrize(
    ("raw", "value"),
    [("auto", "auto"), ("ENABLE", "enable"), (" disable ", "disable")],
)
def test_renormalize_values(raw, value):
    assert envs.read({envs.RENORMALIZE_VAR: raw}).renormalize == value


@pytest.mark.parametrize(
    ("raw", "value"),
    [
        ("10.0", ((10, 0),)),
        ("10.0,10.3", ((10, 0), (10, 3))),
        (" 9.0 , 10.0 ", ((9, 0), (10, 0))),
    ],
)
def test_capabilities(raw, value):
    assert envs.read({envs.DEVICE_CAPABILITY_VAR: raw}).capabilities == value


@pytest.mark.parametrize(
    "raw", ["sm_100", "10", "10.", ".0", "10.0,", "ten.zero", "\u0661\u0660.\u0660"]
)
def test_capabilities_rejected(raw):
    config = envs.read({envs.DEVICE_CAPABILITY_VAR: raw})
    assert config.capabilities is None
    assert config.problems and envs.DEVICE_CAPABILITY_VAR in config.problems[0]


def test_defaults_when_unset():
    config = envs.read({})
    assert (
        config.disabled,
        config.renormalize,
        config.capabilities,
        config.bug_actions,
    ) == (False, "auto", None, ())
    assert [r.raw for r in config.readings] == [None, None, None, None]


@pytest.mark.parametrize(
    ("raw", "value"),
    [
        ("flashinfer#3946=guard", (("flashinfer#3946", "guard"),)),
        (
            " FlashInfer#3946 = GUARD , vllm#43769=ignore,",
            (("flashinfer#3946", "guard"), ("vllm#43769", "ignore")),
        ),
        (
            "flashinfer#3946=warn,flashinfer#3946=ignore",
            (("flashinfer#3946", "ignore"),),
        ),
        (" , ", ()),
    ],
)
def test_bug_actions(raw, value):
    config = envs.read({envs.KNOWN_BUGS_VAR: raw})
    assert config.bug_actions == value
    assert config.problems == ()


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        ("flashinfer#3946", "expected a comma-separated list"),
        ("3946=guard", "expected a comma-separated list"),
        ("flashinfer#=guard", "expected a comma-separated list"),
        ("flashinfer#3946=off", "flashinfer#3946: expected guard, fix, warn or ignore"),
        ("flashinfer#\u0663=guard", "ASCII"),  # an Arabic-Indic digit
    ],
)
def test_bug_actions_rejected(raw, problem):
    config = envs.read({envs.KNOWN_BUGS_VAR: raw})
    assert config.bug_actions == ()
    assert len(config.problems) == 1
    assert envs.KNOWN_BUGS_VAR in config.problems[0]
    assert problem in config.problems[0]
    assert "(each entry's own action)" in config.problems[0]
