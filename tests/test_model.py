"""model.py: the network (attention, KV cache, padded input) and tiny.en's first logits."""

from dataclasses import replace

import pytest
import torch
from conftest import audio_of, speech

import audio_io
import cpu
import model as M


def test_weight_shapes_are_those_the_model_builds(tiny):
    """The shapes checked before building (weight_shapes) are exactly the model's own tensors'."""
    assert M.weight_shapes(tiny.dims) == {k: tuple(v.shape) for k, v in tiny.state_dict().items()}
    dims = replace(tiny.dims, n_text_layer=2, n_vocab=51865, n_text_ctx=200)
    built = M.Whisper(dims).state_dict()
    assert M.weight_shapes(dims) == {k: tuple(v.shape) for k, v in built.items()}


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


@pytest.mark.slow
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


@pytest.mark.slow
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


@pytest.mark.slow
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


@pytest.mark.slow
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


@pytest.mark.slow
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
