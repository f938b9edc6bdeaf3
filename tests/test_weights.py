"""Pretrained weights the way torchvision gets them, against the local stand-in weights host:
a download into torch's hub cache checked against the hash in the file's name, a corrupt or
truncated download that leaves nothing behind, and a refused connection that stops at once."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from standins.weightshost import WeightsHost
from tasks.train import TrainConfig, build_model
from tasks.weights import WeightsUnavailable, resolve_weights


@pytest.fixture
def hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty torch hub cache: where torchvision keeps downloaded weights."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    return tmp_path / "torch-home" / "hub" / "checkpoints"


def test_pretrained_weights_are_downloaded_into_the_hub_cache_once(hub: Path) -> None:
    with WeightsHost(("resnet18",)) as host, host.named_in_torchvision():
        config, note = resolve_weights(TrainConfig(pretrained=True), host.base_url)
        path = Path(config.weights_path)
        assert path.parent == hub and path.read_bytes() == host.file_bytes("resnet18")
        assert config.pretrained and str(path) in note
        assert [p.name for p in hub.iterdir()] == [path.name]  # no .partial file left
        again, _ = resolve_weights(TrainConfig(pretrained=True), host.base_url)
        assert again.weights_path == str(path) and sum(host.requests.values()) == 1
    model = build_model(config, 3)
    served = torch.load(path, weights_only=True)
    assert torch.equal(model.conv1.weight, served["conv1.weight"])
    assert model.fc.out_features == 3


@pytest.mark.parametrize("damage", ["corrupt", "truncated"])
def test_a_damaged_download_fails_clearly_and_leaves_nothing(hub: Path, damage: str) -> None:
    with WeightsHost(("resnet18",), damage=damage) as host, host.named_in_torchvision():
        with pytest.raises(WeightsUnavailable, match=damage) as failed:
            resolve_weights(TrainConfig(pretrained=True), host.base_url)
        assert "--if-no-weights scratch" in str(failed.value)
        assert sum(host.requests.values()) == 1
    assert not hub.exists() or not list(hub.iterdir())


def test_torchvision_refuses_the_stand_ins_file_under_the_real_name(hub: Path) -> None:
    """Without named_in_torchvision, the stand-in's random weights do not match the hash in
    torchvision's real file name: the check is real, not bypassed."""
    with WeightsHost(("resnet18",)) as host:
        with pytest.raises(WeightsUnavailable, match="sha256"):
            resolve_weights(TrainConfig(pretrained=True), host.base_url)
    assert not list(hub.iterdir())


def test_an_unreachable_weights_host_stops_the_train_flow_with_the_ways_out(
    data_dir, hub: Path, monkeypatch: pytest.MonkeyPatch, prefect_harness
) -> None:
    from flows.train import train

    monkeypatch.setenv("URSA_WEIGHTS_MIRROR", "http://127.0.0.1:9")  # nothing listens there
    with pytest.raises(WeightsUnavailable) as failed:
        train(recipe="photos", lrs=[1e-3], epochs=[1])
    message = str(failed.value)
    assert "Connection refused" in message and str(hub / "resnet34-b627a593.pth") in message
    assert "--weights" in message and "--if-no-weights scratch" in message
    assert not hub.exists() or not list(hub.iterdir())
