# SPDX-License-Identifier: Apache-2.0
"""Many processes: vLLM loads general plugins in every process it starts, by
spawn or fork, and copies environment variables to Ray workers."""

from __future__ import annotations

import json

import pytest

from vllm_moe_routing_plugin import activation
from vllm_support import SM100, run_python

SPAWN_8 = """
import json, multiprocessing as mp, os

def load(_):
    import vllm.plugins
    vllm.plugins.load_general_plugins()
    from vllm_moe_routing_plugin import activation
    current = activation.current()
    return os.getpid(), current.decision.action, current.line()

if __name__ == "__main__":
    ctx = mp.get_context("spawn")
    with ctx.Pool(8) as pool:
        results = pool.map(load, range(8))
    print(json.dumps(results))
"""


@pytest.mark.processes
@pytest.mark.vllm("==0.19.1")
@pytest.mark.flashinfer(">=0.6.7")  # once, on the patch path: 8 imports of vLLM
def test_eight_spawned_processes_decide_the_same(tmp_path):
    script = tmp_path / "spawn8.py"
    script.write_text(SPAWN_8)
    import os
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, str(script)],
        env={**os.environ, **SM100},
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads(result.stdout.strip().splitlines()[-1])
    assert len({pid for pid, _, _ in results}) == 8
    assert len({(action, line) for _, action, line in results}) == 1


FORK = """
import json, os
import vllm.plugins
vllm.plugins.load_general_plugins()
from vllm.model_executor.layers.fused_moe.experts.trtllm_fp8_moe import (
    TrtLlmFp8ExpertsMonolithic as M)
from vllm_moe_routing_plugin import activation, register
parent = vars(M)["_supports_routing_method"]
read, write = os.pipe()
pid = os.fork()
if pid == 0:
    import io, logging
    stream = io.StringIO()
    logging.getLogger("vllm.moe_routing").addHandler(logging.StreamHandler(stream))
    vllm.plugins.load_general_plugins()  # vLLM's guard is inherited: a no-op
    register()  # called again anyway: idempotent
    child = vars(M)["_supports_routing_method"]
    report = {
        "same_object": child is parent,
        "wraps_original": child.__func__._vllm_moe_routing_plugin_original.__name__,
        "double_wrapped": hasattr(
            child.__func__._vllm_moe_routing_plugin_original,
            "_vllm_moe_routing_plugin_original"),
        "child_log": stream.getvalue(),
        "activation_inherited": activation.current() is not None,
    }
    os.write(write, json.dumps(report).encode())
    os._exit(0)
os.close(write)
os.waitpid(pid, 0)
print(os.read(read, 65536).decode())
"""


@pytest.mark.processes
@pytest.mark.vllm("==0.19.1")
@pytest.mark.flashinfer(">=0.6.7")
def test_forked_child_keeps_the_patch_and_does_not_patch_again():
    result = run_python(FORK, SM100)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report == {
        "same_object": True,
        "wraps_original": "_supports_routing_method",
        "double_wrapped": False,
        "child_log": "",
        "activation_inherited": True,
    }


@pytest.mark.vllm(">=0.16")
@pytest.mark.parametrize(
    "environ",
    [
        {"VLLM_MOE_ROUTING_DEVICE_CAPABILITY": "9.0"},
        # Disabled in the driver: the switch itself must reach the workers.
        {"VLLM_MOE_ROUTING_PLUGIN_DISABLE": "1"},
    ],
)
def test_plugin_variables_reach_ray_workers(environ, monkeypatch):
    try:
        from vllm.ray.ray_env import get_env_vars_to_copy
    except ImportError:
        pytest.skip("this vLLM has no vllm.ray.ray_env.get_env_vars_to_copy")
    # Not set in the environment: only the registration can bring them.
    for name in ("VLLM_MOE_ROUTING_PLUGIN_DISABLE", "VLLM_MOE_ROUTING_RENORMALIZE"):
        monkeypatch.delenv(name, raising=False)
    activation.activate(environ)
    copied = get_env_vars_to_copy()
    for name in (
        "VLLM_MOE_ROUTING_PLUGIN_DISABLE",
        "VLLM_MOE_ROUTING_RENORMALIZE",
        "VLLM_MOE_ROUTING_DEVICE_CAPABILITY",
    ):
        assert name in copied
