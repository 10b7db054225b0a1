# SPDX-License-Identifier: Apache-2.0
"""vLLM plugin that lets FlashInfer's fused TRT-LLM MoE kernels route
Renormalize / RenormalizeNaive layers only where the installed FlashInfer
routes them correctly.

Entry point ``moe_routing`` in the ``vllm.general_plugins`` group. Importing
this package imports nothing from vLLM, FlashInfer, torch or NVML.

The runtime (what vLLM loads in every process), one way from facts to report::

    about, errors, vllm_source     shared pieces at the bottom
    layers                         the MoE layer vLLM is building, and its values
    envs                           the plugin's environment variables
    facts                          package versions and GPUs, read without side effects
    targets                        where each vLLM release keeps a routing check,
                                   and builds a MoE layer (data)
    bugs                           the known-bug catalogue (data)
    decision                       the process's decision, and its rows where
                                   the plugin does not act (no catalogue needed)
    policy                         facts + settings + catalogue -> decision, and
                                   the decision for each layer (pure)
    checks                         finding a check in a module and asking it
    patches                        the replacements: why, how, upstream PR, remove when
    patching                       one target brought in line with the decision
    import_hook, log_line          patch on import; the log lines
    activation                     one process: the steps above, never raising

The diagnostics (``vllm-moe-routing status`` and ``verify``) live in
``diagnostics/``; they use the runtime, never the reverse.
"""

from __future__ import annotations

from .about import __version__

__all__ = ["__version__", "register"]


def register() -> None:
    """vLLM's entry point, run in every vLLM process. Never raises.

    1. read the plugin's environment variables (invalid ones: WARNING, default);
    2. register them with vLLM, so it neither warns nor drops them for Ray;
    3. read GPU capabilities (NVML) and, on SM100/SM103, package versions;
    4. decide: disabled / not-applicable / unknown / enable / guard;
    5. patch the routing checks of the target modules vLLM has imported, and
       watch for the others (and for the layer classes, whose MoE layers the
       routing checks then judge one by one as vLLM builds them);
    6. log the decision once at INFO under ``vllm.moe_routing``; later, one
       line per kind of MoE layer a known bug is judged for.

    Any failure is one WARNING, with vLLM left as it was: vLLM does not catch
    exceptions from general plugins, and one would stop the engine from starting.
    """
    try:
        from . import activation
    except Exception as exc:  # a broken install: say so, never stop vLLM
        import logging

        logging.getLogger("vllm.moe_routing").warning(
            "moe_routing: cannot load the plugin (%r); vLLM left unchanged", exc
        )
        return
    try:
        activation.activate()
    except activation.StepFailed as exc:
        activation.warn(exc.step, exc.error)
    except Exception as exc:
        activation.warn("activating", exc)
