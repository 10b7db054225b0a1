# SPDX-License-Identifier: Apache-2.0
"""The project's environments and checks, as nox sessions.

Run through the bootstrap, which needs nothing but ``python3`` (see README,
"Development")::

    bash scripts/nox.sh                                  the test command
    bash scripts/nox.sh -s status -- --capability 10.0   the status command
    bash scripts/nox.sh -t matrix                        docs/compatibility.md
    bash scripts/nox.sh --list                           every session

Environments are built with uv and kept under
``${XDG_CACHE_HOME:-~/.cache}/vllm-moe-routing/nox``, outside the clone, so a
second run reuses them; an environment is rebuilt only when what it installs
changes. Tests about vLLM run against the vLLM release installed in their
environment, with FlashInfer as that release pins it or installed over the
pins (``-fi<version>``).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import NamedTuple

import nox

ROOT = Path(__file__).resolve().parent
CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
CACHE = CACHE / "vllm-moe-routing"
MATRIX_RESULTS = ROOT / "build" / "matrix"

# uv trusts its own bundled certificates unless told otherwise; pip, which
# installed nox and uv, uses the system's. Behind a TLS-inspecting proxy or
# mirror only the system's store verifies the package index.
os.environ.setdefault("UV_SYSTEM_CERTS", "1")

nox.needs_version = ">=2026.8.10"  # python_versions() sorted
nox.options.default_venv_backend = "uv"
nox.options.envdir = str(CACHE / "nox")
nox.options.reuse_venv = "yes"
# Only interpreters that are on this machine: a session for a Python that is
# missing is skipped, and nox says so.
nox.options.download_python = "never"
nox.options.error_on_missing_interpreters = False
nox.options.sessions = [
    "fresh_machine", "lint", "typecheck", "package", "tests", "known_bugs",
]  # fmt: skip

PYPROJECT = nox.project.load_toml(ROOT / "pyproject.toml")
TEST_DEPENDENCIES = nox.project.dependency_groups(PYPROJECT, "test")
RUFF = "ruff==0.14.*"
IMPORT_LINTER = "import-linter==2.*"
MYPY = "mypy==1.19.*"

#: Set in the test command's sessions: there, tests/test_layers.py fails when
#: its expectations lack the installed (vLLM, FlashInfer) pair; elsewhere the
#: tests that need them skip.
EXPECTATIONS_REQUIRED = {"MOE_ROUTING_TESTS_REQUIRE_EXPECTATIONS": "1"}

#: The first FlashInfer release with the fix for flashinfer#2822.
FIXED_FLASHINFER = "0.6.7"


class Env(NamedTuple):
    """One test environment: a vLLM release (None: no vLLM at all) with the
    FlashInfer it pins, or with ``flashinfer`` installed over the pins (where
    the registry does not serve the pin, resolved in its place:
    ``PIN_NOT_SERVED``)."""

    vllm: str | None
    flashinfer: str | None = None

    @property
    def name(self) -> str:
        if self.vllm is None:
            return "plain"
        return f"vllm-{self.vllm}" + (
            f"-fi{self.flashinfer}" if self.flashinfer else ""
        )


#: The FlashInfer advised to vLLM 0.18/0.19 users (docs/flashinfer-advice.md).
ADVISED_FLASHINFER = "0.6.8.post1"

#: vLLM releases whose FlashInfer pin the registry does not serve, with the
#: FlashInfer their environments get instead: vLLM 0.34.0 pins
#: ``flashinfer-python==0.7.3``, and PyPI has 0.7.2.post1 and 0.7.4 but no
#: 0.7.3, so ``vllm==0.34.0`` does not resolve as published. Such an
#: environment resolves vLLM with the pin overridden (uv's ``--override``), so
#: FlashInfer's own dependencies are resolved too, as a user's
#: ``uv pip install vllm==0.34.0 --override`` would; installing over the pin
#: with ``--no-deps`` afterwards, as for the other ``-fi`` environments, is not
#: possible when the first install cannot resolve.
PIN_NOT_SERVED = {"0.34.0": "0.7.4"}
NEWEST = Env("0.34.0", PIN_NOT_SERVED["0.34.0"])

PLAIN = Env(None)
PATCH_PATH = Env("0.19.1", ADVISED_FLASHINFER)
#: What ``package`` installs the wheel next to: this vLLM as pinned
#: (0.19.1: FlashInfer 0.6.6, which has flashinfer#2822: the guard path).
PACKAGE_VLLM = "0.19.1"

#: The Pythons pyproject.toml's classifiers name, oldest first.
PYTHONS = nox.project.python_versions(PYPROJECT)

#: The test command's environments, and the interpreters they run under
#: (None: the Python nox runs under). plain: no vLLM (decision, facts,
#: settings, status without vLLM); 0.19.1 + the advised FlashInfer: the patch path
#: and vLLM's FP8 backend selection; 0.17.1 as pinned: the guard on the 0.17 FP8
#: class; the newest release (0.34.0 with FlashInfer 0.7.4): the native path.
#: vLLM 0.19.1 as pinned (the guard with the real FlashInfer 0.6.6, NVFP4 and
#: MXFP4 backend selection) is ``package``'s
#: environment: the sdist's tests run there against the installed wheel. The
#: oldest and newest Python of ``PYTHONS`` run the first two, less the tests
#: marked ``processes`` (each starts Python processes that import vLLM afresh,
#: 10 - 160 s, to check what a fresh process does, which the Python version does
#: not change).
TEST_RUNS: list[tuple[str | None, Env]] = [
    (None, PLAIN),
    (None, PATCH_PATH),
    (None, Env("0.17.1")),
    (None, NEWEST),
    *(
        (python, env)
        for python in (PYTHONS[0], PYTHONS[-1])
        for env in (PLAIN, PATCH_PATH)
    ),
]

#: Releases that catalogue entries reach and the test command's other
#: environments lack, as pinned: vLLM 0.20.2 (vllm#43769 and its backport in
#: the BF16 class), 0.22.1 (flashinfer#3499 with FlashInfer 0.6.11.post2),
#: 0.26.0 (the DeepSeekV3 entries with 0.6.14), 0.33.0 (vllm#32437 with the
#: FlashInfer it pins, 0.7.2.post1). ``known_bugs`` runs
#: tests/test_known_bugs.py and tests/test_layers.py (real MoE layers built
#: through vLLM's constructor) there; the other environments run them in
#: ``tests`` or ``package``.
KNOWN_BUG_RUNS = [Env("0.20.2"), Env("0.22.1"), Env("0.26.0"), Env("0.33.0")]

#: The release matrix: every supported vLLM line's last release, with the
#: FlashInfer it pins and, where that pin predates the fix, with the fix over it.
RELEASES = ["0.16.0", "0.17.1", "0.18.1", "0.19.1", "0.20.2", "0.22.1", "0.25.1",
            "0.26.0", "0.30.0", "0.33.0", "0.34.0"]  # fmt: skip
PINNED_BEFORE_FIX = {"0.16.0", "0.17.1", "0.18.1", "0.19.1"}
MATRIX = [
    env
    for release in RELEASES
    for env in [Env(release, PIN_NOT_SERVED.get(release))]
    + ([Env(release, FIXED_FLASHINFER)] if release in PINNED_BEFORE_FIX else [])
]


#: What a vLLM 0.18/0.19 user could install over the FlashInfer 0.6.6 pin for
#: the fixed routing (flashinfer-cubin exists at each version): the first
#: fixed release, the one vLLM 0.20 moved to, the newest 0.6.x whose
#: ``flashinfer.comm`` imports without new dependencies (0.6.10 - 0.6.13 import
#: ``cuda.tile`` there), and the newest 0.6.x with a flashinfer-cubin wheel.
#: ``bindings`` checks each against vLLM's calls.
ADVICE_RELEASES = ["0.18.1", "0.19.1"]
ADVICE_CANDIDATES = ["0.6.7", "0.6.8.post1", "0.6.9", "0.6.13"]
BINDINGS = [
    Env(release, flashinfer)
    for release in ADVICE_RELEASES
    for flashinfer in [None, *ADVICE_CANDIDATES]
]
BINDINGS_RESULTS = ROOT / "build" / "bindings"


def install(session: nox.Session, env: Env, *, override: bool | None = None) -> None:
    """Install ``env`` into the session's environment (skipped when it is
    already there), then this checkout of the plugin, byte-compiled as pip
    installs it. ``override``: resolve vLLM with ``env.flashinfer`` in place
    of its pin (default: where the registry does not serve the pin)."""
    if override is None:
        override = env.vllm in PIN_NOT_SERVED
    spec = " ".join([env.name, *TEST_DEPENDENCIES])
    marker = Path(session.virtualenv.location) / ".moe-routing-env"
    if not marker.exists() or marker.read_text() != spec:
        if env.vllm is None:
            session.install("packaging", "nvidia-ml-py", *TEST_DEPENDENCIES)
        elif override:
            pins = Path(session.create_tmp()) / "flashinfer-override.txt"
            pins.write_text(f"flashinfer-python=={env.flashinfer}\n")
            session.install(
                f"vllm=={env.vllm}", "--override", str(pins), *TEST_DEPENDENCIES
            )
        else:
            session.install(f"vllm=={env.vllm}", *TEST_DEPENDENCIES)
        if env.flashinfer is not None and not override:
            # Over vLLM's pins; flashinfer-cubin too where the release installs
            # it (FlashInfer 0.6.x refuses to import when the two differ).
            over_pins = [f"flashinfer-python=={env.flashinfer}"]
            if _installed(session, "flashinfer-cubin"):
                over_pins.append(f"flashinfer-cubin=={env.flashinfer}")
            session.install("--no-deps", *over_pins)
        # cuda-python 12.6's wheel carries the cuda/bindings files too; where the
        # resolver also installs cuda-bindings 13 (vLLM 0.33.0's tree), uv writes
        # both at once and either's files can end up on disk. FlashInfer's CUTLASS
        # DSL needs cuda-bindings' own: write them again.
        bindings = _installed_version(session, "cuda-bindings")
        if bindings and _installed(session, "cuda-python"):
            session.install(
                "--no-deps", "--reinstall-package", "cuda-bindings",
                f"cuda-bindings=={bindings}",
            )  # fmt: skip
        marker.write_text(spec)
    session.install(
        "--no-deps",
        "--compile-bytecode",
        "--reinstall-package",
        "vllm-moe-routing-plugin",
        str(ROOT),
    )


def install_changes_nothing_else(session: nox.Session) -> None:
    """Installing the plugin as the README says (``pip install .``, its
    dependencies resolved) into this environment installs the plugin and
    nothing else: no other package is installed, upgraded or downgraded.
    Checked with pip's dry run and its JSON report (pip >= 22.2), pip of the
    tools' environment pointed at this one (``--python``), and with uv's."""
    python = str(Path(session.virtualenv.location) / "bin" / "python")
    report = Path(session.create_tmp()) / "install-report.json"
    session.run(
        sys.executable, "-m", "pip", "--python", python, "install", "--dry-run",
        "--quiet", "--disable-pip-version-check", "--report", str(report), str(ROOT),
        external=True,
    )  # fmt: skip
    installs = sorted(
        (item["metadata"]["name"], item["metadata"]["version"])
        for item in json.loads(report.read_text())["install"]
    )
    if [name for name, _ in installs] != ["vllm-moe-routing-plugin"]:
        session.error(f"pip install . would install {installs}")
    uv = session.run(
        "uv", "pip", "install", "--dry-run", "--python", python,
        "--reinstall-package", "vllm-moe-routing-plugin", str(ROOT),
        silent=True, external=True,
    )  # fmt: skip
    changes = [
        line.strip()
        for line in str(uv).splitlines()
        if line.strip().startswith(("+ ", "- "))
        and "vllm-moe-routing-plugin" not in line
    ]
    if changes:
        session.error(f"uv pip install would change {changes}")
    session.log(f"installing the plugin changes nothing else: {installs}")


def _installed_version(session: nox.Session, distribution: str) -> str | None:
    site = Path(session.virtualenv.location).glob("lib/python*/site-packages")
    prefix = f"{distribution.replace('-', '_')}-"
    for path in (p for folder in site for p in folder.glob(f"{prefix}*.dist-info")):
        return path.name.removeprefix(prefix).removesuffix(".dist-info")
    return None


def _installed(session: nox.Session, distribution: str) -> bool:
    return _installed_version(session, distribution) is not None


@nox.session(python=False)
def fresh_machine(session: nox.Session) -> None:
    """The bootstrap as on a new machine.

    With an empty home directory and
    PATH=/usr/bin:/bin (the system python3, no uv), ``scripts/nox.sh`` must
    install its tools and run a session, writing nothing in the home
    directory but under ~/.cache."""
    home = CACHE / "fresh-home"
    shutil.rmtree(home, ignore_errors=True)
    home.mkdir(parents=True)
    bare = {"HOME": str(home), "PATH": "/usr/bin:/bin"}
    try:
        uv = subprocess.run(
            ["bash", "-c", "command -v uv"], env=bare, capture_output=True
        )
        if uv.returncode == 0:
            session.warn(f"uv is on PATH=/usr/bin:/bin ({uv.stdout.decode().strip()})")
        session.run(
            "env", "-i", *(f"{k}={v}" for k, v in bare.items()),
            "bash", str(ROOT / "scripts" / "nox.sh"), "--no-color", "-s", "lint",
            external=True,
        )  # fmt: skip
        written = sorted(p.name for p in home.iterdir())
        if written != [".cache"]:
            session.error(f"the bootstrap wrote {written} in the home directory")
        session.log("bootstrap with an empty home and no uv on PATH: ok")
    finally:
        shutil.rmtree(home, ignore_errors=True)


@nox.session
def lint(session: nox.Session) -> None:
    """ruff, and import-linter's contracts (pyproject.toml).

    The runtime never imports the diagnostics, layers point one way, no import
    cycle."""
    session.install(RUFF, IMPORT_LINTER)
    paths = ["src", "tests", "scripts", "benchmarks", "noxfile.py"]
    session.run("ruff", "check", *paths)
    session.run("ruff", "format", "--check", *paths)
    session.run("lint-imports", env={"PYTHONPATH": str(ROOT / "src")})


DIST = ROOT / "build" / "dist"


@nox.session
def package(session: nox.Session) -> None:
    """The wheel and sdist, and the suite against the wheel in vLLM 0.19.1.

    What a user installs: build the sdist and the wheel, check their
    metadata (``twine check``), install the wheel (not the checkout, not
    editable) next to vLLM 0.19.1 as pinned, run ``vllm-moe-routing status``
    from outside the clone, and run the sdist's own tests against that wheel
    (``-- ARGS`` go to pytest: ``-- tests/test_fused_kernels_guard.py -k
    mxfp4``). It is the test command's vLLM 0.19.1 + FlashInfer 0.6.6
    environment; each run builds and installs the wheel again first."""
    session.install("build", "twine")
    shutil.rmtree(DIST, ignore_errors=True)
    session.run("python", "-m", "build", "--outdir", str(DIST), str(ROOT))
    built = sorted(path.name for path in DIST.iterdir())
    version = _version()
    expected = [
        f"vllm_moe_routing_plugin-{version}-py3-none-any.whl",
        f"vllm_moe_routing_plugin-{version}.tar.gz",
    ]
    if built != expected:
        session.error(f"built {built}, expected {expected}")
    session.run("twine", "check", "--strict", *(str(DIST / name) for name in built))
    wheel = DIST / expected[0]
    session.install(f"vllm=={PACKAGE_VLLM}")
    session.install("--reinstall-package", "vllm-moe-routing-plugin", str(wheel))
    outside = Path(session.create_tmp())
    session.chdir(outside)
    session.run(
        "python", "-c",
        "import pathlib, sys, vllm_moe_routing_plugin as p; "
        "here = pathlib.Path(p.__file__).resolve(); "
        "assert not here.is_relative_to(pathlib.Path(sys.argv[1]).resolve()), here",
        str(ROOT),
    )  # fmt: skip
    session.run("vllm-moe-routing", "status", "--capability", "10.0")
    # The sdist runs its own tests against the installed wheel, as a
    # distribution's packager would.
    session.install(*TEST_DEPENDENCIES)
    unpacked = outside / expected[1].removesuffix(".tar.gz")
    shutil.rmtree(unpacked, ignore_errors=True)  # the tmp folder outlives runs
    with tarfile.open(DIST / expected[1]) as sdist:
        if hasattr(tarfile, "data_filter"):
            sdist.extractall(outside, filter="data")
        else:  # Python < 3.10.12 / 3.11.4 (Debian 12's 3.11.2): built just above
            sdist.extractall(outside)
    session.chdir(unpacked)
    shutil.rmtree(unpacked / "src")  # the tests must import the installed wheel
    session.run(
        "python", "-m", "pytest", "-p", "no:cacheprovider", "-q", *session.posargs,
        env={"PYTHONPATH": str(unpacked / "tests"), **EXPECTATIONS_REQUIRED},
    )  # fmt: skip


def _version() -> str:
    """``__version__`` as about.py states it (the one place; hatch reads it)."""
    about = (ROOT / "src" / "vllm_moe_routing_plugin" / "about.py").read_text()
    for line in about.splitlines():
        if line.startswith("__version__ = "):
            return line.split("=", 1)[1].strip().strip('"')
    raise RuntimeError("no __version__ in about.py")


@nox.session
def typecheck(session: nox.Session) -> None:
    """mypy --strict over the package (configured in pyproject.toml)."""
    session.install(MYPY, "packaging", "nvidia-ml-py")
    session.run("mypy", "--strict", "src")


@nox.session
@nox.parametrize(
    ["python", "env"],
    TEST_RUNS,
    ids=[f"py{python}-{env.name}" if python else env.name for python, env in TEST_RUNS],
)
def tests(session: nox.Session, env: Env) -> None:
    """The suite in one environment (``-- ARGS`` go to pytest).

    Under another Python than nox's own, without the tests that start
    processes."""
    install(session, env)
    if env.flashinfer is not None and session.python is None:
        install_changes_nothing_else(session)
    selection = [] if session.python is None else ["-m", "not processes"]
    session.run("python", "-m", "pytest", "-p", "no:cacheprovider", "-q",
                *selection, *(session.posargs or ["tests"]),
                env=EXPECTATIONS_REQUIRED)  # fmt: skip


@nox.session
@nox.parametrize("env", KNOWN_BUG_RUNS, ids=[env.name for env in KNOWN_BUG_RUNS])
def known_bugs(session: nox.Session, env: Env) -> None:
    """The catalogue's tests on a release only these sessions install.

    Real MoE layers through vLLM's constructor and oracle, ``status`` and the
    log (docs/known-bugs.md)."""
    install(session, env)
    session.run("python", "-m", "pytest", "-p", "no:cacheprovider", "-q",
                *(session.posargs or ["tests/test_known_bugs.py",
                                      "tests/test_layers.py"]),
                env=EXPECTATIONS_REQUIRED)  # fmt: skip


def newest_served(session: nox.Session, distribution: str) -> str:
    """The newest release of ``distribution`` the package index serves
    (``pip index versions``: its first line is ``vllm (0.34.0)``)."""
    out = subprocess.run(
        [sys.executable, "-m", "pip", "index", "versions", distribution,
         "--disable-pip-version-check"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    first = out.strip().splitlines()[0]
    return first.split("(", 1)[1].split(")", 1)[0]


#: The tests that say what a new vLLM or FlashInfer release moved.
RELEASE_TESTS = [
    "tests/test_contract.py", "tests/test_layers.py", "tests/test_known_bugs.py",
    "tests/test_vllm_newest.py", "tests/test_kernel_check.py", "tests/test_bindings.py",
]  # fmt: skip


@nox.session
def newest_release(session: nox.Session) -> None:
    """The release tests on the newest vLLM and FlashInfer the registry serves.

    Not part of the test command: run it the day a vLLM or FlashInfer
    release comes out. It resolves the newest vLLM with the newest
    flashinfer-python in place of vLLM's pin (uv's ``--override``), prints
    what ``status`` decides there (the reason names a release newer than the
    newest proven), and runs the contract, layer, catalogue and binding tests
    with ``MOE_ROUTING_TESTS_UNPROVEN=1``: a release without expectations
    is held to the newest proven release's, so each failure names a target,
    layer class, default choice or probe that moved (``-- ARGS`` go to
    pytest). Then follow docs/development.md, "Adding a vLLM release"."""
    env = Env(
        newest_served(session, "vllm"), newest_served(session, "flashinfer-python")
    )
    session.log(
        f"newest on the index: vllm {env.vllm}, flashinfer-python {env.flashinfer}"
    )
    install(session, env, override=True)
    session.run("vllm-moe-routing", "status", "--capability", "10.0")
    session.run(
        "python", "-m", "pytest", "-p", "no:cacheprovider", "-q", "-rfE",
        "-m", "not processes", *(session.posargs or RELEASE_TESTS),
        env={"MOE_ROUTING_TESTS_UNPROVEN": "1"},
    )  # fmt: skip


COVERAGE = "coverage[toml]==7.*"


@nox.session
def coverage(session: nox.Session) -> None:
    """Coverage of the plugin's runtime by the suite.

    Line and branch coverage of the plugin's runtime (its diagnostics
    left out) by the suite in the patch path's environment, less the tests
    that start processes; prints the figure (``-- ARGS`` go to pytest)."""
    install(session, PATCH_PATH)
    session.install(COVERAGE)
    session.env["COVERAGE_FILE"] = str(ROOT / "build" / ".coverage")
    session.run(
        "coverage", "run", "--branch", "--source=vllm_moe_routing_plugin",
        "--omit=*/diagnostics/*", "-m", "pytest", "-p", "no:cacheprovider", "-q",
        "-m", "not processes", *(session.posargs or ["tests"]),
    )  # fmt: skip
    session.run("coverage", "report", "--skip-empty")


@nox.session
def status(session: nox.Session) -> None:
    """``vllm-moe-routing status`` with vLLM 0.19.1 and the advised FlashInfer.

    ``-- ARGS`` go to status, e.g. ``-- --capability 10.0 --json``."""
    install(session, PATCH_PATH)
    session.run("vllm-moe-routing", "status", *session.posargs)


@nox.session
def benchmark(session: nox.Session) -> None:
    """What the plugin costs a vLLM process (benchmarks/plugin_overhead.py).

    In vLLM 0.19.1 with FlashInfer 0.6.7 (the results file names both)."""
    install(session, Env("0.19.1", FIXED_FLASHINFER))
    session.run("python", "benchmarks/plugin_overhead.py", *session.posargs)


@nox.session(tags=["matrix"])
@nox.parametrize("env", MATRIX, ids=[env.name for env in MATRIX])
def matrix(session: nox.Session, env: Env) -> None:
    """The contract tests against one release of the matrix.

    The contract tests and the kernel check's bindings against one release
    of the matrix, then what the plugin does there (scripts/matrix_row.py);
    ``compatibility`` writes the table."""
    session.notify("compatibility")
    install(session, env)
    MATRIX_RESULTS.mkdir(parents=True, exist_ok=True)
    contract = MATRIX_RESULTS / f"{env.name}.contract.json"
    junit = MATRIX_RESULTS / f"{env.name}.junit.xml"
    contract.unlink(missing_ok=True)
    started = time.monotonic()
    session.run(
        "python", "-m", "pytest", "-p", "no:cacheprovider", "-q",
        f"--junitxml={junit}", "tests/test_contract.py", "tests/test_kernel_check.py",
        success_codes=[0, 1],
    )  # fmt: skip
    session.run("python", "scripts/matrix_row.py", str(contract), success_codes=[0, 1])
    suite = ET.parse(junit).getroot().find("testsuite")
    assert suite is not None
    counts = {
        key: int(suite.get(key, "0"))
        for key in ("tests", "failures", "errors", "skipped")
    }
    row = {
        "name": env.name,
        "seconds": round(time.monotonic() - started),
        "passed": counts["failures"] == counts["errors"] == 0,
        "counts": counts,
        **(json.loads(contract.read_text()) if contract.exists() else {}),
    }
    (MATRIX_RESULTS / f"{env.name}.json").write_text(json.dumps(row, indent=2))
    if not row["passed"]:
        session.error(f"{env.name}: {counts}")


@nox.session(python=False)
def compatibility(session: nox.Session) -> None:
    """docs/compatibility.md from the matrix sessions' results."""
    session.run(
        sys.executable, str(ROOT / "scripts" / "compatibility.py"),
        str(MATRIX_RESULTS), *(env.name for env in MATRIX),
    )  # fmt: skip


