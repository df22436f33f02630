// Luodi web chat: the "Outline" mode. A document picked from disk (pdf, docx, html, md, txt, images)
// is sent to POST /v1/apps/outline; its outline comes back as Markdown and is shown as an answer.
// Nothing is stored on the server and no model runs.
// Uses chat.js's $(), appFileInput(), authHeaders(), errorMessage(), addMessage() and showError(),
// and markdown.js's renderMarkdown().
"use strict";

(function () {
  const input = appFileInput("outline-file", "Outline", "Show the outline of a document (pdf, docx, html, md, txt)",
    ".pdf,.docx,.html,.htm,.md,.markdown,.txt,.png,.jpg,.jpeg");
  const status = $("outline-file-status");

  input.addEventListener("change", async function () {
    const file = input.files[0];
    if (!file) return;
    addMessage("user", "Outline of " + file.name);
    const box = addMessage("assistant outline", "Reading " + file.name + "…");
    const out = box.querySelector(".text");
    const form = new FormData();
    form.append("file", file, file.name);
    status.textContent = "";
    try {
      const response = await fetch("/v1/apps/outline", { method: "POST", headers: authHeaders(), body: form });
      if (!response.ok) throw new Error(await errorMessage(response));
      out.classList.add("markdown");
      out.replaceChildren(renderMarkdown((await response.json()).markdown));
    } catch (err) {
      out.textContent = "";
      showError(box, err.message);
    } finally {
      input.value = "";
    }
  });
})();
