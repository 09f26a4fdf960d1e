"""S3 through AWS's normal settings, and S3 failures as one clear line that never shows a secret.

Nothing here configures credentials or endpoints: boto3 (and so quilt3 and DVC's S3 remote) already reads
``AWS_PROFILE``, ``~/.aws/config``, ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY`` and, for MinIO or any
other S3-compatible store, ``AWS_ENDPOINT_URL_S3`` (see docs/s3.md). This module only checks S3 URLs and
turns botocore's exceptions, whose text can be long and server-controlled, into
:class:`~pipeline.core.base.errors.UserError` (fixable: bucket, credentials) or
:class:`~pipeline.core.base.errors.PipelineFailure` (the server is down or failing).
"""
from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import urlsplit

# With awscrt installed, botocore signs requests in C, reading upload bodies there; when one upload fails
# and quilt3 cancels the others, awscrt prints each cancellation's Python traceback on stderr. botocore's
# own SigV4 signer does the same signing and lets the exception propagate. Set before botocore loads.
os.environ.setdefault("BOTO_DISABLE_CRT", "true")

import boto3  # noqa: E402
import botocore.exceptions  # noqa: E402
from boto3.s3.transfer import TransferConfig, create_transfer_manager  # noqa: E402

from pipeline.core.base.errors import PipelineFailure, UserError
from pipeline.core.base.progress import track
from pipeline.core.base.redact import public_url

# AWS's bucket naming rules, loosely (S3-compatible stores allow a little more, never '/' or spaces).
_BUCKET = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{2,254}$")
_CREDENTIAL_CODES = {
    "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken", "ExpiredToken",
    "InvalidClientTokenId", "AuthorizationHeaderMalformed", "403",
}
_SERVER_CODES = {"InternalError", "ServiceUnavailable", "SlowDown", "500", "502", "503", "504"}
# quilt3 wraps refused requests in its own exception; this is its message prefix.
_QUILT_ACCESS_DENIED = "S3 AccessDenied"
# botocore's ValueError for an endpoint URL it cannot use (AWS_ENDPOINT_URL_S3=not-a-url)
_INVALID_ENDPOINT = "Invalid endpoint:"
#: a conditional write lost: the object is there (412), or another conditional write to it is under way (409)
_CONDITION_LOST = {"PreconditionFailed", "412", "ConditionalRequestConflict", "409"}
#: files from this size up go in parts, several at once (boto3's default threshold, and quilt3's)
MULTIPART_THRESHOLD = 8 * 1024 * 1024


def bucket_url(url: str, what: str = "registry") -> str:
    """Accept only ``s3://bucket`` (no key: quilt3 registries live at a bucket's root)."""
    parts = urlsplit(url)
    if parts.scheme != "s3" or not _BUCKET.match(parts.netloc) or parts.path.strip("/") or parts.query:
        raise UserError(f"{what} must look like s3://bucket (a bucket, no path), got {url!r}")
    return f"s3://{parts.netloc}"


def endpoint() -> str:
    """The S3 endpoint boto3 will use, for messages (user:password in a URL is dropped)."""
    try:
        url = boto3.session.Session().client("s3").meta.endpoint_url
    except (botocore.exceptions.BotoCoreError, ValueError):  # ValueError: an endpoint that is not a URL
        return "the configured S3 endpoint"
    return public_url(url)


def redact(text: str) -> str:
    """Blank out the current AWS credentials wherever they appear in ``text`` (belt and braces:
    our messages are built from error codes, but a server's message is its own text)."""
    try:
        credentials = boto3.session.Session().get_credentials()
    except botocore.exceptions.BotoCoreError:
        return text
    if credentials is not None:
        frozen = credentials.get_frozen_credentials()
        for secret in (frozen.access_key, frozen.secret_key, frozen.token):
            if secret:
                text = text.replace(secret, "***")
    return text


def error_code(exc: BaseException) -> str:
    """The S3 error code of a botocore ``ClientError`` (``''`` for anything else)."""
    if isinstance(exc, botocore.exceptions.ClientError):
        return str(exc.response.get("Error", {}).get("Code", ""))
    return ""


