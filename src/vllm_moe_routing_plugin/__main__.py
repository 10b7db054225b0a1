# SPDX-License-Identifier: Apache-2.0
"""``python -m vllm_moe_routing_plugin``: the same commands as ``vllm-moe-routing``."""

import sys

from .diagnostics.cli import main

sys.exit(main())
