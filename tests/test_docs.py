# SPDX-License-Identifier: Apache-2.0
"""What the README tells a user who installs the wheel: links that work
outside a clone, an install that works as written (the ``package`` nox
session runs it), and claims, there and in the docs pages it links to, that
hold for the installed packages."""

import re
from pathlib import Path

import pytest

from support import FLASHINFER
from vllm_moe_routing_plugin import about

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")
RELIABILITY = (ROOT / "docs" / "reliability.md").read_text(encoding="utf-8")
FLASHINFER_ADVICE = (ROOT / "docs" / "flashinfer-advice.md").read_text(encoding="utf-8")


def section(title: str, text: str = README) -> str:
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else None]


def test_links_work_outside_a_clone():
    """The README is also the package's description on an index, where a
    relative link leads nowhere: every link is absolute, and each page of
    this repository it names exists."""
    links = re.findall(r"\]\(([^)]+)\)", README)
    assert links
    for link in links:
        assert link.startswith("https://"), link
        prefix = f"{about.REPOSITORY}/blob/main/"
        if link.startswith(prefix):
            path, _, anchor = link.removeprefix(prefix).partition("#")
            assert (ROOT / path).is_file(), link
            if anchor:
                assert anchor in anchors(ROOT / path), link


def anchors(page: Path) -> set[str]:
    """The anchors GitHub gives a Markdown page's ``#`` headings (outside
    fenced code): lower case, spaces to hyphens, punctuation other than
    hyphens and underscores dropped. Pages here have no duplicate headings,
    whose anchors GitHub numbers, and no underlined ones."""
    text = re.sub(
        r"^```.*?^```", "", page.read_text(encoding="utf-8"), flags=re.M | re.S
    )
    headings = re.findall(r"^#+ (.+)$", text, re.M)
    return {
        re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        for heading in headings
    }


def test_the_install_section_says_what_works_today():
    install = section("Install")
    assert "Not on PyPI yet" in install
    assert re.search(r"^pip install \.\s", install, re.MULTILINE)
    assert "pip install dist/vllm_moe_routing_plugin-*.whl" in install


def test_what_was_run_where_is_said():
    """Said in docs/reliability.md, and the README links there."""
    assert about.docs_url("reliability.md#what-was-run-where") in README
    ran = section("What was run where", RELIABILITY)
    assert "no GPU" in ran and "H200" in ran
    assert "Nowhere here: FlashInfer's fused TRT-LLM MoE kernels" in ran
    assert "SM100" in ran


@pytest.mark.flashinfer("==0.6.8.post1")
def test_the_pip_check_note_holds_for_the_advised_flashinfer():
    """docs/flashinfer-advice.md (which the README's install section links
    to) says ``cuda-tile``, which ``pip check`` reports missing after the
    advised install, is declared by flashinfer-python 0.6.8.post1 but
    imported by none of its modules."""
    import importlib.metadata
    import importlib.util

    assert FLASHINFER == "0.6.8.post1"
    assert "cuda-tile" in (importlib.metadata.requires("flashinfer-python") or [])
    package = Path(importlib.util.find_spec("flashinfer").origin).parent
    naming = [
        path
        for path in package.rglob("*.py")
        if "cuda.tile" in path.read_text(encoding="utf-8", errors="replace")
    ]
    assert naming == []
    note = "`cuda-tile`, which flashinfer-python 0.6.8.post1 declares"
    assert note in FLASHINFER_ADVICE
