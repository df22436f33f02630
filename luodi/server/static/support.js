// Luodi web chat: the "Support" mode. Asks the support bot (POST /v1/apps/support, streamed) the
// question in the message box, over the knowledge base picked in the header; shows the answer as
// it streams, then its sources, or a hand-off notice when the knowledge base does not cover the
// question. Keeps its own conversation, so follow-up questions are searched with the earlier ones.
// Uses chat.js's $(), modeButton(), headers(), errorMessage(), addMessage(), showError(),
// markdownView(), sseEvents() and showSources().
"use strict";

(function () {
  let history = [];
  const button = modeButton("support", "Support",
    "Ask the support bot, which answers from the selected knowledge base or hands off to a person");

  $("new-chat").addEventListener("click", () => { history = []; });

  button.addEventListener("click", async function () {
    const question = $("prompt").value.trim();
    if (!question) return;
    const kb = $("kb").value;
    if (!kb) {
      addMessage("assistant error", "Pick a knowledge base first: the support bot answers from its documents.");
      return;
    }
    $("prompt").value = "";
    addMessage("user", question);
    const messages = history.concat([{ role: "user", content: question }]);
    button.disabled = true;
    try {
      const answer = await ask(kb, messages, addMessage("assistant", ""));
      if (answer !== null) history = messages.concat([{ role: "assistant", content: answer }]);
    } finally {
      button.disabled = false;
    }
  });

  // Stream one answer into `box`; returns its text, or null after an error.
  async function ask(kb, messages, box) {
    const out = box.querySelector(".text");
    out.classList.add("markdown");
    box.classList.add("streaming");
    const view = markdownView(out);
    let answer = "";
    try {
      const response = await fetch("/v1/apps/support", {
        method: "POST", headers: headers(), body: JSON.stringify({ kb: kb, messages: messages, stream: true }),
      });
      if (!response.ok) throw new Error(await errorMessage(response));
      for await (const event of sseEvents(response)) {
        const data = JSON.parse(event.data);
        if (event.event === "error") throw new Error(data.error.message);
        if (event.event === "message") {
          answer += data.delta;
          view.set(answer);
        } else if (event.event === "sources" && data.length) {
          view.flush();
          showSources(box, data, answer);
        } else if (event.event === "handoff") {
          answer = data.answer;
          view.set(answer);
          showHandoff(box, data.reason);
        }
      }
      return answer;
    } catch (err) {
      showError(box, err.message);
      return null;
    } finally {
      view.flush();
      box.classList.remove("streaming");
    }
  }

  function showHandoff(box, reason) {
    const note = document.createElement("div");
    note.className = "handoff-note";
    note.textContent = "Handed off to a colleague: " + reason;
    box.appendChild(note);
  }
})();
