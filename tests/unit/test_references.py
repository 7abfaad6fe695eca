"""Inputs by URL: which URLs may be fetched (SSRF), and the checks of a head read alone."""

from __future__ import annotations

import gzip
import random

import pytest

from pipeq.inputs import references
from pipeq.inputs.references import allowed, name_of
from pipeq.settings import Settings
from pipeq.inputs.checks import InvalidInput, check_fastq, head_of


def test_only_listed_schemes_and_hosts_are_allowed():
    s = Settings(reference_hosts="https://*.ebi.ac.uk, s3://lab-data,http://127.0.0.1:8080", storage="s3://jobs-bucket/pipeq")
    for ok in ("https://ftp.ebi.ac.uk/a/r.fq.gz", "s3://lab-data/x/r.fq", "http://127.0.0.1:8080/r.fa", "s3://jobs-bucket/pipeq/uploads/" + "a" * 32 + "/r.fq"):
        assert allowed(ok, s) is None, ok
    for bad, why in (
        ("https://ebi.ac.uk.evil.com/r.fq", "not allowed"),
        ("http://ftp.ebi.ac.uk/r.fq", "not allowed"),  # the scheme counts too
        ("https://169.254.169.254/latest/meta-data/x", "not allowed"),
        ("http://127.0.0.1:6379/x", "not allowed"),
        ("s3://other/x", "not allowed"),
        ("s3://jobs-bucket/pipeq/jobs/0123/inputs/r.fq", "job store's own files"),  # the store's bucket: its uploads/ only
        ("s3://jobs-bucket/pipeq/uploads/1/r.fq", "job store's own files"),  # not an upload's key
        ("s3://jobs-bucket/pipeq/uploads/" + "a" * 32 + "/x/r.fq", "job store's own files"),
        ("file:///etc/passwd", "s3:// or https://"),
        ("gopher://127.0.0.1/x", "s3:// or https://"),
        ("https://user:pw@ftp.ebi.ac.uk/r.fq", "credentials"),
        ("s3://lab-data/folder/", "not a folder"),
        ("https://[::1", "not a valid URL"),
    ):
        assert why in (allowed(bad, s) or ""), bad
    assert allowed("s3://jobs-bucket/x", Settings()) is not None  # the file backend has no bucket


def test_the_job_store_is_closed_even_where_the_allow_list_names_its_bucket():
    s = Settings(reference_hosts="s3://jobs-bucket", storage="s3://jobs-bucket/pipeq")
    upload = "s3://jobs-bucket/pipeq/uploads/" + "b" * 32 + "/r.fq"
    assert allowed(upload, s) is None and references.upload_of(upload, s) == "b" * 32
    assert allowed("s3://jobs-bucket/lab/r.fq", s) is None and references.upload_of("s3://jobs-bucket/lab/r.fq", s) is None
    for other_job in ("s3://jobs-bucket/pipeq/jobs/" + "c" * 32 + "/output/S1.bam", "s3://JOBS-BUCKET/pipeq/jobs/x/r.fq",
                      "s3://jobs-bucket//pipeq/jobs/x/r.fq", "s3://jobs-bucket/pipeq//uploads/" + "b" * 32 + "/r.fq"):
        assert "job store's own files" in (allowed(other_job, s) or ""), other_job
    whole = Settings(reference_hosts="s3://jobs-bucket", storage="s3://jobs-bucket")  # no prefix: the bucket is the store
    assert "job store's own files" in (allowed("s3://jobs-bucket/lab/r.fq", whole) or "")
    assert references.upload_of("s3://jobs-bucket/uploads/" + "d" * 32 + "/r.fq", whole) == "d" * 32


def test_hosts_allowed_by_a_wildcard_are_read_from_public_addresses_only():
    s = Settings(reference_hosts="https://*.ebi.ac.uk,https://data.lab:8443,http://*.0.0.1:8080")
    assert references.public_only("https://ftp.ebi.ac.uk/r.fq", s)
    assert not references.public_only("https://data.lab:8443/r.fq", s)  # named exactly: the admin's choice
    assert not references.public_only("s3://lab-data/r.fq", s)  # the store's endpoint is configured, not given
    for internal in ("10.0.0.5", "127.0.0.1", "169.254.169.254", "192.168.1.1", "::1", "fd00::1", "fe80::1%eth0",
                     "::ffff:10.0.0.1", "100.64.0.1", "0.0.0.0", "224.0.0.1"):
        assert not references.is_public(internal), internal
    for public in ("8.8.8.8", "193.62.193.8", "2001:4860:4860::8888"):
        assert references.is_public(public), public
    # a wildcard that matches a host whose address is internal: refused before any connection
    url = "http://127.0.0.1:8080/ref.fa"
    assert allowed(url, s) is None and references.public_only(url, s)
    with pytest.raises(references.Refused, match="internal address"):
        references.head(url, public=True)


def test_names_come_from_the_last_path_segment():
    assert name_of("https://h/a/b/S1_R1.fq.gz?x=1", "r") == "S1_R1.fq.gz"
    assert name_of("s3://b/a/%2e%2e%2fevil", "r") == "evil"  # the decoded "../" is dropped


def test_the_head_of_a_large_gzip_is_checked_without_its_end():
    rng = random.Random(1)
    records = b"".join(b"@r%d\n%s\n+\n%s\n" % (i, bytes(rng.choice(b"ACGT") for _ in range(100)), b"I" * 100) for i in range(20000))
    data = gzip.compress(records)
    prefix = data[: len(data) // 3]
    assert check_fastq(head_of(prefix, whole=False)) == 50
    with pytest.raises(InvalidInput, match="truncated"):
        check_fastq(head_of(prefix, whole=True))
    with pytest.raises(InvalidInput, match="quality line"):
        check_fastq(head_of(gzip.compress(b"@r\nACGT\n+\nII\n" + records)[:5000], whole=False))
