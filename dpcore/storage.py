"""One path abstraction for local folders and object stores (``gs://``, ``s3://``).

Every file the project reads or writes is named by a :class:`StoragePath`. It
joins with ``/`` like :class:`pathlib.PurePosixPath` but keeps the URL scheme,
and does its I/O through fsspec, so the same code serves a laptop folder and a
bucket. Nothing else in the code base concatenates path strings.

``s3://`` follows the AWS conventions users already have: credentials from the standard chain
(environment, ``~/.aws``, instance roles), the endpoint from ``AWS_ENDPOINT_URL_S3`` or
``AWS_ENDPOINT_URL`` (MinIO, Ceph, a local server), and, when the chain has no credentials at all,
unsigned requests -- what ``aws s3 --no-sign-request`` does -- so public buckets such as the Cell
Painting Gallery read without an account.

Writes are atomic where the store allows it: locally we write a hidden
temporary sibling and ``os.replace`` it into place; on object stores an object
only becomes visible once its upload completes, which gives the same guarantee.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import posixpath
import shutil
import uuid
from dataclasses import dataclass
from typing import IO, Iterator

import fsspec

logger = logging.getLogger(__name__)

_LOCAL_PROTOCOLS = ("file", "local")
S3_PROTOCOLS = ("s3", "s3a")
# Stores TensorFlow's own file system reads and writes (tf.data, tf.summary); others go through fsspec.
TENSORFLOW_PROTOCOLS = ("", "gs")
S3_ENDPOINT_VARIABLES = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")
# What decides whether the standard chain finds credentials (the cache of that answer is keyed on them).
_AWS_CREDENTIAL_VARIABLES = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE",
                             "AWS_SHARED_CREDENTIALS_FILE", "AWS_CONFIG_FILE", "AWS_CONTAINER_CREDENTIALS_FULL_URI",
                             "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "AWS_WEB_IDENTITY_TOKEN_FILE")


def s3_endpoint() -> str | None:
    return next((os.environ[name] for name in S3_ENDPOINT_VARIABLES if os.environ.get(name)), None)


def s3_options() -> dict:
    """s3fs settings: the endpoint from the environment, ``anon`` when no credentials are found."""
    credentials = tuple(os.environ.get(name) for name in _AWS_CREDENTIAL_VARIABLES)
    return dict(_s3_options(s3_endpoint(), credentials))


@functools.lru_cache(maxsize=8)
def _s3_options(endpoint: str | None, credentials: tuple) -> tuple:
    del credentials  # the cache key: a changed environment asks the chain again
    options: dict = {}
    if endpoint:
        options["endpoint_url"] = endpoint
    if not _aws_credentials_found():
        logger.info("no AWS credentials found: s3:// is read with unsigned requests (public buckets only)")
        options["anon"] = True
    return tuple(sorted(options.items()))


def _aws_credentials_found() -> bool:
    import botocore.session  # noqa: PLC0415 -- installed with s3fs; needed only for s3:// paths

    try:
        return botocore.session.get_session().get_credentials() is not None
    except Exception:  # noqa: BLE001 -- a broken profile is no credentials; the store will say what it denies
        return False


def _split_url(url: str) -> tuple[str, str]:
    """Return (protocol, path) with ``protocol`` '' for plain local paths."""
    if "://" in url:
        protocol, rest = url.split("://", 1)
        return protocol.lower(), rest
    return "", url


@dataclass(frozen=True, order=True)
class StoragePath:
    """A local path or a URL such as ``gs://bucket/project/inputs``."""

    url: str

    def __post_init__(self) -> None:
        protocol, rest = _split_url(self.url)
        if protocol in ("",) + _LOCAL_PROTOCOLS:
            normalised = os.path.abspath(os.path.expanduser(rest))
        else:
            # Keep the bucket, drop trailing and doubled slashes.
            normalised = f"{protocol}://{posixpath.normpath(rest).lstrip('/')}"
        object.__setattr__(self, "url", normalised)

    # ----------------------------------------------------------------- naming
    @property
    def protocol(self) -> str:
        return _split_url(self.url)[0]

    @property
    def is_local(self) -> bool:
        return self.protocol == ""

    @property
    def name(self) -> str:
        return posixpath.basename(self.url.rstrip("/"))

    @property
    def parent(self) -> "StoragePath":
        protocol, rest = _split_url(self.url)
        parent = posixpath.dirname(rest.rstrip("/"))
        return StoragePath(f"{protocol}://{parent}" if protocol else parent)

    def __truediv__(self, part: str) -> "StoragePath":
        part = str(part)
        if part.startswith("/") or "://" in part:
            raise ValueError(f"cannot join absolute path {part!r} onto {self.url}")
        protocol, rest = _split_url(self.url)
        joined = posixpath.join(rest, part)
        return StoragePath(f"{protocol}://{joined}" if protocol else joined)

    def joinpath(self, *parts: str) -> "StoragePath":
        path = self
        for part in parts:
            path = path / part
        return path

    def with_suffix(self, suffix: str) -> "StoragePath":
        stem, _ = posixpath.splitext(self.url)
        return StoragePath(stem + suffix)

    def is_relative_to(self, other: "StoragePath") -> bool:
        base = other.url.rstrip("/") + "/"
        return self.url == other.url or self.url.startswith(base)

    def relative_to(self, other: "StoragePath") -> str:
        if not self.is_relative_to(other):
            raise ValueError(f"{self.url} is not inside {other.url}")
        return self.url[len(other.url):].lstrip("/")

    def __str__(self) -> str:
        return self.url

    def __fspath__(self) -> str:  # lets local paths go straight to numpy/PIL
        if not self.is_local:
            raise TypeError(f"{self.url} is not a local path")
        return self.url

    # -------------------------------------------------------------------- I/O
    @property
    def tensorflow_reads(self) -> bool:
        """Whether TensorFlow's own file system reaches this path (it has no S3 without tensorflow-io)."""
        return self.protocol in TENSORFLOW_PROTOCOLS

    @property
    def fs(self) -> fsspec.AbstractFileSystem:
        if self.protocol in S3_PROTOCOLS:
            return fsspec.filesystem("s3", **s3_options())
        return fsspec.filesystem(self.protocol or "file")

    @contextlib.contextmanager
    def _named(self) -> Iterator[None]:
        """An object store's refusal names the object: s3fs says only "Access Denied"."""
        try:
            yield
        except PermissionError as error:
            if self.url in str(error):
                raise
            raise PermissionError(f"{self.url}: access denied ({error})") from error

    def exists(self) -> bool:
        with self._named():
            return self.fs.exists(self.url)

    def is_dir(self) -> bool:
        return self.fs.isdir(self.url)

    def is_file(self) -> bool:
        return self.fs.isfile(self.url)

    def size(self) -> int:
        return int(self.fs.size(self.url))

    def mkdir(self) -> bool:
        """Create this folder and its parents; return True if it was new.

        Object stores have no folders: there this only reports whether
        anything lies below the prefix, and creates nothing.
        """
        existed = self.is_dir()
        if self.is_local:
            os.makedirs(self.url, exist_ok=True)
        return not existed

    def open(self, mode: str = "rb") -> IO:
        if "w" in mode and self.is_local:
            os.makedirs(os.path.dirname(self.url), exist_ok=True)
        with self._named():
            return self.fs.open(self.url, mode)

    def read_bytes(self) -> bytes:
        with self._named(), self.open("rb") as handle:
            return handle.read()

    def read_text(self, encoding: str = "utf-8") -> str:
        return self.read_bytes().decode(encoding)

    def iterdir(self) -> list["StoragePath"]:
        if not self.is_dir():
            return []
        entries = self.fs.ls(self.url, detail=False)
        protocol = self.protocol
        paths = [StoragePath(f"{protocol}://{e}" if protocol and "://" not in e else e) for e in entries]
        return sorted((p for p in paths if p.url != self.url), key=lambda p: p.url)

    def glob(self, pattern: str) -> list["StoragePath"]:
        protocol = self.protocol
        matches = self.fs.glob(posixpath.join(self.url, pattern))
        return sorted(StoragePath(f"{protocol}://{m}" if protocol and "://" not in m else m) for m in matches)

    def remove(self, recursive: bool = False) -> None:
        if self.exists():
            self.fs.rm(self.url, recursive=recursive)

    @contextlib.contextmanager
    def atomic_writer(self, mode: str = "wb") -> Iterator[IO]:
        """Open for writing so that readers never see a partial file.

        Locally the data goes to ``.<name>.<random>.tmp`` beside the target and
        is renamed into place only when the block exits without an error; on
        failure the temporary file is removed.
        """
        if not self.is_local:
            with self.fs.open(self.url, mode) as handle:
                yield handle
            return
        os.makedirs(os.path.dirname(self.url), exist_ok=True)
        tmp = os.path.join(os.path.dirname(self.url), f".{self.name}.{uuid.uuid4().hex[:12]}.tmp")
        try:
            with open(tmp, mode) as handle:
                yield handle
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, self.url)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.remove(tmp)
            raise

    def write_bytes(self, data: bytes) -> None:
        with self.atomic_writer("wb") as handle:
            handle.write(data)

    def write_text(self, text: str, encoding: str = "utf-8") -> None:
        self.write_bytes(text.encode(encoding))


