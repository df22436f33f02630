// Luodi web chat: the "Persona" mode. A character card (.json, or a .png card) is loaded from disk;
// its greeting is shown, and the Persona button sends the message box's text to the character
// (POST /v1/apps/persona, streamed), which answers in character. The mode keeps its own chat with
// the character (the server keeps none); New chat starts it again from the greeting.
// Role-play text is shown as plain text (textContent), never as HTML or Markdown.
// Uses chat.js's $(), modeButton(), appFileInput(), headers(), errorMessage(), addMessage(),
// showError() and sseEvents().
"use strict";

(function () {
  const PNG = [0x89, 0x50, 0x4e, 0x47];
  let card = null; // { card: {...} } or { card_png: "base64" }, as the API takes it
  let history = [];
  const input = appFileInput("persona-card", "Character card", "A character card to chat with (V1/V2/V3, .json or .png)",
    ".json,.png,application/json,image/png");
  const status = $("persona-card-status");
  const button = modeButton("persona", "Persona", "Say the message to the loaded character card");

  input.addEventListener("change", async function () {
    const file = input.files[0];
    if (!file) return;
    try {
      card = await readCard(file);
    } catch (err) {
      card = null;
      status.textContent = file.name + ": " + err.message;
      return;
    }
    history = [];
    await greet();
  });

  $("new-chat").addEventListener("click", () => { history = []; if (card) greet(); });

  // The card as the API takes it: a PNG card base64-encoded, anything else parsed as JSON.
  async function readCard(file) {
    const bytes = new Uint8Array(await file.arrayBuffer());
    if (PNG.every((b, i) => bytes[i] === b)) return { card_png: base64(bytes) };
    try {
      return { card: JSON.parse(new TextDecoder().decode(bytes)) };
    } catch (err) {
      throw new Error("neither a PNG card nor JSON (" + err.message + ")");
    }
  }

  function base64(bytes) {
    let binary = "";
    for (let i = 0; i < bytes.length; i += 0x8000) binary += String.fromCharCode.apply(null, bytes.subarray(i, i + 0x8000));
    return btoa(binary);
  }

  async function greet() {
    const response = await fetch("/v1/apps/persona/greeting", {
      method: "POST", headers: headers(), body: JSON.stringify(card),
    });
    if (!response.ok) {
      status.textContent = await errorMessage(response);
      card = null;
      return;
    }
    const character = await response.json();
    status.textContent = "chatting with " + character.name;
    if (character.greeting) addMessage("assistant persona", character.greeting);
  }

  button.addEventListener("click", async function () {
    const text = $("prompt").value.trim();
    if (!text) return;
    if (!card) {
      addMessage("assistant error", "Load a character card first (Character card, above).");
      return;
    }
    $("prompt").value = "";
    addMessage("user", text);
    const messages = history.concat([{ role: "user", content: text }]);
    button.disabled = true;
    try {
      const reply = await say(messages, addMessage("assistant persona", ""));
      if (reply !== null) history = messages.concat([{ role: "assistant", content: reply }]);
    } finally {
      button.disabled = false;
    }
  });

  // Stream the character's reply into `box`; returns its text, or null after an error.
  async function say(messages, box) {
    const out = box.querySelector(".text");
    box.classList.add("streaming");
    let reply = "";
    try {
      const response = await fetch("/v1/apps/persona", {
        method: "POST", headers: headers(), body: JSON.stringify({
          ...card, messages: messages, stream: true,
          max_tokens: Number($("max-tokens").value), temperature: Number($("temperature").value),
        }),
      });
      if (!response.ok) throw new Error(await errorMessage(response));
      for await (const event of sseEvents(response)) {
        if (event.data === "[DONE]") break;
        const data = JSON.parse(event.data);
        if (event.event === "error") throw new Error(data.error.message);
        reply += data.delta;
        out.textContent = reply;
      }
      out.textContent = reply = reply.trim();
      return reply;
    } catch (err) {
      showError(box, err.message);
      return null;
    } finally {
      box.classList.remove("streaming");
    }
  }
})();
