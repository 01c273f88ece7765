"""streaming.py: the endpointer, the live transcriber and `stream`, on real speech."""

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

import audio_io
import data
import streaming
import text_norm
import transcribe

ROOT = Path(__file__).resolve().parents[1]


SR = audio_io.SAMPLE_RATE


@pytest.fixture(scope="module")
def speech(asterisk):
    """Two test prompts of the default corpus with 0.8 s of silence around and between them:
    (audio, [(start, end) sample span of each prompt], [its text])."""
    utts = [u for u in data.split_corpus(asterisk)["test"] if 1.5 < u.duration < 5][:2]
    gap = np.zeros(round(0.8 * SR), np.float32)
    parts, spans, at = [gap], [], len(gap)
    for u in utts:
        a = audio_io.load_audio(u.audio, cache=True)
        parts += [a, gap]
        spans.append((at, at + len(a)))
        at += len(a) + len(gap)
    return np.concatenate(parts), spans, [u.text for u in utts]


def phrases_of(audio, chunk=0.1, **options):
    ep, step, out = streaming.Endpointer(**options), round(chunk * SR), []
    for i in range(0, len(audio), step):
        out += ep.feed(audio[i : i + step])
    return out + ep.finish()


def several_speakers(seconds=30.0):
    """Real recordings of other people (real-speech-dev), one after another, ~`seconds` long."""
    by_source = {}
    for u in data.load_source("real-speech-dev"):
        by_source.setdefault(u.id.split("_")[0], []).append(u)
    audios = []
    while sum(map(len, audios)) < seconds * SR:
        for source in by_source.values():
            if source:
                audios.append(audio_io.load_audio(source.pop(0).audio, cache=True))
    return audios


# ----- the endpointer -----------------------------------------------------------------------------


