"""``make soak`` for 30 seconds against a real process, and proof that its checks can fail."""

from __future__ import annotations

import io
from dataclasses import replace

import numpy as np
import orjson
import pytest

from bench import soak
from bench.soak_cases import (
    BAD_CASES,
    SOAK_ALIAS,
    Expect,
    ModelCase,
    check_answer,
    good_request,
    load_reference,
)
from bench.soak_report import (
    ReloadOutcome,
    SlowOutcome,
    Tally,
    build_report,
    render,
    stalls,
)
from tests.integration.server import REPOSITORY

pytestmark = pytest.mark.integration

PROTOCOLS = {"native-json", "native-raw", "native-npy", "v2-json", "v2-binary"}


@pytest.fixture(scope="module")
def models() -> list[ModelCase]:
    return load_reference(REPOSITORY / "models.yaml", REPOSITORY / "weights")


@pytest.fixture(scope="module")
def digits(models: list[ModelCase]) -> ModelCase:
    return next(m for m in models if m.name == "digits")


@pytest.mark.timeout(300)
def test_a_thirty_second_soak_passes() -> None:
    report = soak.run(soak.Options(seconds=30))
    shown = render(report) + "\n" + "\n".join(report.server_log_tail)
    assert report.server_5xx == 0, shown
    assert report.wrong_answers == 0, shown
    assert len(report.reloads) >= 2, shown
    assert all(r["ok"] for r in report.reloads), shown
    exercised = {k.removeprefix("bad/") for k in report.statuses if k.startswith("bad/")}
    assert exercised == {case.name for case in BAD_CASES}, shown
    assert report.bad_not_4xx == {}, shown
    assert report.transport_errors == {}, shown
    assert report.requests > 300, shown
    assert {p for p, cut in report.latency_ms.items() if cut["count"]} == PROTOCOLS, shown
    assert report.server_exit == 0, shown
    assert report.passed, shown


def answer(expect: Expect, version: str, outputs: np.ndarray) -> tuple[dict[str, str], bytes]:
    """What a correct server sends for ``outputs``, written independently of its encoders."""
    model = expect.model
    headers = {"X-Model-Name": model.name, "X-Model-Version": version}
    if expect.answer == "raw":
        shape = ",".join(map(str, outputs.shape))
        return headers | {"X-Shape": shape, "X-Dtype": "float32"}, outputs.astype("<f4").tobytes()
    if expect.answer == "npy":
        buffer = io.BytesIO()
        np.save(buffer, outputs.astype(np.float32))
        return headers, buffer.getvalue()
    if expect.answer == "json":
        rows = outputs.reshape(-1, outputs.shape[-1])
        labels = [model.labels[i] for i in rows.argmax(axis=1)] if model.labels else None
        document = {"model": model.name, "version": version, "outputs": outputs.tolist()}
        if labels is not None:
            document["labels"] = labels[0] if expect.single else labels
        return headers, orjson.dumps(document)
    tensor: dict[str, object] = {"name": "output", "shape": list(outputs.shape), "datatype": "FP32"}
    document = {"model_name": model.name, "model_version": version, "id": "soak"}
    if expect.answer == "v2-json":
        tensor["data"] = outputs.reshape(-1).tolist()
        return headers, orjson.dumps(document | {"outputs": [tensor]})
    raw = outputs.astype("<f4").tobytes()
    tensor["parameters"] = {"binary_data_size": len(raw)}
    head = orjson.dumps(document | {"outputs": [tensor]})
    return headers | {"Inference-Header-Content-Length": str(len(head))}, head + raw


FORMS = [
    ("json", "json"),
    ("raw", "raw"),
    ("npy", "npy"),
    ("v2-json", "v2-json"),
    ("v2-binary", "v2-binary"),
]


@pytest.mark.parametrize(("encoding", "form"), FORMS, ids=[f for _, f in FORMS])
def test_the_checker_passes_a_right_answer_and_catches_a_corrupted_one(
    digits: ModelCase, encoding: str, form: str
) -> None:
    request = good_request((digits, "stable", encoding, form), np.random.default_rng(1))
    expect = request.expect
    assert expect is not None
    outputs = expect.wanted("1")
    allowed = frozenset({"1"})
    headers, body = answer(expect, "1", outputs)
    assert check_answer(expect, 200, headers, body, allowed) is None

    corrupted = {v: e.copy() for v, e in digits.expected.items()}
    corrupted["1"][expect.rows[0], 3] += 0.05
    wrong = replace(expect, model=replace(digits, expected=corrupted))
    assert "differ" in str(check_answer(wrong, 200, headers, body, allowed))

    other = answer(expect, "2", expect.wanted("2"))
    assert "X-Model-Version '2'" in str(check_answer(expect, 200, *other, allowed))
    assert check_answer(expect, 422, headers, body, allowed) == "status 422"


