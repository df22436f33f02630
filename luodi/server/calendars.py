"""`CalendarStore`: each tenant's calendar (.ics) on the server's disk, and the planned changes
waiting to be applied to it.

Layout, as knowledge bases keep theirs: `ROOT/calendar.ics` for the local owner (a server without
keys), `ROOT/owners/DIGEST/calendar.ics` for an API key, DIGEST = sha256(owner)[:32], so the folder
names tell a reader of the disk nothing about who the owners are. Folders are 0700, files 0600.
An upload is parsed before it is stored and replaces the file atomically; a bad one leaves the
stored file as it was.

A plan (the changes `ScheduleAssistant` proposed) is kept in memory under a random id, with the
SHA-256 of the calendar it was made from. Applying it checks that digest under the store's lock,
so a plan made before another upload or another applied plan is refused (409) rather than applied
to a calendar it was not made for. Only the newest `MAX_PLANS` plans are kept.

Must not know HTTP routes or how changes are planned.
"""

from __future__ import annotations

import hashlib
import secrets
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from luodi.apps.calendar_file import CalendarFile, Change, check_ics, write_atomically
from luodi.kb.store.base import LOCAL_OWNER
from luodi.paths import private_dir
from luodi.server.errors import APIError

CALENDAR_NAME = "calendar.ics"
MAX_PLANS = 256  # plans waiting for their Apply; older ones are forgotten (applying one is a 404)


class CalendarNotFoundError(APIError):
    status_code = 404
    code = "calendar_not_found"


class PlanNotFoundError(APIError):
    status_code = 404
    code = "plan_not_found"


class StalePlanError(APIError):
    status_code = 409
    code = "plan_stale"


@dataclass(frozen=True, slots=True)
class Plan:
    owner: str
    changes: tuple[Change, ...]
    digest: str  # of the calendar the changes were planned on


class CalendarStore:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self._lock = threading.Lock()  # one writer at a time; a plan's check and its write together
        self._plans: OrderedDict[str, Plan] = OrderedDict()

    def path(self, owner: str) -> Path:
        if owner == LOCAL_OWNER:
            return self.root / CALENDAR_NAME
        return self.root / "owners" / hashlib.sha256(owner.encode("utf-8")).hexdigest()[:32] / CALENDAR_NAME

    def read(self, owner: str) -> bytes:
        try:
            return self.path(owner).read_bytes()
        except FileNotFoundError:
            raise CalendarNotFoundError(
                "no calendar uploaded yet; upload an .ics file first: PUT /v1/apps/schedule/calendar") from None

    def open(self, owner: str) -> tuple[CalendarFile, str]:
        """The owner's calendar and the digest of what was read."""
        with self._lock:
            blob = self.read(owner)
            return CalendarFile(self.path(owner)), _digest(blob)

    def save(self, owner: str, blob: bytes, name: str) -> None:
        """Store `blob` as the owner's calendar once it parses; `CalendarError` (naming `name`) otherwise."""
        check_ics(blob, name)
        path = self.path(owner)
        with self._lock:
            private_dir(path.parent)
            write_atomically(path, blob)

    def remember(self, owner: str, changes: list[Change], digest: str) -> str:
        plan_id = f"plan_{secrets.token_hex(12)}"
        with self._lock:
            self._plans[plan_id] = Plan(owner, tuple(changes), digest)
            while len(self._plans) > MAX_PLANS:
                self._plans.popitem(last=False)
        return plan_id

    def apply(self, owner: str, plan_id: str) -> Plan:
        """Write the plan's changes, if the calendar is still the one it was planned on."""
        with self._lock:
            plan = self._plans.get(plan_id)
            if plan is None or plan.owner != owner:  # another tenant's plan is as unknown as none
                raise PlanNotFoundError(f"no plan {plan_id!r}: it was applied already, or is too old, or never "
                                        "existed; make a new one with POST /v1/apps/schedule", param="plan_id")
            if _digest(self.read(owner)) != plan.digest:
                raise StalePlanError("the calendar changed after this plan was made; make a new plan with "
                                     "POST /v1/apps/schedule", param="plan_id")
            CalendarFile(self.path(owner)).apply(list(plan.changes))
            del self._plans[plan_id]
            return plan


def _digest(blob: bytes) -> str:
    return hashlib.sha256(blob).hexdigest()
