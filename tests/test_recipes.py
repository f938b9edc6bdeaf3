"""Named training recipes: digits (the embedded default) and photos (lesson 2), recorded in
MLflow, with every option the user gives put over the recipe and no other."""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow import MlflowClient

from tasks.recipes import RECIPES, recipe_values
from tests.datasets import digits_dataset
from ursa.settings import Settings


def test_recipes_fill_what_the_user_did_not_give() -> None:
    values, overridden = recipe_values("photos", {"image_size": 64, "arch": None, "flip": True})
    assert values["image_size"] == 64 and overridden == ["image_size"]  # flip: the same value
    assert values["arch"] == "resnet34" and values["pretrained"] and values["resize"] == "crop"
    assert values["lr_find"] and values["centre_lrs"] and values["augmentation"] == "photos"
    assert values["resize_ratio"] == 8 / 7
    digits, none = recipe_values("digits", {})
    assert none == [] and digits["arch"] == "resnet18" and digits["image_size"] == 32
    assert digits["resize"] == "squash" and not digits["flip"] and not digits["pretrained"]
    assert digits["resize_ratio"] == 1.0  # the cache at the training size: no crop
    with pytest.raises(ValueError, match="'faces'"):
        recipe_values("faces", {})
    assert set(RECIPES) == {"digits", "photos"}


def test_the_cli_passes_on_only_the_options_given(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import flows.train
    from app.cli import main

    manifest = digits_dataset(data_dir, per_class=4, classes=2).manifest_path

    seen: dict = {}

    def fake_train(**kwargs):
        seen.update(kwargs)
        raise SystemExit(0)

    monkeypatch.setattr(flows.train, "train", fake_train)
    with pytest.raises(SystemExit):
        main(
            ["train", "--dataset", manifest, "--recipe", "photos", "--image-size", "64"]
            + ["--no-flip", "--if-no-weights", "scratch"]
        )
    assert seen["recipe"] == "photos" and seen["image_size"] == 64 and seen["flip"] is False
    for left_to_the_recipe in ("arch", "lrs", "epochs", "pretrained", "resize", "lr_find"):
        assert left_to_the_recipe not in seen


def test_the_photos_recipe_fine_tunes_downloaded_weights_and_records_itself(
    data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, prefect_harness
) -> None:
    from flows.train import train
    from standins.weightshost import WeightsHost
    from tests.datasets import photos_dataset
    from ursa.package import load_package

    manifest = photos_dataset(data_dir, per_class=6, classes=2).manifest_path
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    with WeightsHost(("resnet18",)) as host, host.named_in_torchvision():
        monkeypatch.setenv("URSA_WEIGHTS_MIRROR", host.base_url)
        # The recipe, made small: resnet18 at 32 px for 2 epochs, a 10-step range test.
        result = train(
            dataset_manifest=manifest,
            recipe="photos",
            arch="resnet18",
            image_size=32,
            epochs=[2],
            batch_size=4,
            lr_find_iters=10,
        )
    assert result.weights.startswith("fine-tuned from pretrained weights")
    assert result.lr_suggestion is not None
    assert [t.lr for t in result.trials] == pytest.approx([result.lr_suggestion], rel=1e-2)
    client = MlflowClient(Settings.from_env().tracking_uri)
    sweep = client.get_run(result.parent_run_id).data
    assert sweep.tags["ursa.recipe"] == "photos"
    assert sweep.params["recipe_overridden"] == "epochs,arch,image_size,batch_size"
    for key, value in {
        "pretrained": "True",
        "resize": "crop",
        "augmentation": "photos",
        "flip": "True",
        "arch": "resnet18",
    }.items():
        assert sweep.params[key] == value, key
    package = load_package(result.model_uri, Settings.from_env().tracking_uri)
    assert package.meta["resize"] == "crop" and package.meta["arch"] == "resnet18"
    # Trained on crops of a cache at 8/7 of the size; served on the centre of that size.
    assert package.meta["image_size"] == 32 and package.meta["resize_size"] == 37
