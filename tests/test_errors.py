"""Every command reports a user mistake the same way: one line ``baichuan <command>: error: ...``
on stderr, no traceback, exit status 2 (issue 11 §5: one catch in ``cli.main``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from baichuan.cli import main
from baichuan.errors import BaichuanError, as_user_error

# (command, argv, a word the message must contain): each argv is wrong in one way. In argv,
# "{tmp}" is the test's tmp_path, "{nope}" a path that does not exist there, "{model}" a file
# there that is not a SentencePiece model.
CASES = [
    ("encode", ["encode", "--tokenizer", "{nope}", "hi"], "nope"),
    ("tokenize", ["tokenize", "--tokenizer", "{nope}", "--input", "{tmp}", "--output", "{tmp}/o1"], "nope"),
    ("tokenize", ["tokenize", "--tokenizer", "{model}", "--input", "{tmp}", "--output", "{tmp}/o2",
                  "--workers", "-1"], "--workers"),
    ("tokenize", ["tokenize", "--tokenizer", "{model}", "--input", "{tmp}", "--output", "{tmp}/o3",
                  "--partition", "3/2"], "3/2"),
    ("tokenize", ["tokenize", "--tokenizer", "{model}", "--input", "{tmp}", "--output", "{tmp}/o4",
                  "--holdout", "2"], "--holdout"),
    ("merge-shards", ["merge-shards", "{nope}", "--output", "{tmp}/m"], "nope"),
    ("train-tokenizer", ["train-tokenizer", "--input", "{nope}", "--model-prefix", "{tmp}/t"], "nope"),
    ("train", ["train", "--data", "{nope}", "--output-dir", "{tmp}/r", "--model", "tiny"], "nope"),
    ("train", ["train", "--data", "{tmp}", "--output-dir", "{tmp}/r", "--model", "tiny", "--lr", "-1"], "--lr"),
    ("generate", ["generate", "--model", "{nope}", "hi"], "nope"),
    ("export-hf", ["export-hf", "--checkpoint", "{nope}", "--output", "{tmp}/hf"], "nope"),
    ("eval", ["eval", "--task", "ceval", "--data-dir", "{nope}", "--model", "{nope}", "--no-progress"], "nope"),
    ("eval", ["eval", "--task", "ceval", "--data-dir", "{nope}", "--model", "{nope}", "--shot", "-1"], "--shot"),
]


@pytest.mark.parametrize(("command", "template", "word"), CASES)
def test_user_errors_are_one_line_and_exit_2(
    command: str, template: list[str], word: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = tmp_path / "x.model"
    model.write_bytes(b"not a model")
    argv = [a.format(tmp=tmp_path, nope=tmp_path / "nope", model=model) for a in template]
    rc = main(argv)
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert rc == 2, (argv, err)
    assert lines and lines[-1].startswith(f"baichuan {command}: error: "), err
    assert word in lines[-1] and "Traceback" not in err, err


def test_as_user_error_keeps_bugs_as_bugs() -> None:
    with pytest.raises(BaichuanError, match="bad flag"), as_user_error(ValueError):
        raise ValueError("bad flag")
    with pytest.raises(KeyError), as_user_error(ValueError):  # not listed: a bug keeps its traceback
        raise KeyError("x")
    original = BaichuanError("already one")
    with pytest.raises(BaichuanError) as info, as_user_error(ValueError):
        raise original
    assert info.value is original
