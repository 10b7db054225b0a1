# SPDX-License-Identifier: Apache-2.0
"""The plugin's diagnostics: ``vllm-moe-routing status`` and ``verify``.

Never loaded by vLLM: the runtime (the package above) does not import from
here; these modules import the runtime to show what it sees and does.

    cli            the command line: argparse, exit codes
    status         one typed report of what the plugin sees, decides and changes
    verify         the top-k probe and the kernel check, with a verdict
    kernel_check   monolithic TRT-LLM kernels vs their pre-routed twins (SM100)
    topk_probe     FlashInfer's shipped top-k header, compiled and run (SM90+)
    reference      the reference router (vLLM's and FlashInfer's Renormalize)
    cases          adversarial router logits
"""