def translate(exc: BaseException, where: str) -> UserError | PipelineFailure | None:
    """The one-line error for an S3 failure while working on ``where`` (``s3://bucket``), or None
    when ``exc`` is not an S3 failure."""
    code = error_code(exc)
    if isinstance(exc, (botocore.exceptions.NoCredentialsError, botocore.exceptions.PartialCredentialsError)):
        return UserError(f"no AWS credentials for {where}: set AWS_PROFILE, or AWS_ACCESS_KEY_ID and "
                         "AWS_SECRET_ACCESS_KEY (see docs/s3.md)")
    if isinstance(exc, botocore.exceptions.ProfileNotFound):
        return UserError(f"AWS profile not found ({exc.kwargs.get('profile')!r}): check AWS_PROFILE")
    if isinstance(exc, ValueError) and str(exc).startswith(_INVALID_ENDPOINT):
        shown = public_url(str(exc)[len(_INVALID_ENDPOINT):].strip())[:200]
        return UserError(f"the S3 endpoint {shown!r} is not a URL: check AWS_ENDPOINT_URL_S3 (or the profile's "
                         "endpoint_url), e.g. http://localhost:9000")
    if isinstance(exc, (botocore.exceptions.ConnectionError, botocore.exceptions.HTTPClientError)):
        return PipelineFailure(f"cannot reach S3 at {endpoint()} for {where} ({type(exc).__name__}): "
                               "is the server up? AWS_ENDPOINT_URL_S3 chooses an S3-compatible server")
    if code == "NoSuchBucket":
        return UserError(f"bucket {where} does not exist at {endpoint()}")
    if code in _CREDENTIAL_CODES or str(exc).startswith(_QUILT_ACCESS_DENIED):
        reason = code or "AccessDenied"
        return UserError(f"S3 refused the request to {where} ({reason}): check the credentials "
                         "(AWS_PROFILE, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY) and the bucket's permissions")
    if code in _SERVER_CODES:
        return PipelineFailure(f"S3 server error at {endpoint()} for {where} ({code}): try again later")
    if isinstance(exc, botocore.exceptions.ClientError):
        message = exc.response.get("Error", {}).get("Message", "")
        return PipelineFailure(redact(f"S3 request to {where} failed ({code}: {message})")[:300])
    if isinstance(exc, botocore.exceptions.BotoCoreError):
        return PipelineFailure(redact(f"S3 request to {where} failed: {str(exc).splitlines()[0]}")[:300])
    return None


def check_bucket(session: boto3.session.Session, url: str) -> None:
    """Fail fast, in one line, when the bucket of ``url`` is missing or refuses the credentials.

    Without credentials there is nothing to check: public buckets are read anonymously.
    """
    if session.get_credentials() is None:
        return
    try:
        session.client("s3").head_bucket(Bucket=urlsplit(url).netloc)
    except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as exc:
        if error_code(exc) == "404":  # a HEAD response has no body, so no "NoSuchBucket" code
            raise UserError(f"bucket {url} does not exist at {endpoint()}") from None
        raise translate(exc, url) from None


def existing_sizes(client: object, bucket: str, prefix: str) -> dict[str, int]:
    """``{key: size}`` of the objects under ``prefix`` (one listing instead of a request per file)."""
    found = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        found.update({obj["Key"]: obj["Size"] for obj in page.get("Contents", ())})
    return found


def upload_files(client: object, bucket: str, uploads: Mapping[str, Path]) -> None:
    """Upload each file to its key with boto3's managed transfer: several files at once, and a file from
    :data:`MULTIPART_THRESHOLD` up as a multipart upload of parts sent in parallel.

    A failure cancels the rest and is raised as botocore raised it (for :func:`translate`). boto3 aborts
    the multipart uploads it started; one cut off by ``kill -9`` stays until the bucket's lifecycle rule
    (``AbortIncompleteMultipartUpload``) removes it, and never becomes an object.
    """
    config = TransferConfig(multipart_threshold=MULTIPART_THRESHOLD, multipart_chunksize=MULTIPART_THRESHOLD)
    with create_transfer_manager(client, config) as manager:
        futures = [manager.upload(str(path), bucket, key) for key, path in uploads.items()]
        for future in track(futures, "uploading", "file"):
            future.result()


def put_new(client: object, bucket: str, key: str, body: bytes) -> str | None:
    """Create ``key`` only if no object is there (a conditional write, ``If-None-Match: *``): its ETag, or
    None when one was there or another conditional write to it won."""
    try:
        return client.put_object(Bucket=bucket, Key=key, Body=body, IfNoneMatch="*")["ETag"]
    except botocore.exceptions.ClientError as exc:
        if error_code(exc) in _CONDITION_LOST:
            return None
        raise


def replace_if(client: object, bucket: str, key: str, body: bytes, etag: str) -> str | None:
    """Overwrite ``key`` only if it is still the object with ``etag`` (``If-Match``): the new ETag, or None."""
    try:
        return client.put_object(Bucket=bucket, Key=key, Body=body, IfMatch=etag)["ETag"]
    except botocore.exceptions.ClientError as exc:
        if error_code(exc) in _CONDITION_LOST or error_code(exc) in ("NoSuchKey", "404"):
            return None
        raise
