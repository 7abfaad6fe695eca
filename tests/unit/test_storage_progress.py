"""Safe names, safe downloads, and the progress line format."""

from __future__ import annotations

import os

import pytest

from pipeq import progress
from pipeq.storage import files as data_folder, names

JOB = "0123456789abcdef0123456789abcdef"


@pytest.mark.parametrize(
    "name, expected",
    [
        ("reads_R1.fq.gz", "reads_R1.fq.gz"),
        ("../../etc/passwd", "passwd"),
        ("..\\..\\win.fq", "win.fq"),
        ("..", "fallback"),
        (".hidden.fq", "hidden.fq"),
        ("naïve read ☃.fq", "naive_read_.fq"),
        ("a\0b.fq", "a_b.fq"),
        ("", "fallback"),
        ("x" * 300 + ".fq", ("x" * 300 + ".fq")[-100:]),
    ],
)
def test_sanitize_filename(name, expected):
    assert names.sanitize_filename(name, "fallback") == expected


def test_job_dir_refuses_non_ids(tmp_path):
    assert data_folder.job_dir(tmp_path, JOB) == tmp_path / "jobs" / JOB
    for bad in ("../x", JOB + "/..", "x" * 32, JOB.upper()):
        with pytest.raises(ValueError):
            data_folder.job_dir(tmp_path, bad)


def test_output_file_reaches_only_regular_files_in_output(tmp_path):
    out = tmp_path / "jobs" / JOB / "output"
    out.mkdir(parents=True)
    (out / "a.vcf.gz").write_bytes(b"x")
    (out / "sub").mkdir()
    (tmp_path / "secret").write_text("s")
    (tmp_path / "jobs" / JOB / "pipeline.log").write_text("log")
    os.symlink(tmp_path / "secret", out / "link")
    os.symlink(out / "a.vcf.gz", out / "inner-link")
    assert data_folder.output_file(tmp_path, JOB, "a.vcf.gz") == (out / "a.vcf.gz").resolve()
    for bad in ("../pipeline.log", "..", ".", "sub", "link", "inner-link", "/etc/passwd", "a.vcf.gz\0", "", "missing"):
        assert data_folder.output_file(tmp_path, JOB, bad) is None, bad
    assert data_folder.list_outputs(tmp_path, JOB) == ["a.vcf.gz"]


@pytest.mark.parametrize(
    "line, expected",
    [
        ("PROGRESS 40 align minimap2 -ax sr", (40, "align", "minimap2 -ax sr")),
        ("PROGRESS 0 start", (0, "start", "")),
        ("PROGRESS 100 done\n", (100, "done", "")),
        ("  PROGRESS 5 qc  ", (5, "qc", "")),
    ],
)
def test_progress_lines(line, expected):
    assert tuple(progress.parse(line)) == expected


@pytest.mark.parametrize("line", ["PROGRESS 101 x", "PROGRESS -1 x", "PROGRESS x align", "progress 10 qc", "PROGRESS 10", "echo PROGRESS 10 qc"])
def test_other_lines_are_not_progress(line):
    assert progress.parse(line) is None


def test_prune_removes_expired_jobs_and_stale_uploads_only(tmp_path):
    root = tmp_path / "jobs"
    kept, expired, young = JOB, "f" * 32, "e" * 32
    for name in (kept, expired, young, ".incoming-x", "not-a-job"):
        (root / name).mkdir(parents=True)
    old = 10_000
    for name in (kept, expired, ".incoming-x", "not-a-job"):
        os.utime(root / name, (os.path.getmtime(root / name) - old,) * 2)
    removed = data_folder.prune(tmp_path, job_exists=lambda i: i == kept, older_than=3600, incoming_older_than=3600)
    assert sorted(removed) == sorted([expired, ".incoming-x"])
    assert sorted(p.name for p in root.iterdir()) == sorted([kept, young, "not-a-job"])


@pytest.mark.parametrize("name", ["../x.fq", "a/b.fq", "a\\b.fq", "..", ".", "a\0b.fq", "a\x01.fq", "x\u202eqf.exe", "a\u200bb.fq"])
def test_filename_problem_names_paths_and_control_characters(name):
    # (HTTP clients percent-encode NUL and control bytes in multipart names; the check
    # still refuses them should one arrive raw)
    assert names.filename_problem(name)


@pytest.mark.parametrize("name", ["r1.fq.gz", "naïve ☃.fq", "read 1 (copy).fq", "ＮＦＫＣ.fa", ""])
def test_filename_problem_accepts_plain_names(name):
    assert names.filename_problem(name) is None


def test_prune_keeps_an_upload_still_being_written_after_an_hour(tmp_path):
    """A large upload spools into .incoming-<id>/spool/part-N: the folders' own mtimes stop
    changing once the part file exists, the part file's goes on while bytes arrive."""
    root = tmp_path / "jobs"
    live, dead = root / ".incoming-live", root / ".incoming-dead"
    for d in (live, dead):
        (d / "spool").mkdir(parents=True)
        (d / "spool" / "part-1").write_bytes(b"@r\n")
    two_hours_ago = os.path.getmtime(live) - 7200
    for path in (live / "spool", live, dead / "spool" / "part-1", dead / "spool", dead):
        os.utime(path, (two_hours_ago,) * 2)
    with open(live / "spool" / "part-1", "ab") as f:
        f.write(b"ACGT\n")  # still arriving
    removed = data_folder.prune(tmp_path, job_exists=lambda i: False, older_than=3600, incoming_older_than=3600)
    assert removed == [".incoming-dead"]
    assert (live / "spool" / "part-1").exists()
