"""cpu.py: packed fp16 / bf16 linear layers, and a packed decoder keeping OpenAI's tokens."""

import pytest
import torch
from conftest import audio_of, speech

import audio_io
import cpu
import decoding
import model as M
import weight_files


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


@pytest.mark.slow
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
