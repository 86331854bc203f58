"""HTTP basic auth against bcrypt hashes that reveals no user names and cannot be used to burn CPU.

bcrypt is slow on purpose (a quarter to half a second of CPU at cost 12), which makes it a weapon
against the server checking it: every guess costs the server a full hash. Four defences, each
cheap for a scraper that knows its password:

* Outcomes are cached, as the Prometheus exporter toolkit does: a scraper sending the same header
  every few seconds pays for one hash, ever. Verified credentials sit in a cache of their own that
  only a correct password can add to, so a flood of wrong guesses cannot push them out.
* At most ``max_concurrent_checks`` hashes run at once; an attempt finding them all busy is
  refused at once (429), never queued behind the others.
* Each client address that keeps failing is refused without hashing (429 with ``Retry-After``) for
  a back-off that doubles per failure, up to a cap; the table of addresses is bounded.
* An unknown user costs exactly what a wrong password does: one hash at the configured cost. A
  password over bcrypt's 72 bytes is refused unhashed whoever the user is (bcrypt 5 refuses to
  hash it, and as the Go exporters do).

Checks on the cached path come before the throttle, so a verified scraper is never slowed, even
while its own address is being throttled for someone else's guesses.
"""

from __future__ import annotations

import base64
import binascii
import collections
import hashlib
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import bcrypt

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

# bcrypt reads at most this many bytes of a password; a longer one is refused before any user is
# looked up, so its answer says nothing about which users exist.
BCRYPT_MAX_PASSWORD = 72


@dataclass(frozen=True)
class Verdict:
    """What to answer: let the request through, 401, or 429 after ``retry_after`` seconds."""

    allowed: bool
    retry_after: float = 0.0

    @property
    def throttled(self) -> bool:
        return self.retry_after > 0


ALLOWED = Verdict(allowed=True)
DENIED = Verdict(allowed=False)


@dataclass
class _Failures:
    count: int
    blocked_until: float


class FailureThrottle:
    """Per-address back-off after repeated failed logins, in bounded memory.

    The first ``free_failures`` failures of an address cost it nothing; each one after that blocks
    it for ``base_delay`` seconds, doubling per failure up to ``max_delay``. An address that stays
    quiet for ``max_delay`` after its block ends is forgotten. At most ``max_addresses`` are
    remembered: the one that failed least recently goes first (the hash semaphore still bounds
    CPU for an attacker with more addresses than that).
    """

    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.monotonic,
        free_failures: int = 5,
        base_delay: float = 1.0,
        max_delay: float = 30.0,
        max_addresses: int = 4096,
    ) -> None:
        self._clock = clock
        self._free = free_failures
        self._base = base_delay
        self._max = max_delay
        self._capacity = max_addresses
        self._lock = threading.Lock()
        self._table: collections.OrderedDict[str, _Failures] = collections.OrderedDict()

    def __len__(self) -> int:
        return len(self._table)

    def retry_after(self, address: str) -> float:
        """Seconds until ``address`` may try again; 0 when it may now."""
        now = self._clock()
        with self._lock:
            entry = self._table.get(address)
            if entry is None:
                return 0.0
            if now >= entry.blocked_until + self._max:
                del self._table[address]
                return 0.0
            return max(0.0, entry.blocked_until - now)

    def failed(self, address: str) -> None:
        now = self._clock()
        with self._lock:
            entry = self._table.pop(address, None)
            if entry is None or now >= entry.blocked_until + self._max:
                entry = _Failures(0, now)
            entry.count += 1
            excess = entry.count - self._free
            if excess > 0:
                delay = min(self._max, self._base * 2 ** min(excess - 1, 32))
                entry.blocked_until = now + delay
            self._table[address] = entry
            while len(self._table) > self._capacity:
                self._table.popitem(last=False)

    def succeeded(self, address: str) -> None:
        with self._lock:
            self._table.pop(address, None)


def dummy_hash(hashes: Mapping[str, bytes]) -> bytes:
    """A hash no password matches, at the highest cost among ``hashes``, built without hashing.

    Checking a password against it costs what checking against the users' hashes costs, so an
    unknown user cannot be told from a wrong password by the time the answer takes. A fresh salt
    and the digest of a configured hash make it: syntactically a bcrypt hash, matched by nothing.
    """
    if not hashes:
        return bcrypt.gensalt(rounds=4) + b"." * 31
    costliest = max(hashes.values(), key=_cost)
    return bcrypt.gensalt(rounds=_cost(costliest), prefix=b"2b") + costliest[-31:]


def _cost(hashed: bytes) -> int:
    return int(hashed.split(b"$")[2])


class BasicAuth:
    """Decides each request's ``Authorization`` header. Thread-safe; ``check`` is injectable."""

    def __init__(
        self,
        users: Mapping[str, bytes],
        *,
        check: Callable[[bytes, bytes], bool] = bcrypt.checkpw,
        throttle: FailureThrottle | None = None,
        max_concurrent_checks: int = 2,
        cache_size: int = 256,
    ) -> None:
        self._users = dict(users)
        self._dummy = dummy_hash(self._users)
        self._check = check
        self._throttle = throttle if throttle is not None else FailureThrottle()
        self._hashing = threading.BoundedSemaphore(max_concurrent_checks)
        self._cache_size = cache_size
        self._lock = threading.Lock()
        # Keys are digests of the whole header, so no password is kept in memory as such.
        self._verified: dict[bytes, None] = {}
        self._refused: collections.OrderedDict[bytes, None] = collections.OrderedDict()

    def __bool__(self) -> bool:
        return bool(self._users)

    def verdict(self, header: str, address: str) -> Verdict:
        key = hashlib.sha256(header.encode("utf-8", "surrogateescape")).digest()
        with self._lock:
            if key in self._verified:
                return ALLOWED
            known_bad = key in self._refused
        wait = self._throttle.retry_after(address)
        if wait > 0:
            return Verdict(allowed=False, retry_after=wait)
        credentials = None if known_bad else _credentials(header)
        if credentials is None or len(credentials[1]) > BCRYPT_MAX_PASSWORD:
            self._throttle.failed(address)
            return DENIED
        if not self._hashing.acquire(blocking=False):
            # Every hash slot is taken: refuse now rather than hold a worker waiting for one.
            return Verdict(allowed=False, retry_after=1.0)
        try:
            ok = self._matches(*credentials)
        finally:
            self._hashing.release()
        self._remember(key, ok)
        if ok:
            self._throttle.succeeded(address)
            return ALLOWED
        self._throttle.failed(address)
        return DENIED

    def _matches(self, user: str, password: bytes) -> bool:
        hashed = self._users.get(user)
        # The same work whether or not the user exists: one check at the configured cost.
        matched = self._check(password, self._dummy if hashed is None else hashed)
        return hashed is not None and matched

    def _remember(self, key: bytes, ok: bool) -> None:
        with self._lock:
            if ok:
                if len(self._verified) < self._cache_size:
                    self._verified[key] = None
                return
            self._refused[key] = None
            while len(self._refused) > self._cache_size:
                self._refused.popitem(last=False)


def _credentials(header: str) -> tuple[str, bytes] | None:
    """``(user, password)`` from a ``Basic`` header; None when it is anything else."""
    scheme, _, encoded = header.partition(" ")
    if scheme.lower() != "basic" or not encoded:
        return None
    try:
        user, sep, password = base64.b64decode(encoded.strip(), validate=True).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return None
    if not sep:
        return None
    return user, password.encode()
