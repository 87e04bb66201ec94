"""The command line as a user meets it: help everywhere, JSON stats, one-line errors."""

import json
import subprocess
import sys

from typer.testing import CliRunner

from koemo.cli import app

runner = CliRunner()


def _leaf_commands(group, prefix=()):
    import typer.main

    click_group = typer.main.get_command(group) if not hasattr(group, "commands") else group
    for name, cmd in click_group.commands.items():
        if hasattr(cmd, "commands"):
            yield from _leaf_commands(cmd, prefix + (name,))
        else:
            yield prefix + (name,)


def test_help_on_every_command():
    commands = list(_leaf_commands(app))
    assert ("data", "stats") in commands and ("models", "install") in commands
    for cmd in commands:
        result = runner.invoke(app, [*cmd, "--help"])
        assert result.exit_code == 0, (cmd, result.output)
        assert "Usage" in result.output


def test_stats_json_on_emotiontts():
    result = runner.invoke(app, ["data", "stats", "--json"])
    assert result.exit_code == 0, result.output
    stats = json.loads(result.output[result.output.index("{"):])
    assert stats["utterances"] == 300 and stats["speakers"] == 15
    assert stats["labels"] == {"angry": 75, "happy": 75, "neutral": 75, "sad": 75}


def test_split_writes_file():
    result = runner.invoke(app, ["data", "split", "--json", "--seed", "3"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.output[result.output.index("{"):])
    assert len(out["folds"]) == 25 and sum(f["test"] for f in out["folds"]) == 300  # the recipe's 5 x 5 grid
    assert all(f["test_speaker_seen"] == 0 and f["test_sentence_seen"] == 0 for f in out["folds"])


def test_errors_are_one_line_without_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "koemo.cli", "data", "stats", "--data-dir", str(tmp_path)],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("error: ")
    assert "dataset directory not found" in proc.stderr and "Traceback" not in proc.stderr
    proc = subprocess.run([sys.executable, "-m", "koemo.cli", "data", "stats", "--set", "train.nope=1"],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "unknown config key train.nope" in proc.stderr


def test_prepare_again_keeps_transcripts():
    from koemo.config import Recipe
    from koemo.data.manifest import read_manifest, write_manifest
    from koemo.data.prepare import prepare

    path, utts, _ = prepare(Recipe())
    utts[0].transcripts["asr:x"] = "안녕"
    write_manifest(path, utts)
    path, again, _ = prepare(Recipe())
    assert {u.id: u.transcripts for u in read_manifest(path)}[utts[0].id] == {"asr:x": "안녕"}
