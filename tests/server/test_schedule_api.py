"""The schedule assistant over HTTP on a real server with SmolLM2: a calendar built with `icalendar`
is uploaded, a request in words gives a planned change and writes nothing, applying the plan moves
the event (read back with `icalendar`), a stale or unknown plan is refused, a malformed upload is a
400 that leaves the stored file byte for byte, and each API key has its own calendar."""

from __future__ import annotations

from datetime import datetime

import httpx
import pytest
from live_server import make_llm, running_server, service_for

from luodi.server.auth import add_key

icalendar = pytest.importorskip("icalendar")
TODAY = "2026-12-07T09:00:00"  # a Monday


def calendar_ics(review_start: datetime = datetime(2026, 12, 8, 10)) -> bytes:
    calendar = icalendar.Calendar()
    calendar.add("prodid", "-//Luodi tests//EN")
    calendar.add("version", "2.0")
    for uid, title, start, minutes in [("review-1@test", "Design review", review_start, 60),
                                       ("standup-1@test", "Standup", datetime(2026, 12, 8, 9), 15),
                                       ("dentist-1@test", "Dentist", datetime(2026, 12, 9, 15), 60)]:
        event = icalendar.Event()
        event.add("uid", uid)
        event.add("summary", title)
        event.add("dtstart", start)
        event.add("dtend", start.replace(minute=minutes % 60, hour=start.hour + minutes // 60))
        event.add("location", "Room 4")
        calendar.add_component(event)
    return calendar.to_ical()


def events_of(blob: bytes) -> dict[str, tuple[datetime, datetime]]:
    calendar = icalendar.Calendar.from_ical(blob)
    return {str(e["SUMMARY"]): (e["DTSTART"].dt, e["DTEND"].dt) for e in calendar.walk("VEVENT")}


@pytest.fixture(scope="module")
def server(loaded, tmp_path_factory):
    root = tmp_path_factory.mktemp("schedule-api")
    keys = root / "keys.json"
    tokens = {"alice": add_key(keys, "alice"), "bob": add_key(keys, "bob")}
    service = service_for(make_llm(loaded), api_keys_file=keys, calendars_dir=root / "calendars")
    with running_server(service) as base_url:
        yield base_url, {who: {"Authorization": f"Bearer {token}"} for who, token in tokens.items()}, root


def call(server, method: str, path: str, who: str = "alice", **kwargs) -> httpx.Response:
    base_url, headers, _ = server
    return httpx.request(method, f"{base_url}/v1/apps/schedule{path}", headers=headers[who], timeout=300, **kwargs)


def upload(server, blob: bytes, who: str = "alice") -> httpx.Response:
    return call(server, "PUT", "/calendar", who, content=blob)


def plan(server, request: str, who: str = "alice") -> httpx.Response:
    return call(server, "POST", "", who, json={"request": request, "today": TODAY})


def test_a_move_is_planned_then_applied(server):
    original = calendar_ics()
    assert upload(server, original).status_code == 200
    response = plan(server, "Move Tuesday's review to Thursday 3pm")
    assert response.status_code == 200, response.text
    planned = response.json()
    (change,) = planned["changes"]
    assert change["action"] == "move" and change["before"]["title"] == "Design review"
    assert (change["after"]["start"], change["after"]["end"]) == ("2026-12-10T15:00:00", "2026-12-10T16:00:00")
    assert planned["plan_id"] and planned["answer"] == change["description"]
    assert call(server, "GET", "/calendar").content == original  # nothing written before Apply

    applied = call(server, "POST", "/apply", json={"plan_id": planned["plan_id"]})
    assert applied.status_code == 200, applied.text
    stored = call(server, "GET", "/calendar")
    assert stored.headers["content-type"].startswith("text/calendar")
    events = events_of(stored.content)
    assert events["Design review"] == (datetime(2026, 12, 10, 15), datetime(2026, 12, 10, 16))
    assert events["Standup"] == (datetime(2026, 12, 8, 9), datetime(2026, 12, 8, 9, 15))
    moved = next(e for e in icalendar.Calendar.from_ical(stored.content).walk("VEVENT") if e["UID"] == "review-1@test")
    assert str(moved["LOCATION"]) == "Room 4"

    again = call(server, "POST", "/apply", json={"plan_id": planned["plan_id"]})
    assert again.status_code == 404 and again.json()["error"]["code"] == "plan_not_found"


def test_a_plan_made_before_the_calendar_changed_is_stale(server):
    assert upload(server, calendar_ics()).status_code == 200
    plan_id = plan(server, "Cancel the dentist on Wednesday").json()["plan_id"]
    replaced = calendar_ics(review_start=datetime(2026, 12, 8, 14))
    assert upload(server, replaced).status_code == 200
    response = call(server, "POST", "/apply", json={"plan_id": plan_id})
    assert response.status_code == 409 and response.json()["error"]["code"] == "plan_stale"
    assert call(server, "GET", "/calendar").content == replaced


def test_a_question_lists_events_and_plans_nothing(server):
    assert upload(server, calendar_ics()).status_code == 200
    answer = plan(server, "What is on tomorrow?").json()
    assert [e["title"] for e in answer["events"]] == ["Standup", "Design review"]
    assert answer["changes"] == [] and answer["plan_id"] is None


@pytest.mark.parametrize("blob", [
    b"not a calendar",
    calendar_ics().replace(b"DTSTART:20261208T100000", b"DTSTART:yesterday"),
    calendar_ics().replace(b"END:VCALENDAR", b""),
])
def test_a_malformed_upload_is_a_400_and_the_stored_file_stays(server, blob):
    stored = calendar_ics()
    assert upload(server, stored).status_code == 200
    response = upload(server, blob)
    assert response.status_code == 400, response.text
    assert "the uploaded calendar" in response.json()["error"]["message"]
    assert str(server[2]) not in response.json()["error"]["message"]  # the server's paths stay inside
    assert call(server, "GET", "/calendar").content == stored


def test_each_key_has_its_own_calendar_and_plans(server):
    assert upload(server, calendar_ics()).status_code == 200
    plan_id = plan(server, "Cancel the dentist on Wednesday").json()["plan_id"]
    missing = call(server, "GET", "/calendar", who="bob")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "calendar_not_found"
    assert plan(server, "What is on tomorrow?", who="bob").status_code == 404
    assert upload(server, calendar_ics(), who="bob").status_code == 200
    stolen = call(server, "POST", "/apply", who="bob", json={"plan_id": plan_id})
    assert stolen.status_code == 404
    files = sorted((server[2] / "calendars").rglob("*.ics"))
    assert len(files) == 2 and all(f.parent.parent.name == "owners" for f in files)
    assert all(f.stat().st_mode & 0o777 == 0o600 for f in files)


@pytest.mark.parametrize(("body", "status", "needle"), [
    ({"request": ""}, 400, "request"),
    ({"request": "Move the review to Friday", "today": "someday"}, 400, "today"),
    ({"request": "Move the standup", "today": TODAY}, 400, "say when to move"),
    ({"request": "What is on tomorrow?", "model": "gpt-4"}, 404, "gpt-4"),
])
def test_bad_requests_are_4xx_naming_the_problem(server, body, status, needle):
    assert upload(server, calendar_ics()).status_code == 200
    response = call(server, "POST", "", json=body)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert needle in error["message"] + str(error["param"])


def test_schedule_mode_of_the_web_chat(server, tmp_path):
    from test_web import chat_page, screenshot  # Playwright + Debian Chromium; skips without them

    _, headers, _ = server
    (tmp_path / "work.ics").write_bytes(calendar_ics())
    (tmp_path / "broken.ics").write_bytes(b"not a calendar")
    key = headers["alice"]["Authorization"].removeprefix("Bearer ")
    with chat_page(server[0], api_key=key) as (page, expect):
        page.set_input_files("#schedule-calendar", str(tmp_path / "broken.ics"))
        expect(page.locator("#schedule-calendar-status")).to_contain_text("not an iCalendar file", timeout=30_000)
        page.set_input_files("#schedule-calendar", str(tmp_path / "work.ics"))
        expect(page.locator("#schedule-calendar-status")).to_have_text("work.ics: calendar stored", timeout=30_000)
        page.fill("#prompt", "Move the design review to Thursday 3pm")
        page.click("#schedule")
        planned = page.locator(".message.schedule").last
        expect(planned.locator("ul.changes li")).to_contain_text("move: Design review", timeout=120_000)
        assert call(server, "GET", "/calendar").content == calendar_ics()  # shown, not yet written
        planned.locator("button.apply").click()
        expect(planned.locator(".applied-note")).to_contain_text("Applied", timeout=30_000)
        screenshot(page, "schedule-mode.png")
    # The page sends the browser's own clock as `today`, so the day is checked by its weekday.
    start, end = events_of(call(server, "GET", "/calendar").content)["Design review"]
    assert (start.weekday(), start.hour, end - start) == (3, 15, datetime(1, 1, 1, 11) - datetime(1, 1, 1, 10))
