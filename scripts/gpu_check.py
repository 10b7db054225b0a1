# SPDX-License-Identifier: Apache-2.0
"""The plugin's facts and decision on a machine with a real NVIDIA GPU.

    python3 scripts/gpu_check.py > gpu-check.json

Needs the plugin installed (no vLLM needed) and a GPU with its driver. In one
process: the plugin's entry point, then the status collection with real NVML,
with CUDA_VISIBLE_DEVICES unset, set to the GPU's index, its UUID and a UUID
prefix; the NVML query time; then whether a CUDA context exists (torch), and
only after that CUDA's own answer for the capability, to compare with NVML's.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import statistics
import sys
import time

from vllm_moe_routing_plugin import __version__, activation, facts, register
from vllm_moe_routing_plugin.diagnostics import cli, status


def main() -> int:
    register()  # as vLLM's loader would; without vLLM it logs and goes on
    current = activation.current()
    import pynvml

    pynvml.nvmlInit()
    handle = pynvml.nvmlDeviceGetHandleByIndex(0)
    uuid = pynvml.nvmlDeviceGetUUID(handle)
    uuid = uuid.decode() if isinstance(uuid, bytes) else uuid
    pynvml.nvmlShutdown()

    args = cli.parser().parse_args(["status", "--json", "--no-targets"])
    cases = {}
    base = {k: v for k, v in os.environ.items() if k != "CUDA_VISIBLE_DEVICES"}
    for label, visible in [
        ("unset", None),
        ("index 0", "0"),
        ("uuid", uuid),
        ("uuid prefix", uuid[:12]),
        ("index 1 (no such GPU)", "1"),
    ]:
        environ = dict(base)
        if visible is not None:
            environ["CUDA_VISIBLE_DEVICES"] = visible
        report = status.collect(args, environ).to_json()
        cases[label] = {
            "CUDA_VISIBLE_DEVICES": visible,
            "action": report["action"],
            "reason": report["reason"],
            "gpus": report["gpus"],
            "gpu_error": report["gpu_error"],
        }
    timings = []
    for _ in range(20):
        start = time.perf_counter()
        facts.read_gpus_nvml(base)
        timings.append(time.perf_counter() - start)

    import torch

    cuda_initialized = torch.cuda.is_initialized()
    flashinfer_imported = any(m.split(".")[0] == "flashinfer" for m in sys.modules)
    cuda_capability = list(torch.cuda.get_device_capability(0))  # only now
    print(
        json.dumps(
            {
                "date": datetime.datetime.now(datetime.timezone.utc).isoformat(),
                "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, "
                f"Python {platform.python_version()}, torch {torch.__version__}",
                "plugin_version": __version__,
                "register_decision": current.decision.action if current else None,
                "register_line": current.line() if current else None,
                "cases": cases,
                "nvml_query_ms": {
                    "median": statistics.median(timings) * 1e3,
                    "min": min(timings) * 1e3,
                    "max": max(timings) * 1e3,
                    "n": len(timings),
                },
                "cuda_initialized_by_plugin": cuda_initialized,
                "flashinfer_imported": flashinfer_imported,
                "cuda_capability_after_check": cuda_capability,
            },
            indent=2,
        )
    )
    ok = (
        not cuda_initialized
        and not flashinfer_imported
        and all(c["action"] == "not-applicable" for c in cases.values())
        and cases["uuid"]["gpus"][0]["capability"] == "9.0"
        and cases["unset"]["gpus"][0]["capability"]
        == f"{cuda_capability[0]}.{cuda_capability[1]}"
        and cases["index 1 (no such GPU)"]["gpus"] == []
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
