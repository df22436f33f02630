// Luodi web chat: the "Schedule" mode. A calendar (.ics) is uploaded once (PUT
// /v1/apps/schedule/calendar, stored on the server for this API key); the Schedule button sends the
// message box's request ("move the review to Thursday 3pm") to POST /v1/apps/schedule, which plans
// changes without writing them. The planned changes are listed with an Apply button that writes
// them (POST /v1/apps/schedule/apply). Text is shown with textContent only.
// Uses chat.js's $(), modeButton(), appFileInput(), headers(), authHeaders(), errorMessage(),
// addMessage() and showError().
"use strict";

(function () {
  const input = appFileInput("schedule-calendar", "Calendar", "Upload your calendar (.ics) for the schedule assistant",
    ".ics,text/calendar");
  const status = $("schedule-calendar-status");
  const button = modeButton("schedule", "Schedule", "Ask about or change your calendar: 'move the review to Thursday 3pm'");

  input.addEventListener("change", async function () {
    const file = input.files[0];
    if (!file) return;
    status.textContent = "uploading " + file.name + "…";
    const response = await fetch("/v1/apps/schedule/calendar", { method: "PUT", headers: authHeaders(), body: file });
    status.textContent = response.ok ? file.name + ": calendar stored" : file.name + ": " + await errorMessage(response);
    input.value = "";
  });

  button.addEventListener("click", async function () {
    const request = $("prompt").value.trim();
    if (!request) return;
    $("prompt").value = "";
    addMessage("user", request);
    const box = addMessage("assistant schedule", "Planning…");
    button.disabled = true;
    try {
      const response = await fetch("/v1/apps/schedule", {
        method: "POST", headers: headers(), body: JSON.stringify({ request: request, today: localNow() }),
      });
      if (!response.ok) throw new Error(await errorMessage(response));
      show(box, await response.json());
    } catch (err) {
      box.querySelector(".text").textContent = "";
      showError(box, err.message);
    } finally {
      button.disabled = false;
    }
  });

  // The browser's wall-clock time, for "tomorrow" and "Tuesday" (ISO 8601 without a zone).
  function localNow() {
    const now = new Date();
    return new Date(now.getTime() - now.getTimezoneOffset() * 60000).toISOString().slice(0, 19);
  }

  function show(box, plan) {
    box.querySelector(".text").textContent = plan.changes.length ? "Planned changes:" : plan.answer;
    if (!plan.changes.length) return;
    const list = document.createElement("ul");
    list.className = "changes";
    for (const change of plan.changes) {
      const item = document.createElement("li");
      item.textContent = change.description;
      list.appendChild(item);
    }
    const apply = document.createElement("button");
    apply.type = "button";
    apply.className = "apply";
    apply.textContent = "Apply";
    apply.addEventListener("click", () => applyPlan(box, apply, plan.plan_id));
    box.append(list, apply);
  }

  async function applyPlan(box, apply, planId) {
    apply.disabled = true;
    const response = await fetch("/v1/apps/schedule/apply", {
      method: "POST", headers: headers(), body: JSON.stringify({ plan_id: planId }),
    });
    if (!response.ok) {
      showError(box, await errorMessage(response));
      return;
    }
    const note = document.createElement("div");
    note.className = "applied-note";
    note.textContent = "Applied: the calendar is updated.";
    box.appendChild(note);
  }
})();