def test_endpointer_cuts_real_speech_of_several_people_at_the_pauses_and_loses_nothing():
    """Recordings of different people with 0.8 s of silence between: no phrase spans a border (a
    pause longer than the 0.5 s endpoint), phrases do not overlap, and every 10 ms within 25 dB of
    the loudest is inside a phrase: no speech is lost between phrases."""
    audios = several_speakers()
    gap = np.zeros(round(0.8 * SR), np.float32)
    audio = np.concatenate([x for a in audios for x in (a, gap)])
    phrases = phrases_of(audio, silence=0.5)
    assert len(phrases) >= len(audios)
    assert all(a < b and c <= b for a, b, c in phrases)
    assert all(p[1] <= q[0] for p, q in zip(phrases, phrases[1:]))
    borders = np.cumsum([len(a) + len(gap) for a in audios])[:-1] - len(gap) // 2
    for border in borders:
        assert not any(a < border < b for a, b, _ in phrases), border
    level, _ = audio_io.loudness(audio)
    loud = np.flatnonzero(level > level.max() - 25)
    inside = np.zeros(len(level), bool)
    for a, b, _ in phrases:
        inside[a // 160 : b // 160 + 1] = True
    assert inside[loud].all(), loud[~inside[loud]][:5] / 100


def test_a_long_phrase_is_cut_at_its_quietest_and_input_ending_mid_phrase_is_closed(asterisk):
    """A 21 s prompt with phrases of at most 4 s: forced cuts follow one another with no gap, none
    longer than 4 s; audio that ends mid-phrase closes its phrase where the input ends."""
    longest = max(data.split_corpus(asterisk)["test"], key=lambda u: u.duration)
    audio = audio_io.load_audio(longest.audio, cache=True)
    assert len(audio) > 15 * SR
    phrases = phrases_of(audio, max_seconds=4.0)
    assert len(phrases) >= 4 and all(b - a <= 4 * SR for a, b, _ in phrases)
    cut = audio[: len(audio) // 2]
    last = phrases_of(cut, max_seconds=30.0)[-1]
    assert (
        last[1] == len(cut) and last[2] > len(cut) - SR // 2
    )  # closed at the end, sound to the end


# ----- the live transcriber -----------------------------------------------------------------------


@pytest.mark.slow
def test_live_transcriber_reads_phrases_as_a_student_reads(tiny, speech):
    """A student's reading (the teacher's weights, each phrase read at its own padded length) of the
    two prompts streamed 0.1 s at a time: one final per prompt, inside its span give or take the
    phrase padding, the text right (the second read after the first, whose text is not repeated);
    partials every 0.5 s of each open phrase come first."""
    audio, spans, texts = speech
    live = streaming.LiveTranscriber(transcribe.Student(tiny, "student", round_frames=3000))
    events = []
    for i in range(0, len(audio), 1600):
        events += live.feed(audio[i : i + 1600])
    events += live.finish()
    finals = [e for e in events if e["type"] == "final"]
    assert len(finals) == 2
    for f, (a, b), text in zip(finals, spans, texts):
        pad = streaming.PHRASE_PAD + 0.05
        assert a / SR - pad <= f["start"] <= a / SR + 0.5 and a / SR < f["end"] <= b / SR + pad
        assert text_norm.wer(text, f["text"]) <= 0.2, (text, f["text"])
    partials = [e for e in events if e["type"] == "partial"]
    assert partials and all(p["start"] in {f["start"] for f in finals} for p in partials)
    assert [r["kind"] for r in live.reads].count("final") == 2 and all(
        r["compute"] > 0 for r in live.reads
    )
    second = [r for r in live.reads if r["kind"] == "final"][1]  # read after the first prompt
    assert second["seconds"] == pytest.approx(finals[1]["end"] - finals[0]["start"], abs=0.01)
    assert live.result()["text"].strip() == " ".join(f["text"] for f in finals)


class Scripted:
    """A stand-in recognizer: "you" read with doubt (average log-probability -1.4) for whatever is
    shorter than 0.9 s, a loop for the first partial of 0.9 s or more, and otherwise `text`, finals
    with the same doubt; read after the phrase before (a forced prefix), `after_context`."""

    def __init__(self, text, tokenizer, after_context=None):
        self.text, self.after_context, self.asked = text, after_context, []
        self.model = SimpleNamespace(tokenizer=tokenizer)  # for the drafts LiveTranscriber makes

    def transcribe(self, audios, options, batch_size=1, times=True):
        seconds, final = len(audios[0]) / SR, options.temperature != 0.0
        self.asked.append((seconds, final, options.prefix))
        first_partial = not final and not any(s >= 0.9 and not f for s, f, _ in self.asked[:-1])
        text, logprob = (
            ("you", -1.4)
            if seconds < 0.9
            else ("and an element " * 12, -0.2)
            if first_partial
            else (self.text, -1.4 if final else -0.3)
        )
        if options.prefix and self.after_context is not None:
            text, logprob = self.after_context, -0.3
        return [{"text": text, "segments": [{"text": text, "avg_logprob": logprob}]}]


def test_noise_and_loops_are_not_shown(speech, tiny):
    """A click (0.15 s of sound) that the model reads with doubt ("you") is noise, neither a partial
    nor a final; a prompt read with the same doubt still is a final. A partial whose text is a loop
    is not shown, the next one is. Partials are greedy; finals are read with the fallback
    schedule."""
    audio, spans, texts = speech
    click = np.zeros(2 * SR, np.float32)
    click[SR // 2 : SR // 2 + round(0.15 * SR)] = 0.3 * np.sin(np.arange(round(0.15 * SR)) * 0.3)
    stream = np.concatenate(
        [click, audio[: spans[0][1] + SR]]
    )  # then the first prompt, 1 s of quiet
    live = streaming.LiveTranscriber(Scripted(texts[0], tiny.tokenizer))
    events = []
    for i in range(0, len(stream), 1600):
        events += live.feed(stream[i : i + 1600])
    events += live.finish()
    finals = [e for e in events if e["type"] == "final"]
    assert [e["text"] for e in finals] == [texts[0]] and finals[0][
        "start"
    ] > 2.0  # the click gave none
    click_read = 0.15 + 2 * streaming.PHRASE_PAD  # its sound, padded
    assert live.recognizer.asked[1] == (
        pytest.approx(click_read, abs=0.1),
        True,
        None,
    )  # though it was read
    partials = [e["text"] for e in events if e["type"] == "partial"]
    assert partials == [texts[0]]  # no "you"; the loop was not shown, the next partial was


def test_a_phrase_is_read_after_the_one_before_unless_that_fails(speech, tiny, monkeypatch):
    """The second prompt is read from the first one's start, the first one's final text forced
    (prefix); if that read gives no text or a loop, it is read alone after all. Past
    CONTEXT_SECONDS it is read alone at once, and the audio kept for it is let go."""
    audio, spans, texts = speech
    for after_context, alone_again in (("followed by", False), ("", True), ("la " * 40, True)):
        live = streaming.LiveTranscriber(
            Scripted("agent logged in", tiny.tokenizer, after_context), partials=False
        )
        events = []
        for i in range(0, len(audio), 1600):
            events += live.feed(audio[i : i + 1600])
        events += live.finish()
        first, second = [e for e in events if e["type"] == "final"]
        reads = [(seconds, prefix) for seconds, final, prefix in live.recognizer.asked if final]
        assert reads[0][1] is None and reads[1][1] == "agent logged in"
        assert reads[1][0] == pytest.approx(
            second["end"] - first["start"], abs=0.01
        )  # from the first's start
        if alone_again:
            assert reads[2] == (pytest.approx(second["end"] - second["start"], abs=0.01), None)
            assert second["text"] == "agent logged in" and len(reads) == 3
        else:
            assert second["text"] == "followed by" and len(reads) == 2
    for _ in range(400):  # 40 s of quiet after: the context's audio goes, the endpointer's
        live.feed(np.zeros(1600, np.float32))  # history of the stream stays
    assert live.context == [] and len(live.audio) <= (streaming.VAD_HISTORY + 2) * SR
    monkeypatch.setattr(streaming, "CONTEXT_SECONDS", 1.0)
    live = streaming.LiveTranscriber(
        Scripted("agent logged in", tiny.tokenizer, ""), partials=False
    )
    live.feed(audio)
    live.finish()
    assert [prefix for _, final, prefix in live.recognizer.asked if final] == [None, None]


def test_a_phrase_is_read_after_every_final_before_it_that_fits(speech, tiny, monkeypatch):
    """Three prompts in a row: the third is read from the first one's start, the first two finals'
    text forced, where all three fit in CONTEXT_SECONDS; where only the second fits with it, from
    the second's start after its text alone."""
    audio, spans, _ = speech
    three = np.concatenate([audio, audio[spans[0][0] : spans[0][1]], np.zeros(SR, np.float32)])
    for fits, forced in ((60.0, "agent logged in followed by"), (None, "followed by")):
        live = streaming.LiveTranscriber(
            Scripted("agent logged in", tiny.tokenizer, "followed by"), partials=False
        )
        # (None: a span that holds the second phrase and the third, not the first)
        monkeypatch.setattr(streaming, "CONTEXT_SECONDS", fits or (len(three) - spans[1][0]) / SR)
        events = []
        for i in range(0, len(three), 1600):
            events += live.feed(three[i : i + 1600])
        events += live.finish()
        finals = [e for e in events if e["type"] == "final"]
        reads = [(seconds, prefix) for seconds, final, prefix in live.recognizer.asked if final]
        assert len(finals) == 3 and reads[2][1] == forced, reads
        begins = finals[0]["start"] if fits else finals[1]["start"]
        assert reads[2][0] == pytest.approx(finals[2]["end"] - begins, abs=0.01)


# ----- the command --------------------------------------------------------------------------------


def run_stream(args, stdin=None, env=None, timeout=300):
    return subprocess.run(
        [sys.executable, str(ROOT / "fastwhisper.py"), "stream", *args],
        input=stdin,
        capture_output=True,
        cwd=ROOT,
        env=env,
        timeout=timeout,
    )


def pcm(audio) -> bytes:
    return (np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes()


def events_of(stdout: bytes) -> list[dict]:
    return [json.loads(line) for line in stdout.decode().splitlines()]


@pytest.mark.slow
def test_stream_reads_pcm_on_stdin_and_prints_jsonl_events(tiny, speech):
    """Raw PCM on stdin, --jsonl: every line an event; a final per prompt with the right words and
    its time in the stream (a pipe faster than real time is read as it comes: more audio per read,
    fewer partials). Then the same audio cut in the middle of the second prompt: that phrase still
    gets its final, ending where the input ended."""
    audio, spans, texts = speech
    done = run_stream(["-", "--model", "tiny.en", "--jsonl", "--step", "1"], stdin=pcm(audio))
    assert done.returncode == 0, done.stderr.decode()
    events = events_of(done.stdout)
    assert all(
        set(e) == {"type", "start", "end", "text"} and e["type"] in ("partial", "final")
        for e in events
    )
    finals = [e for e in events if e["type"] == "final"]
    assert (
        len(finals) == 2
        and text_norm.wer(" ".join(texts), " ".join(f["text"] for f in finals)) <= 0.15
    )
    assert finals[0]["end"] < spans[1][0] / SR < finals[1]["start"] + 0.3

    middle = (spans[1][0] + spans[1][1]) // 2
    done = run_stream(
        ["-", "--model", "tiny.en", "--jsonl", "--step", "0"], stdin=pcm(audio[:middle])
    )
    finals = [e for e in events_of(done.stdout) if e["type"] == "final"]
    assert done.returncode == 0 and len(finals) == 2
    assert finals[1]["end"] == pytest.approx(middle / SR, abs=0.01) and finals[1]["text"]


@pytest.mark.slow
def test_live_audio_paces_a_file_at_1x_and_stream_writes_files(speech, tmp_path):
    """--realtime hands a file on no faster than it plays (and without it, at once); `stream FILE
    -o DIR -f srt` writes the finals as transcribe writes a file; paced, the phrase's partials come
    before its final, and the terminal shows the final on its own line."""
    audio, spans, texts = speech
    path = audio_io.save_wav(tmp_path / "two.wav", audio[: spans[0][1] + SR])
    seconds = (spans[0][1] + SR) / SR
    for realtime in (True, False):
        began = time.monotonic()
        chunks = list(streaming.live_audio(str(path), realtime=realtime))
        elapsed = time.monotonic() - began
        assert np.array_equal(np.concatenate(chunks), audio_io.load_audio(str(path)))
        assert elapsed >= seconds - 0.05 if realtime else elapsed < seconds / 3
    done = run_stream(
        [str(path), "--realtime", "--model", "tiny.en", "-o", str(tmp_path / "out"), "-f", "srt"]
    )
    assert done.returncode == 0, done.stderr.decode()
    done = run_stream([str(path), "--realtime", "--model", "tiny.en", "--jsonl"])
    events = events_of(done.stdout)
    assert [e["type"] for e in events][-1] == "final" and "partial" in [e["type"] for e in events]
    assert all(e["start"] == events[-1]["start"] and e["end"] <= events[-1]["end"] for e in events)
    srt = (tmp_path / "out" / "two.srt").read_text()
    assert srt.startswith("1\n00:00:00,") and text_norm.wer(texts[0], srt.split("\n", 2)[2]) <= 0.2
    assert (
        texts[0].split()[0].lower().strip(",.") in done.stdout.decode().lower()
    )  # the final's line


@pytest.mark.slow
def test_ctrl_c_prints_the_open_phrases_final_and_exits_0(tiny, speech, ctrl_c):
    """A live pipe that stops mid-phrase and stays open; Ctrl-C (SIGINT) gives that phrase's final
    text and exit status 0."""
    audio, spans, texts = speech
    proc = subprocess.Popen(
        [
            sys.executable,
            str(ROOT / "fastwhisper.py"),
            "stream",
            "-",
            "--model",
            "tiny.en",
            "--jsonl",
            "--step",
            "0.5",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=ROOT,
    )
    lines = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)
    reader.start()
    proc.stdin.write(pcm(audio[: spans[0][1] - SR // 4]))  # the first prompt, but not its end
    proc.stdin.flush()
    deadline = time.monotonic() + 120
    while not lines and time.monotonic() < deadline:  # a partial: the phrase is open and read
        time.sleep(0.1)
    assert lines, "no partial within 120 s"
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=120)
    reader.join(timeout=10)
    events = [json.loads(line) for line in lines]
    assert proc.returncode == 0, proc.stderr.read().decode()
    assert events[-1]["type"] == "final" and text_norm.wer(texts[0], events[-1]["text"]) <= 0.5
    proc.stdin.close()


@pytest.mark.skipif(not hasattr(signal, "pthread_kill"), reason="needs POSIX thread signals")
def test_ctrl_c_that_lands_on_another_thread_still_stops_a_quiet_live_source(
    speech, monkeypatch, ctrl_c
):
    """The kernel may hand a Ctrl-C to any thread (the PCM reader, a torch worker): live_audio()
    waiting on an open, quiet pipe must still raise KeyboardInterrupt at once, not when the pipe
    next speaks or closes (the `stream -` that hung in the full suite)."""
    audio, _, _ = speech
    read, write = os.pipe()
    monkeypatch.setattr(sys, "stdin", SimpleNamespace(fileno=lambda: read))

    def speaker():
        os.write(write, pcm(audio[: SR // 2]))
        time.sleep(0.3)
        signal.pthread_kill(
            threading.get_ident(), signal.SIGINT
        )  # to this thread, not the main one
        time.sleep(5)
        os.close(write)

    threading.Thread(target=speaker, daemon=True).start()
    began, heard = time.monotonic(), 0
    with pytest.raises(KeyboardInterrupt):
        for block in streaming.live_audio("-"):
            heard += len(block)
    assert heard == SR // 2 and time.monotonic() - began < 2
    os.close(read)


@pytest.mark.slow
def test_stream_faults_are_one_line(tiny, speech, tmp_path):
    """A bad device, a bad input format, no ffmpeg: one `error:` line, status 2. A reader that goes
    away (`| head -1`) ends the stream quietly, status 0."""
    for args, says in [
        (["nosuchdevice", "-i", "alsa"], "nosuchdevice: cannot record from it (ffmpeg -f alsa"),
        (["default", "-i", "nosuchformat"], "default: cannot record from it"),
        ([str(tmp_path / "missing.wav")], "missing.wav: file not found"),
    ]:
        done = run_stream(args + ["--model", "tiny.en"])
        err = done.stderr.decode().strip()
        assert (
            done.returncode == 2
            and err.startswith("error: ")
            and says in err
            and len(err.splitlines()) == 1
        ), err
    empty = tmp_path / "bin"
    empty.mkdir()
    done = run_stream(
        ["default", "-i", "pulse", "--model", "tiny.en"], env={**os.environ, "PATH": str(empty)}
    )
    assert done.returncode == 2 and "ffmpeg is not installed" in done.stderr.decode(), (
        done.stderr.decode()
    )

    audio, _, _ = speech
    path = audio_io.save_wav(tmp_path / "two.wav", audio)
    proc = subprocess.Popen(
        [
            sys.executable,
            str(ROOT / "fastwhisper.py"),
            "stream",
            str(path),
            "--model",
            "tiny.en",
            "--jsonl",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=ROOT,
    )
    json.loads(proc.stdout.readline())
    proc.stdout.close()
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0 and b"Traceback" not in err, err.decode()
