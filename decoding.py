"""Decoding: from audio features to tokens. Greedy, beam search, sampling, Whisper's timestamp
rules, language detection, prompts, and speculative decoding with a Draft or a TextDraft.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field, replace
from typing import Iterable, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

import audio_io
import cpu
import model as M

# Whisper's rules, reproduced so that greedy decoding gives exactly Whisper's tokens: a start
# sequence (<|startoftranscript|> <|en|> <|transcribe|>), optional prompt (<|startofprev|> ...),
# suppressed tokens, timestamp rules, then greedy / sampling / beam search until <|endoftext|>.
# A DecodingTask holds one batch's state; a Draft (a faster model) may speed up its greedy path.


@dataclass
class DecodingOptions:
    task: str = "transcribe"  # or "translate" (multilingual models)
    language: Optional[str] = None  # None: detect (multilingual) or English
    temperature: float = 0.0  # 0: greedy or beam search; > 0: sampling
    sample_len: Optional[int] = None  # most tokens to sample (default: half the text context)
    best_of: Optional[int] = None  # samples per audio at temperature > 0, best kept
    beam_size: Optional[int] = None  # beam search at temperature 0
    patience: Optional[float] = (
        None  # beam search: wait for beam_size * patience finished hypotheses
    )
    length_penalty: Optional[float] = (
        None  # None: rank by log-prob / length; a: by Google NMT's ((5+n)/6)^a
    )
    prompt: Optional[str | list[int]] = None  # previous text, to condition on
    prefix: Optional[str | list[int]] = None  # forced start of this window's text
    suppress_tokens: Optional[str | Iterable[int]] = "-1"  # "-1": Whisper's non-speech symbols
    suppress_blank: bool = True  # no blank or <|endoftext|> as first token
    without_timestamps: bool = False
    max_initial_timestamp: Optional[float] = 1.0
    close_segments: bool = (
        False  # no <|endoftext|> right after text: every segment gets its end time
    )
    seed: int = 0  # sampling draws from its own generator: the same text every run


@dataclass
class DecodingResult:
    tokens: list[int]
    text: str
    language: str
    avg_logprob: float
    no_speech_prob: float
    temperature: float
    compression_ratio: float
    language_probs: Optional[dict] = None


def compression_ratio(text: str) -> float:
    """Bytes / zlib-compressed bytes: repetitive (looping) output compresses well, scores high."""
    raw = text.encode("utf-8")
    return len(raw) / len(zlib.compress(raw)) if raw else 0.0


@torch.inference_mode()
def detect_language(model: M.Whisper, audio_features: Tensor) -> tuple[Tensor, list[dict]]:
    """The likeliest language token per audio, and each language's probability, from one step."""
    tok = model.tokenizer
    if not model.is_multilingual:
        raise ValueError("this model is English-only: it has no language tokens to detect with")
    sot = torch.full((audio_features.shape[0], 1), tok.sot, device=audio_features.device)
    logits = model.logits(sot, audio_features)[:, 0]
    lang_ids = torch.tensor(tok.language_tokens, device=logits.device)
    probs = logits[:, lang_ids].softmax(dim=-1)  # softmax over the language tokens alone
    best = lang_ids[probs.argmax(dim=-1)]
    return best, [dict(zip(tok.language_codes, row.tolist())) for row in probs.cpu()]


