"""A quick answer to "can this machine reach the bucket?" before any command touches it.

Without a network, gcsfs spends ~50 s on credential look-ups and retries, prints aiohttp tracebacks,
and ends with "the file does not exist". A TCP connection to the object store's endpoint (or to the
proxy that would carry it) settles the question in seconds and names the cause. It proves nothing
about credentials or permissions: those errors come later, from the store itself, and say so.
"""

from __future__ import annotations

import os
import socket
import threading
from urllib.parse import urlsplit

from dpcore.storage import StoragePath

PROBE_TIMEOUT_S = 5.0


class StoreUnreachable(ValueError):
    """The object store of a path cannot be reached from this machine."""


def _endpoint(protocol: str) -> tuple[str, int, str]:
    """(host, port, what) the store of ``protocol`` is reached at, honouring emulators and proxies."""
    if protocol in ("gs", "gcs"):
        url, what = os.environ.get("STORAGE_EMULATOR_HOST") or "https://storage.googleapis.com", "Cloud Storage"
    elif protocol in ("s3", "s3a"):
        url = (os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
               or "https://s3.amazonaws.com")
        what = "S3"
    else:
        raise ValueError(f"no endpoint known for {protocol}://")
    if "://" not in url:
        url = "http://" + url
    parts = urlsplit(url)
    proxy = os.environ.get("HTTPS_PROXY" if parts.scheme == "https" else "HTTP_PROXY") or os.environ.get(
        "https_proxy" if parts.scheme == "https" else "http_proxy")
    if proxy and parts.hostname not in ("127.0.0.1", "localhost"):
        proxied = urlsplit(proxy if "://" in proxy else "http://" + proxy)
        return proxied.hostname or "", proxied.port or 80, f"{what} through the proxy {proxy}"
    return parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80), what


def _connect(host: str, port: int, timeout: float) -> None:
    """Open and close a TCP connection, name resolution included in the time limit."""
    outcome: list[BaseException | None] = []

    def attempt() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            outcome.append(None)
        except OSError as error:
            outcome.append(error)

    thread = threading.Thread(target=attempt, daemon=True)  # getaddrinfo ignores socket timeouts
    thread.start()
    thread.join(timeout)
    if not outcome:
        raise TimeoutError(f"no answer within {timeout:.0f} s")
    if outcome[0] is not None:
        raise outcome[0]


def check_reachable(path: StoragePath, timeout: float = PROBE_TIMEOUT_S) -> None:
    """Raise :class:`StoreUnreachable`, naming the endpoint and the cause, if ``path``'s store is out of reach."""
    if path.is_local or path.protocol not in ("gs", "gcs", "s3", "s3a"):
        return
    host, port, what = _endpoint(path.protocol)
    try:
        _connect(host, port, timeout)
    except (OSError, TimeoutError) as error:
        cause = error.strerror if isinstance(error, OSError) and error.strerror else str(error) or type(error).__name__
        if isinstance(error, socket.gaierror):
            cause = f"the name {host} does not resolve ({cause}): no network or no DNS"
        raise StoreUnreachable(
            f"cannot reach {what} at {host}:{port} for {path}: {cause}. Check the network (or the proxy "
            f"variables); for a local emulator set STORAGE_EMULATOR_HOST (gs://) or AWS_ENDPOINT_URL (s3://)"
        ) from error
    if path.protocol in ("s3", "s3a"):
        _check_bucket(path)


def _check_bucket(path: StoragePath) -> None:
    """An S3 bucket that does not exist, or that these credentials may not see, named in one line."""
    bucket = path.url.split("://", 1)[1].split("/", 1)[0]
    try:
        path.fs.info(bucket)
    except FileNotFoundError as error:
        raise StoreUnreachable(f"{path}: the bucket s3://{bucket} does not exist at {_endpoint('s3')[0]}"
                               ) from error
    except PermissionError as error:
        raise StoreUnreachable(f"{path}: access to s3://{bucket} denied ({error}); check the AWS credentials "
                               f"(none found means unsigned requests, which only public buckets answer)") from error

