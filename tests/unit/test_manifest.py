from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from registry.errors import ManifestError
from registry.manifest import load_manifest, parse_manifest, version_sort_key


def valid() -> dict[str, Any]:
    return {
        "models": [
            {
                "name": "digits",
                "input": {"shape": [64], "dtype": "float32"},
                "output": {"labels": [str(i) for i in range(10)]},
                "aliases": {"stable": "1"},
                "versions": [
                    {"version": "1", "format": "torchscript", "path": "digits/1/model.pt"},
                    {
                        "version": "2",
                        "format": "state_dict",
                        "path": "digits/2/model.safetensors",
                        "architecture": "registry.examples.digits:DigitsMLP",
                        "architecture_args": {"hidden": 128},
                    },
                ],
            }
        ]
    }


def with_change(path: str, value: Any) -> dict[str, Any]:
    """A copy of ``valid()`` with ``value`` at a dotted path (``models.0.name``); None deletes."""
    raw = copy.deepcopy(valid())
    *parents, last = path.split(".")
    node: Any = raw
    for part in parents:
        node = node[int(part)] if part.isdigit() else node[part]
    key: Any = int(last) if last.isdigit() else last
    if value is None:
        del node[key]
    else:
        node[key] = value
    return raw


def test_valid_manifest_parses_with_defaults() -> None:
    manifest = parse_manifest(valid())
    (model,) = manifest.models
    assert model.resolved_default == "2"
    assert model.batching.max_batch_size == 32
    assert model.device == "cpu"
    assert model.warmup is True
    assert model.resolve("stable") == "1"
    assert model.resolve("2") == "2"
    assert model.resolve("nope") is None


def test_numeric_versions_are_strings_and_compare_numerically() -> None:
    raw = with_change(
        "models.0.versions",
        [
            {"version": 9, "format": "torchscript", "path": "a/9.pt"},
            {"version": 10, "format": "torchscript", "path": "a/10.pt"},
        ],
    )
    raw["models"][0]["aliases"] = {}
    (model,) = parse_manifest(raw).models
    assert [v.version for v in model.versions] == ["9", "10"]
    assert model.resolved_default == "10"
    assert sorted(["10", "9", "beta"], key=version_sort_key) == ["beta", "9", "10"]


INVALID = [
    pytest.param(
        {**valid(), "servers": []}, None, "servers", "Extra inputs", id="unknown-top-level-key"
    ),
    pytest.param(
        with_change("models.0.inputz", {"shape": [1]}),
        "digits",
        "inputz",
        "Extra inputs",
        id="unknown-model-key",
    ),
    pytest.param(
        with_change("models.0.input", None),
        "digits",
        "(model)",
        "declare 'input' (one tensor) or 'inputs'",
        id="missing-input",
    ),
    pytest.param(
        with_change("models.0.name", "Digits!"), "Digits!", "name", "pattern", id="bad-name"
    ),
    pytest.param(
        {"models": [valid()["models"][0], valid()["models"][0]]},
        None,
        "models",
        "duplicate model names ['digits']",
        id="duplicate-names",
    ),
    pytest.param(
        with_change("models.0.versions", []),
        "digits",
        "(model)",
        "at least one version",
        id="no-versions",
    ),
    pytest.param(
        with_change("models.0.versions.1.version", "1"),
        "digits",
        "(model)",
        "duplicate versions ['1']",
        id="duplicate-versions",
    ),
    pytest.param(
        with_change("models.0.versions.0.format", "onnx"),
        "digits",
        "versions[0].format",
        "'torchscript', 'exported' or 'state_dict'",
        id="unknown-format",
    ),
    pytest.param(
        with_change("models.0.versions.1.architecture", None),
        "digits",
        "versions[1]",
        "needs 'architecture'",
        id="state-dict-without-architecture",
    ),
    pytest.param(
        with_change("models.0.versions.0.architecture", "a.b:C"),
        "digits",
        "versions[0]",
        "takes no 'architecture'",
        id="torchscript-with-architecture",
    ),
    pytest.param(
        with_change("models.0.versions.0.path", "/etc/passwd"),
        "digits",
        "versions[0].path",
        "relative path inside the weights root",
        id="absolute-path",
    ),
    pytest.param(
        with_change("models.0.versions.0.path", "../../secrets.pt"),
        "digits",
        "versions[0].path",
        "no '..'",
        id="path-escapes-root",
    ),
    pytest.param(
        with_change("models.0.default_version", "7"),
        "digits",
        "(model)",
        "default_version '7' is not among ['1', '2']",
        id="unknown-default-version",
    ),
    pytest.param(
        with_change("models.0.aliases", {"stable": "3"}),
        "digits",
        "(model)",
        "alias 'stable' points to '3'",
        id="alias-to-missing-version",
    ),
    pytest.param(
        with_change("models.0.aliases", {"2": "1"}),
        "digits",
        "(model)",
        "alias '2' shadows a version",
        id="alias-shadows-version",
    ),
    pytest.param(
        with_change("models.0.versions.0.sha256", "abc123"),
        "digits",
        "versions[0].sha256",
        "pattern",
        id="bad-sha256",
    ),
    pytest.param(
        with_change("models.0.input", {"shape": [0, 8]}),
        "digits",
        "input.shape[0]",
        "greater than or equal to 1",
        id="zero-dimension",
    ),
    pytest.param(
        with_change("models.0.input", {"shape": [64], "dtype": "complex64"}),
        "digits",
        "input.dtype",
        "float32",
        id="unknown-dtype",
    ),
    pytest.param(
        with_change("models.0.device", "gpu"), "digits", "device", "pattern", id="unknown-device"
    ),
    pytest.param(
        with_change("models.0.batching", {"max_batch_size": 0}),
        "digits",
        "batching.max_batch_size",
        "greater than or equal to 1",
        id="zero-batch-size",
    ),
    pytest.param(
        with_change("models.0.instances", 0),
        "digits",
        "instances",
        "greater than or equal to 1",
        id="no-instances",
    ),
    pytest.param(
        with_change("models.0.versions.1.path", "digits/2/model.bin"),
        "digits",
        "versions[1]",
        "ends in .safetensors or .pt",
        id="state-dict-unknown-suffix",
    ),
    pytest.param(
        with_change("models.0.versions.1.architecture", "os.system"),
        "digits",
        "versions[1].architecture",
        "pattern",
        id="architecture-not-module-colon-name",
    ),
    pytest.param({"models": {"digits": {}}}, None, "models", "tuple", id="models-not-a-list"),
]


