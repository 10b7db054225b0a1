# SPDX-License-Identifier: Apache-2.0
"""``register()`` of two commits of the plugin, in alternating fresh processes.

    python benchmarks/register_ab.py BASE_SRC HEAD_SRC [--pairs 8]

Run it with the Python of an environment that has vLLM (the ``benchmark`` nox
session's, for instance); ``BASE_SRC`` and ``HEAD_SRC`` are the ``src``
folders of two checkouts (``git worktree add /tmp/base REV``). Each process
puts one of them first on ``PYTHONPATH``, lets vLLM's loader run without the
plugin, then times ``register()`` on the ``enable`` path (an SM100 GPU
assumed) and on the path of this machine's GPUs. The two alternate (ABBA), so
what else runs on the machine weighs on both alike: the ratio of medians is
the figure to read where absolute times drift from day to day.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys

CODE = """
import time
import vllm.plugins
vllm.plugins.load_general_plugins()  # the plugin excluded: VLLM_PLUGINS
import vllm_moe_routing_plugin as p
t = time.perf_counter()
p.register()
print(time.perf_counter() - t)
"""
VLLM_OWN_PLUGINS = "lora_filesystem_resolver"
PATHS = {
    "enable (SM100 assumed)": {"VLLM_MOE_ROUTING_DEVICE_CAPABILITY": "10.0"},
    "this machine's GPUs": {},
}


def run(src: str, env: dict[str, str]) -> float:
    result = subprocess.run(
        [sys.executable, "-c", CODE],
        env={**os.environ, **env, "PYTHONPATH": src, "VLLM_PLUGINS": VLLM_OWN_PLUGINS},
        capture_output=True,
        text=True,
        check=True,
    )
    return float(result.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("base")
    parser.add_argument("head")
    parser.add_argument("--pairs", type=int, default=8)
    args = parser.parse_args()
    trees = {"base": args.base, "head": args.head}
    times: dict[tuple[str, str], list[float]] = {
        (tree, path): [] for tree in trees for path in PATHS
    }
    for src in trees.values():  # byte-compile each tree once
        for env in PATHS.values():
            run(src, env)
    for i in range(args.pairs):
        order = ["base", "head"] if i % 2 == 0 else ["head", "base"]
        for tree in order:
            for path, env in PATHS.items():
                times[(tree, path)].append(run(trees[tree], env))
    for path in PATHS:
        base = statistics.median(times[("base", path)])
        head = statistics.median(times[("head", path)])
        print(
            f"{path}: base {base * 1e3:.2f} ms, head {head * 1e3:.2f} ms, "
            f"head / base {head / base:.2f} ({args.pairs} pairs)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
