"""Who may open the store how: readers read-only, one writer at a time (a lock
every writer takes), a schema version only writers migrate, and `sonufy sql`.

Real DuckDB files, real processes for the other holders.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import textwrap

import duckdb
import numpy as np
import polars as pl
import pytest

import sql
from flows.cli import main
from sonufy_model import shell
from sonufy_model.schemas import TRACK_SCHEMA
from sonufy_model.store import LATENT_DIM, DatabaseLocked, SchemaTooNew, Store


def _space(path, n=12) -> Store:
    """A store with n tracks and a current model with a vector for each."""
    store = Store(path)
    ids = [f"t{i:02d}" for i in range(n)]
    store.upsert_tracks(pl.DataFrame(
        {"track_id": ids, "source": ["spotify"] * n, "title": [f"title {i}" for i in ids],
         "artist": [f"artist {i}" for i in ids]}).with_columns(
        [pl.lit(None, dtype).alias(name) for name, dtype in TRACK_SCHEMA.items()
         if name not in ("track_id", "source", "title", "artist")]))
    store.register_model(
        {"model_version": "m1", "set_id": "s", "config": {}, "checkpoint": "c.ckpt", "epochs": 1,
         "train_mse": None, "val_mse": None, "n_train_tracks": 1, "n_val_tracks": 1, "train_seconds": 1.0,
         "latent_mean": np.zeros(LATENT_DIM), "latent_scale": np.ones(LATENT_DIM)}, promote=False)
    vectors = np.random.default_rng(0).standard_normal((n, LATENT_DIM)).astype(np.float32)
    store.record_embeddings(pl.DataFrame({"track_id": ids, "model_version": ["m1"] * n}).with_columns(
        pl.Series("raw", vectors, dtype=pl.Array(pl.Float32, LATENT_DIM)),
        pl.Series("vector", vectors, dtype=pl.Array(pl.Float32, LATENT_DIM))))
    store.promote("m1")
    return store


def _python(code: str, **kwargs) -> subprocess.Popen:
    """Another process running ``code``, its stdin and stdout piped."""
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, cwd=os.getcwd(), **kwargs)


def _holding_writer_lock(db, purpose="build") -> subprocess.Popen:
    holder = _python(f"""
        import sys
        from sonufy_model.store import Store
        with Store({str(db)!r}).writer({purpose!r}) as busy:
            print("held" if busy is None else busy, flush=True)
            sys.stdin.readline()
    """)
    assert holder.stdout.readline().strip() == "held"
    return holder


def _holding_read_only_session(db) -> subprocess.Popen:
    """A user's `duckdb -readonly` session: the file open read-only in another process."""
    reader = _python(f"""
        import sys, duckdb
        con = duckdb.connect({str(db)!r}, read_only=True)
        print(con.execute("SELECT count(*) FROM latent").fetchone()[0], flush=True)
        sys.stdin.readline()
    """)
    assert int(reader.stdout.readline()) > 0
    return reader


def _release(process: subprocess.Popen) -> None:
    process.stdin.close()
    assert process.wait(timeout=30) == 0


def test_a_second_writer_waits_for_the_writer_lock_and_names_its_holder(tmp_path):
    store = _space(tmp_path / "s.duckdb")
    holder = _holding_writer_lock(store.path, "build")
    try:
        impatient = Store(store.path, lock_wait_s=0.5)
        with pytest.raises(DatabaseLocked, match=r"writer\.lock is held by pid \d+ \(build, since"):
            impatient.register_spectrogram_set("set2", {"n_mels": 64})
        # The lock is for writers only: a reader reads meanwhile.
        assert Store(store.path, reader=True).counts()["tracks"] == 12
    finally:
        _release(holder)
    impatient.register_spectrogram_set("set2", {"n_mels": 64})
    assert impatient.spectrogram_params("set2") == {"n_mels": 64}


