"""EmotionTTS open DB (github: emotiontts/emotiontts_open_db), the 5% public part.

Layout: ``{plain-to-emotional,emotional-to-emotional}/<speaker>/{wav,script,transcript}/<id>.*``,
15 speakers x 20 clips = 300 utterances. Clip number ``NNNxx`` encodes the emotion in its hundreds.

The DB's README says 00201-00300 are angry and 00301-00400 sad. That is swapped: the
transcripts say otherwise (``nea00201`` "너한테 그 말을 들으니까 정말 마음이 아프다" is sad,
``nea00301`` "계속해서 저렇게 억지 주장을 하고 있으니 저 모양이지" is angry), and the 002xx clips have
the low, flat pitch of sad speech. We use the corrected map below.

Sentence groups: ``plain-to-emotional`` speakers read the same five neutral sentences in every
emotion (clip N, N+100, N+200, N+300 share a sentence), so ``group = plain-<N mod 100>``;
``emotional-to-emotional`` speakers read emotion-specific scripts, the same 20 for all ten
speakers, so ``group = emo-<N>``. The group id comes from the clip number, not the text, because
the spelled-out transcripts differ slightly between speakers (이십명 / 스무명).
"""

from __future__ import annotations

import re
from pathlib import Path

from tqdm import tqdm

from koemo.data.loaders import LOADERS
from koemo.data.loaders.common import checked_duration, read_text_file
from koemo.data.manifest import Utterance
from koemo.errors import BadInputError, KoemoError, SkipLog

# Hundreds digit of the clip number -> emotion (corrected: the README swaps 2 and 3).
EMOTION_BY_HUNDREDS = {0: "neutral", 1: "happy", 2: "sad", 3: "angry"}
SUBSETS = ("plain-to-emotional", "emotional-to-emotional")
DEFAULT_SUBDIR = "emotiontts_open_db"
_CLIP = re.compile(r"^([a-z]+)(\d{5})$")


def label_for_clip(clip_id: str) -> str:
    m = _CLIP.match(clip_id)
    if not m:
        raise BadInputError(clip_id, "not an EmotionTTS clip name (expected e.g. nea00201)")
    hundreds = int(m.group(2)) // 100
    if hundreds not in EMOTION_BY_HUNDREDS:
        raise BadInputError(clip_id, f"clip number {m.group(2)} is outside the four emotion ranges")
    return EMOTION_BY_HUNDREDS[hundreds]


def group_for_clip(subset: str, clip_id: str) -> str:
    number = int(_CLIP.match(clip_id).group(2))
    if subset == "plain-to-emotional":
        return f"plain-{number % 100:02d}"
    return f"emo-{number:05d}"


@LOADERS.register("emotiontts")
def load_emotiontts(root: str | Path, skips: SkipLog, check_audio: bool = True) -> list[Utterance]:
    root = Path(root)
    wavs = sorted(root.glob("*/*/wav/*.wav"))
    wavs = [w for w in wavs if w.parts[-4] in SUBSETS]
    if not wavs:
        raise KoemoError(
            f"{root}: no EmotionTTS clips found (expected <subset>/<speaker>/wav/*.wav); "
            "get the data with: koemo data download emotiontts"
        )
    out = []
    for wav in tqdm(wavs, desc="emotiontts", unit="clip", leave=False):
        subset, speaker = wav.parts[-4], wav.parts[-3]
        clip = wav.stem
        try:
            label = label_for_clip(clip)
            text = read_text_file(wav.parent.parent / "transcript" / f"{clip}.txt")
            duration = checked_duration(wav) if check_audio else 0.0
        except BadInputError as e:
            skips.skip(e)
            continue
        out.append(
            Utterance(
                id=clip,
                audio=str(wav),
                label=label,
                text=text,
                speaker=speaker,
                group=group_for_clip(subset, clip),
                duration=round(duration, 4),
                dataset="emotiontts",
            )
        )
    return out
