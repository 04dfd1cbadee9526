from __future__ import annotations

from typing import Any

from registry.keys import VersionKey
from registry.manifest import Manifest, parse_manifest
from registry.repository.planning import AliasMove, fingerprint, plan


def manifest(*models: dict[str, Any]) -> Manifest:
    return parse_manifest({"models": list(models)})


def model(name: str, *versions: str, **extra: Any) -> dict[str, Any]:
    """A model entry; an ``extra`` of None removes that key."""
    entry = {
        "name": name,
        "input": {"shape": [4]},
        "versions": [
            {"version": v, "format": "torchscript", "path": f"{name}/{v}.pt"} for v in versions
        ],
        **extra,
    }
    return {key: value for key, value in entry.items() if value is not None}


def fingerprints(m: Manifest, digest: str = "d") -> dict[VersionKey, str]:
    return {
        VersionKey(s.name, v.version): fingerprint(s, v, digest)
        for s in m.models
        for v in s.versions
    }


def test_fingerprint_follows_what_shapes_the_loaded_object() -> None:
    base = manifest(model("m", "1")).models[0]
    version = base.versions[0]
    same = fingerprint(base, version, "d")
    assert fingerprint(base, version, "d") == same
    assert fingerprint(base, version, "other-weights") != same
    shaping: list[dict[str, Any]] = [
        {"input": {"shape": [5]}},
        {"device": "auto"},
        {"warmup": False},
        {"batching": {"max_batch_size": 2}},
        {"instances": 2},
        {"output": {"labels": ["a"]}},
        {"handler": "a.b:Handler"},
        {"handler": "a.b:Handler", "handler_args": {"max_tokens": 8}},
        {"input": None, "inputs": [{"name": "x", "shape": [4]}]},
        {"output": None, "outputs": [{"name": "y", "shape": [2]}]},
    ]
    for change in shaping:
        changed = manifest(model("m", "1", **change)).models[0]
        assert fingerprint(changed, changed.versions[0], "d") != same, change
    cosmetic: list[dict[str, Any]] = [
        {"aliases": {"x": "1"}},
        {"description": "new words"},
        {"default_version": "1"},
    ]
    for change in cosmetic:
        changed = manifest(model("m", "1", **change)).models[0]
        assert fingerprint(changed, changed.versions[0], "d") == same, change


def test_plan_sorts_versions_into_added_removed_reloaded_unchanged() -> None:
    old = manifest(model("a", "1", "2"), model("gone", "1"))
    new = manifest(model("a", "2", "3"), model("new", "1"))
    loaded: dict[VersionKey, str | None] = dict(fingerprints(old))
    new_prints = fingerprints(new)
    new_prints[VersionKey("a", "2")] = "changed"
    result = plan(loaded, {m.name: m for m in old.models}, new, new_prints)
    assert result.added == (VersionKey("a", "3"), VersionKey("new", "1"))
    assert result.removed == (VersionKey("a", "1"), VersionKey("gone", "1"))
    assert result.reloaded == (VersionKey("a", "2"),)
    assert result.unchanged == ()
    assert result.to_load == (VersionKey("a", "3"), VersionKey("new", "1"), VersionKey("a", "2"))


def test_unchanged_manifest_loads_nothing_and_failed_versions_are_retried() -> None:
    current = manifest(model("a", "1", "2"))
    loaded: dict[VersionKey, str | None] = dict(fingerprints(current))
    result = plan(loaded, {"a": current.models[0]}, current, fingerprints(current))
    assert result.to_load == ()
    assert len(result.unchanged) == 2
    assert result.alias_moves == ()

    loaded[VersionKey("a", "1")] = None  # failed at start-up
    retry = plan(loaded, {"a": current.models[0]}, current, fingerprints(current))
    assert retry.reloaded == (VersionKey("a", "1"),)


def test_alias_and_default_moves_are_reported_without_loads() -> None:
    old = manifest(model("a", "1", "2", aliases={"stable": "1", "old": "1"}))
    new = manifest(model("a", "1", "2", aliases={"stable": "2", "beta": "1"}, default_version="1"))
    loaded: dict[VersionKey, str | None] = dict(fingerprints(old))
    result = plan(loaded, {"a": old.models[0]}, new, fingerprints(new))
    assert result.to_load == ()
    assert set(result.alias_moves) == {
        AliasMove(model="a", alias="stable", before="1", after="2"),
        AliasMove(model="a", alias="old", before="1", after=None),
        AliasMove(model="a", alias="beta", before=None, after="1"),
        AliasMove(model="a", alias="(default)", before="2", after="1"),
    }
