"""Text for scoring: an English normaliser, so that "Press one." and "press 1" count as the
same words, and the word error rate.
"""

from __future__ import annotations

import math
import re
import unicodedata

FILLERS = {"hmm", "hm", "mm", "mmm", "mhm", "uh", "uhm", "um", "umm", "er", "erm"}

# Contractions and casual forms, applied while apostrophes are still present.
CONTRACTIONS = [
    (r"\bwon't\b", "will not"),
    (r"\bcan't\b", "can not"),
    (r"\bshan't\b", "shall not"),
    (r"\bain't\b", "is not"),
    (r"\blet's\b", "let us"),
    (r"\by'all\b", "you all"),
    (r"\bma'am\b", "madam"),
    (r"\bgonna\b", "going to"),
    (r"\bwanna\b", "want to"),
    (r"\bgotta\b", "got to"),
    (r"\bgimme\b", "give me"),
    (r"\blemme\b", "let me"),
    (r"\bkinda\b", "kind of"),
    (r"\bsorta\b", "sort of"),
    (r"\bo'clock\b", "oclock"),
    (r"n't\b", " not"),
    (r"'re\b", " are"),
    (r"'m\b", " am"),
    (r"'ll\b", " will"),
    (r"'ve\b", " have"),
    (r"'d\b", " would"),
    # "'s" is only expanded after pronouns: elsewhere it is usually a possessive.
    (
        r"\b(it|that|there|here|what|where|who|how|he|she|when|why|everyone|everybody|someone"
        r"|somebody|nobody|everything|something|nothing)'s\b",
        r"\1 is",
    ),
]

# Whole-word rewrites: abbreviations, a few standard forms, British -> American spelling.
WORD_MAP = {
    "mr": "mister",
    "mrs": "missus",
    "ms": "miss",
    "dr": "doctor",
    "prof": "professor",
    "jr": "junior",
    "sr": "senior",
    "vs": "versus",
    "ok": "okay",
    "alright": "all right",
    "fourty": "forty",
    "fourtieth": "fortieth",  # misspellings found in real transcripts
}
WORD_MAP.update(
    dict(
        pair.split("=")
        for pair in """
colour=color colours=colors coloured=colored favour=favor favours=favors favourite=favorite
favourites=favorites favourable=favorable honour=honor honours=honors honourable=honorable
humour=humor labour=labor neighbour=neighbor neighbours=neighbors neighbourhood=neighborhood
behaviour=behavior behaviours=behaviors flavour=flavor flavours=flavors harbour=harbor
rumour=rumor rumours=rumors armour=armor endeavour=endeavor odour=odor vapour=vapor
saviour=savior parlour=parlor vigour=vigor centre=center centres=centers centred=centered
metre=meter metres=meters kilometre=kilometer kilometres=kilometers centimetre=centimeter
millimetre=millimeter litre=liter litres=liters theatre=theater theatres=theaters fibre=fiber
calibre=caliber sombre=somber lustre=luster meagre=meager spectre=specter organise=organize
organised=organized organising=organizing organisation=organization organisations=organizations
realise=realize realised=realized realising=realizing recognise=recognize recognised=recognized
apologise=apologize apologised=apologized emphasise=emphasize criticise=criticize
summarise=summarize prioritise=prioritize memorise=memorize minimise=minimize maximise=maximize
customise=customize authorise=authorize authorised=authorized authorisation=authorization
utilise=utilize finalise=finalize specialise=specialize standardise=standardize analyse=analyze
analysed=analyzed paralysed=paralyzed defence=defense offence=offense licence=license
pretence=pretense catalogue=catalog dialogue=dialog analogue=analog travelled=traveled
travelling=traveling traveller=traveler cancelled=canceled cancelling=canceling
labelled=labeled labelling=labeling modelled=modeled modelling=modeling fuelled=fueled
signalled=signaled counsellor=counselor jewellery=jewelry marvellous=marvelous enrol=enroll
fulfil=fulfill instalment=installment skilful=skillful wilful=willful grey=gray tyre=tire
tyres=tires cheque=check cheques=checks programme=program programmes=programs
aluminium=aluminum mould=mold plough=plow sceptical=skeptical aeroplane=airplane
pyjamas=pajamas storey=story kerb=curb manoeuvre=maneuver ageing=aging judgement=judgment
acknowledgement=acknowledgment anaemia=anemia encyclopaedia=encyclopedia paediatric=pediatric
practise=practice practised=practiced draught=draft
""".split()
    )
)