def remove_stale_temporaries(folder: StoragePath, *, beam_sink_folders: bool = True) -> int:
    """Delete ``.*.tmp`` files that interrupted atomic writes left under a local folder, and (unless
    ``beam_sink_folders`` is False) the ``beam-temp-*`` folders of Beam's file sinks.

    Call only where no live writer owns them: holding the folder's lock (dpcore.locking) before a run,
    or from a pipeline's commit step once every file it commits is written (then Beam's own sinks in
    the same pipeline may still be finalizing: pass ``beam_sink_folders=False``). Object stores never
    get such files (uploads are atomic).
    """
    if not folder.is_local or not os.path.isdir(folder.url):
        return 0
    removed = 0
    for directory, folders, files in os.walk(folder.url):
        for name in files:
            if name.startswith(".") and name.endswith(".tmp"):
                with contextlib.suppress(FileNotFoundError):
                    os.remove(os.path.join(directory, name))
                    removed += 1
        for name in [f for f in folders if beam_sink_folders and f.startswith("beam-temp-")]:  # dead letters
            shutil.rmtree(os.path.join(directory, name), ignore_errors=True)
            folders.remove(name)
            removed += 1
    if removed:
        logger.info("removed %d temporary file(s) left by an interrupted run under %s", removed, folder)
    return removed


def as_storage_path(value: "str | os.PathLike[str] | StoragePath") -> StoragePath:
    if isinstance(value, StoragePath):
        return value
    return StoragePath(os.fspath(value) if isinstance(value, os.PathLike) else str(value))