class LogitRules:
    """Whisper's logit filters, applied in place to the last step's logits [batch, vocab]."""

    def __init__(self, model: M.Whisper, options: DecodingOptions, sample_begin: int):
        tok, self.tok = model.tokenizer, model.tokenizer
        self.sample_begin = sample_begin
        self.blank = tok.encode(" ") + [tok.eot] if options.suppress_blank else None
        self.suppress = self.suppressed_tokens(options.suppress_tokens)
        self.timestamps = not options.without_timestamps
        self.close_segments = options.close_segments
        precision = audio_io.CHUNK_LENGTH / model.dims.n_audio_ctx  # 0.02 s per timestamp step
        self.max_initial = (
            None
            if not options.max_initial_timestamp
            else round(options.max_initial_timestamp / precision)
        )

    def suppressed_tokens(self, spec) -> list[int]:
        tok = self.tok
        ids = (
            [int(t) for t in spec.split(",") if t.strip()]
            if isinstance(spec, str)
            else list(spec or [])
        )
        if -1 in ids:
            ids = [t for t in ids if t >= 0] + list(tok.non_speech_tokens)
        # the special tokens of the start sequence never belong in a transcript
        ids += [tok.transcribe, tok.translate, tok.sot, tok.sot_prev, tok.sot_lm, tok.no_speech]
        return sorted(set(ids))

    def __call__(self, logits: Tensor, tokens: Tensor) -> None:
        if self.blank is not None and tokens.shape[1] == self.sample_begin:
            logits[:, self.blank] = -np.inf
        if self.suppress:
            logits[:, self.suppress] = -np.inf
        if self.timestamps:
            self.apply_timestamp_rules(logits, tokens)

    def apply_timestamp_rules(self, logits: Tensor, tokens: Tensor) -> None:
        """Timestamps come in pairs and never go back; text may not start without one."""
        tok, begin = self.tok, self.tok.timestamp_begin
        logits[:, tok.no_timestamps] = -np.inf
        sampled = tokens[:, self.sample_begin :]
        n = sampled.shape[1]
        if n > 0:
            is_ts = sampled >= begin
            last = is_ts[:, -1]
            penultimate = is_ts[:, -2] if n >= 2 else torch.ones_like(last)
            logits[last & penultimate, begin:] = -np.inf  # a pair just closed: text (or eot) next
            logits[last & ~penultimate, : tok.eot] = -np.inf  # an opened pair must close: no text
            if self.close_segments:
                logits[~last, tok.eot] = -np.inf  # text ends with a timestamp, then may stop
            # forbid timestamps before the last one; after an opening one, also forbid repeating it
            position = (
                torch.where(is_ts, torch.arange(n, device=tokens.device), -1).max(dim=1).values
            )
            last_ts = sampled.gather(1, position.clamp(min=0)[:, None])[:, 0] - begin
            bound = torch.where(last & ~penultimate, last_ts, last_ts + 1)
            bound = torch.where(position >= 0, bound, 0)
            steps = torch.arange(logits.shape[1] - begin, device=logits.device)
            logits[:, begin:].masked_fill_(steps < bound[:, None], -np.inf)
        else:
            logits[:, :begin] = -np.inf  # the first token is a timestamp
            if self.max_initial is not None:
                logits[:, begin + self.max_initial + 1 :] = -np.inf
        # when the timestamps together outweigh every single text token, take a timestamp (compared
        # as logits: the softmax's normaliser is the same on both sides, so it is not computed)
        logits32 = logits.float()
        ts_mass = logits32[:, begin:].logsumexp(dim=-1)
        best_text = logits32[:, :begin].max(dim=-1).values
        logits[ts_mass > best_text, :begin] = -np.inf


