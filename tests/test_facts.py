# SPDX-License-Identifier: Apache-2.0
"""GPU facts from an NVML stand-in (the one edge no machine here has: SM100)."""

import importlib.metadata

import pytest

from vllm_moe_routing_plugin import facts


class FakeNvml:
    """The pynvml functions the plugin calls, answering for given devices."""

    def __init__(self, devices, init_error=None):
        self.devices = devices  # list of (name, uuid, (major, minor))
        self.init_error = init_error
        self.shutdowns = 0

    def nvmlInit(self):
        if self.init_error:
            raise self.init_error

    def nvmlShutdown(self):
        self.shutdowns += 1

    def nvmlDeviceGetCount(self):
        return len(self.devices)

    def nvmlDeviceGetHandleByIndex(self, i):
        return i

    def nvmlDeviceGetName(self, h):
        return self.devices[h][0]

    def nvmlDeviceGetUUID(self, h):
        return self.devices[h][1]

    def nvmlDeviceGetCudaComputeCapability(self, h):
        return self.devices[h][2]


NODE = FakeNvml(
    [
        ("NVIDIA B200", "GPU-aaaa1111-0000-0000-0000-000000000000", (10, 0)),
        ("NVIDIA B200", "GPU-bbbb2222-0000-0000-0000-000000000000", (10, 0)),
        ("NVIDIA H200", "GPU-cccc3333-0000-0000-0000-000000000000", (9, 0)),
    ]
)


def caps(environ):
    reading = facts.read_gpus_nvml(environ, NODE)
    return [(g.ordinal, g.name, g.capability) for g in reading.gpus], reading.error


def test_all_devices_when_cuda_visible_devices_is_unset():
    gpus, error = caps({})
    assert [g[2] for g in gpus] == [(10, 0), (10, 0), (9, 0)]
    assert error is None


def test_indices_are_renumbered_like_cuda():
    gpus, _ = caps({"CUDA_VISIBLE_DEVICES": "2,0"})
    assert gpus == [(0, "NVIDIA H200", (9, 0)), (1, "NVIDIA B200", (10, 0))]


@pytest.mark.parametrize(
    "entry",
    ["GPU-bbbb2222-0000-0000-0000-000000000000", "GPU-bbbb", "bbbb2222", "gpu-BBBB"],
)
def test_uuid_entries(entry):
    gpus, _ = caps({"CUDA_VISIBLE_DEVICES": entry})
    assert [g[2] for g in gpus] == [(10, 0)]


def test_invalid_entry_ends_the_list_like_cuda():
    gpus, _ = caps({"CUDA_VISIBLE_DEVICES": "0,7,2"})
    assert [g[2] for g in gpus] == [(10, 0)]
    gpus, error = caps({"CUDA_VISIBLE_DEVICES": "-1"})
    assert gpus == [] and error == "no GPU visible to CUDA in this process"
    gpus, _ = caps({"CUDA_VISIBLE_DEVICES": "GPU-"})  # prefix of every device
    assert gpus == []


def test_empty_cuda_visible_devices_hides_every_gpu():
    gpus, error = caps({"CUDA_VISIBLE_DEVICES": ""})
    assert gpus == [] and error


def test_nvml_failure_means_no_gpu_with_the_error():
    class NVMLError(Exception):
        pass

    nvml = FakeNvml([], init_error=NVMLError("Driver Not Loaded"))
    reading = facts.read_gpus_nvml({}, nvml)
    assert reading.gpus == ()
    assert reading.error == "NVML unavailable (NVMLError: Driver Not Loaded)"


def test_query_failure_shuts_nvml_down():
    class Broken(FakeNvml):
        def nvmlDeviceGetCudaComputeCapability(self, h):
            raise RuntimeError("boom")

    nvml = Broken(NODE.devices)
    reading = facts.read_gpus_nvml({}, nvml)
    assert reading.gpus == () and "RuntimeError: boom" in reading.error
    assert nvml.shutdowns == 1


def test_gather_uses_capabilities_instead_of_nvml():
    class Untouchable:
        def __getattr__(self, name):
            raise AssertionError("NVML must not be asked")

    found = facts.gather(
        {}, capabilities=[(10, 0)], version_of=lambda d: None, nvml=Untouchable()
    )
    assert [g.capability for g in found.gpus] == [(10, 0)]
    assert found.gpus[0].source == "VLLM_MOE_ROUTING_DEVICE_CAPABILITY"
    assert set(found.versions) == set(facts.DISTRIBUTIONS)


def test_versions_agree_with_importlib_metadata_for_every_installed_distribution():
    """The header-only read answers what ``importlib.metadata.version`` does,
    for every distribution of the test environment (vLLM's ~150 among them),
    and None where it raises."""
    names = {dist.metadata["Name"] for dist in importlib.metadata.distributions()}
    assert "packaging" in names
    for name in names:
        assert facts.installed_version(name) == importlib.metadata.version(name), name
    missing = "surely-not-an-installed-distribution"
    with pytest.raises(importlib.metadata.PackageNotFoundError):
        importlib.metadata.version(missing)
    assert facts.installed_version(missing) is None


VLLM_0_19_REQUIRES = [
    "flashinfer-python==0.6.6",
    "flashinfer-cubin==0.6.6",
    "flashinfer-jit-cache==0.6.6; extra == 'flashinfer'",
    "flashinfer-python==0.5.0; platform_system == 'Definitely-Not-This-System'",
    "not a requirement ===",
    "torch==2.10.0",
]


def test_base_requirements_evaluate_markers_and_leave_out_extras():
    found = facts.base_requirements("vllm", {"vllm": VLLM_0_19_REQUIRES}.get)
    assert [str(r) for r in found] == [
        "flashinfer-python==0.6.6",
        "flashinfer-cubin==0.6.6",
        "torch==2.10.0",
    ]


def test_base_requirements_of_a_distribution_not_installed():
    def requires_of(name: str) -> list[str] | None:
        raise importlib.metadata.PackageNotFoundError(name)

    assert facts.base_requirements("vllm", requires_of) == []
    assert facts.vllm_pins(requires_of) == {}


def test_vllm_pins_are_the_flashinfer_requirements_that_apply():
    assert facts.vllm_pins({"vllm": VLLM_0_19_REQUIRES}.get) == {
        "flashinfer-python": "==0.6.6",
        "flashinfer-cubin": "==0.6.6",
    }
