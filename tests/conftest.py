# SPDX-License-Identifier: Apache-2.0
"""pytest's hooks and fixtures for the suite (helpers: support.py).

Tests about vLLM run against the vLLM really installed in the environment
(noxfile.py builds one per release); a test marked ``vllm("==0.19.1")``
runs only where that release is installed. GPUs are simulated only through the
plugin's documented override variable or an NVML stand-in handed to the facts
function; other FlashInfer versions only through an injected ``version_of``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
from packaging.specifiers import SpecifierSet
from packaging.version import Version

from support import FAULTS, FLASHINFER, SIMULATED, VLLM, Records
from vllm_moe_routing_plugin import activation


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "vllm(spec): run only where the installed vLLM matches spec"
    )
    config.addinivalue_line("markers", "no_vllm: run only where vLLM is not installed")
    config.addinivalue_line(
        "markers",
        "flashinfer(spec): run only where the installed flashinfer-python matches",
    )
    config.addinivalue_line(
        "markers",
        "processes: starts Python processes (a fresh interpreter, spawn, fork, "
        "vllm serve); the test command runs these under one Python only "
        "(noxfile.py)",
    )


def pytest_report_header() -> str:
    return f"vllm {VLLM or 'not installed'}, flashinfer-python {FLASHINFER or '-'}"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        for marker in item.iter_markers("vllm"):
            spec = SpecifierSet(marker.args[0])
            if VLLM is None or Version(VLLM) not in spec:
                item.add_marker(pytest.mark.skip(reason=f"needs vllm{spec}"))
        for marker in item.iter_markers("flashinfer"):
            spec = SpecifierSet(marker.args[0])
            if FLASHINFER is None or not spec.contains(FLASHINFER, prereleases=True):
                item.add_marker(
                    pytest.mark.skip(reason=f"needs flashinfer-python{spec}")
                )
        if item.get_closest_marker("no_vllm") and VLLM is not None:
            item.add_marker(
                pytest.mark.skip(reason="needs an environment without vLLM")
            )


@pytest.fixture(autouse=True)
def fresh_plugin() -> Iterator[None]:
    """Each test starts and ends with the plugin inactive in this process."""
    activation.deactivate()
    yield
    activation.deactivate()


@pytest.fixture
def records() -> Iterator[Records]:
    if VLLM is not None:
        # vLLM <= 0.30 configures logging when first imported, and dictConfig
        # clears the handlers of existing ``vllm.*`` loggers: import it first.
        import vllm  # noqa: F401
    handler = Records()
    log = logging.getLogger("vllm.moe_routing")
    old_level = log.level
    log.addHandler(handler)
    log.setLevel(logging.DEBUG)
    yield handler
    log.removeHandler(handler)
    log.setLevel(old_level)


def pytest_terminal_summary(terminalreporter) -> None:
    """The answered edges and the fault-injection counts quoted in
    docs/reliability.md."""
    for what in SIMULATED:
        terminalreporter.write_line(f"simulated in this run: {what}")
    if FAULTS["injected"]:
        terminalreporter.write_line(
            f"faults injected: {FAULTS['injected']}, escaped: {FAULTS['escaped']}, "
            f"partial patches: {FAULTS['partial']}"
        )