@pytest.mark.parametrize(("raw", "model", "key", "reason"), INVALID)
def test_invalid_manifest_names_model_key_and_reason(
    raw: dict[str, Any], model: str | None, key: str, reason: str
) -> None:
    with pytest.raises(ManifestError) as caught:
        parse_manifest(raw)
    problems = caught.value.details["problems"]
    assert isinstance(problems, list)
    assert any(
        p["model"] == model and p["key"] == key and reason in p["reason"] for p in problems
    ), problems
    assert key in caught.value.message


def test_unreadable_and_unparsable_files(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="cannot read manifest"):
        load_manifest(tmp_path / "missing.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("models: [\n", encoding="utf-8")
    with pytest.raises(ManifestError, match="not valid YAML"):
        load_manifest(broken)


def test_a_manifest_that_is_not_utf8_or_nests_too_deep_is_one_clear_error(
    tmp_path: Path,
) -> None:
    latin = tmp_path / "latin.yaml"
    latin.write_bytes("models: []  # café\n".encode("latin-1"))
    with pytest.raises(ManifestError, match="not UTF-8 text"):
        load_manifest(latin)
    deep = tmp_path / "deep.yaml"
    deep.write_text("models: " + "[" * 5000 + "]" * 5000 + "\n", encoding="utf-8")
    with pytest.raises(ManifestError, match="nests too deep"):
        load_manifest(deep)


def test_a_decimal_version_must_be_quoted() -> None:
    """YAML reads ``1.10`` as 1.1: clients asking for 1.10 would never find it."""
    raw = with_change("models.0.versions.0.version", 1.1)
    with pytest.raises(ManifestError, match="write the version in quotes"):
        parse_manifest(raw)


def test_a_path_with_a_nul_is_refused_by_the_schema() -> None:
    raw = with_change("models.0.versions.0.path", "digits/1/mo\0del.pt")
    with pytest.raises(ManifestError, match="NUL"):
        parse_manifest(raw)


def test_yaml_tags_that_construct_objects_are_refused(tmp_path: Path) -> None:
    hostile = tmp_path / "hostile.yaml"
    hostile.write_text("models: !!python/object/apply:os.system ['true']\n", encoding="utf-8")
    with pytest.raises(ManifestError, match="not valid YAML"):
        load_manifest(hostile)


@pytest.mark.parametrize("text", ["", "# every model commented out\n", "models: []\n", "models:\n"])
def test_a_manifest_without_models_is_refused(tmp_path: Path, text: str) -> None:
    """An empty file is a file caught mid-write far more often than an intent."""
    empty = tmp_path / "empty.yaml"
    empty.write_text(text, encoding="utf-8")
    with pytest.raises(ManifestError, match="at least one model"):
        load_manifest(empty)


def test_repository_manifest_is_valid() -> None:
    manifest = load_manifest(Path(__file__).parents[2] / "models.yaml")
    assert {m.name for m in manifest.models} == {
        "digits",
        "digits-cnn",
        "diabetes",
        "minilm",
        "similarity",
        "digits-image",
    }
    assert all(v.sha256 for m in manifest.models for v in m.versions)


def test_an_uppercase_sha256_is_read_as_lowercase() -> None:
    digest = "AB" * 32
    entry = {"version": "1", "format": "torchscript", "path": "m.pt", "sha256": digest}
    manifest = parse_manifest(
        {"models": [{"name": "m", "input": {"shape": [1]}, "versions": [entry]}]}
    )
    assert manifest.models[0].versions[0].sha256 == digest.lower()


def test_one_bad_version_is_one_problem() -> None:
    entry = {"version": "1", "format": "torchscript", "path": "../m.pt"}
    with pytest.raises(ManifestError) as caught:
        parse_manifest({"models": [{"name": "m", "input": {"shape": [1]}, "versions": [entry]}]})
    problems = caught.value.details["problems"]
    assert isinstance(problems, list)
    assert [p["key"] for p in problems] == ["versions[0].path"]


def named(**changes: Any) -> dict[str, Any]:
    """``valid()``'s model with named inputs instead of ``input``, and ``changes``."""
    raw = copy.deepcopy(valid())
    model = raw["models"][0]
    del model["input"]
    if "outputs" in changes:
        del model["output"]
    model |= {"inputs": [{"name": "pixels", "shape": [64]}]} | changes
    return raw


def test_named_tensors_and_the_shorthands_read_as_one_list() -> None:
    (shorthand,) = parse_manifest(valid()).models
    assert [(t.name, t.shape, t.dtype) for t in shorthand.inputs] == [("input", (64,), "float32")]
    assert [(t.name, t.labels) for t in shorthand.outputs] == [
        ("output", tuple(str(i) for i in range(10)))
    ]
    (text,) = parse_manifest(
        named(
            inputs=[
                {"name": "text", "dtype": "string", "shape": []},
                {"name": "ids", "dtype": "int64", "shape": [-1, 2]},
            ],
            outputs=[{"name": "embedding", "shape": [384]}],
            handler="registry.handlers.text:SentenceEmbedding",
            handler_args={"max_tokens": 128},
        )
    ).models
    assert [t.name for t in text.inputs] == ["text", "ids"]
    assert text.inputs[1].shape == (-1, 2)
    assert text.outputs[0].dtype is None  # NOTE: learned at warm-up
    assert text.handler_of(text.versions[0]) == (
        "registry.handlers.text:SentenceEmbedding",
        {"max_tokens": 128},
    )


def test_a_versions_handler_replaces_the_models() -> None:
    raw = named(handler="a.b:Model", handler_args={"x": 1})
    raw["models"][0]["versions"][0] |= {"handler": "a.b:Version", "handler_args": {"y": 2}}
    (model,) = parse_manifest(raw).models
    assert model.handler_of(model.versions[0]) == ("a.b:Version", {"y": 2})
    assert model.handler_of(model.versions[1]) == ("a.b:Model", {"x": 1})


@pytest.mark.parametrize(
    ("raw", "key", "reason"),
    [
        pytest.param(named(input={"shape": [1]}), "(model)", "not both", id="input-and-inputs"),
        pytest.param(
            named(inputs=[{"name": "a", "shape": [1]}, {"name": "a", "shape": [2]}]),
            "(model)",
            "duplicate input names ['a']",
            id="duplicate-inputs",
        ),
        pytest.param(
            named(outputs=[{"name": "o"}, {"name": "o"}]),
            "(model)",
            "duplicate output names ['o']",
            id="duplicate-outputs",
        ),
        pytest.param(
            named(inputs=[{"name": "text", "dtype": "string", "shape": []}]),
            "(model)",
            "only a 'handler' turns into tensors",
            id="text-without-handler",
        ),
        pytest.param(
            named(inputs=[{"name": "b64", "dtype": "bytes", "shape": []}], handler="a:B"),
            "(model)",
            "cannot be named 'b64'",
            id="input-named-b64",
        ),
        pytest.param(
            named(inputs=[{"name": "x", "shape": [-2]}]),
            "inputs[0].shape[0]",
            "or -1 for a length that varies",
            id="axis-below-minus-one",
        ),
        pytest.param(
            named(inputs=[{"name": "1x", "shape": [1]}]),
            "inputs[0].name",
            "pattern",
            id="tensor-name",
        ),
        pytest.param(
            named(handler="os.system"), "handler", "pattern", id="handler-not-module-colon-name"
        ),
    ],
)
def test_invalid_named_tensors_are_refused(raw: dict[str, Any], key: str, reason: str) -> None:
    with pytest.raises(ManifestError) as caught:
        parse_manifest(raw)
    problems = caught.value.details["problems"]
    assert isinstance(problems, list)
    assert any(p["key"] == key and reason in p["reason"] for p in problems), problems


def test_version_handler_args_need_the_versions_own_handler() -> None:
    raw = named(handler="a.b:Model")
    raw["models"][0]["versions"][0]["handler_args"] = {"y": 2}
    with pytest.raises(ManifestError, match="'handler_args' without a 'handler'"):
        parse_manifest(raw)
