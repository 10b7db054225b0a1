# SPDX-License-Identifier: Apache-2.0
"""Who the plugin is: its version, its entry-point name and its logger."""

__version__ = "0.1.0"

#: The entry point's name in ``vllm.general_plugins`` (what ``VLLM_PLUGINS``
#: lists), and the name every log line starts with.
PLUGIN = "moe_routing"

#: Under vLLM's ``vllm`` logger, whose handler is the one ``vllm serve`` prints
#: through (it does not propagate; a logger outside ``vllm.`` is not shown).
LOGGER = "vllm.moe_routing"

#: Where the documentation is published (``pyproject.toml``'s ``Source``);
#: anything the plugin prints points there, never at a path of the source
#: tree, which an installed wheel does not have.
REPOSITORY = "https://github.com/vllm-moe-routing-plugin/vllm-moe-routing-plugin"


def docs_url(page: str) -> str:
    """``docs_url("flashinfer-advice.md")``: the page on the published docs."""
    return f"{REPOSITORY}/blob/main/docs/{page}"
