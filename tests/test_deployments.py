"""prefect.yaml and the flows' parameters: what the Prefect UI shows people as forms."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest
import yaml
from prefect.exceptions import ParameterTypeError
from prefect.utilities.callables import parameter_schema

ROOT = Path(__file__).resolve().parents[1]
DEPLOYMENTS = yaml.safe_load((ROOT / "prefect.yaml").read_text())["deployments"]


def _flow(entrypoint: str):
    path, name = entrypoint.split(":")
    return getattr(importlib.import_module(path.removesuffix(".py").replace("/", ".")), name)


def test_prefect_yaml_declares_the_flows_on_the_process_pool() -> None:
    names = {_flow(d["entrypoint"]).name for d in DEPLOYMENTS}
    assert {"pipeline", "ingest", "train", "release", "sgd_from_scratch"} <= names
    assert all(d["work_pool"]["name"] == "ursa" for d in DEPLOYMENTS)
    nightly = next(d for d in DEPLOYMENTS if d["name"] == "nightly")
    assert nightly["entrypoint"] == "flows/pipeline.py:pipeline"
    assert nightly["schedules"][0]["cron"] == "0 2 * * *"
    pull = yaml.safe_load((ROOT / "prefect.yaml").read_text())["pull"]
    assert "$URSA_PROJECT_DIR" in str(pull), "the pull step must not depend on the caller's cwd"


@pytest.mark.parametrize("entrypoint", sorted({d["entrypoint"] for d in DEPLOYMENTS}))
def test_every_parameter_has_a_description_and_a_type(entrypoint: str) -> None:
    schema = parameter_schema(_flow(entrypoint).fn).model_dump()
    for name, prop in schema["properties"].items():
        assert prop.get("description"), f"{entrypoint}: parameter '{name}' has no description"
        assert "type" in prop or "anyOf" in prop or "allOf" in prop or "$ref" in prop, name


def test_bad_parameters_are_refused_with_the_name_and_value() -> None:
    from flows.pipeline import pipeline

    with pytest.raises(ParameterTypeError, match="lrs"):
        pipeline.validate_parameters({"lrs": [-0.1]})
    with pytest.raises(ParameterTypeError, match="max_per_class"):
        pipeline.validate_parameters({"max_per_class": 0})
    with pytest.raises(ParameterTypeError, match="resnet35"):
        pipeline.validate_parameters({"arch": "resnet35"})
    assert pipeline.validate_parameters({"arch": "vgg11"})["arch"] == "vgg11"  # any torchvision
    assert pipeline.validate_parameters({"lrs": [0.01], "epochs": [3]})["lrs"] == [0.01]


@pytest.mark.parametrize("entrypoint", sorted({d["entrypoint"] for d in DEPLOYMENTS}))
def test_every_deployed_flow_has_an_overall_time_limit(entrypoint: str) -> None:
    # Tasks run in worker threads, where Prefect cannot interrupt them; the flow's limit is
    # what stops a scheduled run that hangs.
    assert _flow(entrypoint).timeout_seconds, f"{entrypoint} has no timeout_seconds"
