// Luodi web chat: a small Markdown renderer for model answers (no build step, no external assets).
// Owns turning Markdown text into DOM nodes: paragraphs, headings, bold/italic/strikethrough,
// inline code, fenced code blocks, ordered/unordered (nested) lists, tables, block quotes, rules,
// and links. Safe by construction: every piece of model text enters the page through
// createTextNode / textContent, never as HTML, and a link keeps its href only when it is an
// absolute http(s): or mailto: URL. Re-rendering the whole text on each streamed delta is cheap
// at chat-answer sizes and keeps half-written constructs (an unclosed fence) displayed sensibly.
"use strict";

(function () {
  const FENCE = /^ {0,3}(`{3,}|~{3,})\s*([A-Za-z0-9_+-]*)/;
  const HEADING = /^ {0,3}(#{1,6})\s+(.*?)(?:\s+#+)?\s*$/;
  const RULE = /^ {0,3}([-*_])(?:\s*\1){2,}\s*$/;
  const QUOTE = /^ {0,3}> ?/;
  const LIST_ITEM = /^( *)([-*+]|\d{1,9}[.)])\s+(.*)$/;
  const TABLE_SEPARATOR = /^\s*\|?\s*:?-+:?\s*(\|\s*:?-+:?\s*)*\|?\s*$/;
  const SAFE_PROTOCOLS = new Set(["http:", "https:", "mailto:"]);

  function el(tag, children) {
    const node = document.createElement(tag);
    if (children) node.append(...children);
    return node;
  }

  function isBlank(line) { return !line.trim(); }

  function startsBlock(line, next) {
    return FENCE.test(line) || HEADING.test(line) || RULE.test(line) || QUOTE.test(line) ||
      LIST_ITEM.test(line) || isTableStart(line, next);
  }

  function isTableStart(line, next) {
    return line.includes("|") && next !== undefined && next.includes("-") && TABLE_SEPARATOR.test(next);
  }

  // -- blocks ------------------------------------------------------------------------------------
  function renderBlocks(lines) {
    const out = [];
    let i = 0;
    while (i < lines.length) {
      const line = lines[i];
      let m;
      if (isBlank(line)) {
        i += 1;
      } else if ((m = FENCE.exec(line))) {
        i = codeBlock(lines, i, m, out);
      } else if ((m = HEADING.exec(line))) {
        out.push(el("h" + m[1].length, inline(m[2])));
        i += 1;
      } else if (RULE.test(line)) {
        out.push(el("hr"));
        i += 1;
      } else if (isTableStart(line, lines[i + 1])) {
        i = table(lines, i, out);
      } else if (QUOTE.test(line)) {
        const body = [];
        while (i < lines.length && QUOTE.test(lines[i])) body.push(lines[i++].replace(QUOTE, ""));
        out.push(el("blockquote", renderBlocks(body)));
      } else if (LIST_ITEM.test(line)) {
        i = list(lines, i, out);
      } else {
        const body = [line];
        i += 1;
        while (i < lines.length && !isBlank(lines[i]) && !startsBlock(lines[i], lines[i + 1])) body.push(lines[i++]);
        out.push(el("p", paragraph(body)));
      }
    }
    return out;
  }

  function paragraph(lines) {
    const nodes = [];
    lines.forEach((line, n) => {
      if (n) nodes.push(el("br"));
      nodes.push(...inline(line.trim()));
    });
    return nodes;
  }

  function codeBlock(lines, i, m, out) {
    const fence = m[1];
    const body = [];
    i += 1;
    while (i < lines.length && !(lines[i].trim().startsWith(fence) && lines[i].trim().replace(/[`~]/g, "") === "")) {
      body.push(lines[i++]);
    }
    const code = el("code");
    if (m[2]) code.className = "language-" + m[2];
    code.textContent = body.join("\n");
    out.push(el("pre", [code]));
    return i + 1; // past the closing fence (or the end, while it is still streaming)
  }

  function cells(line) {
    let row = line.trim();
    if (row.startsWith("|")) row = row.slice(1);
    if (row.endsWith("|") && !row.endsWith("\\|")) row = row.slice(0, -1);
    return row.split(/(?<!\\)\|/).map((cell) => cell.trim().replace(/\\\|/g, "|"));
  }

  function table(lines, i, out) {
    const align = cells(lines[i + 1]).map((spec) =>
      spec.startsWith(":") && spec.endsWith(":") ? "center" : spec.endsWith(":") ? "right" : spec.startsWith(":") ? "left" : "");
    const row = (line, tag) => el("tr", cells(line).map((text, n) => {
      const cell = el(tag, inline(text));
      if (align[n]) cell.style.textAlign = align[n];
      return cell;
    }));
    const head = el("thead", [row(lines[i], "th")]);
    const body = el("tbody");
    i += 2;
    while (i < lines.length && !isBlank(lines[i]) && lines[i].includes("|")) body.append(row(lines[i++], "td"));
    out.push(el("table", [head, body]));
    return i;
  }

  function list(lines, i, out) {
    const first = LIST_ITEM.exec(lines[i]);
    const indent = first[1].length;
    const ordered = /\d/.test(first[2]);
    const node = el(ordered ? "ol" : "ul");
    if (ordered && parseInt(first[2], 10) !== 1) node.start = parseInt(first[2], 10);
    while (i < lines.length) {
      const m = LIST_ITEM.exec(lines[i]);
      if (!m || m[1].length !== indent || /\d/.test(m[2]) !== ordered) break;
      const body = [m[3]];
      i += 1;
      while (i < lines.length) {
        const line = lines[i];
        const item = LIST_ITEM.exec(line);
        const depth = line.length - line.trimStart().length;
        if (isBlank(line)) {
          const next = lines.slice(i + 1).find((l) => !isBlank(l));
          if (next === undefined || next.length - next.trimStart().length <= indent) break;
        } else if (item ? item[1].length <= indent : depth <= indent && startsBlock(line, lines[i + 1])) {
          break;
        }
        body.push(line);
        i += 1;
      }
      node.append(listItem(body));
      if (i < lines.length && isBlank(lines[i])) i += 1;
    }
    out.push(node);
    return i;
  }

  function listItem(body) {
    const rest = body.slice(1).filter((l) => !isBlank(l));
    const cut = rest.length ? Math.min(...rest.map((l) => l.length - l.trimStart().length)) : 0;
    const blocks = renderBlocks([body[0], ...body.slice(1).map((l) => l.slice(Math.min(cut, l.length - l.trimStart().length)))]);
    if (blocks.length && blocks[0].tagName === "P") blocks.splice(0, 1, ...blocks[0].childNodes); // a tight item
    return el("li", blocks);
  }

  // -- inline ------------------------------------------------------------------------------------
  const DELIMITERS = [["**", "strong"], ["__", "strong"], ["~~", "del"], ["*", "em"], ["_", "em"]];

  function inline(text) {
    const nodes = [];
    let plain = "";
    const flush = () => { if (plain) nodes.push(document.createTextNode(plain)); plain = ""; };
    let i = 0;
    while (i < text.length) {
      const rest = text.slice(i);
      const span = codeSpan(rest) || link(rest) || emphasis(text, i);
      if (span) {
        flush();
        nodes.push(span.node);
        i += span.length;
      } else if (rest[0] === "\\" && /^[\\`*_~[\]()#|>!-]/.test(rest.slice(1))) {
        plain += rest[1];
        i += 2;
      } else {
        plain += rest[0];
        i += 1;
      }
    }
    flush();
    return nodes;
  }

  function codeSpan(rest) {
    const m = /^(`+)([^`]|[^`][\s\S]*?[^`])\1(?!`)/.exec(rest);
    if (!m) return null;
    const node = el("code");
    node.textContent = m[2].replace(/^ (.*) $/, "$1");
    return { node: node, length: m[0].length };
  }

  function link(rest) {
    const m = /^\[([^\]\n]+)\]\(\s*<?([^\s<>()]+)>?(?:\s+"[^"]*")?\s*\)/.exec(rest);
    if (!m) return null;
    const href = safeHref(m[2]);
    if (!href) return { node: el("span", inline(m[1])), length: m[0].length }; // the label, never the URL
    const node = el("a", inline(m[1]));
    node.href = href;
    node.rel = "noopener noreferrer nofollow";
    node.target = "_blank";
    return { node: node, length: m[0].length };
  }

  function safeHref(url) {
    try {
      const parsed = new URL(url); // relative URLs throw: only absolute ones are links
      return SAFE_PROTOCOLS.has(parsed.protocol) ? parsed.href : null;
    } catch (_) {
      return null;
    }
  }

  function emphasis(text, i) {
    for (const [mark, tag] of DELIMITERS) {
      if (!text.startsWith(mark, i)) continue;
      const open = i + mark.length;
      if (open >= text.length || /\s/.test(text[open])) continue;
      if (mark[0] === "_" && i > 0 && /\w/.test(text[i - 1])) continue; // snake_case stays as it is
      const close = closing(text, open, mark);
      if (close < 0) continue;
      return { node: el(tag, inline(text.slice(open, close))), length: close + mark.length - i };
    }
    return null;
  }

  function closing(text, from, mark) {
    for (let j = text.indexOf(mark, from + 1); j >= 0; j = text.indexOf(mark, j + 1)) {
      const after = text[j + mark.length];
      if (/\s/.test(text[j - 1])) continue;
      if (mark.length === 1 && text[j + 1] === mark) { j += 1; continue; } // part of a ** run
      if (mark[0] === "_" && after !== undefined && /\w/.test(after)) continue;
      return j;
    }
    return -1;
  }

  // Markdown text → a DocumentFragment of nodes built from it (model text only as text nodes).
  function renderMarkdown(text) {
    const fragment = document.createDocumentFragment();
    fragment.append(...renderBlocks(String(text).replace(/\r\n?/g, "\n").split("\n")));
    return fragment;
  }

  window.renderMarkdown = renderMarkdown;
})();