def test_the_checker_catches_wrong_labels_and_lengths(digits: ModelCase) -> None:
    rng = np.random.default_rng(2)
    native = good_request((digits, None, "json", "json"), rng).expect
    assert native is not None
    headers, body = answer(native, "2", native.wanted("2"))
    document = orjson.loads(body)
    relabelled = document["labels"]
    relabelled = "x" if isinstance(relabelled, str) else ["x", *relabelled[1:]]
    bad_labels = orjson.dumps(document | {"labels": relabelled})
    assert "label 'x'" in str(check_answer(native, 200, headers, bad_labels, frozenset({"2"})))

    v2 = good_request((digits, None, "v2-binary", "v2-binary"), rng).expect
    assert v2 is not None
    headers, body = answer(v2, "2", v2.wanted("2"))
    assert "bytes declared" in str(check_answer(v2, 200, headers, body + b"\0", frozenset({"2"})))


def test_a_moving_alias_is_strict_between_reloads_and_lenient_across_one(
    digits: ModelCase,
) -> None:
    aliases = soak.Aliases({"digits": "1"}, {"digits": ("1", "2")})
    assert aliases.allowed(digits, SOAK_ALIAS, since=0) == {"1"}
    assert aliases.allowed(digits, "canary", since=0) == {"2"}
    aliases.epoch = 1  # a reload in flight
    assert aliases.allowed(digits, SOAK_ALIAS, since=0) == {"1", "2"}
    assert aliases.allowed(digits, SOAK_ALIAS, since=1) == {"1", "2"}


def test_every_bad_case_builds_for_every_model_it_fits(models: list[ModelCase]) -> None:
    names = [case.name for case in BAD_CASES]
    assert len(names) == len(set(names))
    for case in BAD_CASES:
        built = [case.request(m, 1024) for m in models if case.eligible(m)]
        assert built, case.name
        assert all(r.kind == f"bad/{case.name}" and r.expect is None for r in built)
        assert case.named
        assert all(400 <= s < 500 for s in case.named)


def test_the_report_fails_on_each_kind_of_failure() -> None:
    tally = Tally()
    tally.count("good/native-json", 200)
    assert build_report(tally, 1.0, 0, None).passed

    tally.count("good/v2-json", 500)
    tally.count("good/native-raw", "error:ReadTimeout")
    tally.count("bad/json_overflow", 200)
    tally.wrong_answer("good/native-npy", "/models/digits/predict", "outputs differ")
    tally.reloads.append(ReloadOutcome(10.0, 422, 5.0, None, [], [], "status 422"))
    tally.slow += [SlowOutcome("unanswered", 25.0), SlowOutcome("408", 10.0)]
    report = build_report(tally, 1.0, 1, "the server exited 1 during the soak", slow_deadline=20)
    assert not report.passed
    assert (report.server_5xx, report.wrong_answers) == (1, 1)
    assert report.bad_not_4xx == {"json_overflow": {"200": 1}}
    failures = "\n".join(report.failures)
    for reason in (
        "exited 1 during the soak",
        "1 answers were 5xx",
        "1 wrong answers",
        "not refused with a 4xx: ['json_overflow']",
        "without an answer: {'good/native-raw': 1}",
        "1 of 1 reloads failed",
        "exited 1 on SIGTERM",
        "1 slow clients held 25 s without an answer",
    ):
        assert reason in failures


def test_stalls_split_answers_near_a_swap_from_the_rest() -> None:
    tally = Tally()
    # a reload answered at 10 s after 0.5 s and swapped lin:2; one at 20 s swapped nothing
    tally.reloads.append(ReloadOutcome(10.0, 200, 500.0, None, ["lin:2"], [], None))
    tally.reloads.append(ReloadOutcome(20.0, 200, 500.0, None, [], [], None))
    tally.answered += [(9.6, 0.300), (11.9, 0.050), (12.1, 0.020), (20.5, 0.010), (1.0, 0.004)]
    stall = stalls(tally, window_s=2.0)
    assert stall["swaps"] == 1
    assert (stall["near_swap_count"], stall["near_swap_max"]) == (2, 300.0)
    assert stall["elsewhere_max"] == 20.0