UNITS = {w: i for i, w in enumerate("zero one two three four five six seven eight nine".split())}
TEENS = {
    w: i + 10
    for i, w in enumerate(
        "ten eleven twelve thirteen fourteen fifteen sixteen seventeen eighteen nineteen".split()
    )
}
TENS = {
    w: 10 * i
    for i, w in enumerate("twenty thirty forty fifty sixty seventy eighty ninety".split(), start=2)
}
SCALES = {"thousand": 10**3, "million": 10**6, "billion": 10**9, "trillion": 10**12}
ORDINAL_UNITS = {
    w: i
    for i, w in enumerate(
        "first second third fourth fifth sixth seventh eighth ninth".split(), start=1
    )
}
ORDINAL_TEENS = {
    w: i + 10
    for i, w in enumerate(
        "tenth eleventh twelfth thirteenth fourteenth "
        "fifteenth sixteenth seventeenth eighteenth nineteenth".split()
    )
}
ORDINAL_TENS = {
    w: 10 * i
    for i, w in enumerate(
        "twentieth thirtieth fortieth fiftieth sixtieth seventieth eightieth ninetieth".split(),
        start=2,
    )
}
ORDINAL_SCALES = {"thousandth": 10**3, "millionth": 10**6, "billionth": 10**9, "trillionth": 10**12}
DIGIT_WORDS = {**UNITS, "oh": 0}  # digits after "point" are read one by one
GROUP_WORDS = {*UNITS, *TEENS, *TENS} - {"zero"}  # words that can start a group below 100
ORDINAL_WORDS = {*ORDINAL_UNITS, *ORDINAL_TEENS, *ORDINAL_TENS, *ORDINAL_SCALES, "hundredth"}
CURRENCY = {"dollar": "$", "dollars": "$", "pounds": "£", "euro": "€", "euros": "€"}


def _ordinal(n: int) -> str:
    suffix = "th" if n % 100 in (11, 12, 13) else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def _is_number(tok: str) -> bool:
    return re.fullmatch(r"\d+(\.\d+)?", tok) is not None


def _parse_number(toks, i):
    """Read one spelled-out number starting at toks[i]: returns (digits, next index) or None.

    A number is groups below a thousand ("one hundred and twenty one") joined by
    decreasing scales ("two million three thousand"). A word that cannot continue
    the number ends it, so "one two" reads as two numbers, "1 2".
    """
    total, group, last, top_scale, j = 0, 0, None, math.inf, i
    ordinal = False
    while j < len(toks):
        w = toks[j]
        after_group_start = last in (None, "hundred", "scale", "and")
        if w == "zero" and last is None:
            j, last = j + 1, "zero"
            break
        if w in UNITS and w != "zero" or w in ORDINAL_UNITS:
            v = UNITS.get(w) or ORDINAL_UNITS.get(w)
            if not (after_group_start or last == "tens" and group % 10 == 0):
                break
            if w == "second" and last is None:  # "one second" is a unit of time, not 2nd
                break
            group, last = group + v, "unit"
        elif w in TEENS or w in ORDINAL_TEENS or w in TENS or w in ORDINAL_TENS:
            if not after_group_start:
                break
            group += TEENS.get(w) or ORDINAL_TEENS.get(w) or TENS.get(w) or ORDINAL_TENS[w]
            last = "tens" if w in TENS or w in ORDINAL_TENS else "teen"
        elif w in ("hundred", "hundredth"):
            if last is None:
                group = 100  # a bare "hundred" (or "a hundred") means one hundred
            elif last in ("unit", "teen", "tens") and group < 100:
                group *= 100
            else:
                break
            last = "hundred"
        elif w in SCALES or w in ORDINAL_SCALES:
            scale = SCALES.get(w) or ORDINAL_SCALES[w]
            if scale >= top_scale or last in ("scale", "and"):
                break
            total, group, last, top_scale = total + max(group, 1) * scale, 0, "scale", scale
        elif (
            w == "and"
            and last in ("hundred", "scale")
            and j + 1 < len(toks)
            and (toks[j + 1] in GROUP_WORDS)
        ):  # "one hundred and five", not "...hundred and me"
            last = "and"
        else:
            break
        j += 1
        if w in ORDINAL_WORDS:
            ordinal = True
            break  # an ordinal always ends its number: "twenty first"
    if last is None:
        return None
    value = total + group
    if ordinal:
        return _ordinal(value), j
    text = str(value)
    # "three point one four" -> 3.14
    if j + 1 < len(toks) and toks[j] == "point" and toks[j + 1] in DIGIT_WORDS:
        digits, j = "", j + 1
        while j < len(toks) and toks[j] in DIGIT_WORDS:
            digits, j = digits + str(DIGIT_WORDS[toks[j]]), j + 1
        text += "." + digits
    return text, j


