"""The node help pages (web/docs/<NodeClass>.md) in the real ComfyUI frontend, in headless Chromium.

A user selects a Q-Sched node and presses the selection toolbox's info button; the frontend then fetches
/extensions/<pack folder>/docs/<NodeClass>.md (after trying the locale's <NodeClass>/<locale>.md, which this pack
does not ship, so that request answers 404 by design) and renders it in its node help panel. Uses the browser
harness of tests/test_browser_frontend.py (its `browser` fixture, tests/browser/drive.mjs, the shared
`comfy_server`); needs what those tests need and skips the same way.
"""
import json
import os
import re

from test_browser_frontend import BROWSER_DIR, artifact, browser, mode, run_driver  # noqa: F401  (fixtures)
from comfy_fixtures import REPO_ROOT

HELP_NODE = "QSchedKSampler"
DOCS_DIR = os.path.join(REPO_ROOT, "web", "docs")


def first_sentence(markdown_path):
    """The first sentence of the page's first paragraph, as the frontend renders it (markdown marks removed)."""
    with open(markdown_path, encoding="utf-8") as f:
        paragraphs = [p.strip() for p in f.read().split("\n\n")]
    text = next(p for p in paragraphs if p and not p.startswith("#"))
    text = re.sub(r"[`*_]", "", " ".join(text.split()))
    return text.split(": ")[0]


# Page side: add the node, select it as a click would, press the toolbox's info button, wait for the text.
OPEN_HELP = """
const frontend = window.__COMFYUI_FRONTEND_VERSION__ ?? null;
const node = LiteGraph.createNode("%(node)s"); node.pos = [300, 200]; app.graph.add(node);
app.canvas.selectNode(node);
app.graph.setDirtyCanvas(true, true);
const wait = async (test, ms = 60000) => {
  for (const t0 = Date.now(); Date.now() - t0 < ms; await new Promise((r) => setTimeout(r, 100))) {
    const value = test(); if (value) return value;
  }
  return null;
};
const norm = (text) => text.replace(/\\s+/g, " ").trim();
const button = await wait(() =>
  [...document.querySelectorAll('[data-testid="info-button"]')].find((b) => b.offsetParent !== null));
if (!button) return { frontend, error: "no visible info button after selecting the node",
                      body: norm(document.body.innerText).slice(0, 3000) };
button.click();
const expected = %(expected)s;
// The rendered markdown: the paragraph with the page's first sentence, inside the block that holds its sections.
const paragraph = await wait(() => [...document.querySelectorAll("p")]
  .find((p) => norm(p.textContent).includes(expected) && p.offsetParent !== null));
if (!paragraph) return { frontend, error: "the help text did not appear after pressing the info button",
                         body: norm(document.body.innerText).slice(0, 3000) };
let page = paragraph;
while (page.parentElement && page.querySelectorAll("h2").length < 3) page = page.parentElement;
return { frontend, text: norm(paragraph.textContent), page_text: norm(page.textContent).slice(0, 6000),
         headings: [...page.querySelectorAll("h1, h2, h3")].map((h) => norm(h.textContent)),
         container: paragraph.closest("[class*=help], [class*=Help]")?.className ?? "" };
"""


# The frontend asks for the locale's page <NodeClass>/<locale>.md before <NodeClass>.md; this pack ships none.
LOCALE_PAGE_404 = re.compile(r"^HTTP 404 .*/extensions/[^/]+/docs/\w+/[\w-]+\.md$")


def test_info_button_shows_the_nodes_help_page(browser, comfy_server, mode):  # noqa: F811  (imported fixtures)
    expected = first_sentence(os.path.join(DOCS_DIR, f"{HELP_NODE}.md"))
    assert len(expected) > 40, expected
    report = run_driver(browser, comfy_server, artifact("help_page", mode), expected_errors=LOCALE_PAGE_404,
                        require_types=[HELP_NODE],
                        workflow=os.path.join(BROWSER_DIR, "empty_workflow.json"),
                        prepare=OPEN_HELP % {"node": HELP_NODE, "expected": json.dumps(expected)},
                        vue_nodes=mode == "vue")
    seen = report["prepared"]
    assert "error" not in seen, f"{seen['error']} (frontend {seen['frontend']}); the page showed: {seen['body']}"
    assert expected in seen["text"]
    # The whole page is there, not only its first line: the section headings and an input's description.
    assert {"Inputs", "Example", "Measured"} <= set(seen["headings"]), seen["headings"]
    assert "TCD's stochasticity" in seen["page_text"]
    assert "node-help-content" in seen["container"], seen["container"]  # the frontend's node help panel
