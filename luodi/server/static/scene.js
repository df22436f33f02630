// Luodi web chat: the "Scene" mode. A scene — several characters at one table, each with public facts
// and a secret (a murder-mystery game) — is loaded from a JSON file or from the scene editor, which
// starts with an example. The route checks it, then the cast is shown: names and public facts, never
// the secrets (the editor, which holds them, folds away). The Scene button says the message box's line
// to the table as the scene's user, and every character answers in turn; Next round lets them talk
// on without a line. The server keeps no table (POST /v1/apps/scene): the transcript lives here and
// goes with every request, one request per speaker so each line shows as soon as it is said; New
// chat starts it again. Text is shown with textContent only.
// Uses chat.js's $(), modeButton(), appFileInput(), headers(), errorMessage(), addMessage(),
// showError() and setStats().
"use strict";

(function () {
  const EXAMPLE = {
    title: "Death at Hollow Manor", setting: "Lord Hollow was found dead in the library.", user: "Inspector",
    characters: [
      { name: "Agnes", public: "The cook.", secret: "She drugged the lord's cocoa." },
      { name: "Victor", public: "The heir.", secret: "He owes a gambling club 4000 pounds.",
        style: "charming, evasive" },
    ],
  };
  // The loaded scene: { scene (its JSON, as the route takes it), user, names (as the route reads
  // them), lines ([{ speaker, text }]: the transcript so far) }; a new load or New chat replaces it.
  let table = null;

  const input = appFileInput("scene-file", "Scene", "A scene to play: JSON with title, setting, user and "
    + "characters [{name, public, secret, style}]", ".json,application/json");
  const status = $("scene-file-status");
  const editor = sceneEditor();
  const panel = castPanel();
  const button = modeButton("scene", "Scene", "Say the message to the scene's characters; they answer in turn");

  function sceneEditor() {
    const details = document.createElement("details");
    details.id = "scene-editor";
    details.className = "app-panel";
    const summary = document.createElement("summary");
    summary.textContent = "Scene editor";
    const text = document.createElement("textarea");
    text.id = "scene-json";
    text.rows = 10;
    text.spellcheck = false;
    text.value = JSON.stringify(EXAMPLE, null, 2);
    const load = document.createElement("button");
    load.id = "scene-load";
    load.type = "button";
    load.textContent = "Load scene";
    load.addEventListener("click", () => loadScene(text.value, "the scene editor"));
    details.append(summary, text, load);
    $("apps").append(details);
    return details;
  }

  // The cast, shown once a scene is loaded: title, setting, the user's role, each character's public facts.
  function castPanel() {
    const section = document.createElement("section");
    section.id = "scene-cast";
    section.className = "app-panel cast";
    section.hidden = true;
    $("apps").append(section);
    return section;
  }

  input.addEventListener("change", async function () {
    const file = input.files[0];
    if (!file) return;
    const text = await file.text();
    input.value = "";
    editor.querySelector("textarea").value = text;
    await loadScene(text, file.name);
  });

  $("new-chat").addEventListener("click", () => { if (table) table = { ...table, lines: [] }; });

  // Parse `text`, let the route check it (a dry run that prompts no one), then show the cast.
  async function loadScene(text, source) {
    table = null;
    panel.hidden = true;
    let parsed;
    try {
      parsed = JSON.parse(text);
    } catch (err) {
      status.textContent = source + ": not JSON (" + err.message + ")";
      return;
    }
    status.textContent = "checking " + source + "…";
    try {
      const response = await fetch("/v1/apps/scene", {
        method: "POST", headers: headers(),
        body: JSON.stringify({ scene: parsed, speakers: [], print_prompt: true }),
      });
      if (!response.ok) throw new Error(await errorMessage(response));
    } catch (err) {
      status.textContent = source + ": " + err.message;
      return;
    }
    // Names as luodi.apps.scene reads them (trimmed; the user is "Detective" unless named), so the
    // transcript's speakers match the route's.
    table = { scene: parsed, user: (parsed.user || "").trim() || "Detective",
      names: parsed.characters.map((c) => c.name.trim()), lines: [] };
    showCast(parsed);
    status.textContent = "playing " + parsed.title.trim();
    editor.open = false;
  }

  function showCast(scene) {
    const title = document.createElement("div");
    title.className = "title";
    title.textContent = scene.title.trim() + " — " + scene.setting.trim() + " You are " + table.user + ".";
    const list = document.createElement("ul");
    scene.characters.forEach((character, i) => {
      const item = document.createElement("li");
      const name = document.createElement("b");
      name.textContent = table.names[i];
      item.append(name, ": " + character.public.trim()); // never character.secret
      list.appendChild(item);
    });
    const next = document.createElement("button");
    next.id = "scene-next";
    next.type = "button";
    next.textContent = "Next round";
    next.title = "The characters talk on, each in turn, without a line from you";
    next.addEventListener("click", () => playRound(null));
    panel.replaceChildren(title, list, next);
    panel.hidden = false;
  }

  button.addEventListener("click", function () {
    const text = $("prompt").value.trim();
    if (!text) return;
    if (!table) {
      addMessage("assistant error", "Load a scene first (Scene, above).");
      return;
    }
    $("prompt").value = "";
    playRound(text);
  });

  // The user's line (null: none), then every character in the scene's order.
  async function playRound(message) {
    const round = table; // a new load or New chat during the round replaces the table: this round stops
    setPlaying(true);
    try {
      if (message !== null) addMessage("user", message, round.user);
      for (const name of round.names) {
        if (round !== table) return;
        const line = await speak(round, name, message, addMessage("assistant scene streaming", "", name));
        if (line === null) {
          if (message !== null && !$("prompt").value) $("prompt").value = message; // not heard: keep it
          return;
        }
        if (message !== null) round.lines.push({ speaker: round.user, text: message });
        round.lines.push({ speaker: line.speaker, text: line.text });
        message = null; // heard once, now in the transcript
      }
    } finally {
      setPlaying(false);
    }
  }

  // `name`'s line at `round`'s table, into `box`; returns it, or null after an error (shown in the box).
  async function speak(round, name, message, box) {
    try {
      const response = await fetch("/v1/apps/scene", {
        method: "POST", headers: headers(), body: JSON.stringify({
          scene: round.scene, transcript: round.lines, speakers: [name],
          ...(message !== null ? { message: message } : {}),
          max_tokens: Number($("max-tokens").value), temperature: Number($("temperature").value),
        }),
      });
      if (!response.ok) throw new Error(await errorMessage(response));
      const line = (await response.json()).lines[0];
      box.querySelector(".text").textContent = line.text;
      if (line.leaked) setStats(box, "gave its secret away");
      return line;
    } catch (err) {
      showError(box, err.message);
      return null;
    } finally {
      box.classList.remove("streaming");
    }
  }

  function setPlaying(playing) {
    button.disabled = playing;
    const next = $("scene-next");
    if (next) next.disabled = playing;
  }
})();
