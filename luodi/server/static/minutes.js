// Luodi web chat: the "Minutes" mode. Sends the composer's text as a meeting transcript
// ("Name: text" per turn) to POST /v1/apps/minutes and shows the minutes' Markdown as an answer.
// Uses chat.js's modeButton(), headers(), errorMessage() and addMessage(), and markdown.js's renderMarkdown().
"use strict";

(function () {
  const button = modeButton("minutes", "Minutes", "Write meeting minutes of the transcript in the message box");

  button.addEventListener("click", async function () {
    const prompt = document.getElementById("prompt");
    const transcript = prompt.value;
    if (!transcript.trim()) return;
    addMessage("user", transcript);
    const box = addMessage("assistant", "Writing minutes…");
    const body = box.querySelector(".text");
    button.disabled = true;
    try {
      const response = await fetch("/v1/apps/minutes", {
        method: "POST", headers: headers(), body: JSON.stringify({ transcript: transcript }),
      });
      if (!response.ok) {
        box.className = "message assistant error";
        body.textContent = await errorMessage(response);
        return;
      }
      prompt.value = "";
      body.textContent = "";
      body.appendChild(renderMarkdown((await response.json()).markdown));
    } catch (err) {
      box.className = "message assistant error";
      body.textContent = String(err);
    } finally {
      button.disabled = false;
    }
  });
})();