def test_a_writer_waits_for_a_session_holding_the_file_then_gives_up_or_writes(tmp_path, caplog):
    store = _space(tmp_path / "s.duckdb")
    session = _holding_read_only_session(store.path)
    try:
        with pytest.raises(DatabaseLocked, match=r"s\.duckdb: another process held it for \d+ s "
                                                 r"\(SONUFY_DB_LOCK_WAIT_S=0\.3\): .*Could not set lock"):
            Store(store.path, lock_wait_s=0.3).register_spectrogram_set("set2", {"n_mels": 64})
        assert "waiting for s.duckdb" in caplog.text
    finally:
        _release(session)
    # A session that closes while the writer waits: the write goes through.
    brief = _python(f"""
        import time, duckdb
        con = duckdb.connect({str(store.path)!r}, read_only=True)
        print("open", flush=True)
        time.sleep(1.5)
        con.close()
    """)
    try:
        assert brief.stdout.readline().strip() == "open"
        caplog.clear()
        patient = Store(store.path, lock_wait_s=30)
        patient.register_spectrogram_set("set2", {"n_mels": 64})
        assert "waiting for s.duckdb" in caplog.text, "it did wait"
        assert patient.spectrogram_params("set2") == {"n_mels": 64}
    finally:
        _release(brief)


def test_a_killed_writer_leaves_no_stale_lock(tmp_path):
    store = _space(tmp_path / "s.duckdb")
    holder = _holding_writer_lock(store.path)
    holder.send_signal(signal.SIGKILL)
    holder.wait(timeout=30)
    Store(store.path, lock_wait_s=0.0).register_spectrogram_set("set2", {"n_mels": 64})


def test_the_writer_lock_is_reentrant_within_a_process(tmp_path):
    store = Store(tmp_path / "s.duckdb")
    with store.writer("build") as busy:
        assert busy is None
        store.register_spectrogram_set("set1", {"n_mels": 128})  # each write takes it again
        with Store(store.path).writer("nested") as again:
            assert again is None
    # Released: another process gets it at once.
    other = _holding_writer_lock(store.path)
    _release(other)


def test_a_db_that_is_not_a_store_and_a_bad_lock_wait_are_named(tmp_path, capsys, monkeypatch):
    from sonufy_model.store import NotAStore

    empty, text = tmp_path / "empty.duckdb", tmp_path / "notes.duckdb"
    empty.touch()
    text.write_text("my shopping list\n")
    with pytest.raises(NotAStore, match=r"empty.duckdb: not a DuckDB database \(an empty file\)"):
        Store(empty).counts()
    for db, what in ((empty, "an empty file"), (text, "17 bytes of something else")):
        assert main(["recommend", "--db", str(db), "some-track"]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"sonufy recommend: error: {db}: not a DuckDB database ({what})"), err
        assert "Traceback" not in err and text.read_text() == "my shopping list\n"
    monkeypatch.setenv("SONUFY_DB_LOCK_WAIT_S", "abc")
    assert main(["recommend", "--db", str(text), "some-track"]) == 2
    assert "SONUFY_DB_LOCK_WAIT_S='abc': expected a number of seconds" in capsys.readouterr().err


def test_an_unexpected_failure_is_one_line_and_debug_shows_the_traceback(tmp_path, capsys, monkeypatch):
    from flows.cli import query

    def broken(args):
        raise RuntimeError("the index is in a bad mood")

    monkeypatch.setattr(query, "_sql", broken)
    command = ["sql", "--db", str(tmp_path / "any.duckdb"), "-c", "SELECT 1"]
    assert main(command) == 1
    err = capsys.readouterr().err
    assert err.startswith("sonufy sql: failed: RuntimeError: the index is in a bad mood\n") and "--debug" in err
    assert "Traceback" not in err
    with pytest.raises(RuntimeError, match="bad mood"):
        main(["--debug", *command])
    monkeypatch.setenv("SONUFY_DEBUG", "1")
    with pytest.raises(RuntimeError, match="bad mood"):
        main(command)


