"""Any torchvision classification architecture by name: validated against torchvision's
registry, a new head per family, fine-tuning's layer groups found per family."""

from __future__ import annotations

import pytest
import torch

from tasks.architectures import check_arch, head, layer_groups, new_model, num_classes
from tasks.train import TrainConfig, set_frozen

FAMILIES = ["resnet18", "convnext_tiny", "efficientnet_b0", "mobilenet_v3_large", "regnet_y_400mf"]


def test_unknown_architectures_are_refused_with_the_registry_and_close_names() -> None:
    assert check_arch("convnext_tiny") == "convnext_tiny"
    with pytest.raises(ValueError, match="Did you mean .*resnet34") as refused:
        TrainConfig(arch="resnet35")
    assert "list_models(module=torchvision.models)" in str(refused.value)
    assert "efficientnet_b0" in str(refused.value)


@pytest.mark.parametrize("arch", FAMILIES)
def test_every_family_gets_a_new_head_and_three_layer_groups(arch: str) -> None:
    torch.manual_seed(0)
    model = new_model(arch, 3).eval()
    assert num_classes(model) == 3
    with torch.no_grad():
        assert model(torch.rand(2, 3, 64, 64)).shape == (2, 3)
    early, late, last = layer_groups(model)
    assert early and late and [id(p) for p in last] == [id(p) for p in head(model).parameters()]
    everything = [id(p) for p in model.parameters()]
    assert sorted(id(p) for g in (early, late, last) for p in g) == sorted(everything)
    # Early layers come first in the network, later ones after them.
    assert everything.index(id(early[-1])) < everything.index(id(late[0]))
    set_frozen(model, True)
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert {id(p) for p in last} <= trainable and id(early[0]) not in trainable


def test_resnet_groups_are_fastais_split() -> None:
    model = new_model("resnet18", 3)
    early, late, last = layer_groups(model)
    stem_and_first = [model.conv1, model.bn1, model.layer1, model.layer2]
    assert [id(p) for p in early] == [id(p) for m in stem_and_first for p in m.parameters()]
    assert [id(p) for p in late] == [
        id(p) for m in (model.layer3, model.layer4) for p in m.parameters()
    ]
    assert last == list(model.fc.parameters())
