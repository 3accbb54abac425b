"""The flows' typed parameters: the schema Prefect draws its run form from,
and prefect.yaml's and deployments/'s parameters checked against it."""

from __future__ import annotations

import dataclasses
import json
import typing
from pathlib import Path

import pytest
import yaml
from prefect.exceptions import ParameterTypeError
from prefect.flows import load_flow_from_entrypoint
from prefect.utilities.schema_tools.validation import validate
from pydantic import TypeAdapter, ValidationError

from flows.build import build
from flows.nightly import nightly_refresh
from flows.parameters import Label, Placement, PreviewSourceName, TrainingOptions
from flows.retrain import retrain
from flows.stages import DEFAULT_TRAINING, FLOW_OWNED_KEYS, training_options
from flows.train import train
from sonufy_model.audio import PLACEMENTS
from sonufy_model.config import ServiceSettings
from sonufy_model.evaluate import BUILTIN_LABELS, EvaluationInputError, label_spec
from sonufy_model.preview_sources import preview_sources
from sonufy_model.training import TrainConfig

REPO_ROOT = Path(__file__).resolve().parents[1]
FLOWS = {"build": build, "nightly-refresh": nightly_refresh, "retrain": retrain, "train": train}
#: What a property's schema says its values are, when it says it.
TYPED = ("type", "$ref", "enum", "const")


def _untyped(schema: dict, where: str, definitions: dict, seen: frozenset = frozenset()) -> list[str]:
    """The places in ``schema`` that take any value: no type, a type only in
    part of a union, an object open to any key, an array of anything."""
    unions = [member for key in ("anyOf", "oneOf", "allOf") for member in schema.get(key, [])]
    if unions:
        return [place for member in unions for place in _untyped(member, where, definitions, seen)]
    if not any(key in schema for key in TYPED):
        return [where]
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[1]
        return [] if name in seen else _untyped(definitions[name], where, definitions, seen | {name})
    problems = []
    if schema.get("type") == "object":
        if schema.get("additionalProperties", True) is not False or not schema.get("properties"):
            problems.append(f"{where} (an object open to any key)")
        for name, prop in schema.get("properties", {}).items():
            problems += _untyped(prop, f"{where}.{name}", definitions, seen)
    if schema.get("type") == "array":
        problems += _untyped(schema.get("items", {}), f"{where}[]", definitions, seen)
    return problems


@pytest.mark.parametrize("name", sorted(FLOWS))
def test_every_flow_parameter_has_a_type_and_a_description(name):
    schema = FLOWS[name].parameters.model_dump_for_openapi()
    definitions = schema.get("definitions", {})
    problems = [place for prop, spec in schema["properties"].items()
                for place in _untyped(spec, prop, definitions)]
    assert problems == []
    undescribed = [prop for prop, spec in schema["properties"].items() if not spec.get("description")]
    assert undescribed == []


def test_the_schema_check_finds_an_untyped_parameter():
    # What the flows had before: a dict of anything, a parameter with no annotation.
    assert _untyped({"anyOf": [{"additionalProperties": True, "type": "object"}, {"type": "null"}]},
                    "training", {}) == ["training (an object open to any key)"]
    assert _untyped({"anyOf": [{"type": "string"}, {}]}, "source", {}) == ["source"]
    assert _untyped({"default": None, "title": "x"}, "x", {}) == ["x"]
    assert _untyped({"type": "array", "items": {}}, "labels", {}) == ["labels[]"]
    assert _untyped({"type": "array", "items": {"type": "string"}}, "labels", {}) == []


def _deployments() -> list[tuple[str, str, dict]]:
    """(where, entrypoint, parameters) of prefect.yaml's deployments and of deployments/*.json."""
    config = yaml.safe_load((REPO_ROOT / "prefect.yaml").read_text())
    found = [(f"prefect.yaml {spec['name']}", spec["entrypoint"], spec.get("parameters") or {})
             for spec in config["deployments"]]
    entrypoints = {spec["name"]: spec["entrypoint"] for spec in config["deployments"]}
    for file, deployment in (("build.json", "build"), ("nightly.json", "nightly-refresh"),
                             ("retrain.json", "retrain-weekly")):
        found.append((f"deployments/{file}", entrypoints[deployment],
                      json.loads((REPO_ROOT / "deployments" / file).read_text())))
    return found


@pytest.mark.parametrize(("where", "entrypoint", "parameters"),
                         [pytest.param(*deployment, id=deployment[0]) for deployment in _deployments()])
