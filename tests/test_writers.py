"""writers.py: the subtitle and text output formats."""

import json

import writers


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