def test_a_bad_allowed_host_names_the_variable():
    from sonufy_model.config import ServiceSettings

    with pytest.raises(ValueError, match=r"SONUFY_ALLOWED_HOSTS: '10.0.0.1:notaport' is not a host or host:port"):
        ServiceSettings.from_env({"SONUFY_ALLOWED_HOSTS": "cdn.example.com, 10.0.0.1:notaport"})
    assert ServiceSettings.from_env({"SONUFY_ALLOWED_HOSTS": "cdn.example.com, 10.0.0.1:8080"}).allowed_hosts[-2:] \
        == ("cdn.example.com", "10.0.0.1:8080")


def test_service_settings_name_a_bad_variable_and_never_show_the_secret():
    from pydantic_core import to_jsonable_python  # how Prefect turns parameters into JSON

    from sonufy_model.config import ServiceSettings

    for variable, value, problem in [("SONUFY_SPOTIFY_RATE_PER_S", "fast", "valid number"),
                                     ("SONUFY_DEEZER_RATE_PER_S", "0", "must be positive"),
                                     ("SONUFY_SPOTIFY_MAX_WAIT_S", "soon", "valid number")]:
        with pytest.raises(ValueError, match=rf"{variable}: .*{problem}"):
            ServiceSettings.from_env({variable: value})
    settings = ServiceSettings.from_env({"SPOTIPY_CLIENT_ID": "id", "SPOTIFY_CLIENT_SECRET": "hunter2",
                                         "SONUFY_SPOTIFY_RATE_PER_S": "", "SONUFY_DEEZER_API_BASE": "http://d:1/"})
    assert (settings.spotify_client_id, settings.spotify_rate_per_s, settings.deezer_api_base) \
        == ("id", ServiceSettings().spotify_rate_per_s, "http://d:1")
    assert settings.spotify_client_secret.get_secret_value() == "hunter2"

    shown = [repr(settings), str(settings), f"{settings.spotify_client_secret}", settings.model_dump_json(),
             str(to_jsonable_python(settings))]
    assert not [text for text in shown if "hunter2" in text]
    changed = settings.with_endpoints(spotify_api_base="http://s:2")
    assert changed.spotify_client_secret.get_secret_value() == "hunter2" and settings.spotify_api_base != "http://s:2"
    with pytest.raises(ValueError, match="preview_folder"):
        changed.with_endpoints(preview_sources=("folder",))
    with pytest.raises(ValueError):
        settings.spotify_client_id = "other"  # immutable


def test_older_code_is_refused_by_a_newer_store_but_still_reads_it(tmp_path):
    store = _space(tmp_path / "s.duckdb")
    assert store.schema_version() == sql.SCHEMA_VERSION
    with duckdb.connect(str(store.path)) as con:  # newer code migrated it
        con.execute("UPDATE sonufy_schema SET version = version + 1")
    with pytest.raises(SchemaTooNew, match=rf"schema version {sql.SCHEMA_VERSION + 1}, newer than this "
                                           rf"code's {sql.SCHEMA_VERSION}.*git pull"):
        Store(store.path).register_spectrogram_set("set2", {"n_mels": 64})
    reader = Store(store.path, reader=True)
    assert reader.find_track("t03")["track_id"] == "t03"
    assert reader.schema_version() == sql.SCHEMA_VERSION + 1


def test_a_writing_command_refuses_a_newer_store_with_the_reason(tmp_path, capsys):
    store = _space(tmp_path / "s.duckdb")
    with duckdb.connect(str(store.path)) as con:
        con.execute("UPDATE sonufy_schema SET version = version + 1")
    assert main(["landscape", "--db", str(store.path)]) == 2
    assert "newer than this code's" in capsys.readouterr().err
    # Reading commands still answer.
    assert main(["recommend", "t01", "--db", str(store.path), "--json", "-k", "3"]) == 0


