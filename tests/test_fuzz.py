"""Fuzzing the commands: whatever the arguments and input files (audio,
configuration YAML, exclusion lists, label CSVs), a clear answer (exit 0) or
a clear error (exit 2, one line naming the input), never a traceback or a
failure of ours, and the store unchanged. The writing commands are fuzzed on
what they check before any work (a build or a training is never started).

A seeded generator, a bounded number of cases: the same cases every run.
"""

from __future__ import annotations

import hashlib
import random
import struct

import numpy as np
import pytest
import soundfile as sf

from conftest import build_space
from flows.cli import main
from sonufy_model.store import Store

CASES = 300
NUMBERS = ["0", "-1", "1", "3", "10", "239", "240", "99999999999999999999", "9223372036854775807", "1e3",
           "nan", "inf", "abc", "", " ", "-0", "2.5", "0x10"]
WORDS = ["", " ", "'; DROP TABLE tracks; --", "t001", "t239", "t999", "jazz artist 1 - t005", "x" * 300, "ü∂ß",
         "%", "_", "../../etc/passwd", "-k", "--db", "\x00", "NULL"]


@pytest.fixture(scope="module")
def space(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz")
    store = Store(root / "s.duckdb")
    build_space(store)
    return store


def _fingerprint(store: Store) -> str:
    """Every row of the tables a reading command could touch, digested."""
    digest = hashlib.sha1()
    with store.connect(read_only=True) as con:
        for table in ("tracks", "embeddings", "models", "quarantine", "runs"):
            for row in con.execute(f"SELECT * FROM {table} ORDER BY ALL").fetchall():
                digest.update(repr(row).encode())
    return digest.hexdigest()


def _files(root, rng: random.Random) -> list[str]:
    """Input files a careless user might hand over: empty, text, random bytes,
    a truncated WAV header, silence, a click, a NaN-filled float WAV, a missing one."""
    rate = 22050
    made = {
        "empty.mp3": b"",
        "notes.wav": b"just some text\n" * 20,
        "random.flac": bytes(rng.getrandbits(8) for _ in range(4096)),
        "header.wav": b"RIFF" + struct.pack("<I", 36) + b"WAVEfmt ",
    }
    paths = []
    for name, content in made.items():
        (root / name).write_bytes(content)
        paths.append(str(root / name))
    sf.write(root / "silence.wav", np.zeros(10 * rate, np.float32), rate)
    click = np.zeros(10 * rate, np.float32)
    click[rate] = 1.0
    sf.write(root / "click.wav", click, rate)
    sf.write(root / "nan.wav", np.full(10 * rate, np.nan, np.float32), rate, subtype="FLOAT")
    return paths + [str(root / n) for n in ("silence.wav", "click.wav", "nan.wav", "missing.ogg")]


def _case(rng: random.Random, db: str, files: list[str]) -> list[str]:
    word = lambda: rng.choice(WORDS)  # noqa: E731
    number = lambda: rng.choice(NUMBERS)  # noqa: E731
    command = rng.choice(["recommend", "recommend-file", "path", "radio", "evaluate", "sql"])
    if command == "recommend":
        args = ["recommend", "--db", db, word()] + (["-k", number()] if rng.random() < 0.7 else [])
        args += ["--max-per-artist", number()] if rng.random() < 0.3 else []
        args += ["--min-popularity", number()] if rng.random() < 0.2 else []
        args += ["--exclude-same-artist"] if rng.random() < 0.2 else []
    elif command == "recommend-file":
        args = ["recommend", "--db", db, "--file", rng.choice(files)] + (["-k", number()] if rng.random() < 0.5 else [])
    elif command == "path":
        args = ["path", "--db", db, word(), word()] + (["--steps", number()] if rng.random() < 0.8 else [])
    elif command == "radio":
        args = ["radio", "--db", db, *(word() for _ in range(rng.randint(1, 3)))]
        args += ["-n", number()] if rng.random() < 0.8 else []
        args += ["--max-per-artist", number()] if rng.random() < 0.3 else []
    elif command == "evaluate":
        args = ["evaluate", "--db", db, "--label", rng.choice(["genre", "artist", "folder", "folder:2", "folder:x",
                                                                 "csv:/nope.csv:c", "bogus", ""])]
        args += ["-k", number()] if rng.random() < 0.5 else []
        args += ["--queries", number(), "--resamples", "20"]
    else:
        args = ["sql", "--db", db, "-c", rng.choice(["SELECT count(*) FROM latent", "DROP TABLE tracks",
                                                     "DELETE FROM tracks", "SELECT * FROM nowhere", ";", ""])]
    return args + (["--json"] if rng.random() < 0.2 and command not in ("sql", "evaluate") else [])


def _assert_clear_answers(space: Store, cases, allowed, capsys) -> None:
    """Each case (sonufy's arguments) answered with an exit code ``allowed(args)``
    admits, never a traceback, a word with every exit 2; the store unchanged."""
    before = _fingerprint(space)
    for number, args in enumerate(cases):
        try:
            code = main(args)
        except SystemExit as stop:  # argparse: a malformed option, usage and exit 2
            code = stop.code
        err = capsys.readouterr().err
        assert code in allowed(args), f"case {number} {args}: exit {code}\n{err[-2000:]}"
        assert "Traceback" not in err, f"case {number} {args}:\n{err[-2000:]}"
        if code == 2:
            assert err.strip(), f"case {number} {args}: exit 2 without a word"
    assert _fingerprint(space) == before


def test_random_arguments_and_files_get_clear_answers_and_leave_the_store_as_it_was(space, tmp_path, capsys):
    rng = random.Random(20261201)
    files = _files(tmp_path, rng)
    # sonufy sql passes the DuckDB shell's own status on: 1 for a statement it refuses.
    _assert_clear_answers(space, (_case(rng, str(space.path), files) for _ in range(CASES)),
                          lambda args: (0, 1, 2) if args[0] == "sql" else (0, 2), capsys)


FILE_CASES = 160


def _input_files(root, rng: random.Random) -> list[str]:
    """Configuration, exclusion and label files a careless user might hand
    over: YAML that does not parse, that names Python objects, that is a list,
    of wrong types or unknown keys; text that is not UTF-8; CSVs without the
    column; random bytes; a folder; a missing file; and a few that are fine."""
    made = {
        "empty": b"",
        "random.bin": bytes(rng.getrandbits(8) for _ in range(2048)),
        "latin1.txt": "Motörhead - Ace of Spades\n".encode("latin-1"),
        "broken.yaml": b"a: [1, 2\n  b: {",
        "unsafe.yaml": b'!!python/object/apply:os.system ["echo hi"]\n',
        "list.yaml": b"- 1\n- 2\n",
        "scalar.yaml": b"42\n",
        "types.yaml": b"max_epochs: banana\nqueries: 5\nalbum_ids: {a: 1}\n",
        "unknown.yaml": b"nosuchkey: 1\n",
        "deep.yaml": b"[" * 500 + b"]" * 500,
        "good.yaml": b"queries: ['genre:\"jazz\"']\nmax_epochs: 1\n",
        "exclude.txt": b"# mine\njazz artist 1\n\n   t005  \nambient artist 2 - song t010\n",
        "long.txt": b"x" * 100_000,
        "labels.csv": b"track_id,composer\nt001,A\nt002,A\nt003,B\nt004,B\n",
        "nocolumn.csv": b"track_id,other\nt001,A\n",
        "ragged.csv": b"track_id,composer\nt001\nt002,A,extra,more\n\"unclosed,B\n",
        "header.csv": b"track_id,composer\n",
    }
    paths = []
    for name, content in made.items():
        (root / name).write_bytes(content)
        paths.append(str(root / name))
    (root / "folder").mkdir()
    return paths + [str(root / "folder"), str(root / "missing.yaml")]


def _file_case(rng: random.Random, db: str, files: list[str]) -> list[str]:
    file = lambda: rng.choice(files)  # noqa: E731
    number = lambda: rng.choice(NUMBERS)  # noqa: E731
    command = rng.choice(["train", "build", "recommend", "radio", "evaluate", "gc"])
    if command == "train":  # a store that is not there: refused once the config is read, before any flow
        args = ["train", "--config", file(), "--db", db + ".missing"]
        args += ["--max-epochs", number()] if rng.random() < 0.3 else []
    elif command == "build":  # never builds: an unknown preview source is refused once the rest is read
        args = ["build", "--db", db, "--scrape-config", file(), "--preview-sources", "bogus"]
        args += ["--source", rng.choice(["standin", "spotify", "folder:" + file(), "bogus", ""])]
        args += [rng.choice(["--tracks", "--workers", "--train-minutes", "--epochs", "--excerpts"]), number()]
    elif command in ("recommend", "radio"):
        args = [command, "--db", db, rng.choice(WORDS), "--exclude-file", file()]
        args += ["-k" if command == "recommend" else "-n", number()] if rng.random() < 0.5 else []
        args += [rng.choice(["--min-seconds", "--max-seconds", "--artist-gap", "--album-gap"]), number()]
    elif command == "evaluate":
        args = ["evaluate", "--db", db, "--label", f"csv:{file()}:composer", "--resamples", "20", "-k", "3"]
    else:
        args = ["gc", "--db", db, "--keep-reports", number()] + (["--dry-run"] if rng.random() < 0.5 else [])
    return args


def test_random_input_files_and_writing_commands_get_clear_errors_and_leave_the_store_as_it_was(
        space, tmp_path, capsys):
    """The files a command reads (train --config, build --scrape-config,
    --exclude-file, evaluate's csv labels) and the arguments of the writing
    commands, refused before any work: exit 0 or a one-line exit 2, never a
    traceback, and the store as it was."""
    rng = random.Random(20261202)
    files = _input_files(tmp_path, rng)
    # build and train never start: they are refused (2) before any work.
    _assert_clear_answers(space, (_file_case(rng, str(space.path), files) for _ in range(FILE_CASES)),
                          lambda args: (2,) if args[0] in ("train", "build") else (0, 2), capsys)
