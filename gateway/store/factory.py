"""Pick and configure a store backend from one URL, the way operators write it in config."""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from gateway.store.base import TargetStore
from gateway.store.redis import RedisTargetStore
from gateway.store.sqlite import SqliteTargetStore

ACCEPTED_FORMS = (
    "sqlite:///relative/path.db (relative to the base dir), "
    "sqlite:////absolute/path.db, "
    "redis://[:password@]host[:port][/db][?prefix=name] (or rediss:// for TLS)"
)
_PREFIX_PATTERN = re.compile(r"^[A-Za-z0-9_.:-]+$")


def _bad(url: str, why: str) -> ValueError:
    return ValueError(f"unsupported store URL {url!r}: {why}; accepted forms: {ACCEPTED_FORMS}")


def _sqlite_path(url: str, base_dir: Path | None) -> Path:
    """SQLAlchemy convention: `sqlite:///x` is relative, `sqlite:////x` is absolute."""
    if not url.startswith("sqlite:///"):
        raise _bad(url, "a sqlite URL needs three slashes (relative path) or four (absolute path)")
    rest = url[len("sqlite:///"):]
    if "?" in rest or "#" in rest:
        raise _bad(url, "sqlite URLs take no query string or fragment")
    if not rest.strip("/") or rest == ":memory:":
        raise _bad(url, "a sqlite URL must name a database file")
    if rest.startswith("/"):
        return Path(rest)
    return (base_dir if base_dir is not None else Path.cwd()) / rest


def _redis_store(url: str) -> RedisTargetStore:
    parts = urlsplit(url)
    if not parts.hostname:
        raise _bad(url, "a redis URL must name a host")
    try:
        parts.port  # noqa: B018 -- raises ValueError on a non-numeric or out-of-range port
    except ValueError as exc:
        raise _bad(url, f"bad port ({exc})") from None
    db = parts.path.strip("/")
    if db and not db.isdigit():
        raise _bad(url, f"the path must be a database number, got {db!r}")
    query = parse_qsl(parts.query, keep_blank_values=True)
    prefixes = [value for key, value in query if key == "prefix"]
    if len(prefixes) > 1 or (prefixes and not _PREFIX_PATTERN.match(prefixes[0])):
        raise _bad(url, "prefix must be given once and use only letters, digits and _.:-")
    # redis-py does not know `prefix`; everything else in the query goes through to it.
    rest = urlencode([(k, v) for k, v in query if k != "prefix"])
    client_url = urlunsplit(parts._replace(query=rest))
    return RedisTargetStore(client_url, prefix=prefixes[0] if prefixes else "unlearn")


def open_store(url: str, *, base_dir: Path | None = None) -> TargetStore:
    """Build the store a URL names; nothing is connected yet, so this never fails on a dead store.

    Raises ValueError for a URL of no accepted form.
    """
    scheme = url.split(":", 1)[0] if ":" in url else ""
    if scheme == "sqlite":
        return SqliteTargetStore(str(_sqlite_path(url, base_dir)))
    if scheme in ("redis", "rediss"):
        return _redis_store(url)
    raise _bad(url, "unknown scheme" if scheme else "not a URL")