def test_the_deployments_parameters_validate_against_their_flows_schema(where, entrypoint, parameters):
    flow = load_flow_from_entrypoint(str(REPO_ROOT / entrypoint))
    # As the Prefect server checks a deployment's parameters (JSON schema) ...
    assert validate(parameters, flow.parameters.model_dump_for_openapi(), raise_on_error=True) == []
    # ... and as the flow run checks them before it starts (pydantic).
    validated = flow.validate_parameters(parameters)
    for name in ("training", "config"):
        if name in parameters:
            # The training settings reach the trainer as written.
            assert training_options(validated[name]) == {**DEFAULT_TRAINING, **parameters[name]}
            assert all(type(training_options(validated[name])[key]) is type(value)
                       for key, value in parameters[name].items())


def test_the_training_settings_are_trainconfigs_fields_and_the_example_validates():
    assert set(TrainingOptions.model_fields) == {
        field.name for field in dataclasses.fields(TrainConfig)} - set(FLOW_OWNED_KEYS)
    example = yaml.safe_load((REPO_ROOT / "deployments" / "train.yaml").read_text())
    assert training_options(TrainingOptions.model_validate(example)) == training_options(example)
    # Only the keys given count, with the values given.
    options = train.validate_parameters({"config": {"max_time_s": 1800, "filters": [4, 8], "devices": "0,1"}})
    assert training_options(options["config"]) == {**DEFAULT_TRAINING, "max_time_s": 1800, "filters": [4, 8],
                                                   "devices": "0,1"}
    assert training_options(options["config"])["max_time_s"].__class__ is int
    assert training_options(train.validate_parameters({})["config"]) == DEFAULT_TRAINING


@pytest.mark.parametrize(("flow", "parameters", "wrong"), [
    (build, {"source": "itunes"}, "source"),
    (nightly_refresh, {"source": "folder:"}, "source"),
    (build, {"placement": "random"}, "placement"),
    (build, {"preview_sources": ["deezer", "napster"]}, "preview_sources"),
    (build, {"training": {"epochs": 3}}, "epochs"),
    (train, {"config": {"manifest": "elsewhere.parquet"}}, "manifest"),
    (train, {"config": {"preset": "bigger"}}, "preset"),
    (retrain, {"config": {"max_time_s": "soon"}}, "max_time_s"),
    (retrain, {"labels": ["genre", "mood"]}, "labels"),
])
def test_a_parameter_the_flow_cannot_run_is_refused_before_the_run(flow, parameters, wrong):
    with pytest.raises(ParameterTypeError, match=wrong):
        flow.validate_parameters(parameters)
    assert validate(parameters, flow.parameters.model_dump_for_openapi())  # the server's check refuses it too


def test_the_choices_are_the_ones_the_code_accepts():
    assert typing.get_args(Placement) == PLACEMENTS
    settings = ServiceSettings()
    for name in typing.get_args(PreviewSourceName):
        if name != "folder":  # needs a folder to exist; the other two are made from settings alone
            assert [source.name for source in preview_sources(settings.with_endpoints(preview_sources=(name,)))] \
                == [name]
    with pytest.raises(ValueError, match="napster"):
        preview_sources(settings.with_endpoints(preview_sources=("napster",)))
    # A label passes the form's pattern exactly when `sonufy evaluate` takes it.
    form = TypeAdapter(Label)
    for label in (*BUILTIN_LABELS, "folder", "folder:2", "folder:01", "csv:labels.csv:composer", "csv:a:b:c",
                  "folder:0", "folder:x", "csv:labels.csv", "csv::c", "csv:a:", "mood", "Artist", ""):
        try:
            label_spec(label)
            accepted = True
        except EvaluationInputError:
            accepted = False
        try:
            form.validate_python(label)
            passes = True
        except ValidationError:
            passes = False
        assert passes == accepted, label


def test_the_command_line_still_names_a_bad_source_or_setting(tmp_path, capsys):
    # Checked before the flow starts, as before the parameters were typed:
    # exit 2 and a message naming the value, not a Prefect parameter error.
    from flows.cli import main as cli

    assert cli(["nightly", "--source", "itunes", "--db", str(tmp_path / "s.duckdb")]) == 2
    assert "'itunes'" in capsys.readouterr().err
    assert not (tmp_path / "s.duckdb").exists()
    (tmp_path / "s.duckdb").touch()
    config = tmp_path / "train.yaml"
    config.write_text("max_epochs: many\n")
    assert cli(["train", "--config", str(config), "--db", str(tmp_path / "s.duckdb")]) == 2
    assert "max_epochs" in capsys.readouterr().err
    with pytest.raises(ValueError, match="max_epochs"):
        training_options({"max_epochs": "many"})
