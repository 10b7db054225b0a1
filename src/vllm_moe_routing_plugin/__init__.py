# SPDX-License-Identifier: Apache-2.0
"""vLLM plugin that aligns the routing support of FlashInfer's fused TRT-LLM
MoE kernels with the installed FlashInfer and GPU.

Entry point ``moe_routing`` in the ``vllm.general_plugins`` group. Importing
this package imports nothing from vLLM, FlashInfer, torch or NVML.
"""

from __future__ import annotations

__all__ = ["__version__", "register"]

__version__ = "0.1.0"


def register() -> None:
    """vLLM's entry point, run in every vLLM process. Never raises.

    1. read the plugin's environment variables (invalid ones: WARNING, default);
    2. register them with vLLM, so it neither warns nor drops them for Ray;
    3. read package versions and GPU capabilities (importlib.metadata, NVML);
    4. decide: disabled / not-applicable / unknown / enable / guard;
    5. patch the routing checks of the target modules vLLM has imported, and
       watch for the others;
    6. log the decision once at INFO under ``vllm.moe_routing``.

    Any failure is one WARNING, with vLLM left as it was: vLLM does not catch
    exceptions from general plugins, and one would stop the engine from starting.
    """
    try:
        from . import plugin
    except Exception as exc:  # a broken install: say so, never stop vLLM
        import logging

        logging.getLogger("vllm.moe_routing").warning(
            "moe_routing: cannot load the plugin (%r); vLLM left unchanged", exc
        )
        return
    try:
        plugin.activate()
    except plugin.StepFailed as exc:
        plugin.warn(exc.step, exc.error)
    except Exception as exc:
        plugin.warn("activating", exc)
