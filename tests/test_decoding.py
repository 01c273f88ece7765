"""decoding.py: greedy, beam, sampled and speculative decoding against OpenAI's tokens."""

import pytest
import torch
from conftest import audio_of, speech

import audio_io
import decoding
import model as M

# ----- Whisper-exact decoding on real speech ------------------------------------------------------


@pytest.mark.slow
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


@pytest.mark.slow
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


@pytest.mark.slow
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


# ----- speculative decoding -----------------------------------------------------------------------


@pytest.mark.slow
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


@pytest.mark.slow
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
