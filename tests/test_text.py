"""text_norm.py: the English text normaliser and the word error rate."""

import pytest

import text_norm

NORMALISED = [
    ("Press one.", "press 1"),
    ("press 1", "press 1"),
    ("Twenty-one", "21"),
    ("twenty one", "21"),
    ("One hundred and five", "105"),
    ("one hundred five", "105"),
    ("two thousand and twenty four", "2024"),
    ("two million three thousand and one", "2003001"),
    ("a hundred people", "100 people"),
    ("3 million", "3000000"),
    ("three point five", "3.5"),
    ("It costs 3.50.", "it costs 3.50"),
    ("1,000 people", "1000 people"),
    ("Zero.", "0"),
    ("Oh.", "oh"),
    ("two oh one", "2 0 1"),
    ("one two three", "1 2 3"),
    ("first", "1st"),
    ("the twenty first of May", "the 21st of may"),
    ("one second please", "1 second please"),
    ("fourtieth", "40th"),
    ("five percent", "5%"),
    ("5 %", "5%"),
    ("five dollars and twenty cents", "$5.20"),
    ("$5.00", "$5"),
    ("I won't go, can't stay", "i will not go can not stay"),
    ("It's OK, you're fine", "it is okay you are fine"),
    ("Let's see what they'll do", "let us see what they will do"),
    ("Hmm, uh, I think [noise] (laughs) so", "i think so"),
    ("The colour of the centre is grey", "the color of the center is gray"),
    ("We organised the catalogue", "we organized the catalog"),
    ("Cancelled.", "canceled"),
    ("Call-Forward on No Answer.", "call forward on no answer"),
    ("at 10 A.M. or P.M.", "at 10 am or pm"),
    ("Mr. Smith & Dr. Jones", "mister smith and doctor jones"),
    ("Café   naïve", "cafe naive"),
    ("Waldo's premier provider", "waldos premier provider"),
    ("Please press the pound key!", "please press the pound key"),
    ("  ", ""),
]


@pytest.mark.parametrize("text,expected", NORMALISED)
def test_normalize_text(text, expected):
    assert text_norm.normalize_text(text) == expected


def test_wer():
    assert text_norm.wer(["Press one."], ["press 1"]) == 0.0
    assert text_norm.wer(["a b c"], ["a x c d"]) == pytest.approx(2 / 3)  # 1 sub + 1 ins
    assert text_norm.wer(["a b c", ""], ["a b", "extra words"]) == pytest.approx(3 / 3)
    assert text_norm.wer([""], [""]) == 0.0
    assert text_norm.wer("Twenty-one", "21") == 0.0
    with pytest.raises(ValueError):
        text_norm.wer(["a"], [])
