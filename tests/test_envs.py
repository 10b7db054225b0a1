# SPDX-License-Identifier: Apache-2.0
import sys

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
    config = envs.read({envs.RENORMALIZE_VAR: "force", envs.DEVICE_CAPABILITY_VAR: "x"})
    assert config.renormalize == "auto"
    assert config.capabilities is None
    assert config.problems == (
        "VLLM_MOE_ROUTING_RENORMALIZE='force' is not valid "
        "(expected auto, enable or disable); using the default auto",
        "VLLM_MOE_ROUTING_DEVICE_CAPABILITY='x' is not valid (expected a "
        "comma-separated list of major.minor capabilities, e.g. 10.0 or 10.0,10.0); "
        "using the default (NVML)",
    )


@pytest.mark.parametrize("raw", ["y", "maybe", "disable", "2"])
def test_an_unreadable_off_switch_disables_and_says_which_words_mean_what(raw):
    """Whoever sets the off switch means to switch something off: a value it
    cannot read must not leave the plugin acting."""
    config = envs.read({envs.DISABLE_VAR: raw})
    assert config.disabled is True
    assert config.problems == (
        f"VLLM_MOE_ROUTING_PLUGIN_DISABLE={raw!r} is not valid (1/true/yes/on mean "
        "on, 0/false/no/off mean off, in any case); taken as on: the plugin is "
        "disabled, since an off switch set to a value it cannot read is taken as set",
    )


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
    "raw",
    ["sm_100", "10", "10.", ".0", "10.0,", "ten.zero", "\u0661\u0660.\u0660",
     "0.0", "10.30", "1.10", "10.0,9.10"],
)  # fmt: skip
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
        ("flashinfer#3946", "expected <project>#<number>=guard|fix|warn|ignore"),
        ("3946=guard", "expected <project>#<number>=guard|fix|warn|ignore"),
        ("flashinfer#=guard", "expected <project>#<number>=guard|fix|warn|ignore"),
        ("flashinfer#3946=off", "the action must be guard, fix, warn or ignore"),
        ("flashinfer#\u0663=guard", "ASCII"),  # an Arabic-Indic digit
    ],
)
def test_bug_actions_rejected(raw, problem):
    config = envs.read({envs.KNOWN_BUGS_VAR: raw})
    assert config.bug_actions == ()
    assert len(config.problems) == 1
    assert config.problems[0].startswith(f"VLLM_MOE_ROUTING_KNOWN_BUGS: item {raw!r}")
    assert problem in config.problems[0]
    assert config.problems[0].endswith(
        "it is skipped, no valid item is left, so each entry keeps its own action"
    )


def test_one_invalid_bug_action_keeps_the_valid_ones_and_names_each_invalid_item():
    config = envs.read(
        {
            envs.KNOWN_BUGS_VAR: "flashinfer#3803=guard,flashinfer#4237=of,"
            "flashinfer#4486,vllm#43769=ignore"
        }
    )
    assert config.bug_actions == (
        ("flashinfer#3803", "guard"),
        ("vllm#43769", "ignore"),
    )
    assert config.problems == (
        "VLLM_MOE_ROUTING_KNOWN_BUGS: item 'flashinfer#4237=of' is not valid (the "
        "action must be guard, fix, warn or ignore); it is skipped, the other items "
        "apply",
        "VLLM_MOE_ROUTING_KNOWN_BUGS: item 'flashinfer#4486' is not valid (expected "
        "<project>#<number>=guard|fix|warn|ignore, e.g. flashinfer#3946=guard); it is "
        "skipped, the other items apply",
    )
    reading = config.readings[-1]
    assert (reading.valid, envs.show(reading.name, reading.value)) == (
        False,
        "flashinfer#3803=guard,vllm#43769=ignore",
    )


def test_a_repeated_bug_id_takes_its_last_action_and_is_reported():
    config = envs.read(
        {
            envs.KNOWN_BUGS_VAR: "flashinfer#3946=warn,flashinfer#4237=ignore,"
            "FlashInfer#3946=guard"
        }
    )
    assert config.bug_actions == (
        ("flashinfer#3946", "guard"),
        ("flashinfer#4237", "ignore"),
    )
    assert config.problems == (
        "VLLM_MOE_ROUTING_KNOWN_BUGS: flashinfer#3946 is given twice (warn, then "
        "guard); the last, flashinfer#3946=guard, applies",
    )


