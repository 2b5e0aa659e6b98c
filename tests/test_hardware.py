"""hardware: `auto` is bf16 exactly where the hardware computes bf16 natively, and says why."""

import pytest
import torch

from budgetlora import hardware


@pytest.mark.parametrize("native", [True, False])
def test_auto_on_a_cpu_is_bf16_only_with_native_bf16(native, monkeypatch):
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: native)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    choice = hardware.choose("auto", "cpu")
    assert choice.value == ("bf16" if native else "fp32")
    assert ("has native bf16" if native else "no native bf16") in choice.reason


def test_amx_alone_counts_as_native(monkeypatch):
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True)
    assert hardware.native_bf16_cpu()


def test_without_torchs_probe_the_kernel_flags_decide(monkeypatch):
    monkeypatch.delattr(torch.cpu, "_is_avx512_bf16_supported")
    monkeypatch.delattr(torch.cpu, "_is_amx_tile_supported")
    monkeypatch.setattr(hardware, "cpu_flags", lambda: {"avx2", "amx_bf16"})
    assert hardware.native_bf16_cpu()
    monkeypatch.setattr(hardware, "cpu_flags", lambda: {"avx2", "avx512f"})
    assert not hardware.native_bf16_cpu()


def test_an_explicit_precision_is_kept_and_an_unknown_one_refused():
    assert hardware.choose("fp32", "cpu").value == "fp32"
    assert hardware.choose("bf16", "cpu").value == "bf16"
    with pytest.raises(ValueError, match="choose one of auto, fp32, bf16, fp16"):
        hardware.choose("int4", "cpu")


@pytest.mark.parametrize("native", [True, False])
def test_bf16_asked_for_on_a_cpu_without_native_bf16_is_kept_with_a_warning(native, monkeypatch):
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: native)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    choice = hardware.choose("bf16", "cpu")
    assert choice.value == "bf16"
    assert ("emulated" in choice.reason) is not native
    assert "emulated" not in hardware.choose("fp32", "cpu").reason


def test_each_launched_process_infers_on_its_own_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    for rank, device in (("0", "cuda:0"), ("1", "cuda:1"), ("2", "cuda:0")):
        monkeypatch.setenv("LOCAL_RANK", rank)
        assert hardware.inference_device() == device
    monkeypatch.delenv("LOCAL_RANK")
    assert hardware.inference_device() == "cuda:0"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert hardware.inference_device() == "cpu"
