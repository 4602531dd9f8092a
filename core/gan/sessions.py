"""A GAN run's sessions: how long it trained in all, with which command and on which machine.

A run may be cut off and resumed several times (`gan train --resume`), each time on another machine
perhaps; its card used to keep only the last session's seconds. Each session is kept in the run
folder (sessions.json, beside the checkpoint) and brought up to date at every checkpoint, so a
session killed before writing its generator still counts the steps its checkpoint kept (the steps
after it are trained again, and counted then).
"""

from __future__ import annotations

import time
from datetime import datetime, timezone
from pathlib import Path

from core.backends import machine
from core.jsonfile import read_json, write_json_atomic

SESSIONS = "sessions.json"
NOT_RECORDED = "not recorded (not started from the command line)"


def _earlier(out_dir: Path) -> list[dict]:
    """The sessions so far; a run from before sessions.json has only its card's last session."""
    try:
        sessions = read_json(out_dir / SESSIONS)
        if isinstance(sessions, list):
            return sessions
    except (OSError, ValueError):
        pass
    try:
        training = read_json(out_dir / "model" / "card.json")["training"]
        return [{"command": "not recorded (trained before runs kept their sessions)", "machine": "not recorded",
                 "from_step": training["resumed_from_step"], "to_step": training["steps"],
                 "seconds": training["seconds_this_session"]}]
    except (OSError, ValueError, TypeError, KeyError):  # a fresh run, or one cut off before its first generator
        return []


class SessionLog:
    """This session appended to the run's sessions, written at its start and at each `save(step)`."""

    def __init__(self, out_dir: Path, step: int, command: str | None):
        self.path, self.started = out_dir / SESSIONS, time.time()
        self.sessions = _earlier(out_dir) + [{
            "started": datetime.now(timezone.utc).isoformat(timespec="seconds"), "command": command or NOT_RECORDED,
            "machine": machine(), "from_step": step, "to_step": step, "seconds": 0.0}]
        self.save(step)

    def save(self, step: int) -> None:
        self.sessions[-1].update(to_step=int(step), seconds=round(time.time() - self.started, 1))
        write_json_atomic(self.path, self.sessions)

    def card_block(self) -> dict:
        """The card's record: this session's seconds, the run's total and every session."""
        return {"seconds_this_session": self.sessions[-1]["seconds"],
                "seconds": round(sum(float(s.get("seconds") or 0) for s in self.sessions), 1),
                "sessions": self.sessions}