@pytest.mark.parametrize(
    ("name", "raw", "shown"),
    [
        (envs.DISABLE_VAR, "yes", "1"),
        (envs.DISABLE_VAR, None, "0"),
        (envs.RENORMALIZE_VAR, " ENABLE", "enable"),
        (envs.DEVICE_CAPABILITY_VAR, "10.0, 10.3", "10.0,10.3"),
        (envs.DEVICE_CAPABILITY_VAR, None, "(NVML)"),
        (envs.KNOWN_BUGS_VAR, "FlashInfer#3946 = GUARD", "flashinfer#3946=guard"),
        (envs.KNOWN_BUGS_VAR, None, "(each entry's own action)"),
    ],
)
def test_values_are_shown_as_the_user_writes_them(name, raw, shown):
    config = envs.read({} if raw is None else {name: raw})
    reading = next(r for r in config.readings if r.name == name)
    assert envs.show(name, reading.value) == shown


@pytest.mark.parametrize(
    ("name", "meant"),
    [
        ("VLLM_MOE_ROUTING_PLUGIN_DISABL", envs.DISABLE_VAR),
        ("VLLM_MOE_ROUTING_DISABLE", envs.DISABLE_VAR),
        ("VLLM_MOE_ROUTING_KNOWN_BUG", envs.KNOWN_BUGS_VAR),
        ("VLLM_MOE_ROUTING_RENORMALISE", envs.RENORMALIZE_VAR),
        ("VLLM_MOE_ROUTING_CAPABILITY", envs.DEVICE_CAPABILITY_VAR),
        ("VLLM_MOE_ROUTING_BUILD_JOB", envs.BUILD_JOBS_VAR),
    ],
)
def test_a_misspelt_setting_is_named_with_the_one_it_most_likely_meant(name, meant):
    """A misspelt name would otherwise do nothing, silently: ``..._DISABL=1``
    leaves the plugin on. It still changes nothing: it is reported."""
    config = envs.read({name: "1"})
    assert config.problems == (
        f"{name} is not a setting of the plugin or vLLM "
        f"(did you mean {meant}?); ignored",
    )
    found = [(u.name, u.raw, u.meant) for u in config.undefined]
    assert found == [(name, "1", meant)]
    assert config.disabled is False
    assert config.bug_actions == ()


def test_a_name_close_to_none_lists_the_settings():
    config = envs.read({"VLLM_MOE_ROUTING_XYZZY": "3"})
    assert config.problems == (
        "VLLM_MOE_ROUTING_XYZZY is not a setting of the plugin or vLLM (the "
        "plugin's settings are VLLM_MOE_ROUTING_PLUGIN_DISABLE, "
        "VLLM_MOE_ROUTING_RENORMALIZE, VLLM_MOE_ROUTING_DEVICE_CAPABILITY, "
        "VLLM_MOE_ROUTING_KNOWN_BUGS); ignored",
    )


def test_names_someone_defines_are_not_reported(monkeypatch):
    """The plugin's settings, verify's build settings, vLLM's routing
    simulator, and whatever ``vllm.envs`` defines with the prefix (when vLLM
    is loaded; a stand-in module here)."""
    vllm_envs = type(sys)("vllm.envs")
    vllm_envs.environment_variables = {"VLLM_MOE_ROUTING_NEW_IN_VLLM": lambda: None}
    monkeypatch.setitem(sys.modules, "vllm.envs", vllm_envs)
    defined = [v.name for v in envs.VARIABLES] + [
        "VLLM_MOE_ROUTING_CACHE",
        "VLLM_MOE_ROUTING_BUILD_JOBS",
        "VLLM_MOE_ROUTING_SPLIT_COMPILE",
        "VLLM_MOE_ROUTING_SIMULATION_STRATEGY",
        "VLLM_MOE_ROUTING_NEW_IN_VLLM",
        "VLLM_MOE_ROUTING",  # no underscore after: not the prefix
        "VLLM_OTHER_SETTING",
    ]
    config = envs.read(dict.fromkeys(defined, "1"))
    assert config.undefined == ()
    assert not [p for p in config.problems if "not a setting" in p]


def test_an_impossible_capability_says_what_a_capability_is():
    config = envs.read({envs.DEVICE_CAPABILITY_VAR: "10.30"})
    assert config.problems == (
        "VLLM_MOE_ROUTING_DEVICE_CAPABILITY='10.30' is not valid (10.30 is not a "
        "CUDA compute capability (a major from 1 and a one-digit minor, e.g. 9.0, "
        "10.0 or 10.3)); using the default (NVML)",
    )
