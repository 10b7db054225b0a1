# SPDX-License-Identifier: Apache-2.0
"""What ``register()`` loads of the plugin, path by path, in fresh processes:
where the plugin does not act (``disabled``, ``not-applicable``), neither the
known-bug catalogue nor the targets nor the per-layer policy, since most vLLM
processes run on GPUs the plugin does not act on and each pays the import
(docs/performance.md); where it may act, the catalogue decides."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

CODE = """
import json, logging, sys
logging.basicConfig(level=logging.INFO, stream=sys.stderr)
from vllm_moe_routing_plugin import activation, register
register()
print("RESULT", json.dumps({
    "action": activation.current().decision.action,
    "loaded": sorted(m.rpartition(".")[2] for m in sys.modules
                     if m.startswith("vllm_moe_routing_plugin.")),
}))
"""

CATALOGUE = {"bugs", "targets", "policy", "layers", "patching", "patches", "checks"}


def registered(**env: str) -> dict:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("VLLM_MOE")}
    environ.update(env)
    result = subprocess.run(
        [sys.executable, "-c", CODE], env=environ, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    # vLLM, where installed, logs to stdout as its variables are registered
    line = next(x for x in result.stdout.splitlines() if x.startswith("RESULT "))
    return json.loads(line.removeprefix("RESULT "))


@pytest.mark.parametrize(
    ("env", "action"),
    [
        ({"VLLM_MOE_ROUTING_PLUGIN_DISABLE": "1"}, "disabled"),
        ({"VLLM_MOE_ROUTING_DEVICE_CAPABILITY": "9.0"}, "not-applicable"),
        ({"VLLM_MOE_ROUTING_DEVICE_CAPABILITY": "10.0,9.0"}, "not-applicable"),
        (
            {
                "VLLM_MOE_ROUTING_PLUGIN_DISABLE": "1",
                "VLLM_MOE_ROUTING_KNOWN_BUGS": "flashinfer#3946=guard",
            },
            "disabled",
        ),
    ],
)
def test_where_the_plugin_does_not_act_the_catalogue_is_not_loaded(env, action):
    result = registered(**env)
    assert result["action"] == action
    assert CATALOGUE.isdisjoint(result["loaded"]), result["loaded"]


def test_a_known_bugs_setting_is_checked_against_the_catalogue_on_every_gpu():
    """An id with a typo must not pass unnoticed, even where nothing acts."""
    result = registered(
        VLLM_MOE_ROUTING_DEVICE_CAPABILITY="9.0",
        VLLM_MOE_ROUTING_KNOWN_BUGS="flashinfer#3964=guard",
    )
    assert result["action"] == "not-applicable"
    assert {"bugs", "policy"} <= set(result["loaded"])


def test_on_sm100_the_catalogue_decides():
    result = registered(VLLM_MOE_ROUTING_DEVICE_CAPABILITY="10.0")
    assert result["action"] in ("enable", "guard", "unknown")
    assert {"bugs", "policy"} <= set(result["loaded"])
