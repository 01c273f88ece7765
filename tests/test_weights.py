"""weight_files.py: OpenAI, CTranslate2 and Hugging Face weights, and one-line errors."""

import io
import json
import struct
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import pytest
import torch

import fileio
import model as M
import weight_files

ROOT = Path(__file__).resolve().parent.parent


# ----- OpenAI's .pt -------------------------------------------------------------------------------


def test_tiny_en_dims(tiny):
    assert asdict(tiny.dims) == TINY_DIMS
    assert not tiny.is_multilingual and tiny.num_languages == 99
    # the encoder's positional embedding in the file is exactly the sinusoids we compute
    assert torch.allclose(tiny.encoder.positional_embedding, M.sinusoids(1500, 384), atol=1e-3)


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


# ----- CTranslate2 (faster-whisper) model.bin -----------------------------------------------------


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


# ----- Hugging Face folders -----------------------------------------------------------------------


@pytest.mark.slow
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


@pytest.mark.slow
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


# ----- weights by name ----------------------------------------------------------------------------


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