def test_only_writers_migrate_and_a_current_store_is_not_rewritten(tmp_path):
    path = tmp_path / "s.duckdb"
    with duckdb.connect(str(path)) as con:  # a store from before schema versions
        con.execute(sql.statement("create_tracks", "schema.sql"))
    reader = Store(path, reader=True)
    assert reader.schema_version() is None
    # A reader's reads leave the file as it was (no tables, views or version added).
    with pytest.raises(Exception, match="latent"):
        reader.find_track("t01")
    with duckdb.connect(str(path), read_only=True) as con:
        assert con.execute("SELECT count(*) FROM duckdb_tables() WHERE table_name = 'sonufy_schema'").fetchone()[0] == 0
    writer = Store(path)
    writer.register_spectrogram_set("set1", {"n_mels": 128})
    assert writer.schema_version() == sql.SCHEMA_VERSION
    # At this code's version the schema is not applied again: a macro changed
    # in the file by hand (or by another checkout of the same version) stays.
    with duckdb.connect(str(path)) as con:
        con.execute("CREATE OR REPLACE MACRO search_artist_key(artist) AS 'mine'")
    writer.register_spectrogram_set("set2", {"n_mels": 64})
    with duckdb.connect(str(path), read_only=True) as con:
        assert con.execute("SELECT search_artist_key('X')").fetchone()[0] == "mine"


def test_reading_commands_answer_while_a_read_only_session_holds_the_file(tmp_path, capsys):
    store = _space(tmp_path / "s.duckdb")
    reader = _holding_read_only_session(store.path)
    try:
        assert main(["recommend", "t01", "--db", str(store.path), "--json", "-k", "3"]) == 0
        assert len(json.loads(capsys.readouterr().out)["recommendations"]) == 3
        assert main(["radio", "t01", "t02", "-n", "4", "--db", str(store.path), "--json"]) == 0
        assert len(json.loads(capsys.readouterr().out)["radio"]) == 4
        assert main(["sql", "--db", str(store.path), "-c",
                     "SELECT count(*) AS n FROM latent; SELECT track_id FROM similar_to('t01', 2)"]) == 0
        out = capsys.readouterr().out
        assert "12" in out and out.count("t0") + out.count("t1") >= 2
    finally:
        _release(reader)


def test_sonufy_sql_is_read_only(tmp_path, capsys):
    store = _space(tmp_path / "s.duckdb")
    assert main(["sql", "--db", str(store.path), "-c", "CREATE TABLE mine (i INTEGER)"]) == 1
    assert "read-only" in capsys.readouterr().err
    assert main(["sql", "--db", str(tmp_path / "none.duckdb"), "-c", "SELECT 1"]) == 2


def test_the_fallback_shell_runs_statements_until_quit(tmp_path):
    store = _space(tmp_path / "s.duckdb")
    out = io.StringIO()
    script = io.StringIO("SELECT count(*) AS n\nFROM latent;\nSELECT 'after' AS a;\n.quit\nSELECT 'never';\n")
    assert shell.interactive(Store(store.path, reader=True), stdin=script, out=out) == 0
    text = out.getvalue()
    assert "12" in text and "after" in text and "never" not in text


def test_the_duckdb_shell_opens_the_store_read_only_with_its_macros(tmp_path):
    store = _space(tmp_path / "s.duckdb")
    binary = shell.duckdb_binary()
    if binary is None:
        pytest.skip("no duckdb binary: the fallback shell is tested above")
    done = subprocess.run([sys.executable, "-m", "flows.cli", "sql", "--db", str(store.path)],
                          input="SELECT track_id FROM similar_to('t01', 2);\nCREATE TABLE mine (i INTEGER);\n",
                          capture_output=True, text=True, timeout=60, cwd=os.getcwd())
    assert "t0" in done.stdout or "t1" in done.stdout
    assert "read-only" in done.stderr + done.stdout


