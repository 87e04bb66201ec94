"""Read Arabic numerals the way they are spoken in Korean, so "5월 17일" scores equal to "오월 십칠일".

EmotionTTS (and most Korean read-speech corpora) spell numbers in Hangul; Whisper writes digits.
Without this, every number is a word error that is really only notation. Numbers are read in
Sino-Korean (일, 이, 삼 ...; 만 / 억 / 조 per four digits) except before a native counter (명, 개,
번, 살, 시 ...), where numbers below 100 take the native attributive form (한, 두, 스무 ...).
Residual mismatches remain where the reference itself is inconsistent (the corpus has both
"이십명" and "스무명") and for Latin spellings (Whisper's "UNESCO" for "유네스코").
"""

from __future__ import annotations

import re

SINO_DIGITS = "영일이삼사오육칠팔구"
_PLACES = ("", "십", "백", "천")
_GROUPS = ("", "만", "억", "조", "경")
# Attributive native numerals 1-9 and tens 10-90, as said before a counter ("세 명", "스무 살").
_NATIVE_ONES = ("", "한", "두", "세", "네", "다섯", "여섯", "일곱", "여덟", "아홉")
_NATIVE_TENS = ("", "열", "스물", "서른", "마흔", "쉰", "예순", "일흔", "여든", "아흔")
NATIVE_COUNTERS = (
    "시간", "사람", "마리", "가지", "군데", "명", "개", "번", "살", "시", "잔", "권", "건", "달", "벌", "척", "채",
)
_UNIT_AFTER = "십백천만"  # "1만" is read 만, not 일만

_NUMBER = re.compile(r"(\d+)(?:\.(\d+))?(\s*)(" + "|".join(NATIVE_COUNTERS) + r"|[" + _UNIT_AFTER + r"])?")
_THOUSANDS_COMMA = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")


def sino_korean(n: int) -> str:
    """``sino_korean(16000) == "만육천"``; 1 is dropped before 십/백/천 and before 만 alone."""
    if n == 0:
        return "영"
    words = []
    group_index = 0
    while n:
        n, group = divmod(n, 10_000)
        if group:
            text = ""
            for place in range(3, -1, -1):
                digit = group // 10**place % 10
                if digit:
                    text += ("" if digit == 1 and place else SINO_DIGITS[digit]) + _PLACES[place]
            if group == 1 and group_index == 1:
                text = ""  # 10,000 is 만, not 일만 (but 1억 is 일억)
            words.append(text + _GROUPS[group_index])
        group_index += 1
    return "".join(reversed(words))


def native_korean(n: int) -> str:
    """Attributive native reading for 1-99 (``native_korean(20) == "스무"``)."""
    tens, ones = divmod(n, 10)
    if n == 20:
        return "스무"
    return _NATIVE_TENS[tens] + _NATIVE_ONES[ones]


def _read(match: re.Match) -> str:
    digits, decimals, space, follower = match.group(1), match.group(2), match.group(3), match.group(4) or ""
    value = int(digits)
    if digits.startswith("0") and len(digits) > 1:
        spoken = "".join(SINO_DIGITS[int(d)] for d in digits)  # codes like 007: digit by digit
    elif decimals is None and follower in NATIVE_COUNTERS and 0 < value < 100:
        spoken = native_korean(value)
    elif decimals is None and follower and follower in _UNIT_AFTER and value == 1:
        spoken = ""
    else:
        spoken = sino_korean(value)
    if decimals is not None:
        spoken += "점" + "".join(SINO_DIGITS[int(d)] for d in decimals)
    return spoken + space + follower


def spell_numbers(text: str) -> str:
    """Replace every run of Arabic digits by its Korean reading ("1,000원" -> "천원")."""
    text = _THOUSANDS_COMMA.sub("", text)
    return _NUMBER.sub(_read, text)