def initial_tokens(
    model: M.Whisper, options: DecodingOptions, language_token: Optional[int] = None
) -> list[int]:
    """[<|startofprev|> prompt...] <|startoftranscript|> [lang task] [<|notimestamps|>]
    [prefix...]."""
    tok, n_ctx = model.tokenizer, model.dims.n_text_ctx
    tokens = list(tok.sot_sequence(language=options.language or "en", task=options.task))
    if language_token is not None and model.is_multilingual:
        tokens[1] = language_token
    if options.without_timestamps:
        tokens.append(tok.no_timestamps)
    if options.prefix:
        prefix = (
            tok.encode(" " + options.prefix.strip())
            if isinstance(options.prefix, str)
            else list(options.prefix)
        )
        sample_len = options.sample_len or n_ctx // 2
        tokens += prefix[-(n_ctx // 2 - sample_len) :] if n_ctx // 2 - sample_len > 0 else []
    if options.prompt:
        prompt = (
            tok.encode(" " + options.prompt.strip())
            if isinstance(options.prompt, str)
            else list(options.prompt)
        )
        tokens = [tok.sot_prev] + prompt[-(n_ctx // 2 - 1) :] + tokens
    return tokens


@torch.inference_mode()
def decode_batch(
    model: M.Whisper,
    mel: Optional[Tensor] = None,
    options: DecodingOptions = DecodingOptions(),
    *,
    audio_features: Optional[Tensor] = None,
    audio_lengths: Optional[Tensor] = None,
    prompts: Optional[list] = None,
    draft: Optional[Draft] = None,
) -> list[DecodingResult]:
    """Decode a batch of 30-second windows ([batch, n_mels, 3000] mel or encoder features).

    `prompts` gives each window its own previous-text prompt (lists of token ids of equal length).
    `draft` (its features computed for the same windows) speeds up greedy decoding, same tokens.
    """
    if audio_features is None:
        mel = mel[None] if mel.ndim == 2 else mel
        audio_features = model.embed_audio(mel.to(model.device, next(model.parameters()).dtype))
    return DecodingTask(model, options, audio_features, audio_lengths, prompts, draft).run()


class DecodingTask:
    """One decoding of a batch of windows: the state that sampling, beam search and speculative
    decoding share, built once. Each window's start row (prompt, start sequence, prefix) is
    repeated n_group times: once per beam or per sample."""

    def __init__(
        self,
        model: M.Whisper,
        options: DecodingOptions,
        features: Tensor,
        lengths: Optional[Tensor] = None,
        prompts: Optional[list] = None,
        draft: Optional[Draft] = None,
    ):
        self.model, self.options, self.draft, self.tok = model, options, draft, model.tokenizer
        n_audio = features.shape[0]
        self.languages, self.language_probs = [options.language or "en"] * n_audio, [None] * n_audio
        language_tokens = [None] * n_audio
        if options.language is None and model.is_multilingual:
            best, self.language_probs = detect_language(model, features)
            language_tokens = best.tolist()
            self.languages = [max(p, key=p.get) for p in self.language_probs]
        rows = [
            initial_tokens(
                model,
                options if prompts is None else replace(options, prompt=prompts[i]),
                language_tokens[i],
            )
            for i in range(n_audio)
        ]
        if len({len(r) for r in rows}) != 1:
            raise ValueError("all windows of a batch need prompts of the same length")
        if isinstance(draft, Draft) and draft.model.dims.n_vocab != model.dims.n_vocab:
            raise ValueError(
                f"the draft's vocabulary ({draft.model.dims.n_vocab} tokens) is not the model's "
                f"({model.dims.n_vocab}): draft with a student of this teacher"
            )
        self.sample_begin, self.sot_index = len(rows[0]), rows[0].index(self.tok.sot)
        self.sample_len = options.sample_len or model.dims.n_text_ctx // 2
        self.rules = LogitRules(model, options, self.sample_begin)
        self.n_group = options.beam_size or options.best_of or 1
        self.tokens = torch.tensor(rows, device=features.device).repeat_interleave(
            self.n_group, dim=0
        )
        self.features = features.repeat_interleave(self.n_group, dim=0)
        self.lengths = None if lengths is None else lengths.repeat_interleave(self.n_group, dim=0)

    def run(self) -> list[DecodingResult]:
        if self.options.beam_size is not None:
            candidates, no_speech = self.beam_search()
        elif self.draft is not None and self.options.temperature == 0:
            candidates, no_speech = self.speculative()
        else:
            candidates, no_speech = self.sample()
        results = []
        for i, (seqs, logprobs) in enumerate(candidates):
            best = rank(seqs, logprobs, self.options.length_penalty)
            text = self.tok.decode(seqs[best]).strip()
            results.append(
                DecodingResult(
                    tokens=seqs[best],
                    text=text,
                    language=self.languages[i],
                    avg_logprob=logprobs[best] / (len(seqs[best]) + 1),
                    no_speech_prob=no_speech[i * self.n_group],
                    temperature=self.options.temperature,
                    compression_ratio=compression_ratio(text),
                    language_probs=self.language_probs[i],
                )
            )
        return results

    def first_step(self, tokens: Tensor, features: Tensor, lengths: Optional[Tensor]):
        """Run the whole start sequence once: (the cache, last-position logits, no-speech
        probabilities).

        Only two positions are projected onto the vocabulary: <|startoftranscript|> (for the
        no-speech probability) and the last one. A long prompt would otherwise cost a [prompt,
        vocab] product.
        """
        cache = M.KVCache(self.model, tokens.shape[0], features.device, features.dtype)
        hidden = self.model.decoder.hidden(tokens, features, lengths, cache)[
            :, [self.sot_index, -1]
        ]
        logits = self.model.decoder.project(hidden)
        no_speech = logits[:, 0].softmax(dim=-1)[:, self.tok.no_speech].tolist()
        return cache, logits[:, 1], no_speech

    def sample(self):
        """Greedy (temperature 0) or sampling, every row at once.

        A row that emits <|endoftext|> leaves the batch (its cache rows too), so a batch of short
        and long utterances costs the work of its tokens, not of its longest row times its size.
        """
        eot, temperature = self.tok.eot, self.options.temperature
        tokens, features, lengths = self.tokens, self.features, self.lengths
        sum_logprobs = torch.zeros(tokens.shape[0], device=features.device)
        finished: list[Optional[list[int]]] = [None] * tokens.shape[0]
        rows = torch.arange(
            tokens.shape[0], device=features.device
        )  # which original rows are still running
        cache, logits, no_speech = self.first_step(tokens, features, lengths)
        generator = (
            torch.Generator(features.device).manual_seed(self.options.seed)
            if temperature > 0
            else None
        )
        for _ in range(self.sample_len):
            self.rules(logits, tokens)
            logits = logits.float()
            if temperature == 0:  # max, not argmax: same first index, faster on a CPU
                best, next_tokens = logits.max(dim=-1)
                sum_logprobs[rows] += best - torch.logsumexp(logits, dim=-1)
            else:
                next_tokens = torch.multinomial(
                    (logits / temperature).softmax(dim=-1), 1, generator=generator
                )[:, 0]
                sum_logprobs[rows] += F.log_softmax(logits, dim=-1).gather(1, next_tokens[:, None])[
                    :, 0
                ]
            tokens = torch.cat([tokens, next_tokens[:, None]], dim=-1)
            done = (next_tokens == eot) | (tokens.shape[-1] > self.model.dims.n_text_ctx)
            if done.any():
                for i in done.nonzero()[:, 0].tolist():
                    finished[rows[i]] = tokens[i, self.sample_begin :].tolist()
                keep = (~done).nonzero()[:, 0]
                if len(keep) == 0:
                    break
                # (features stay as they are: the audio's keys and values are in the cache now)
                rows, tokens, next_tokens = rows[keep], tokens[keep], next_tokens[keep]
                lengths = None if lengths is None else lengths[keep]
                cache.keep(keep)
            logits = self.model.logits(next_tokens[:, None], features, lengths, cache)[:, -1]
        for i, r in enumerate(rows.tolist()):  # rows cut off by sample_len
            if finished[r] is None:
                finished[r] = tokens[i, self.sample_begin :].tolist()
        n = self.n_group
        candidates = [
            (
                [_until_eot(seq, eot) for seq in finished[i : i + n]],
                sum_logprobs[i : i + n].tolist(),
            )
            for i in range(0, len(finished), n)
        ]
        return candidates, no_speech

    def beam_search(self):
        """Keep the beam_size most probable unfinished hypotheses per audio; stop once
        beam_size * patience hypotheses have finished (or the length limit is hit)."""
        eot, beam, tokens = self.tok.eot, self.options.beam_size, self.tokens
        max_finished = round(beam * (self.options.patience or 1.0))
        if max_finished <= 0:
            raise ValueError(f"invalid beam size ({beam}) or patience ({self.options.patience})")
        n_audio = tokens.shape[0] // beam
        sum_logprobs = torch.zeros(tokens.shape[0])
        finished: list[dict[tuple, float]] = [{} for _ in range(n_audio)]
        cache, logits, no_speech = self.first_step(tokens, self.features, self.lengths)
        for _ in range(self.sample_len):
            self.rules(logits, tokens)
            top_lp, top_ids = F.log_softmax(logits.float(), dim=-1).cpu().topk(beam + 1, dim=-1)
            rows, sources, new_sums = [], [], []
            for a in range(n_audio):
                # every extension of every live hypothesis; equal ones (as at the first step) merge
                scores, origin = {}, {}
                for j in range(a * beam, (a + 1) * beam):
                    prefix = tuple(tokens[j].tolist())
                    for lp, t in zip(top_lp[j].tolist(), top_ids[j].tolist()):
                        scores[prefix + (t,)], origin[prefix + (t,)] = (
                            sum_logprobs[j].item() + lp,
                            j,
                        )
                kept, newly_finished = 0, {}
                for seq in sorted(scores, key=scores.get, reverse=True):
                    if seq[-1] == eot:
                        newly_finished[seq] = scores[seq]
                    else:
                        rows.append(seq), sources.append(origin[seq]), new_sums.append(scores[seq])
                        kept += 1
                        if kept == beam:
                            break
                for seq in sorted(newly_finished, key=newly_finished.get, reverse=True):
                    if len(finished[a]) >= max_finished:
                        break
                    finished[a][seq] = newly_finished[seq]
            tokens, sum_logprobs = (
                torch.tensor(rows, device=self.features.device),
                torch.tensor(new_sums),
            )
            cache.reorder(torch.tensor(sources, device=self.features.device))
            if (
                all(len(f) >= max_finished for f in finished)
                or tokens.shape[-1] > self.model.dims.n_text_ctx
            ):
                break
            logits = self.model.logits(tokens[:, -1:], self.features, self.lengths, cache)[:, -1]
        candidates = []
        for a, done in enumerate(finished):
            # too few finished: add the best unfinished ones
            for j in sorted(range(a * beam, (a + 1) * beam), key=lambda j: -sum_logprobs[j].item()):
                if len(done) >= beam:
                    break
                done[tuple(tokens[j].tolist()) + (eot,)] = sum_logprobs[j].item()
            candidates.append(
                ([_until_eot(list(s[self.sample_begin :]), eot) for s in done], list(done.values()))
            )
        return candidates, no_speech

    def speculative(self):
        """Greedy decoding sped up by the draft: the same tokens as sample() at temperature 0.

        Per window: the draft guesses a few tokens one by one (cheap), then the model scores all of
        them in one forward pass (about the cost of one of its own steps) and keeps the guesses up
        to the first one it disagrees with, plus its own token there. Every kept token is the
        model's own greedy choice under its own logit rules, so the transcript is the model's, only
        sooner. Windows are decoded one after another: each keeps a different number of guesses per
        step.
        """
        rows = [
            self._speculative_row(i) for i in range(0, self.tokens.shape[0], self.n_group)
        ]  # a group's rows are equal
        return [([seq], [logprob]) for seq, logprob, _ in rows], [
            ns for *_, ns in rows for _ in range(self.n_group)
        ]

    def _choose(
        self, logits: Tensor, prefix: list[int], guesses: Sequence[int] = ()
    ) -> list[tuple[int, float]]:
        """The model's greedy token and its log-probability, as sample() computes them, at each row
        of logits [1 + len(guesses), vocab]: after `prefix`, after `prefix` and the first guess, ...
        (the rules row by row, the rest for all rows at once)."""
        logits = logits.clone()
        for p in range(logits.shape[0]):
            self.rules(
                logits[p : p + 1], torch.tensor([prefix + list(guesses[:p])], device=logits.device)
            )
        tokens = logits.argmax(dim=-1)
        logprobs = F.log_softmax(logits.float(), dim=-1).gather(1, tokens[:, None])[:, 0]
        return list(zip(tokens.tolist(), logprobs.tolist()))

    def _speculative_row(self, i: int) -> tuple[list[int], float, float]:
        """Row i's tokens, their total log-probability and its no-speech probability."""
        eot, n_ctx, sample_len = self.tok.eot, self.model.dims.n_text_ctx, self.sample_len
        features = self.features[i : i + 1]
        lengths = None if self.lengths is None else self.lengths[i : i + 1]
        tokens = self.tokens[i].tolist()
        cache, logits, no_speech = self.first_step(self.tokens[i : i + 1], features, lengths)
        draft_row = self.draft.row(
            self.options.task, self.languages[i // self.n_group], i // self.n_group
        )
        sum_logprob, emitted = 0.0, 0
        token, logprob = self._choose(logits, tokens)[0]  # the model's own token after `tokens`
        while True:
            tokens.append(token)
            sum_logprob += logprob
            emitted += 1
            if token == eot or emitted >= sample_len or len(tokens) > n_ctx:
                break
            if token < eot:  # the draft sees text only, never timestamps
                draft_row.tokens.append(token)
            guesses = draft_row.guess(
                min(self.draft.guesses, sample_len - emitted, n_ctx - len(tokens))
            )
            # the model scores its token and every guess in one pass, from where its cache ends
            cache.offset = len(tokens) - 1
            candidates = torch.tensor([[token] + guesses], device=features.device)
            scored = self.model.logits(candidates, features, lengths, cache)[0]
            choices = self._choose(scored, tokens, guesses)  # its own token after each guess
            kept = 0
            for guess, (choice, logprob) in zip(guesses, choices):
                if choice != guess:
                    break
                tokens.append(guess)
                sum_logprob += logprob
                emitted += 1
                kept += 1
                if guess == eot or emitted >= sample_len or len(tokens) > n_ctx:
                    break
            if tokens[-1] == eot or emitted >= sample_len or len(tokens) > n_ctx:
                break
            token, logprob = choices[kept]  # its own token after the last kept guess
            cache.offset = len(tokens)
            draft_row.forget(len(guesses) - kept)
        return _until_eot(tokens[self.sample_begin :], eot), sum_logprob, no_speech[0]


def rank(sequences: list[list[int]], logprobs: list[float], length_penalty: Optional[float]) -> int:
    """Index of the best candidate: total log-probability over a length penalty."""
    penalties = [
        len(s) if length_penalty is None else ((5 + len(s)) / 6) ** length_penalty
        for s in sequences
    ]
    return int(np.argmax([lp / penalty for lp, penalty in zip(logprobs, penalties)]))


def _until_eot(seq: list[int], eot: int) -> list[int]:
    return seq[: seq.index(eot)] if eot in seq else seq


@dataclass
class Draft:
    """A fast model that guesses a slower model's next tokens: speculative decoding.

    The draft reads the same windows in its own way (a trimmed-input student reads each window cut
    after its speech, in multiples of `round_frames`; None: the whole 30 s) and always decodes
    without timestamps. `features`/`lengths` hold its encoder output for the batch being decoded.
    """

    model: M.Whisper
    round_frames: Optional[int] = None
    guesses: int = 3  # tokens guessed per step of the verifying model
    shortlist: Optional[int] = 8192  # guess among the first N token ids only (see guess_logits)
    features: Optional[Tensor] = None
    lengths: Optional[Tensor] = None
    # shortlist size -> (token ids, projection), built once and shared by the copies encode() makes
    projections: dict = field(default_factory=dict, repr=False, compare=False)

    def encode(self, mel: Tensor, sizes: Sequence[int]) -> Draft:
        """The draft's encoder output for windows mel [batch, n_mels, 3000] of `sizes` frames."""
        frames = [
            audio_io.N_FRAMES
            if self.round_frames is None
            else audio_io.trimmed_frames(n, self.round_frames)
            for n in sizes
        ]
        features, lengths = M.embed_each(self.model, mel, frames)
        return replace(self, features=features, lengths=lengths)

    def select(self, index: Sequence[int]) -> Draft:
        """The draft of the windows `index` only."""
        lengths = None if self.lengths is None else self.lengths[index]
        return replace(self, features=self.features[index], lengths=lengths)

    def row(self, task: str, language: str, row: int) -> DraftRow:
        """The draft's side of window `row`, as speculative decoding asks it for guesses."""
        return DraftRow(self, task, language, row)

    def guess_logits(self, hidden: Tensor) -> Tensor:
        """The draft's logits [vocab] from its last hidden state, over the shortlist (-inf
        elsewhere).

        BPE ids follow the order of the merges, so the first 8192 are the commonest pieces of text;
        with <|endoftext|> they cover nearly every token of ordinary speech. A guess outside them is
        merely a wrong guess, which the verifying model corrects, and the projection, the costliest
        part of a decoding step on a CPU, shrinks six-fold.
        """
        if self.shortlist is None:
            return self.model.decoder.project(hidden)
        if self.shortlist not in self.projections:
            eot = self.model.tokenizer.eot
            ids = torch.cat([torch.arange(min(self.shortlist, eot)), torch.tensor([eot])]).to(
                hidden.device
            )
            weight = self.model.decoder.token_embedding.weight[ids]
            self.projections[self.shortlist] = (
                ids,
                cpu.PackedLinear(weight)
                if self.model.packed
                else (lambda h, w=weight: F.linear(h, w.to(h.dtype)).float()),
            )
        ids, projection = self.projections[self.shortlist]
        logits = torch.full(
            (*hidden.shape[:-1], self.model.dims.n_vocab), -np.inf, device=hidden.device
        )
        logits[..., ids] = projection(hidden)
        return logits


class DraftRow:
    """The draft's side of one window in speculative decoding: the text so far as the draft sees it
    (text only, never timestamps), its logit rules and its own KV cache."""

    def __init__(self, draft: Draft, task: str, language: str, row: int):
        self.draft, model = draft, draft.model
        options = DecodingOptions(task=task, language=language, without_timestamps=True)
        self.tokens = initial_tokens(model, options)
        self.rules = LogitRules(model, options, len(self.tokens))
        self.features = draft.features[row : row + 1]
        self.lengths = None if draft.lengths is None else draft.lengths[row : row + 1]
        self.cache = M.KVCache(model, 1, self.features.device, self.features.dtype)
        self.fed = 0  # how many of self.tokens are in the cache

    def guess(self, limit: int) -> list[int]:
        """Up to `limit` tokens the draft expects next, one by one (stopping at <|endoftext|>)."""
        guesses = []
        while len(guesses) < limit:
            self.fed = min(
                self.fed, len(self.tokens) - 1
            )  # feed what the draft has not seen (or the last token again)
            self.cache.offset = self.fed
            new = torch.tensor([self.tokens[self.fed :]], device=self.features.device)
            self.fed = len(self.tokens)
            hidden = self.draft.model.decoder.hidden(new, self.features, self.lengths, self.cache)[
                :, -1
            ]
            step = self.draft.guess_logits(hidden)
            self.rules(step, torch.tensor([self.tokens], device=step.device))
            guesses.append(int(step.argmax(dim=-1)))
            self.tokens.append(guesses[-1])
            if guesses[-1] == self.draft.model.tokenizer.eot:
                break
        return guesses

    def forget(self, n: int) -> None:
        """Drop the last `n` guesses (the ones the verifying model did not keep)."""
        del self.tokens[len(self.tokens) - n :]
        self.fed = min(self.fed, len(self.tokens))


@dataclass
class TextDraft:
    """A text the model will probably write, as the draft of speculative decoding: no second model.

    Live transcription has one: the text read from the same phrase half a second before, when less
    of it had been heard (streaming.LiveTranscriber). Guesses are the draft's tokens that follow
    where the model's text so far ends in it, so a read that agrees with the draft costs a few
    forward passes of the decoder, not one per token; where they disagree the model's own tokens
    win, as with any draft. `tokens`: the draft's text tokens, <|endoftext|> last (so the end is
    guessed too).
    """

    tokens: list[int]
    guesses: int = 8  # tokens guessed per step of the verifying model

    def encode(self, mel: Tensor, sizes: Sequence[int]) -> TextDraft:
        return self  # nothing to read: the same text serves every window

    def select(self, index: Sequence[int]) -> TextDraft:
        return self

    def row(self, task: str, language: str, row: int) -> TextDraftRow:
        return TextDraftRow(self)


class TextDraftRow:
    """A TextDraft's side of one window: the text so far (as DraftRow keeps it) and where it goes on
    in the draft."""

    TAIL = 4  # the most tokens of the text so far matched against the draft

    def __init__(self, draft: TextDraft):
        self.draft, self.tokens = draft, []

    def guess(self, limit: int) -> list[int]:
        """Up to `limit` of the draft's tokens after the place where the text so far ends in it:
        after the text itself if the draft starts with it, else after the latest occurrence of its
        longest tail (a word the model wrote differently), else none."""
        at = self.where()
        guesses = self.draft.tokens[at : at + limit] if at is not None else []
        self.tokens += guesses
        return guesses

    def where(self) -> Optional[int]:
        """Where in the draft the text so far goes on (see guess), or None."""
        text, draft = self.tokens, self.draft.tokens
        if draft[: len(text)] == text:
            return len(text)
        for n in range(min(self.TAIL, len(text)), 0, -1):
            ends = [j + n for j in range(len(draft) - n) if draft[j : j + n] == text[-n:]]
            if ends:
                return ends[-1]
        return None

    def forget(self, n: int) -> None:
        """Drop the last `n` guesses (the ones the verifying model did not keep)."""
        del self.tokens[len(self.tokens) - n :]
