"""A large upload streaming into an S3 multipart upload, checked by content on the way."""

from __future__ import annotations

import contextlib
from concurrent.futures import Future, ThreadPoolExecutor
from typing import BinaryIO

from botocore.exceptions import BotoCoreError, ClientError

from pipeq.storage.s3.client import errors
from pipeq.inputs.checks import StreamCheck

#: Size of the parts of a multipart upload (S3 wants at least 5 MiB but for the last).
PART_BYTES = 8 * 1024 * 1024
#: S3's most parts in one multipart upload.
MAX_PARTS = 10_000

#: Threads that send the parts of the uploads streaming through this process.
_senders = ThreadPoolExecutor(8, thread_name_prefix="s3-part")


class S3Sink:
    """A large upload streaming into a multipart upload, checked as it goes (see
    :class:`pipeq.validate.StreamCheck`): nothing of it is read back. A part is sent while
    the next one arrives (at most ``IN_FLIGHT`` parts in memory besides the one filling)."""

    IN_FLIGHT = 2

    def __init__(self, s3, bucket: str, key: str):
        self.s3, self.bucket, self.key = s3, bucket, key
        with errors(f"s3://{bucket}/{key}"):
            self.upload_id = s3.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
        self.parts: list[dict] = []
        self.sending: list[Future] = []
        self.buf = bytearray()
        self.check = StreamCheck()
        self.done = False

    def write(self, piece: bytes) -> None:
        self.check.feed(piece)
        self.buf += piece
        if len(self.buf) >= PART_BYTES:
            self._flush()

    def _flush(self) -> None:
        number = len(self.parts) + len(self.sending) + 1
        self.sending.append(_senders.submit(self._send, number, bytes(self.buf)))
        self.buf.clear()
        while len(self.sending) > self.IN_FLIGHT:
            self.parts.append(self.sending.pop(0).result())

    def _send(self, number: int, body: bytes) -> dict:
        with errors(f"s3://{self.bucket}/{self.key}"):
            r = self.s3.upload_part(Bucket=self.bucket, Key=self.key, UploadId=self.upload_id, PartNumber=number, Body=body)
        return {"PartNumber": number, "ETag": r["ETag"]}

    def close(self) -> None:
        if self.done:
            return
        if self.buf or not (self.parts or self.sending):
            self._flush()
        while self.sending:
            self.parts.append(self.sending.pop(0).result())
        with errors(f"s3://{self.bucket}/{self.key}"):
            self.s3.complete_multipart_upload(Bucket=self.bucket, Key=self.key, UploadId=self.upload_id, MultipartUpload={"Parts": self.parts})
        self.done = True

    def abort(self) -> None:
        for f in self.sending:
            f.cancel()
        for f in self.sending:
            with contextlib.suppress(Exception):
                f.result()  # a part still being sent would otherwise land after the abort
        with contextlib.suppress(ClientError, BotoCoreError):
            if self.done:
                self.s3.delete_object(Bucket=self.bucket, Key=self.key)
            else:
                self.s3.abort_multipart_upload(Bucket=self.bucket, Key=self.key, UploadId=self.upload_id)

    def open(self) -> BinaryIO:
        return self.check.open()