def test_gc_removes_orphan_shards_rejected_checkpoints_and_old_reports(tmp_path, capsys):
    store = _space(tmp_path / "s.duckdb")
    data = tmp_path / "s.data"
    shards = data / "spectrograms" / "set1"
    shards.mkdir(parents=True)
    kept, orphan, partial = shards / "shard-kept.npy", shards / "shard-orphan.npy", shards / "shard-x.npy.tmp"
    for path in (kept, orphan, partial):
        np.save(path if path.suffix == ".npy" else open(path, "wb"), np.zeros((2, 4, 4), dtype=np.uint8))
    store.register_spectrogram_set("set1", {"n_mels": 4})
    store.record_spectrograms(
        pl.DataFrame({"track_id": ["t00"], "set_id": ["set1"], "excerpt": [0], "shard": [str(kept)], "row": [0]},
                     schema={"track_id": pl.String, "set_id": pl.String, "excerpt": pl.Int32, "shard": pl.String,
                             "row": pl.Int32}),
        pl.DataFrame(schema={"track_id": pl.String, "stage": pl.String, "reason": pl.String, "run_id": pl.String}))
    for version in ("m1", "rejected", "never-registered"):  # m1 is current; the last, a killed training's
        (data / "models" / version).mkdir(parents=True)
        (data / "models" / version / "best.ckpt").write_bytes(b"x" * 1000)
    store.register_model(
        {"model_version": "rejected", "set_id": "s", "config": {},
         "checkpoint": str(data / "models/rejected/best.ckpt"),
         "epochs": 1, "train_mse": None, "val_mse": None, "n_train_tracks": 1, "n_val_tracks": 1,
         "train_seconds": 1.0, "latent_mean": np.zeros(LATENT_DIM), "latent_scale": np.ones(LATENT_DIM)},
        promote=False)
    validations = data / "great_expectations" / "gx" / "uncommitted" / "validations" / "suite"
    for number in range(3):
        run = validations / f"nightly-{number}"
        run.mkdir(parents=True)
        (run / "result.json").write_text("{}")
        os.utime(run, (1_000_000 + number, 1_000_000 + number))

    assert main(["gc", "--db", str(store.path), "--keep-reports", "2", "--dry-run"]) == 0
    assert "would free" in capsys.readouterr().out and orphan.exists()
    assert main(["gc", "--db", str(store.path), "--keep-reports", "2"]) == 0
    out = capsys.readouterr().out
    assert "2 orphan shards, 2 rejected model folders, 1 old report folders" in out and "freed" in out
    assert kept.exists() and not orphan.exists() and not partial.exists()
    assert (data / "models" / "m1" / "best.ckpt").exists() and not (data / "models" / "rejected").exists()
    assert not (data / "models" / "never-registered").exists()
    assert sorted(p.name for p in validations.iterdir()) == ["nightly-1", "nightly-2"]
    assert Store(store.path, reader=True).model("rejected").model_version == "rejected"  # its row stays
    assert main(["gc", "--db", str(store.path)]) == 0
    assert "freed 0.0 MiB: 0 orphan shards, 0 rejected model folders, 0 old report folders" in capsys.readouterr().out



