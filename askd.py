"""ASKD: adaptive self-knowledge distillation of a Whisper teacher into a small, fast student.

For target token i at training progress s in [0, 1] (s = step / total steps) the student learns from

    L_i = CE(y_i, p_S) + alpha(s) * c_i * T^2 * KL(p_T^T || p_S^T)
                       + beta(s) * T^2 * KL(p_E^T || p_S^T)

p_S is the student, p_T the teacher, p_E the student's own earlier self (an exponential moving
average of its weights, or last epoch's snapshot), all at temperature T. alpha(s) decays: the
student leans on the teacher less and less; beta(s) grows: its own smoothed past takes over.
c_i is how far the teacher can be trusted on token i (its probability of the right token, or
whether its best guess is right), so the student does not copy the teacher's mistakes.
`--loss ce` (plain fine-tuning) and `--loss kd` (classic KD as in distil-whisper: 0.8 CE + 1.0 KL
at T = 2) run through the same loop, so the three compare on equal terms.

Where the speed comes from. Whisper's encoder always reads 30 s, so a short prompt spends most
of the encoder on padding. The student's encoder reads the audio's real length instead (the
log-mel cut after the speech, rounded up to whole seconds); docs/results.md has the figures. An
encoder that never saw trimmed input goes wrong on it (the teacher loops), so the student's
encoder, a trainable copy of the teacher's, is pulled toward the teacher's states on the padded
input, position by position, while the whole student learns:

    L_enc = enc_weight * mean over positions t < T_i of || h_S(trimmed)_t - h_T(padded)_t ||^2 / d

Its decoder keeps k of the teacher's layers (default: all). Fewer would be cheaper on a GPU, but
on the CPU each token's output projection over the whole vocabulary weighs as much as the decoder
layers, and on the default corpus 2-layer students loop on unseen prompts.

The teacher's padded encoder states and its teacher-forced decoder states are computed once per
utterance and cached on disk (fp16 / fp32), so each training step costs the student alone.
`--input padded` is the classic setting for comparison: frozen encoder, 30 s input.

The chapter follows a run: the student, its targets, the schedules and the loss, the data (with
the teacher cache and pseudo-labels), batches, and training as a few named steps of a Trainer (set
up or resume, one optimiser step, end of epoch, final table); `Trainer.train_step` reads one
step straight down. Around it: run_plumbing.py holds a run's lock, checkpoints, torchrun and the
step's DDP and out-of-memory handling; transcribe.py the student's trimmed input and the
Recognizer / Student that read audio (training uses them; they never use training).
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import math
import os
import random
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import audio_io
import data
import fileio
import model as M
import run_plumbing
import text_norm
import tokenization
import transcribe
import weight_files
from kernels import kd_loss, use_triton

LOSSES = ("ce", "kd", "askd")
INPUTS = ("trimmed", "padded")
TRUSTS = ("prob", "argmax", "none")
SELF_TEACHERS = ("ema", "epoch")
PICKS = ("average", "best")
LABELS = ("auto", "reference", "pseudo")
IGNORE = -100  # label of positions that carry no loss (the prompt, padding)
# encoder states the forced timestamps keep for the teacher cache (TeacherCache.kept)
KEEP_BYTES = 2**30
CHECKPOINT_VERSION = 1
LOGGED_PARTS = {"ce", "kd", "self", "trust", "enc", "loss", "tokens"}  # per step in metrics.jsonl


# ----------------------------------------------------------------------------------------------
# 1. The student: the teacher's encoder, a few of its decoder layers
# ----------------------------------------------------------------------------------------------


def spaced_layers(n: int, k: int) -> list[int]:
    """k of n layers, as far apart as possible, keeping the first and the last.

    4 layers, k = 2 -> [0, 3]; 32, 4 -> [0, 10, 21, 31]. One layer: the last, which sits next to
    the output projection (as distil-whisper does).
    """
    if not 1 <= k <= n:
        raise ValueError(f"cannot take {k} of {n} layers")
    if k == 1:
        return [n - 1]
    return [math.floor(i * (n - 1) / (k - 1) + 0.5) for i in range(k)]


def make_student(
    teacher: M.Whisper, decoder_layers: Optional[int] = None, encoder_layers: Optional[int] = None
) -> M.Whisper:
    """A Whisper initialised from the teacher, with `decoder_layers` / `encoder_layers` of its
    layers (None: all); every weight it shares with the teacher is copied."""
    d = teacher.dims
    decoder_layers = decoder_layers or d.n_text_layer
    encoder_layers = encoder_layers or d.n_audio_layer
    dims = M.ModelDims(
        **{**asdict(d), "n_text_layer": decoder_layers, "n_audio_layer": encoder_layers}
    )
    keep = {
        "encoder": spaced_layers(d.n_audio_layer, encoder_layers),
        "decoder": spaced_layers(d.n_text_layer, decoder_layers),
    }
    state = {}
    for name, value in teacher.state_dict().items():
        side, _, rest = name.partition(".blocks.")
        if rest:  # encoder.blocks.3.attn... -> the student's numbering
            index, _, tail = rest.partition(".")
            if int(index) in keep[side]:
                state[f"{side}.blocks.{keep[side].index(int(index))}.{tail}"] = value
        else:
            state[name] = value
    with (
        weight_files.without_random_init()
    ):  # every weight is the teacher's: no random numbers drawn
        student = M.Whisper(dims)
    student.load_state_dict(state)
    student.tokenizer = teacher.tokenizer
    return student.to(teacher.device)


# ----------------------------------------------------------------------------------------------
# 2. Targets
# ----------------------------------------------------------------------------------------------


def target_tokens(tokenizer, text: str) -> list[int]:
    """<|startoftranscript|> (+ language, task) <|notimestamps|> text <|endoftext|>.

    The text is used as written (casing, punctuation), so the student writes like Whisper.
    """
    return [
        *tokenizer.sot_sequence(),
        tokenizer.no_timestamps,
        *tokenizer.encode(" " + text.strip()),
        tokenizer.eot,
    ]


def timestamp_token(tokenizer, seconds: float) -> int:
    return tokenizer.timestamp_begin + min(
        tokenization.N_TIMESTAMPS - 1, max(0, round(seconds / tokenization.TIMESTAMP_STEP))
    )


def timestamped_tokens(tokenizer, parts: Sequence[tuple]) -> list[int]:
    """Whisper's timestamped form, one segment per (start s, end s, text):
    <|startoftranscript|> <|0.00|> text <|2.40|><|2.86|> text <|5.10|> <|endoftext|>."""
    tokens = list(tokenizer.sot_sequence())
    for start, end, text in parts:
        tokens += [
            timestamp_token(tokenizer, start),
            *tokenizer.encode(" " + text.strip()),
            timestamp_token(tokenizer, end),
        ]
    return tokens + [tokenizer.eot]


def prompt_length(tokenizer, tokens: Sequence[int]) -> int:
    """Tokens before the first one learnt: the start sequence, and <|notimestamps|> if the target
    has no timestamps (a timestamped target's first timestamp is learnt)."""
    n = len(tokenizer.sot_sequence())
    return n + (tokens[n] == tokenizer.no_timestamps)


def batch_targets(
    token_lists: Sequence[list[int]], prompts: Sequence[int], pad: int
) -> tuple[Tensor, Tensor]:
    """Decoder inputs (all but the last token) and labels (the next token; IGNORE on each list's
    first prompts[i] tokens and on padding), both [batch, longest - 1]."""
    n = max(len(t) for t in token_lists) - 1
    inputs = torch.full((len(token_lists), n), pad, dtype=torch.long)
    labels = torch.full((len(token_lists), n), IGNORE, dtype=torch.long)
    for i, (tokens, prompt) in enumerate(zip(token_lists, prompts)):
        t = torch.tensor(tokens)
        inputs[i, : len(t) - 1] = t[:-1]
        labels[i, prompt - 1 : len(t) - 1] = t[prompt:]  # position j predicts token j + 1
    return inputs, labels


# ----------------------------------------------------------------------------------------------
# 3. Schedules and trust
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Schedule:
    """A weight as a function of training progress s in [0, 1]: 'const:V', 'linear:A:B' (A at
    s = 0 to B at s = 1), 'cosine:A:B' (half a cosine from A to B) or 'exp:A:B' (geometric)."""

    kind: str
    start: float
    end: float

    KINDS = ("const", "linear", "cosine", "exp")

    @classmethod
    def parse(cls, spec: "str | Schedule | float") -> "Schedule":
        if isinstance(spec, Schedule):
            return spec
        if isinstance(spec, (int, float)):
            return cls("const", float(spec), float(spec))
        parts = str(spec).strip().split(":")
        try:
            values = [float(v) for v in parts[1:]]
        except ValueError:
            values = None
        kind = parts[0]
        if kind == "const" and values is not None and len(values) == 1:
            return cls("const", values[0], values[0])
        if kind in cls.KINDS[1:] and values is not None and len(values) == 2:
            if kind == "exp" and min(values) <= 0:
                raise ValueError(f"schedule {spec!r}: exp needs positive end points")
            return cls(kind, *values)
        raise ValueError(f"bad schedule {spec!r}: use const:V, linear:A:B, cosine:A:B or exp:A:B")

    def __call__(self, s: float) -> float:
        s = min(1.0, max(0.0, float(s)))
        a, b = self.start, self.end
        if self.kind == "const":
            return a
        if self.kind == "linear":
            return a + (b - a) * s
        if self.kind == "cosine":
            return b + (a - b) * 0.5 * (1 + math.cos(math.pi * s))
        return a * (b / a) ** s

    def __str__(self) -> str:
        return (
            f"const:{self.start:g}"
            if self.kind == "const"
            else f"{self.kind}:{self.start:g}:{self.end:g}"
        )


def teacher_trust(teacher_logits: Tensor, labels: Tensor, kind: str = "prob") -> Tensor:
    """c_i per token [N]: 'prob' = the teacher's probability (T = 1) of the right token, 'argmax' =
    1 where its best guess is right else 0, 'none' = 1. Ignored positions get 0."""
    valid = labels != IGNORE
    if kind == "none":
        return valid.float()
    safe = labels.where(valid, 0)
    if kind == "prob":
        c = F.softmax(teacher_logits.float(), dim=-1).gather(1, safe[:, None])[:, 0]
    elif kind == "argmax":
        c = (teacher_logits.argmax(dim=-1) == safe).float()
    else:
        raise ValueError(f"unknown trust {kind!r}; use one of {', '.join(TRUSTS)}")
    return torch.where(valid, c, 0.0)


@dataclass
class LossConfig:
    """The output loss: which, and its knobs. Each field's default, help and bounds are written
    once, here or in TrainConfig (which extends this); fastwhisper.py makes train's options from
    them."""

    loss: str = field(
        default="askd",
        metadata={
            "group": "the loss",
            "help": "ce: plain fine-tuning; kd: classic KD (CE and KL at temperature T); askd: "
            "adaptive self-knowledge distillation",
            "choices": LOSSES,
        },
    )
    T: float = field(
        default=2.0,
        metadata={"help": "distillation temperature", "above": 0, "aliases": ("--temperature",)},
    )
    # ends at 0: a teacher weight from 1 down to 0 loses generality
    alpha: str = field(
        default="cosine:0.3:0",
        metadata={
            "help": "askd: teacher weight over training: const:V, linear:A:B, cosine:A:B or "
            "exp:A:B",
            "type": "schedule",
        },
    )
    beta: str = field(
        default="linear:0:0.3",
        metadata={"help": "askd: self-teacher weight over training", "type": "schedule"},
    )
    # c_i of the method
    trust: str = field(
        default="prob",
        metadata={
            "help": "askd: per-token trust in the teacher: its probability of the right token, "
            "whether its best guess is right, or none",
            "choices": TRUSTS,
        },
    )
    # classic KD: fixed weights (distil-whisper's)
    kd_ce_weight: float = field(default=0.8, metadata={"help": "kd: CE weight", "low": 0})
    kd_weight: float = field(default=1.0, metadata={"help": "kd: KL weight", "low": 0})

    def weights(self, s: float) -> tuple[float, float, float]:
        """(CE weight, teacher weight before trust, self-teacher weight) at progress s."""
        if self.loss == "ce":
            return 1.0, 0.0, 0.0
        if self.loss == "kd":
            return self.kd_ce_weight, self.kd_weight, 0.0
        if self.loss == "askd":
            return 1.0, Schedule.parse(self.alpha)(s), Schedule.parse(self.beta)(s)
        raise ValueError(f"unknown loss {self.loss!r}; use one of {', '.join(LOSSES)}")


# ----------------------------------------------------------------------------------------------
# 4. The loss
# ----------------------------------------------------------------------------------------------


def kl_div(log_p: Tensor, log_q: Tensor) -> Tensor:
    """KL(p || q) per row from log-probabilities; a term with p = 0 counts 0 (log p may be -inf)."""
    p = log_p.exp()
    return torch.where(p > 0, p * (log_p - log_q), 0.0).sum(-1)


def distill_loss(
    student_logits: Tensor,
    labels: Tensor,
    teacher_logits: Optional[Tensor] = None,
    self_logits: Optional[Tensor] = None,
    cfg: LossConfig = LossConfig(),
    s: float = 0.0,
) -> tuple[Tensor, dict]:
    """Mean over the labelled tokens of L_i (see the top of the file), with each part for the log.

    student/teacher/self logits [N, V], labels [N] (IGNORE = no loss). Returns (loss, parts) where
    parts holds the unweighted means 'ce', 'kd', 'self' (T^2 KL), the mean trust and the weights
    used. Written out in PyTorch below; on a GPU the fused kernel (kernels.kd_loss) computes the
    same in one pass over the vocabulary (tests/test_kernels.py holds it to this code).
    """
    w_ce, alpha, beta = cfg.weights(s)
    use_teacher = teacher_logits is not None and alpha != 0.0
    use_self = self_logits is not None and beta != 0.0
    valid, T = labels != IGNORE, cfg.T
    trust = None  # c_i: how far the teacher is right on token i
    if use_teacher:
        trust = teacher_trust(teacher_logits, labels, cfg.trust if cfg.loss == "askd" else "none")
    if use_triton(student_logits):
        loss, means = kd_loss(  # the same terms in one pass over the vocabulary
            student_logits,
            teacher_logits if use_teacher else None,
            labels,
            self_teacher=self_logits if use_self else None,
            ce_weight=w_ce,
            kd_weight=alpha * trust if use_teacher else 0.0,
            self_weight=beta if use_self else 0.0,
            T=T,
            ignore_index=IGNORE,
            parts=True,
        )
    else:  # the same floats as the kernel's PyTorch twin, operation for operation
        student = student_logits.float()
        ce = -F.log_softmax(student, -1).gather(1, labels.where(valid, 0)[:, None])[:, 0]
        loss_i, means = w_ce * ce, {"ce": ce}
        log_q = F.log_softmax(student / T, -1)  # p_S^T
        if use_teacher:
            log_p = F.log_softmax(teacher_logits.detach().float() / T, -1)  # p_T^T
            kl_teacher = means["kd"] = T * T * kl_div(log_p, log_q)
            loss_i = loss_i + alpha * trust * kl_teacher
        if use_self:
            log_p = F.log_softmax(self_logits.detach().float() / T, -1)  # p_E^T
            kl_self = means["self"] = T * T * kl_div(log_p, log_q)
            loss_i = loss_i + beta * kl_self
        count = valid.sum().clamp(min=1)
        loss = torch.where(valid, loss_i, 0.0).sum() / count
        means = {k: torch.where(valid, v, 0.0).detach().sum() / count for k, v in means.items()}
    parts = {"w_ce": w_ce, "w_kd": alpha, "w_self": beta}
    parts.update(zip(means, torch.stack([*means.values()]).tolist()))
    if trust is not None:
        parts["trust"] = (trust.sum() / valid.sum().clamp(min=1)).item()
    return loss, parts


def encoder_loss(
    student_states: Tensor, teacher_states: Sequence[Tensor], positions: Sequence[int]
) -> Tensor:
    """Mean squared difference over the first positions[i] encoder states of each item.

    student_states [B, P, d] (trimmed input), teacher_states[i] [>= positions[i], d] (padded input).
    """
    total, count = student_states.new_zeros(()), 0
    for i, (target, n) in enumerate(zip(teacher_states, positions)):
        total = (
            total
            + (student_states[i, :n].float() - target[:n].to(student_states.device).float())
            .pow(2)
            .sum()
        )
        count += n * student_states.shape[-1]
    return total / max(count, 1)


class SelfTeacher:
    """p_E, the student's earlier self: a frozen copy of its weights, kept as their exponential
    moving average (`update` after every step) or as last epoch's student (`snapshot`)."""

    def __init__(self, student: M.Whisper, kind: str, decay: float):
        self.model = copy.deepcopy(student).requires_grad_(False).eval()
        self.kind, self.decay = kind, decay

    @classmethod
    def for_run(cls, student: M.Whisper, cfg: TrainConfig) -> Optional[SelfTeacher]:
        """One when the loss ever weighs it (askd with a beta that is not 0 throughout)."""
        beta = Schedule.parse(cfg.beta)
        if cfg.loss == "askd" and (beta.start != 0 or beta.end != 0):
            return cls(student, cfg.self_teacher, cfg.ema_decay)
        return None

    @torch.no_grad()
    def logits(self, batch: Batch, autocast=None) -> Tensor:
        """Its logits at the batch's labelled positions, from the student's own input."""
        with autocast or contextlib.nullcontext():
            return StudentStep(self.model)(*batch.student_inputs())[1]

    @torch.no_grad()
    def update(self, student: nn.Module) -> None:
        """The EMA step (the epoch snapshot waits for `snapshot`)."""
        if self.kind == "ema":
            for e, p in zip(self.model.parameters(), student.parameters()):
                e.lerp_(p.detach(), 1 - self.decay)

    def snapshot(self, student: nn.Module) -> None:
        self.model.load_state_dict(student.state_dict())


# ----------------------------------------------------------------------------------------------
# 5. Data: sources, examples, the teacher cache, pseudo-labels
# ----------------------------------------------------------------------------------------------


@dataclass
class Example:
    """One usable training utterance."""

    id: str
    audio: str
    text: str  # the target text (reference or pseudo-label)
    tokens: list
    n_samples: int
    frames: int  # mel frames the student reads
    key: str  # teacher-cache key
    parts: tuple = ()  # (start s, end s, text) of each utterance in it (data.Utterance.parts)
    prompt: int = 0  # tokens before the first one learnt (prompt_length)


def audio_key(path: str) -> str:
    """Identity of an audio file for caches: path, size and modification time."""
    st = os.stat(path)
    return hashlib.sha1(
        f"{os.path.abspath(path)}|{st.st_size}|{st.st_mtime_ns}".encode()
    ).hexdigest()[:20]


def model_fingerprint(m: nn.Module) -> str:
    h = hashlib.sha1()
    for name, p in m.state_dict().items():
        h.update(name.encode())
        h.update(p.detach().float().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


class TeacherCache:
    """Per-utterance teacher outputs on disk: encoder states on the padded input (fp16; the first
    frames / 2 positions, or all 1500 for padded-input students), decoder hidden states under
    teacher forcing on the targets (fp32, before the output projection), and pseudo-labels.

    One small file per utterance, written atomically: a killed run keeps what it had computed.
    """

    def __init__(self, root: Path, teacher: M.Whisper):
        self.teacher = teacher
        self.folder = Path(root) / "askd-teacher" / model_fingerprint(teacher)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.kept = {}  # audio key -> encoder states the forced timestamps computed, for `build`

    def path(self, ex: Example, input_mode: str) -> Path:
        tok = hashlib.sha1(json.dumps(ex.tokens).encode()).hexdigest()[:12]
        span = "full" if input_mode == "padded" else str(ex.frames)
        return self.folder / f"{ex.key}-{tok}-{span}.pt"

    def padded_mel(self, examples: Sequence[Example]) -> Tensor:
        """The examples' log-mels as the teacher reads them: padded to 30 s, [batch, n_mels,
        3000]."""
        t = self.teacher
        return torch.stack(
            [
                transcribe.trimmed_mel(
                    audio_io.load_audio(ex.audio, cache=True), t.dims.n_mels, audio_io.N_FRAMES
                )
                for ex in examples
            ]
        ).to(t.device)

    def load(self, ex: Example, input_mode: str) -> dict:
        return torch.load(self.path(ex, input_mode), map_location="cpu", weights_only=True)

    def missing(self, examples: Sequence[Example], input_mode: str) -> list[Example]:
        return [ex for ex in examples if not self.path(ex, input_mode).exists()]

    @torch.no_grad()
    def build(
        self,
        examples: Sequence[Example],
        input_mode: str,
        batch_size: int = 8,
        progress: bool = True,
        autocast=None,
    ) -> None:
        """Compute what is missing, longest first (an out-of-memory error shows up at once)."""
        from tqdm import tqdm

        todo = sorted(self.missing(examples, input_mode), key=lambda e: -e.n_samples)
        if not todo:
            return
        t = self.teacher
        bar = tqdm(
            total=len(todo), desc="teacher cache", unit="utt", disable=not progress, leave=False
        )
        for i in range(0, len(todo), batch_size):
            chunk = todo[i : i + batch_size]
            inputs, _ = batch_targets(
                [ex.tokens for ex in chunk], [1] * len(chunk), t.tokenizer.eot
            )
            with autocast or contextlib.nullcontext():
                states = self.encoded(chunk)
                hidden = t.decoder.hidden(inputs.to(t.device), states)
            for j, ex in enumerate(chunk):
                keep = states.shape[1] if input_mode == "padded" else ex.frames // 2
                entry = {
                    "enc": states[j, :keep].half().cpu().clone(),
                    "hidden": hidden[j, : len(ex.tokens) - 1].float().cpu().clone(),
                }
                run_plumbing.atomic_torch_save(entry, self.path(ex, input_mode))
            bar.update(len(chunk))
        bar.close()
        self.kept.clear()

    def encoded(self, examples: Sequence[Example]) -> Tensor:
        """The teacher's encoder states of the examples' padded audio, [batch, 1500, width]: those
        the forced timestamps already computed are reused, not computed twice."""
        todo = [ex for ex in examples if ex.key not in self.kept]
        fresh = iter(self.teacher.embed_audio(self.padded_mel(todo)) if todo else ())
        dtype = self.teacher.decoder.token_embedding.weight.dtype
        return torch.stack(
            [
                (self.kept[ex.key] if ex.key in self.kept else next(fresh)).to(dtype)
                for ex in examples
            ]
        )

    def pseudo_labels(
        self, utts: Sequence[data.Utterance], batch_size: int = 8, progress: bool = True
    ) -> dict:
        """The teacher's greedy transcript of each utterance (cached by audio file)."""
        from tqdm import tqdm

        out, todo = {}, []
        for u in utts:
            p = self.folder / f"{audio_key(u.audio)}.pseudo.json"
            if p.exists():
                out[u.audio] = json.loads(p.read_text())["text"]
            else:
                todo.append(u)
        for i in tqdm(
            range(0, len(todo), batch_size),
            desc="pseudo-labels",
            disable=not progress or not todo,
            leave=False,
        ):
            chunk = todo[i : i + batch_size]
            results = transcribe.transcribe_many(
                self.teacher,
                [audio_io.load_audio(u.audio, cache=True) for u in chunk],
                transcribe.TranscribeOptions(temperature=0.0, without_timestamps=True),
                batch_size=batch_size,
            )
            for u, r in zip(chunk, results):
                out[u.audio] = r["text"].strip()
                fileio.write_atomic(
                    self.folder / f"{audio_key(u.audio)}.pseudo.json",
                    json.dumps({"audio": u.audio, "text": out[u.audio]}).encode(),
                )
        return out

    @torch.no_grad()
    def timestamps(
        self, examples: Sequence[Example], batch_size: int = 8, progress: bool = True, autocast=None
    ) -> dict:
        """The teacher's times for each example's parts, {example id: [(start s, end s, text),
        ...]}.

        The teacher reads the padded audio and is forced through the text, part by part, as if it
        were writing it with timestamps: where a part starts and where it ends it takes its most
        likely timestamp within the part's own stretch of audio (give or take 0.1 s; the first no
        later than 1 s, Whisper's rule). The text stays the reference, the times are the teacher's:
        the times a student learns are the ones Whisper users see. Cached by audio and text."""
        from tqdm import tqdm

        out, todo = {}, []
        for ex in examples:
            digest = hashlib.sha1(json.dumps(ex.parts).encode()).hexdigest()[:12]
            path = self.folder / f"{ex.key}-{digest}.times.json"
            if path.exists():
                out[ex.id] = [tuple(p) for p in json.loads(path.read_text())]
            else:
                todo.append((ex, path))
        for i in tqdm(
            range(0, len(todo), batch_size),
            desc="teacher timestamps",
            disable=not progress or not todo,
            leave=False,
        ):
            chunk = todo[i : i + batch_size]
            batch = [ex for ex, _ in chunk]
            with autocast or contextlib.nullcontext():
                features = self.teacher.embed_audio(self.padded_mel(batch))
                for (ex, path), parts, states in zip(
                    chunk, self._forced_times(features, batch), features
                ):
                    out[ex.id] = parts
                    fileio.write_atomic(path, json.dumps(parts).encode())
                    if (len(self.kept) + 1) * states.numel() * 2 <= KEEP_BYTES:
                        self.kept[ex.key] = states.half()
        return out

    def _forced_times(self, features: Tensor, examples: Sequence[Example]) -> list[list[tuple]]:
        """Forced timestamps for a batch (see `timestamps`), one example at a time through a KV
        cache: each step feeds only the tokens just decided, the audio's keys and values once."""
        t, tok, step = self.teacher, self.teacher.tokenizer, tokenization.TIMESTAMP_STEP
        begin = tok.timestamp_begin
        stamps = t.decoder.token_embedding.weight[begin : begin + tokenization.N_TIMESTAMPS].float()
        out = []
        for audio, ex in zip(features, examples):
            cache = M.KVCache(t, 1, audio.device, audio.dtype)

            def feed(tokens, audio=audio, cache=cache):
                """The teacher's last hidden state after these tokens, through the cache."""
                tokens = torch.tensor([tokens], device=audio.device)
                return t.decoder.hidden(tokens, audio[None], cache=cache)[0, -1].float()

            def best(hidden, lo, hi):
                """The likeliest timestamp in [lo, hi]."""
                return lo + int((stamps[lo : hi + 1] @ hidden).argmax())

            hidden, times, last_end = feed(list(tok.sot_sequence())), [], 0
            limit = min(
                tokenization.N_TIMESTAMPS - 1, round(ex.n_samples / audio_io.SAMPLE_RATE / step)
            )
            for k, (a, b, text) in enumerate(ex.parts):
                a, b = round(a / step), round(b / step)
                lo = max(last_end, a - 5) if k else 0  # give or take 0.1 s; times never go back
                start = best(hidden, lo, max(lo, b if k else min(b, 50)))  # the first by 1 s
                hidden = feed([begin + start] + tok.encode(" " + text.strip()))
                first = min(start + 1, tokenization.N_TIMESTAMPS - 1)
                last_end = best(hidden, first, max(first, min(b + 5, limit)))
                hidden = feed([begin + last_end])
                times.append((start * step, last_end * step, text))
            out.append(times)
        return out


def timestamp_examples(examples: Sequence[Example], share: float, seed: int) -> list[Example]:
    """The examples whose targets carry timestamps: each with probability `share`, drawn once per
    example (so the teacher cache holds one target each), the same draw in every run of a seed."""
    return [ex for ex in examples if random.Random(f"{seed}:{ex.id}").random() < share]


def prepare_examples(
    utts: Sequence[data.Utterance],
    tokenizer,
    round_frames: int,
    n_text_ctx: int,
    labels: str = "auto",
    pseudo: Optional[dict] = None,
    max_label_wer: float = 0.2,
    skipped: Optional[Counter] = None,
) -> list[Example]:
    """Usable examples; each unusable utterance is skipped, counted in `skipped` by reason and named
    in a warning (unreadable or missing audio, longer than 30 s, no text, text the tokenizer cannot
    encode or that is too long, a pseudo-label too far from the reference)."""
    skipped = Counter() if skipped is None else skipped
    notes, examples = [], []

    def skip(u, reason, detail=""):
        skipped[reason] += 1
        notes.append(f"{u.audio}: {reason}{detail}")

    for u in utts:
        try:
            n = len(audio_io.load_audio(u.audio, cache=True))
        except (fileio.AudioError, OSError) as e:
            skip(u, "unreadable audio", f" ({str(e).split(': ', 1)[-1]})")
            continue
        if n == 0:
            skip(u, "empty audio")
            continue
        if n > audio_io.N_SAMPLES:
            skip(u, "longer than 30 s", f" ({n / audio_io.SAMPLE_RATE:.1f} s)")
            continue
        ref = (u.text or "").strip()
        text = ref
        if labels == "pseudo" or (labels == "auto" and not ref):
            text = (pseudo or {}).get(u.audio, "")
            if ref and labels == "pseudo" and text_norm.wer(ref, text) > max_label_wer:
                skip(u, "pseudo-label disagrees with the reference")
                continue
        if not text:
            skip(u, "no text")
            continue
        try:
            tokens = target_tokens(tokenizer, text)
        except (ValueError, UnicodeError) as e:
            skip(u, "text the tokenizer cannot encode", f" ({e})")
            continue
        if len(tokens) > n_text_ctx:
            skip(u, "text too long", f" ({len(tokens)} tokens > {n_text_ctx})")
            continue
        parts = u.parts if u.parts and text == ref else ((0.0, n / audio_io.SAMPLE_RATE, text),)
        examples.append(
            Example(
                u.id,
                u.audio,
                text,
                tokens,
                n,
                transcribe.trimmed_frames(n, round_frames),
                audio_key(u.audio),
                parts,
                prompt_length(tokenizer, tokens),
            )
        )
    if notes:
        shown = "; ".join(notes[:5]) + ("; ..." if len(notes) > 5 else "")
        print(f"warning: skipped {len(notes)} utterance(s): {shown}", file=sys.stderr)
    return examples


# ----------------------------------------------------------------------------------------------
# 6. Batches
# ----------------------------------------------------------------------------------------------


def epoch_batches(
    examples: Sequence[Example],
    epoch: int,
    batch_size: int,
    max_frames: Optional[int],
    seed: int,
    group: int = 1,
) -> list[list[int]]:
    """The epoch's micro-batches: bucketed by the length of the speech (trimmed frames, whatever
    the input mode, so padded- and trimmed-input runs see the same batches), shuffled by (seed,
    epoch) so a resumed run sees the same order; trimmed to a multiple of `group` (ranks x
    accumulation) so every rank takes equal steps."""
    batches = data.bucket_batches(
        [ex.frames for ex in examples],
        batch_size=batch_size,
        max_frames=max_frames,
        shuffle=True,
        seed=seed * 100_003 + epoch,
    )
    return batches[: len(batches) // group * group]


@dataclass
class Batch:
    mel: Optional[Tensor]  # [B, n_mels, frames] (trimmed input) or None (padded: cached features)
    mel_lengths: Optional[Tensor]
    # [B, 1500, d] teacher = frozen student encoder states (padded input)
    features: Optional[Tensor]
    inputs: Tensor
    labels: Tensor  # [B, n]
    enc_targets: list  # teacher encoder states per item (trimmed input)
    teacher_hidden: Tensor  # [N, d] at the labelled positions, in row-major order
    ids: list

    def to(self, device: torch.device) -> Batch:
        """The batch with its tensors on `device` (encoder_loss moves the encoder targets)."""
        moved = {
            name: None if x is None else x.to(device)
            for name, x in vars(self).items()
            if name not in ("enc_targets", "ids")
        }
        return Batch(**moved, enc_targets=self.enc_targets, ids=self.ids)

    def student_inputs(self) -> tuple:
        """StudentStep's arguments: the input, the decoder's tokens, the labelled positions."""
        return self.mel, self.mel_lengths, self.features, self.inputs, self.labels != IGNORE

    def enc_positions(self) -> list[int]:
        """Encoder positions of each item's own audio (the encoder halves the frames): those its
        target covers, also when the input was padded to 30 s."""
        return [len(t) for t in self.enc_targets]


def collate(
    examples: Sequence[Example],
    cache: TeacherCache,
    input_mode: str,
    n_mels: int,
    pad: int,
    augment: bool = False,
    seed: int = 0,
    padded: bool = False,
) -> Batch:
    """Tensors for one micro-batch. SpecAugment (if `augment`; data.spec_augment's masks, time
    masks at most a tenth of the speech) masks the student's input only, with masks drawn from
    `seed`, so a resumed or multi-process run draws the same ones. `padded`: trimmed-input
    examples padded to 30 s, as other tools read a student (the encoder loss still covers the
    speech only)."""
    entries = [cache.load(ex, input_mode) for ex in examples]
    inputs, labels = batch_targets(
        [ex.tokens for ex in examples], [ex.prompt for ex in examples], pad
    )
    valid = labels != IGNORE
    hidden = torch.cat(
        [e["hidden"][valid[i, : e["hidden"].shape[0]]] for i, e in enumerate(entries)]
    )
    if input_mode == "padded":
        features = torch.stack([e["enc"].float() for e in entries])
        return Batch(None, None, features, inputs, labels, [], hidden, [ex.id for ex in examples])
    frames = audio_io.N_FRAMES if padded else max(ex.frames for ex in examples)
    generator = torch.Generator().manual_seed(seed)
    mels = []
    for ex in examples:
        mel = transcribe.trimmed_mel(audio_io.load_audio(ex.audio, cache=True), n_mels, frames)
        if augment:
            own = mel[:, : ex.frames]
            own.copy_(
                data.spec_augment(own, T=max(1, min(100, ex.frames // 10)), generator=generator)
            )
        mels.append(mel)
    return Batch(
        torch.stack(mels),
        torch.tensor([frames if padded else ex.frames for ex in examples]),
        None,
        inputs,
        labels,
        [e["enc"] for e in entries],
        hidden,
        [ex.id for ex in examples],
    )


class StudentStep(nn.Module):
    """The student's forward pass for training, as one module (so DistributedDataParallel sees it):
    encoder states and the logits at the labelled positions only (no [B, n, V] tensor)."""

    def __init__(self, student: M.Whisper):
        super().__init__()
        self.student = student

    def forward(self, mel, mel_lengths, features, inputs, valid):
        s = self.student
        audio_lengths = None
        if features is None:
            features = s.encoder(mel, mel_lengths)
            audio_lengths = (mel_lengths + 1) // 2
        hidden = s.decoder.hidden(inputs, features, audio_lengths)
        logits = F.linear(hidden[valid], s.decoder.token_embedding.weight.to(hidden.dtype))
        return features, logits


# ----------------------------------------------------------------------------------------------
# 7. Training
# ----------------------------------------------------------------------------------------------


LR_SCHEDULES = ("linear", "cosine")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")


@dataclass
class TrainConfig(LossConfig):
    """A run's options: the loss's (LossConfig's fields come first) and these, in the order and
    groups of `train --help`. A field's metadata: its help, and where they apply its choices, its
    bounds (low: >=, above: >, high: <=), a "type" the CLI parses it with, other flags ("aliases")
    and the help group it starts ("group")."""

    teacher: str = field(
        default="tiny.en",
        metadata={"group": "what and where", "help": "teacher model: a name or a path"},
    )
    train: str = field(
        default="asterisk:train",
        metadata={
            "help": "training data: asterisk (the default corpus), voices (real speech of many "
            "voices, no text), a manifest (.tsv/.csv/.jsonl with audio and text columns; empty "
            "text = use the teacher's transcript) or a LibriSpeech folder, each optionally "
            ":train, :dev or :test; join several with '+' (e.g. asterisk:train+voices)"
        },
    )
    dev: Optional[str] = field(
        default=None,
        metadata={
            "help": "data for the dev WER after each epoch, which chooses the student; join "
            "several with + to choose by the mean of their WERs (none: "
            "asterisk:dev+real-speech-dev:select, or 10% of a custom --train)"
        },
    )
    test: Optional[str] = field(
        default=None,
        metadata={"help": "data for the final table (none: asterisk:test with the default corpus)"},
    )
    ood: Optional[str] = field(
        default=None,
        metadata={
            "help": "out-of-domain data for the final table, a column beside --test's (none: "
            "real-speech-dev:report, real speech of other people never chosen on, with the "
            "default corpus; '' for no column)"
        },
    )
    limit: Optional[int] = field(
        default=None, metadata={"help": "use only the first N training utterances", "low": 1}
    )
    joined: float = field(
        default=0.2,
        metadata={
            "help": "long inputs per training utterance: recordings of 15-28 s joined from "
            "training utterances with short pauses, so the student learns long speech (0: none)",
            "low": 0,
        },
    )
    perturbed: float = field(
        default=0.0,
        metadata={
            "help": "copies per training utterance with speed, room (reverberation), noise and "
            "level changed, so the student hears more than one recording setup (0: none)",
            "low": 0,
        },
    )
    timestamps: float = field(
        default=0.5,
        metadata={
            "help": "share of training targets written with timestamps (the teacher's times, "
            "forced on the text), so the student can write subtitles and read long audio like "
            "Whisper (0: none)",
            "low": 0,
            "high": 1,
        },
    )
    name: str = field(default="askd", metadata={"help": "run name: files go to RUNS_DIR/NAME"})
    runs_dir: str = field(default="runs", metadata={"help": "where runs go"})
    cache_dir: Optional[str] = field(
        default=None,
        metadata={
            "help": "where the teacher's outputs are cached (none: $FASTWHISPER_CACHE or "
            "~/.cache/fastwhisper)"
        },
    )
    resume: bool = field(
        default=False, metadata={"help": "continue RUNS_DIR/NAME exactly where it stopped"}
    )
    overwrite: bool = field(default=False, metadata={"help": "start RUNS_DIR/NAME over"})

    decoder_layers: Optional[int] = field(
        default=None,
        metadata={
            "group": "the student",
            "help": "decoder layers, maximally spaced teacher layers (4 -> 2: layers 0 and 3) "
            "(none: all; on tiny.en, 2-layer students loop on unseen prompts)",
            "low": 1,
        },
    )
    encoder_layers: Optional[int] = field(
        default=None, metadata={"help": "encoder layers (none: all of the teacher's)", "low": 1}
    )
    input: str = field(
        default="trimmed",
        metadata={
            "help": "trimmed: the encoder reads the audio's real length and is trained toward the "
            "teacher's states; padded: 30 s windows, frozen encoder (the classic setting)",
            "choices": INPUTS,
        },
    )
    round_frames: int = field(
        default=transcribe.ROUND_FRAMES,
        metadata={
            "help": "trimmed input is rounded up to a multiple of this many mel frames (100 = 1 s)",
            "low": 1,
        },
    )
    padded_share: float = field(
        default=0.0,
        metadata={
            "help": "trimmed input: share of micro-batches the student reads padded to 30 s, as "
            "other Whisper tools read it, so it keeps its accuracy there too (0: none)",
            "low": 0,
            "high": 1,
        },
    )
    train_embed: bool = field(
        default=False,
        metadata={
            "help": "train the token embedding (which is also the output projection) too; by "
            "default it stays the teacher's"
        },
    )
    enc_weight: float = field(
        default=1.0,
        metadata={
            "help": "weight of the MSE pulling the student's encoder states (trimmed input) toward "
            "the teacher's (padded input)",
            "low": 0,
        },
    )

    self_teacher: str = field(
        default="ema",
        metadata={
            "group": "the loss",
            "help": "askd: the student's earlier self: an EMA of its weights or its snapshot from "
            "the end of the last epoch",
            "choices": SELF_TEACHERS,
        },
    )
    ema_decay: float = field(
        default=0.99,
        metadata={"help": "decay of the EMA self-teacher", "low": 0, "high": 0.999999},
    )
    pick: str = field(
        default="average",
        metadata={
            "help": "student.pt: average: the EMA of the student's weights (--ema-decay) at the "
            "end, a weight average no small dev set picks by chance; best: the epoch with the "
            "lowest dev WER",
            "choices": PICKS,
        },
    )
    labels: str = field(
        default="auto",
        metadata={
            "help": "targets: the reference text, the teacher's transcript, or auto: the reference "
            "where there is one",
            "choices": LABELS,
        },
    )
    max_label_wer: float = field(
        default=0.2,
        metadata={
            "help": "--labels pseudo: drop utterances whose pseudo-label is further than this WER "
            "from their reference",
            "low": 0,
        },
    )

    epochs: int = field(
        default=6,
        metadata={"group": "optimisation", "help": "passes over the training data", "low": 1},
    )
    batch_size: int = field(default=16, metadata={"help": "utterances per micro-batch", "low": 1})
    max_frames: Optional[int] = field(
        default=8000, metadata={"help": "mel frames per micro-batch, padding included", "low": 1}
    )
    accum: int = field(default=1, metadata={"help": "micro-batches per optimiser step", "low": 1})
    lr: float = field(default=1e-4, metadata={"help": "AdamW peak learning rate", "above": 0})
    warmup: float = field(
        default=0.1,
        metadata={"help": "a fraction of the steps (< 1) or a number of steps", "low": 0},
    )
    lr_schedule: str = field(
        default="linear", metadata={"help": "decay to 0 after warmup", "choices": LR_SCHEDULES}
    )
    weight_decay: float = field(default=0.01, metadata={"help": "AdamW weight decay", "low": 0})
    clip: float = field(default=1.0, metadata={"help": "gradient norm clipping", "above": 0})
    spec_augment: bool = field(
        default=False, metadata={"help": "SpecAugment on the student's input"}
    )
    seed: int = field(default=0, metadata={"help": "random seed", "low": 0})

    device: str = field(
        default="auto",
        metadata={
            "group": "machinery",
            "help": "cpu, cuda, ... (auto: cuda if available); under torchrun each process takes "
            "its LOCAL_RANK's GPU, or the CPU with gloo",
            "type": "device",
        },
    )
    precision: str = field(
        default="auto",
        metadata={"help": "auto: bf16 autocast on GPUs, fp32 on the CPU", "choices": PRECISIONS},
    )
    threads: int = field(
        default=0, metadata={"help": "CPU threads for torch (0: torch's choice)", "low": 0}
    )
    save_every: int = field(
        default=50,
        metadata={"help": "steps between checkpoints, besides every epoch's end", "low": 1},
    )
    eval_batch_size: int = field(default=8, metadata={"help": "dev-set decoding batch", "low": 1})
    max_bad_steps: int = field(
        default=20,
        metadata={"help": "give up after this many non-finite steps in a row", "low": 1},
    )
    quiet: bool = field(default=False, metadata={"help": "no progress bars", "aliases": ("-q",)})

    # changing these does not change what a resumed run computes
    RESUMABLE_CHANGES = (
        "device",
        "threads",
        "quiet",
        "resume",
        "overwrite",
        "save_every",
        "eval_batch_size",
        "test",
        "ood",
        "cache_dir",
        "precision",
        "max_bad_steps",
    )

    def check(self) -> None:
        choices = {
            "loss": LOSSES,
            "input": INPUTS,
            "trust": TRUSTS,
            "self_teacher": SELF_TEACHERS,
            "labels": LABELS,
            "lr_schedule": LR_SCHEDULES,
            "precision": PRECISIONS,
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                value, flag = getattr(self, name), name.replace("_", "-")
                raise run_plumbing.TrainError(f"--{flag} {value}: use one of {', '.join(allowed)}")
        for name in ("alpha", "beta"):
            Schedule.parse(getattr(self, name))
        positive = {
            "epochs": self.epochs,
            "batch_size": self.batch_size,
            "accum": self.accum,
            "round_frames": self.round_frames,
            "decoder_layers": self.decoder_layers or 1,
            "T": self.T,
            "lr": self.lr,
            "save_every": self.save_every,
        }
        for name, value in positive.items():
            if value <= 0:
                raise run_plumbing.TrainError(
                    f"--{name.replace('_', '-')} must be positive, got {value}"
                )
        if not 0 <= self.timestamps <= 1:
            raise run_plumbing.TrainError(f"--timestamps must be in [0, 1], got {self.timestamps}")
        if not 0 <= self.ema_decay < 1:
            raise run_plumbing.TrainError(f"--ema-decay must be in [0, 1), got {self.ema_decay}")


def _lr_lambda(cfg: TrainConfig, total_steps: int):
    warmup = int(cfg.warmup * total_steps) if cfg.warmup < 1 else int(cfg.warmup)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        s = (step - warmup) / max(1, total_steps - warmup)
        return (
            max(0.0, 1 - s)
            if cfg.lr_schedule == "linear"
            else 0.5 * (1 + math.cos(math.pi * min(1.0, s)))
        )

    return factor


def _data_fingerprint(examples: Sequence[Example]) -> str:
    h = hashlib.sha1()
    for ex in examples:
        h.update(f"{ex.id}|{ex.key}|{ex.frames}|{ex.tokens}\n".encode())
    return h.hexdigest()[:16]


def default_sources(cfg: TrainConfig) -> tuple[list, dict, list, str]:
    """(train utterances, dev sets {name: utterances}, test utterances, test label): the default
    corpus's own splits, or 10% of a custom training set held out as dev. cfg.train may join
    several sources with '+' (e.g. asterisk:train+voices), each keeping its own labels: its
    reference text, or the teacher's transcript where it has none. cfg.dev may join several
    sources with '+' too: the student is then chosen by the mean of their WERs."""
    train = [u for name in cfg.train.split("+") for u in data.load_source(name)]
    if cfg.dev:
        dev = {name: data.load_source(name) for name in cfg.dev.split("+")}
    elif cfg.train.startswith("asterisk"):
        dev = {"asterisk:dev": data.load_source("asterisk:dev")}
        try:  # real speech of other people: choose the student that generalises (its select part)
            dev["real-speech-dev:select"] = data.load_source("real-speech-dev:select")
        except fileio.DataError as e:
            print(
                "warning: dev set without real-speech-dev, the student is chosen on asterisk:dev "
                f"alone: {e}",
                file=sys.stderr,
            )
    else:
        parts = data.split_corpus(train, dev=0.1, test=0.0)
        train, dev = parts["train"], {"10% of --train": parts["dev"]}
    for name in [
        name for name, utts in dev.items() if not any((u.text or "").strip() for u in utts)
    ]:
        print(f"warning: dev set {name} holds no transcribed utterance; left out", file=sys.stderr)
        del dev[name]
    test_spec = cfg.test or ("asterisk:test" if cfg.train.startswith("asterisk") else None)
    test = data.load_source(test_spec) if test_spec else []
    if cfg.limit:
        train = train[: cfg.limit]
    return train, dev, test, test_spec or ""


class Trainer:
    """One training run, as plain state: the student, its optimiser and schedule, its earlier self,
    the step, the best dev WER, the counters and the run's files. Its steps, in the order they run:
    set up or resume (__init__), one optimiser step (`train_step`, which `run` repeats, saving as it
    goes), the end of an epoch (`end_of_epoch`: dev WER, best student kept), the final table.

    Files under runs/NAME/: student.pt (the best student by dev WER, OpenAI format, loadable by
    `transcribe --model`), last.pt (everything needed to resume), metrics.jsonl, config.json,
    results.json.
    """

    def __init__(self, cfg: TrainConfig):
        cfg.check()
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        self.cfg = cfg
        self.rank, self.world, self.device = run_plumbing.setup_distributed(cfg)
        self.main = self.rank == 0
        self.run_dir = Path(cfg.runs_dir) / cfg.name
        self.last_path, self.metrics_path = self.run_dir / "last.pt", self.run_dir / "metrics.jsonl"
        checkpoint = self._open_checkpoint()
        torch.manual_seed(cfg.seed)
        random.seed(cfg.seed)
        np.random.seed(cfg.seed)
        self.amp = _autocast(cfg, self.device)
        # the teacher is not kept: the cache has it all
        self._make_student(self._prepare_data(checkpoint))
        self.step, self.best_wer, self.counters, self.bad_in_a_row = 0, math.inf, Counter(), 0
        if checkpoint is not None:
            self._resume(checkpoint)
        elif self.main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            self.metrics_path.write_text("")
            fileio.write_atomic(
                self.run_dir / "config.json", json.dumps(asdict(cfg), indent=1).encode()
            )
        self.step_module = StudentStep(self.student)
        if self.world > 1:
            self.step_module = nn.parallel.DistributedDataParallel(
                self.step_module, device_ids=[self.device] if self.device.type == "cuda" else None
            )
        self.say(
            f"student: {self.student.dims.n_text_layer}-layer decoder, {cfg.input} input, "
            f"{self.student.num_parameters() / 1e6:.1f} M parameters; {len(self.examples)} "
            f"training utterances ({sum(self.skipped.values())} skipped), "
            f"{sum(map(len, self.dev_sets.values()))} dev; {self.total_steps} steps "
            f"({cfg.epochs} epochs x {self.steps_per_epoch}), loss {cfg.loss}, "
            f"{self.world} process(es), {self.device}"
        )

    def say(self, message: str) -> None:
        if self.main and not self.cfg.quiet:
            print(message, file=sys.stderr)

    def log(self, record: dict) -> None:
        if self.main:
            with open(self.metrics_path, "a") as f:
                f.write(json.dumps(record) + "\n")

    # --- set up or resume ---

    def _open_checkpoint(self) -> Optional[dict]:
        """last.pt when resuming (checked against the options); a run is never silently
        overwritten."""
        cfg, path = self.cfg, self.last_path
        if cfg.resume and not path.exists():
            raise run_plumbing.TrainError(
                f"{self.run_dir}: there is no run to resume there (no {path.name}); "
                f"start it without --resume"
            )
        if not cfg.resume and path.exists() and not cfg.overwrite:
            raise run_plumbing.TrainError(
                f"{self.run_dir}: already holds a run; --resume to continue it, --overwrite to "
                f"start over, or --name for a new one"
            )
        if not cfg.resume:
            # the old run's files go first: a folder never mixes two runs
            if cfg.overwrite and self.main:
                for name in (
                    "last.pt",
                    "student.pt",
                    "results.json",
                    "metrics.jsonl",
                    "config.json",
                ):
                    (self.run_dir / name).unlink(missing_ok=True)
            return None
        try:
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # truncated, corrupted, or not a checkpoint at all
            raise run_plumbing.TrainError(
                f"{path}: cannot read the checkpoint ({fileio.brief(e)}); start over with "
                f"--overwrite"
            ) from None
        version = checkpoint.get("version") if isinstance(checkpoint, dict) else None
        if version != CHECKPOINT_VERSION:
            raise run_plumbing.TrainError(
                f"{path}: checkpoint version {version}, expected {CHECKPOINT_VERSION}"
            )
        old = checkpoint["config"]
        changed = [
            f"{f.name} ({old.get(f.name)!r} -> {getattr(cfg, f.name)!r})"
            for f in fields(cfg)
            if f.name not in cfg.RESUMABLE_CHANGES and old.get(f.name) != getattr(cfg, f.name)
        ]
        if changed:
            raise run_plumbing.TrainError(
                f"{path}: cannot resume with different options: {', '.join(changed)}"
            )
        return checkpoint

    def _prepare_data(self, checkpoint: Optional[dict]) -> M.Whisper:
        """The teacher; the utterances; pseudo-labels where needed, the usable examples and the
        teacher cache filled for them. With several processes each computes its share, then reads
        everyone's."""
        cfg, rank, world, progress = (
            self.cfg,
            self.rank,
            self.world,
            self.main and not self.cfg.quiet,
        )
        teacher = weight_files.load_model(cfg.teacher, device=self.device)
        self.tok = teacher.tokenizer
        utts, self.dev_sets, self.test_utts, self.test_label = default_sources(cfg)
        utts = (
            utts
            + data.join_utterances(utts, round(cfg.joined * len(utts)), seed=cfg.seed)
            + data.perturbed_utterances(utts, round(cfg.perturbed * len(utts)), seed=cfg.seed)
        )
        cache = self.cache = TeacherCache(
            Path(cfg.cache_dir) if cfg.cache_dir else fileio.cache_dir(), teacher
        )
        unlabelled = [
            u
            for u in utts
            if cfg.labels == "pseudo" or cfg.labels == "auto" and not (u.text or "").strip()
        ]
        pseudo, readable = {}, [u for u in unlabelled if os.path.isfile(u.audio)]
        if unlabelled:
            cache.pseudo_labels(readable[rank::world], progress=progress)
            run_plumbing.barrier(world)
            pseudo = cache.pseudo_labels(readable, progress=False)
        self.skipped = Counter()
        self.examples = prepare_examples(
            utts,
            self.tok,
            cfg.round_frames,
            teacher.dims.n_text_ctx,
            cfg.labels,
            pseudo,
            cfg.max_label_wer,
            self.skipped,
        )
        if not self.examples:
            raise run_plumbing.TrainError(
                f"{cfg.train}: no usable training utterances ({dict(self.skipped)})"
            )
        stamped = timestamp_examples(self.examples, cfg.timestamps, cfg.seed)
        if stamped:
            cache.timestamps(stamped[rank::world], progress=progress, autocast=self.amp)
            run_plumbing.barrier(world)
            times = cache.timestamps(stamped, progress=False)
            for ex in stamped:
                tokens = timestamped_tokens(self.tok, times[ex.id])
                if len(tokens) <= teacher.dims.n_text_ctx:
                    ex.tokens, ex.parts, ex.prompt = (
                        tokens,
                        tuple(times[ex.id]),
                        prompt_length(self.tok, tokens),
                    )
        cache.build(self.examples[rank::world], cfg.input, progress=progress, autocast=self.amp)
        run_plumbing.barrier(world)
        cache.build(
            self.examples, cfg.input, progress=False, autocast=self.amp
        )  # anything another rank missed
        self.fingerprint = _data_fingerprint(self.examples)
        if checkpoint is not None and checkpoint["data"] != self.fingerprint:
            raise run_plumbing.TrainError(
                f"{self.last_path}: the training data changed since this run started (files, texts "
                f"or options that select them); start a new run with --name"
            )
        return teacher

    def _make_student(self, teacher: M.Whisper) -> None:
        """The student, its optimiser and learning-rate schedule, its earlier self."""
        cfg = self.cfg
        student = self.student = make_student(teacher, cfg.decoder_layers, cfg.encoder_layers)
        self.teacher_out = teacher.decoder.token_embedding.weight.detach().clone()
        del self.cache.teacher  # all the loop needs from the teacher is cached
        if cfg.input == "padded":
            student.encoder.requires_grad_(False)
        if not cfg.train_embed:
            student.decoder.token_embedding.requires_grad_(False)
        student.train()
        decay = [p for p in student.parameters() if p.requires_grad and p.ndim >= 2]
        no_decay = [p for p in student.parameters() if p.requires_grad and p.ndim < 2]
        self.optimizer = torch.optim.AdamW(
            [
                {"params": decay, "weight_decay": cfg.weight_decay},
                {"params": no_decay, "weight_decay": 0.0},
            ],
            lr=cfg.lr,
            betas=(0.9, 0.98),
            eps=1e-6,
        )
        self.group = self.world * cfg.accum
        self.steps_per_epoch = (
            len(epoch_batches(self.examples, 0, cfg.batch_size, cfg.max_frames, cfg.seed))
            // self.group
        )
        if self.steps_per_epoch == 0:
            raise run_plumbing.TrainError(
                f"{len(self.examples)} utterances make fewer micro-batches than ranks x --accum "
                f"({self.group})"
            )
        self.total_steps = self.steps_per_epoch * cfg.epochs
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, _lr_lambda(cfg, self.total_steps)
        )
        self.self_teacher = SelfTeacher.for_run(student, cfg)
        # --pick average: the weight average kept as the student (the EMA self-teacher or its own)
        self.average = None
        if cfg.pick == "average":
            own = self.self_teacher is None or self.self_teacher.kind != "ema"
            self.average = SelfTeacher(student, "ema", cfg.ema_decay) if own else self.self_teacher

    def _resume(self, checkpoint: dict) -> None:
        self.student.load_state_dict(checkpoint["student"])
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        self.scheduler.load_state_dict(checkpoint["scheduler"])
        if self.self_teacher is not None:
            self.self_teacher.model.load_state_dict(checkpoint["earlier"])
        if self.average is not None and self.average is not self.self_teacher:
            self.average.model.load_state_dict(checkpoint["average"])
        self.step, self.best_wer = checkpoint["step"], checkpoint["best_wer"]
        self.counters = Counter(checkpoint["counters"])
        states = checkpoint["rng"]
        run_plumbing.set_rng_state(states[self.rank] if self.rank < len(states) else states[0])
        if self.main:
            run_plumbing.truncate_metrics(self.metrics_path, self.step)
        best = (
            f" (best dev WER so far {100 * self.best_wer:.2f}%)" if self.best_wer < math.inf else ""
        )
        self.say(f"resuming {self.run_dir} at step {self.step} of {self.total_steps}{best}")

    def save_checkpoint(self) -> None:
        """last.pt, written atomically: everything `_resume` needs, every rank's random state
        included."""
        rng = run_plumbing.gather_objects(run_plumbing.rng_state(), self.world)
        if not self.main:
            return
        try:
            run_plumbing.atomic_torch_save(
                {
                    "version": CHECKPOINT_VERSION,
                    "config": asdict(self.cfg),
                    "data": self.fingerprint,
                    "step": self.step,
                    "student": self.student.state_dict(),
                    "optimizer": self.optimizer.state_dict(),
                    "scheduler": self.scheduler.state_dict(),
                    "earlier": None
                    if self.self_teacher is None
                    else self.self_teacher.model.state_dict(),
                    "average": None
                    if self.average in (None, self.self_teacher)
                    else self.average.model.state_dict(),
                    "rng": rng,
                    "best_wer": self.best_wer,
                    "counters": dict(self.counters),
                },
                self.last_path,
            )
        except OSError as e:  # a full disk: the last checkpoint written is still whole
            raise run_plumbing.TrainError(
                f"{self.last_path}: cannot write the checkpoint at step {self.step} "
                f"({e.strerror or e}); the one before is intact: make room and continue with "
                f"--resume"
            ) from None

    # --- the loop ---

    def run(self) -> dict:
        """Steps until the last, saving every cfg.save_every steps and at each epoch's end; then the
        test table. SIGINT / SIGTERM: save at the next step and return {'stopped': step}."""
        from tqdm import tqdm

        cfg = self.cfg
        self.bar = tqdm(
            total=self.total_steps,
            initial=self.step,
            unit="step",
            disable=not self.main or cfg.quiet,
            dynamic_ncols=True,
        )
        self.started = time.time()
        with run_plumbing.StopFlag() as stop:
            while self.step < self.total_steps:
                epoch, in_epoch = divmod(self.step, self.steps_per_epoch)
                batches = epoch_batches(
                    self.examples, epoch, cfg.batch_size, cfg.max_frames, cfg.seed, self.group
                )
                if cfg.self_teacher == "epoch" and self.self_teacher and in_epoch == 0 and epoch:
                    self.self_teacher.snapshot(self.student)  # last epoch's self
                for in_epoch in range(in_epoch, self.steps_per_epoch):
                    self.train_step(batches, epoch, in_epoch)
                    stop_now = (
                        run_plumbing.all_reduce([float(stop.requested)], self.world, self.device)[0]
                        > 0
                    )
                    epoch_done = in_epoch + 1 == self.steps_per_epoch
                    if epoch_done:
                        self.end_of_epoch(epoch + 1)
                    if stop_now or epoch_done or self.step % cfg.save_every == 0:
                        self.save_checkpoint()
                    if stop_now:
                        self.bar.close()
                        if self.main:  # even with --quiet: how to go on is not progress
                            print(
                                f"stopped at step {self.step} of {self.total_steps}; continue "
                                f"with the same command and --resume",
                                file=sys.stderr,
                            )
                        return {"stopped": self.step}
        self.bar.close()
        return self.final_table()

    def train_step(self, batches: list, epoch: int, in_epoch: int) -> None:
        """One optimiser step over this rank's micro-batches: the update, or, on a non-finite
        gradient or out of GPU memory, none (the step still counts)."""
        cfg, s, sums, batch = self.cfg, self.step / self.total_steps, Counter(), None
        beta = cfg.weights(s)[2]  # 0 when there is no self-teacher
        try:
            for a in range(cfg.accum):
                index = (in_epoch * cfg.accum + a) * self.world + self.rank  # this rank's
                batch = self.collate(batches[index], epoch, index).to(self.device)
                labels = batch.labels[batch.labels != IGNORE]
                last = a == cfg.accum - 1
                with run_plumbing.accumulating(self.step_module, self.world, last):
                    with self.amp or contextlib.nullcontext():
                        states, logits = self.step_module(*batch.student_inputs())
                    teacher_logits = F.linear(batch.teacher_hidden, self.teacher_out).float()
                    self_logits = self.self_teacher.logits(batch, self.amp) if beta else None
                    loss, parts = distill_loss(
                        logits.float(), labels, teacher_logits, self_logits, cfg, s
                    )
                    if cfg.input == "trimmed" and cfg.enc_weight > 0:
                        enc = encoder_loss(states, batch.enc_targets, batch.enc_positions())
                        loss, parts["enc"] = loss + cfg.enc_weight * enc, enc.item()
                    (loss / cfg.accum).backward()
                parts.update(loss=loss.item(), tokens=float(labels.numel()))
                for k in LOGGED_PARTS.intersection(parts):
                    sums[k] += parts[k] / cfg.accum
            grad_norm = torch.nn.utils.clip_grad_norm_(self.student.parameters(), cfg.clip).item()
            why = "non-finite loss or gradient"
        except torch.cuda.OutOfMemoryError as e:
            grad_norm = math.nan
            why = run_plumbing.out_of_memory(e, self.optimizer, self.world, batch)
        if math.isfinite(grad_norm):
            self.optimizer.step()
            self.bad_in_a_row = 0
        else:
            self._skip(why, batch)
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        if self.self_teacher is not None and math.isfinite(grad_norm):
            self.self_teacher.update(self.student)
        if self.average not in (None, self.self_teacher) and math.isfinite(grad_norm):
            self.average.update(self.student)
        self.step += 1
        self.log_step(epoch, grad_norm, run_plumbing.mean_over_ranks(sums, self.world, self.device))

    def collate(self, micro_batch: list, epoch: int, index: int) -> Batch:
        """Micro-batch `index` of the epoch; its SpecAugment masks come from (seed, epoch,
        index)."""
        cfg = self.cfg
        seed = hash((cfg.seed, epoch, index)) & 0x7FFFFFFF
        padded = cfg.input == "trimmed" and random.Random(seed).random() < cfg.padded_share
        return collate(
            [self.examples[i] for i in micro_batch],
            self.cache,
            cfg.input,
            self.student.dims.n_mels,
            self.tok.eot,
            cfg.spec_augment,
            seed=seed,
            padded=padded,
        )

    def log_step(self, epoch: int, grad_norm: float, totals: dict) -> None:
        """The step's line in metrics.jsonl (the loss's parts averaged over micro-batches and
        ranks) and the progress bar."""
        record = {
            "step": self.step,
            "epoch": epoch + 1,
            "lr": self.scheduler.get_last_lr()[0],
            "grad_norm": grad_norm if math.isfinite(grad_norm) else None,
            **{k: round(v, 6) if math.isfinite(v) else None for k, v in totals.items()},
            "time": round(time.time() - self.started, 2),
        }
        if not math.isfinite(grad_norm):
            record["skipped"] = True
        self.log(record)
        self.bar.set_postfix(
            loss=f"{totals.get('loss', 0.0):.3f}", lr=f"{record['lr']:.2e}", refresh=False
        )
        self.bar.update(1)

    def _skip(self, why: str, batch: Batch) -> None:
        """Count a skipped update; too many in a row end the run (the last checkpoint stays
        good)."""
        self.counters[f"steps skipped: {why.split(' (')[0]}"] += 1
        self.bad_in_a_row += 1
        if self.bad_in_a_row >= self.cfg.max_bad_steps:
            self.bar.close()
            raise run_plumbing.TrainError(
                f"{self.cfg.max_bad_steps} steps in a row skipped ({why}, last at step "
                f"{self.step + 1}); lower --lr or check the data. The last good checkpoint "
                f"is {self.last_path}"
            )
        if self.main:
            self.bar.write(
                f"warning: step {self.step + 1}: {why}, update skipped "
                f"(batch {', '.join(batch.ids[:4])}{'...' if len(batch.ids) > 4 else ''})"
            )

    # --- the end of an epoch, the end of the run ---

    def end_of_epoch(self, epoch: int) -> None:
        """Dev WER of the student kept (rank 0): the mean over the dev sets. --pick average: the
        weight average, saved as student.pt each epoch (the last one stays); best: the epoch's
        student, saved when it is the best so far (without dev data, the latest one)."""
        cfg, path = self.cfg, self.run_dir / "student.pt"
        kept = self.student if self.average is None else self.average.model
        which = "the weight average" if self.average else "this epoch's student"
        info = {"epoch": epoch, "step": self.step, "dev_wer": None, "pick": cfg.pick}
        if self.main and not self.dev_sets:
            run_plumbing.save_student(kept, path, cfg, info)
            self.bar.write(f"epoch {epoch}: no dev data, student.pt is {which}")
        elif self.main:
            training = kept.training
            kept.eval()
            recognizer = transcribe.as_recognizer(kept, transcribe.student_info(cfg))
            wers = {
                name: dev_wer(recognizer, utts, cfg.eval_batch_size)
                for name, utts in self.dev_sets.items()
            }
            kept.train(training)
            wer = sum(wers.values()) / len(wers)
            self.log(
                {
                    "step": self.step,
                    "epoch": epoch,
                    "dev_wer": wer,
                    **({f"dev_wer {name}": w for name, w in wers.items()} if len(wers) > 1 else {}),
                }
            )
            save = self.average is not None or wer < self.best_wer or not path.exists()
            if save:
                self.best_wer = wer  # student.pt's
                run_plumbing.save_student(kept, path, cfg, {**info, "dev_wer": wer})
            each = (
                ""
                if len(wers) == 1
                else " (" + ", ".join(f"{n} {100 * w:.2f}%" for n, w in wers.items()) + ")"
            )
            said = f" ({which}, saved)" if self.average else " (best, saved)" if save else ""
            self.bar.write(f"epoch {epoch}: dev WER {100 * wer:.2f}%{each}{said}")
        # rank 0's, on every rank
        self.best_wer = run_plumbing.gather_objects(self.best_wer, self.world)[0]

    def final_table(self) -> dict:
        """Teacher and best student on the test data (rank 0), as a table and in results.json."""
        cfg = self.cfg
        results = {
            "run": str(self.run_dir),
            "steps": self.step,
            "skipped": dict(self.skipped),
            "counters": dict(self.counters),
            "best_dev_wer": self.best_wer,
            "chosen on": list(self.dev_sets),  # bench ood --runs: no evidence on these
            "train_seconds": round(time.time() - self.started, 1),
        }
        if self.main:
            if self.counters:
                self.say("; ".join(f"{v} {k}" for k, v in self.counters.items()))
            if self.test_utts:
                self.say(
                    f"test: {self.test_label} ({len(self.test_utts)} utterances), teacher and "
                    f"student one utterance at a time"
                )
                student = str(self.run_dir / "student.pt")
                models = [
                    cfg.teacher,
                    student,
                    transcribe.PADDED_PREFIX + student,
                ]  # the last: as other tools read it
                names = [f"teacher {cfg.teacher}", f"student ({cfg.loss})", "student, 30 s windows"]
                rows = transcribe.evaluate(
                    models,
                    self.test_utts,
                    device=self.device,
                    names=names,
                    quiet=cfg.quiet,
                    source=self.test_label,
                )
                caption = f"WER %: {self.test_label} ({len(self.test_utts)} utterances)"
                label, ood = self.ood_utterances()
                if ood:
                    others = transcribe.evaluate(
                        models, ood, device=self.device, quiet=True, source=label
                    )
                    for row, other in zip(rows, others):
                        row["OOD WER %"] = other["WER %"]
                    caption += f"; OOD WER %: {label} ({len(ood)} utterances, other speakers" + (
                        "; a dev set, so it chose the student)" if label in self.dev_sets else ")"
                    )
                results["test"] = rows
                results["table"] = caption + "\n" + transcribe.format_table(rows)
                print(results["table"])
        results = run_plumbing.finite(results)  # no NaN or infinity: results.json is valid JSON
        if self.main:
            fileio.write_atomic(
                self.run_dir / "results.json",
                json.dumps(results, indent=1, default=str, allow_nan=False).encode(),
            )
        run_plumbing.barrier(self.world)
        return results

    def ood_utterances(self) -> tuple[str, list]:
        """The name and utterances of the out-of-domain data for the final table (cfg.ood; a dev set
        of that name is reused), or no utterances, with a warning if they cannot be had."""
        cfg = self.cfg
        label = (
            cfg.ood
            if cfg.ood is not None
            else ("real-speech-dev:report" if cfg.train.startswith("asterisk") else "")
        )
        if not label or label in self.dev_sets:
            return label, self.dev_sets.get(label, [])
        try:
            return label, data.load_source(label)
        except fileio.DataError as e:
            print(f"warning: no out-of-domain column: {e}", file=sys.stderr)
            return label, []


def dev_wer(
    recognizer: transcribe.Recognizer, utts: Sequence[data.Utterance], batch_size: int
) -> float:
    """WER of a student on the transcribed, readable utterances of a dev set (inf if there are
    none)."""
    audios, refs = transcribe.read_utterances(
        [u for u in utts if (u.text or "").strip()], warn=False
    )
    return text_norm.wer(refs, recognizer.transcribe_text(audios, batch_size)) if refs else math.inf


def train(cfg: TrainConfig) -> dict:
    """Distil cfg.teacher into a student; returns the results (also in runs/NAME/results.json)."""
    with run_plumbing.RunLock(
        Path(cfg.runs_dir) / cfg.name, main=int(os.environ.get("RANK", "0")) == 0
    ):
        return Trainer(cfg).run()


def _autocast(cfg: TrainConfig, device: torch.device):
    """bf16 (or fp16) autocast on CUDA; nothing on the CPU unless asked for."""
    precision = cfg.precision
    if precision == "auto":
        precision = "bf16" if device.type == "cuda" else "fp32"
    if precision == "fp32":
        return None
    return torch.autocast(
        device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16
    )