@nox.session(tags=["advice"])
@nox.parametrize("env", BINDINGS, ids=[env.name for env in BINDINGS])
def bindings(session: nox.Session, env: Env) -> None:
    """vLLM's calls into FlashInfer bound to one candidate FlashInfer.

    ``vllm-moe-routing bindings`` and the binding tests; ``advice`` writes the
    table in docs/flashinfer-advice.md."""
    session.notify("advice")
    install(session, env)
    BINDINGS_RESULTS.mkdir(parents=True, exist_ok=True)
    result = BINDINGS_RESULTS / f"{env.name}.json"
    with result.open("w") as out:
        session.run(
            "vllm-moe-routing", "bindings", "--json",
            stdout=out, stderr=subprocess.DEVNULL, success_codes=[0, 1],
        )  # fmt: skip
    session.run(
        "python", "-m", "pytest", "-p", "no:cacheprovider", "-q",
        "tests/test_bindings.py",
    )  # fmt: skip


@nox.session(python=False)
def advice(session: nox.Session) -> None:
    """docs/flashinfer-advice.md's binding table from the ``bindings`` results."""
    session.run(
        sys.executable, "scripts/flashinfer_advice.py", str(BINDINGS_RESULTS),
        *[env.name for env in BINDINGS],
    )  # fmt: skip