def test_gc_deletes_a_killed_retrains_candidate_vectors_and_frees_its_folder(tmp_path, capsys):
    """A retrain killed while encoding its candidate leaves the candidate's
    vectors (a rerun trains a new version): gc deletes them and frees its
    folder, while a version that was current once keeps both."""
    store = _space(tmp_path / "s.duckdb")  # m1, current
    models = tmp_path / "s.data" / "models"
    for version in ("m1", "m2", "killed"):
        (models / version).mkdir(parents=True)
        (models / version / "best.ckpt").write_bytes(b"x" * 1000)
    for version in ("m2", "killed"):
        store.register_model(
            {"model_version": version, "set_id": "s", "config": {},
             "checkpoint": str(models / version / "best.ckpt"), "epochs": 1, "train_mse": None,
             "val_mse": None, "n_train_tracks": 1, "n_val_tracks": 1, "train_seconds": 1.0,
             "latent_mean": np.zeros(LATENT_DIM), "latent_scale": np.ones(LATENT_DIM)}, promote=False)
    ids = [f"t{i:02d}" for i in range(12)]
    vectors = np.random.default_rng(1).standard_normal((12, LATENT_DIM)).astype(np.float32)
    for version, n in (("m2", 12), ("killed", 5)):  # the writes encode_model makes, batch by batch
        store.record_embeddings(pl.DataFrame({"track_id": ids[:n], "model_version": [version] * n}).with_columns(
            pl.Series("raw", vectors[:n], dtype=pl.Array(pl.Float32, LATENT_DIM)),
            pl.Series("vector", vectors[:n], dtype=pl.Array(pl.Float32, LATENT_DIM))))
    store.promote("m2")  # m1 was current: a version to go back to

    def vectors_of() -> dict[str, int]:
        with duckdb.connect(str(store.path), read_only=True) as con:
            return dict(con.execute("SELECT model_version, count(*) FROM embeddings GROUP BY ALL").fetchall())

    assert main(["gc", "--db", str(store.path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "would delete the 5 vectors of killed" in out and f"would remove {models / 'killed'}" in out
    assert "1 rejected model folders" in out and "5 vectors of 1 abandoned candidates" in out
    assert vectors_of() == {"m1": 12, "m2": 12, "killed": 5} and (models / "killed").exists()
    assert main(["gc", "--db", str(store.path)]) == 0
    out = capsys.readouterr().out
    assert "deleted the 5 vectors of killed" in out and "1 rejected model folders" in out
    assert vectors_of() == {"m1": 12, "m2": 12}
    assert not (models / "killed").exists() and (models / "m1" / "best.ckpt").exists()
    assert (models / "m2" / "best.ckpt").exists()
    assert Store(store.path, reader=True).model("killed").model_version == "killed"  # its row stays
    assert main(["gc", "--db", str(store.path)]) == 0
    assert "0 rejected model folders, 0 old report folders, 0 vectors of 0 abandoned candidates" \
        in capsys.readouterr().out

def test_readers_read_the_published_snapshot_and_keep_the_one_they_opened(tmp_path, capsys):
    store = _space(tmp_path / "s.duckdb")
    reader = Store(store.path, reader=True)
    assert reader.read_path == store.path  # nothing published yet: the file itself
    assert store.publish() == store.snapshot_path == reader.read_path
    # A long session on the snapshot, in another process.
    session = _python(f"""
        import sys, duckdb
        con = duckdb.connect({str(store.snapshot_path)!r}, read_only=True)
        for _ in range(2):
            print(con.execute("SELECT count(*) FROM latent").fetchone()[0], flush=True)
            sys.stdin.readline()
    """)
    try:
        assert int(session.stdout.readline()) == 12
        # The writer neither waits for it (no waiting allowed here) nor shows readers a half-done run.
        impatient = Store(store.path, lock_wait_s=0.0)
        ids = [f"n{i}" for i in range(3)]
        impatient.upsert_tracks(pl.DataFrame(
            {"track_id": ids, "source": ["spotify"] * 3, "title": ids, "artist": ids}).with_columns(
            [pl.lit(None, dtype).alias(name) for name, dtype in TRACK_SCHEMA.items()
             if name not in ("track_id", "source", "title", "artist")]))
        assert reader.counts()["tracks"] == 12
        assert main(["sql", "--db", str(store.path), "-c", "SELECT count(*) AS n FROM tracks"]) == 0
        assert "12" in capsys.readouterr().out
        impatient.publish()
        assert reader.counts()["tracks"] == 15
        session.stdin.write("\n")
        session.stdin.flush()
        assert int(session.stdout.readline()) == 12  # the session keeps the snapshot it opened
    finally:
        _release(session)
    first = store.snapshot_path.stat().st_mtime_ns
    store.publish()  # nothing changed since: nothing copied
    assert store.snapshot_path.stat().st_mtime_ns == first


def test_a_writing_run_publishes_at_its_end_even_when_it_fails(tmp_path):
    store = _space(tmp_path / "s.duckdb")
    with pytest.raises(RuntimeError, match="boom"):
        with store.writer("build", publish=True):
            store.register_spectrogram_set("set9", {"n_mels": 9})
            raise RuntimeError("boom")
    assert Store(store.path, reader=True).spectrogram_params("set9") == {"n_mels": 9}