def _numbers_to_digits(toks):
    out, i = [], 0
    while i < len(toks):
        w = toks[i]
        nxt = toks[i + 1] if i + 1 < len(toks) else ""
        if w == "a" and nxt in ("hundred", "thousand", "million", "billion", "trillion"):
            i += 1  # "a hundred" is one hundred
            continue
        if w == "oh" and (out and _is_number(out[-1]) or nxt in UNITS or _is_number(nxt)):
            out.append("0")  # "oh" is a digit only next to other digits ("two oh one")
            i += 1
            continue
        if re.fullmatch(r"\d+", w) and nxt in SCALES:  # "3 million" -> 3000000
            out.append(str(int(w) * SCALES[nxt]))
            i += 2
            continue
        parsed = _parse_number(toks, i)
        if parsed is None:
            out.append(w)
            i += 1
        else:
            out.append(parsed[0])
            i = parsed[1]
    return out


def _units_and_money(toks):
    out, i = [], 0
    while i < len(toks):
        w = toks[i]
        nxt = toks[i + 1] if i + 1 < len(toks) else ""
        if _is_number(w) and nxt == "percent":
            out.append(w + "%")
            i += 2
        elif _is_number(w) and nxt == "per" and i + 2 < len(toks) and toks[i + 2] == "cent":
            out.append(w + "%")
            i += 3
        elif _is_number(w) and nxt in CURRENCY:
            out.append(CURRENCY[nxt] + w)
            i += 2
        else:
            out.append(w)
            i += 1
    s = " ".join(out)
    # "$5 and 20 cents" -> "$5.20"; "$5.00" -> "$5"
    s = re.sub(
        r"([$£€])(\d+) (?:and )?(\d{1,2}) cents?\b", lambda m: f"{m[1]}{m[2]}.{int(m[3]):02d}", s
    )
    return re.sub(r"([$£€]\d+)\.00\b", r"\1", s)


def normalize_text(s: str) -> str:
    """Normalise English text for WER: lowercase words, digits for numbers, no punctuation.

    "Press one." and "press 1" both become "press 1"; "Twenty-one" becomes "21";
    "It's five percent." becomes "it is 5%"; British spellings become American.
    """
    s = s.lower().replace("’", "'").replace("‘", "'")
    s = re.sub(r"\[[^\]]*\]|<[^>]*>|\([^)]*\)|\{[^}]*\}", " ", s)  # notes like [noise], (laughs)
    for pattern, repl in CONTRACTIONS:
        s = re.sub(pattern, repl, s)
    # Drop accents (café -> cafe) by decomposing and discarding combining marks.
    s = "".join(c for c in unicodedata.normalize("NFKD", s) if not unicodedata.combining(c))
    s = s.replace("&", " and ")
    s = re.sub(r"(?<=\d),(?=\d{3}\b)", "", s)  # 1,000 -> 1000
    s = re.sub(r"(?<=\d)\s*%", "%", s)  # 5 % -> 5%
    s = re.sub(r"([$£€])\s+(?=\d)", r"\1", s)  # $ 5 -> $5
    s = s.replace("'", "")  # possessives and leftovers: waldo's -> waldos
    # Keep '.' only inside numbers, '%' after them, currency signs before them.
    s = re.sub(r"\b(?:[a-z]\.){2,}", lambda m: m[0].replace(".", ""), s)  # a.m. -> am
    s = re.sub(r"(?<!\d)\.|\.(?!\d)", " ", s)
    s = re.sub(r"(?<!\d)%", " ", s)
    s = re.sub(r"[$£€](?!\d)", " ", s)
    s = re.sub(r"[^\w\s.%$£€]|_", " ", s)  # everything else, hyphens included
    s = re.sub(r"(?<=[a-z])(?=\d)|(?<=\d)(?=[a-z])(?!(?:st|nd|rd|th|s)\b)", " ", s)
    toks = [WORD_MAP.get(t, t) for t in s.split() if t not in FILLERS]
    toks = " ".join(toks).split()  # a WORD_MAP value may hold two words ("all right")
    return _units_and_money(_numbers_to_digits(toks))


def wer(refs, hyps) -> float:
    """Corpus word error rate of hypotheses against references, after normalize_text.

    Total (substitutions + deletions + insertions) / total reference words. Empty
    references are allowed: their hypothesis words count as insertions; if there are
    no reference words at all, the result is the number of inserted words (0.0 when
    both sides are empty).
    """
    import jiwer  # scoring only; imported late so decoding never needs it

    if isinstance(refs, str):
        refs, hyps = [refs], [hyps]
    if len(refs) != len(hyps):
        raise ValueError(f"wer: {len(refs)} references but {len(hyps)} hypotheses")
    refs = [normalize_text(r) for r in refs]
    hyps = [normalize_text(h) for h in hyps]
    errors = sum(len(h.split()) for r, h in zip(refs, hyps) if not r)
    pairs = [(r, h) for r, h in zip(refs, hyps) if r]
    n_words = 0
    if pairs:
        m = jiwer.process_words([r for r, _ in pairs], [h for _, h in pairs])
        errors += m.substitutions + m.deletions + m.insertions
        n_words = m.hits + m.substitutions + m.deletions
    return errors / n_words if n_words else float(errors)
