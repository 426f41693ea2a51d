"""The CPU shim's pieces in isolation (apply() itself runs in the spawned Megatron workers)."""

from __future__ import annotations

import torch

from slingshot.models.cpu_shim import CpuRNGStatesTracker, CudaToCpuMode


def test_cuda_device_requests_land_on_cpu() -> None:
    with CudaToCpuMode():
        assert torch.zeros(2, device="cuda").device.type == "cpu"
        assert torch.tensor([1.0], device=torch.device("cuda", 0)).device.type == "cpu"
        t = torch.ones(3)
        assert t.cuda() is t
        assert t.to("cuda").device.type == "cpu"
        assert t.to(device="cuda:0").device.type == "cpu"
        # Megatron's optimizers assert on these strings.
        assert t.type() == "torch.cuda.FloatTensor"
        assert t.bfloat16().type() == "torch.cuda.BFloat16Tensor"
        assert t.type(torch.float64).dtype == torch.float64
    assert torch.ones(1).type() == "torch.FloatTensor"


def test_rng_tracker_forks_named_streams_and_restores_default() -> None:
    tracker = CpuRNGStatesTracker()
    tracker.add("model-parallel-rng", 123)
    torch.manual_seed(0)
    expected_default = torch.rand(3)
    torch.manual_seed(0)
    with tracker.fork():
        a = torch.rand(3)
    with tracker.fork():
        b = torch.rand(3)
    assert torch.equal(torch.rand(3), expected_default)  # default stream untouched
    torch.manual_seed(123)
    assert torch.equal(torch.cat([a, b]), torch.rand(6))  # the named stream continues across forks
    # Checkpoint/restore of the streams (Megatron saves them with the RNG state).
    other = CpuRNGStatesTracker()
    other.set_states({k: v.clone() for k, v in tracker.get_states().items()})
    with tracker.fork():
        c = torch.rand(3)
    with other.fork():
        assert torch.equal(torch.rand(3), c)
