"""CER/WER/sWER on examples small enough to count by hand."""

import unicodedata

import pytest

from koemo.asr.metrics import cer, edit_distance, normalize, respace, score, wer
from koemo.asr.numbers import native_korean, sino_korean, spell_numbers


def test_edit_distance_counts_substitutions_deletions_insertions():
    assert edit_distance("kitten", "sitting") == 3
    assert edit_distance("", "abc") == 3
    assert edit_distance(["a", "b"], []) == 2
    assert edit_distance("같다", "같다") == 0


def test_cer_ignores_spaces_and_counts_characters():
    # 가나다라 vs 가나라: one deletion over 4 characters.
    assert cer("가나다라", "가나라") == pytest.approx(1 / 4)
    # Spacing alone is not a character error.
    assert cer("관련하여 내부", "관련 하여 내부") == 0.0


def test_wer_counts_words_and_can_exceed_one():
    # ref [관련하여, 내부], hyp [관련, 하여, 내부]: 1 substitution + 1 insertion over 2 words.
    assert wer("관련하여 내부", "관련 하여 내부") == pytest.approx(1.0)
    # Three inserted words on a one-word reference: 3 / 1.
    assert wer("네", "네 네 네 네") == pytest.approx(3.0)
    assert wer("정말 기뻐", "") == pytest.approx(1.0)


def test_swer_forgives_spacing_but_not_wrong_words():
    s = score(["현재 본 사건과 관련하여 내부 감사를"], ["현재 본 사건과 관련 하여 내부 감사를"])
    assert s.wer == pytest.approx(2 / 6)
    assert s.swer == 0.0
    wrong = score(["현재 본 사건과 관련하여 내부 감사를"], ["현재 돈 사건과 관련하여 내부 감사를"])
    assert wrong.swer > 0


def test_respace_ignores_existing_spaces():
    assert respace(["관련 하 여"]) == respace(["관련하여"])


def test_corpus_rate_is_total_edits_over_total_reference_length():
    # Utterance 1: 1 edit / 4 chars; utterance 2: 1 edit / 1 char. Corpus: 2/5, not the mean 0.625.
    s = score(["가나다라", "마"], ["가나라", "바"])
    assert s.char_edits == 2 and s.ref_chars == 5
    assert s.cer == pytest.approx(2 / 5)
    assert s.utterances == 2


def test_normalize_nfc_punctuation_whitespace_case():
    decomposed = unicodedata.normalize("NFD", "경치 좋고,   음식도 맛있고!")
    assert normalize(decomposed) == "경치 좋고 음식도 맛있고"
    assert normalize("  Hello,  World?! ") == "hello world"
    assert normalize("“따옴표”와 (괄호) … 줄임표") == "따옴표와 괄호 줄임표"


@pytest.mark.parametrize(
    "n,spoken",
    [(0, "영"), (1, "일"), (10, "십"), (17, "십칠"), (20, "이십"), (110, "백십"), (2021, "이천이십일"),
     (10_000, "만"), (16_000, "만육천"), (100_000_000, "일억"), (1_234_567, "백이십삼만사천오백육십칠")],
)
def test_sino_korean_reading(n, spoken):
    assert sino_korean(n) == spoken


def test_native_counters_and_units():
    assert native_korean(20) == "스무" and native_korean(21) == "스물한" and native_korean(3) == "세"
    assert spell_numbers("2건") == "두건"
    assert spell_numbers("1만 6천명") == "만 육천명"
    assert spell_numbers("16,000명") == "만육천명"
    assert spell_numbers("3.5") == "삼점오"
    assert spell_numbers("007") == "영영칠"


def test_digits_score_equal_to_hangul_numbers():
    # The EmotionTTS reference spells numbers out; Whisper writes "5월 17일".
    ref = "오월 십칠일 기준, 홍수로 인해 최소 이십명이 사망했고 만육천명 이상이 대피하였습니다."
    hyp = "5월 17일 기준 홍수로 인해 최소 20명이 사망했고 16,000명 이상이 대피하였습니다"
    # 20명 is read natively (스무명) but this reference says 이십명: 2 substitutions remain.
    s = score([ref], [hyp])
    assert s.char_edits == 2
    assert score(["오월 십칠일"], ["5월 17일"]).cer == 0.0
    assert score(["삼점오퍼센트"], ["3.5%"]).cer == 0.0


def test_vosk_number_tokens_are_read_as_numbers():
    # vosk-ko's output on an EmotionTTS clip: "[1]" is the number it heard (한, before the counter 달)
    ref = "드디어 내일이 한 달 동안 기다리던 월급날이라서 그런지 기분 최고야."
    hyp = "드디어 내일 이 [1] 달동안 기다리던 월급날 이라서 그런지 기분 최고 야"
    assert score([ref], [hyp]).cer == 0.0
    assert normalize("[4] 개 [19]") == "네 개 십구"


def test_empty_hypotheses_are_counted():
    s = score(["가나", "다라"], ["", "다라"])
    assert s.empty_hypotheses == 1
    assert s.cer == pytest.approx(2 / 4)


def test_mismatched_lengths_are_an_error():
    with pytest.raises(ValueError, match="2 references but 1 hypotheses"):
        score(["가", "나"], ["가"])
