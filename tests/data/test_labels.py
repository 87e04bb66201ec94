import pytest

from koemo.data.labels import CANONICAL, LABEL_SETS, normalize_label, resolve_label_set
from koemo.errors import UnknownLabelError


@pytest.mark.parametrize(
    "raw,expected",
    [("Happiness", "happy"), ("기쁨", "happy"), ("행복", "happy"), ("anger", "angry"), ("분노", "angry"),
     ("화남", "angry"), ("Sadness", "sad"), ("슬픔", "sad"), ("Disgust", "dislike"), ("혐오", "dislike"),
     ("놀람", "surprise"), ("SURPRISE", "surprise"), ("공포", "fear"), ("경멸", "contempt"),
     ("중립", "neutral"), (" neutral ", "neutral")],
)
def test_aliases_map_to_canonical(raw, expected):
    assert normalize_label(raw) == expected


def test_unknown_label_names_value_and_place():
    with pytest.raises(UnknownLabelError) as e:
        normalize_label("bored", where="x.csv:3")
    assert str(e.value).startswith("x.csv:3: unknown emotion label 'bored'")


def test_empty_label_is_an_error():
    with pytest.raises(UnknownLabelError, match="empty emotion label"):
        normalize_label("  ")


def test_label_sets():
    assert set(LABEL_SETS["paper6"]) == set(CANONICAL) - {"fear", "contempt"}
    assert resolve_label_set("emotiontts4") == ("neutral", "happy", "sad", "angry")
    assert resolve_label_set("기쁨,Sadness") == ("happy", "sad")
    with pytest.raises(UnknownLabelError):
        resolve_label_set("happy,meh")
