"""Sessions: the speech statistics of one speaker's (or one call's) recordings so far, so each new
recording is normalised by its session's voice (:mod:`koemo.fusion.inputs`).

A session id comes with a request (``POST /v1/predict?session=ID``) or is one ``koemo predict``
call. The service keeps at most ``max_sessions`` of them, forgets one idle for ``ttl_s``
seconds, and holds only summed frame statistics (no audio, no transcript)."""

from __future__ import annotations

import re
import threading
import time
from collections import OrderedDict

from koemo.errors import BadInputError
from koemo.fusion.inputs import Moments

SESSION_ID = re.compile(r"[A-Za-z0-9_.:-]{1,64}")
NORMALISE_MODES = ("speaker", "file", "none")
#: a batch of files (``koemo predict``, :meth:`koemo.Recognizer.iter_batch`) may also group them
#: by their folder: one session per directory, for corpora laid out one speaker to a folder
BATCH_NORMALISE_MODES = NORMALISE_MODES + ("folder",)


class Session:
    """Summed frame statistics of the recordings seen in one session (thread-safe)."""

    def __init__(self) -> None:
        self._moments: Moments | None = None
        self._lock = threading.Lock()
        self.touched = time.time()

    def add(self, moments: Moments) -> Moments:
        """Add a recording's statistics; return the session's total."""
        with self._lock:
            self._moments = moments if self._moments is None else self._moments + moments
            self.touched = time.time()
            return self._moments

    @property
    def moments(self) -> Moments | None:
        return self._moments


class TrialSession(Session):
    """A session seen through a prediction that may be dropped (a stream's early result): it
    reads as ``base`` plus what was added here, and touches ``base`` only on :meth:`commit`."""

    def __init__(self, base: Session) -> None:
        super().__init__()
        self.base = base

    def add(self, moments: Moments) -> Moments:
        own = super().add(moments)
        base = self.base.moments
        return own if base is None else base + own

    @property
    def moments(self) -> Moments | None:
        base, own = self.base.moments, self._moments
        return base if own is None else own if base is None else base + own

    def commit(self) -> None:
        """Add what this trial added to the base session (once)."""
        own, self._moments = self._moments, None
        if own is not None:
            self.base.add(own)


class Sessions:
    """At most ``max_sessions`` sessions, least recently used dropped first, idle ones expire."""

    def __init__(self, max_sessions: int = 1000, ttl_s: float = 3600.0):
        self.max_sessions, self.ttl_s = max_sessions, ttl_s
        self._items: OrderedDict[str, Session] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, session_id: str) -> Session:
        if not SESSION_ID.fullmatch(session_id or ""):
            raise BadInputError("session", "a session id is 1-64 letters, digits or ._:-")
        now = time.time()
        with self._lock:
            for sid in [s for s, v in self._items.items() if now - v.touched > self.ttl_s]:
                del self._items[sid]
            session = self._items.pop(session_id, None) or Session()
            self._items[session_id] = session
            while len(self._items) > self.max_sessions:
                self._items.popitem(last=False)
            return session

    def __len__(self) -> int:
        return len(self._items)
