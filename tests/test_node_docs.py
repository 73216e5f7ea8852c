"""Every node of the pack has a help page, web/docs/<NodeClass>.md, which the frontend's node help shows
(WEB_DIRECTORY/docs/<NodeClass>.md, served under /extensions/<pack folder>/docs/). A page describes each of the
node's inputs and outputs, and its measured numbers come from the project's own measurements, not from memory.
tests/test_browser_help.py opens one page in the real frontend.
"""
import glob
import os
import re
import urllib.request

import pytest

from comfy_fixtures import PACK_DIR_NAME, REPO_ROOT

DOCS_DIR = os.path.join(REPO_ROOT, "web", "docs")
PAGES = sorted(glob.glob(os.path.join(DOCS_DIR, "*.md")))
# Where a page's "## Measured" numbers may come from (the README and the docs/ pages it links, the benchmark results,
# the digits testbed).
MEASUREMENT_SOURCES = [os.path.join(REPO_ROOT, "README.md"), *sorted(glob.glob(os.path.join(REPO_ROOT, "docs", "*.md"))),
                       os.path.join(REPO_ROOT, "testbed", "digits", "RESULTS.md"),
                       *sorted(glob.glob(os.path.join(REPO_ROOT, "bench", "results", "*.md")))]
NUMBER = re.compile(r"(?<![\w.])\d+(?:[.,]\d+)*(?:e-?\d+)?(?![\w])")


def read(path):
    with open(path, encoding="utf-8") as f:
        return f.read()


def section(markdown, title):
    match = re.search(rf"^## {title}\n(.*?)(?=^## |\Z)", markdown, re.MULTILINE | re.DOTALL)
    return match.group(1) if match else None


@pytest.fixture(scope="module")
def our_nodes(comfy_server):
    """{node class: its /object_info entry} for the nodes the server loaded from this pack."""
    module = f"custom_nodes.{PACK_DIR_NAME}"
    nodes = {name: info for name, info in comfy_server.object_info().items() if info.get("python_module") == module}
    assert len(nodes) >= 10, sorted(nodes)
    return nodes


def test_every_node_has_a_help_page_and_every_page_a_node(our_nodes):
    pages = {os.path.basename(p)[:-3] for p in PAGES}
    assert sorted(set(our_nodes) - pages) == [], "nodes without web/docs/<NodeClass>.md"
    assert sorted(pages - set(our_nodes)) == [], "help pages for node classes the pack does not have"


def test_each_page_describes_the_nodes_inputs_and_outputs(our_nodes):
    for name, info in sorted(our_nodes.items()):
        page = read(os.path.join(DOCS_DIR, f"{name}.md"))
        assert page.startswith(f"# {info['display_name']}\n"), f"{name}: title should be the node's display name"
        inputs = [n for group in ("required", "optional") for n in info["input"].get(group, {})]
        outputs = info["output_name"]
        assert inputs and outputs
        missing = [n for n in inputs + outputs if f"`{n}`" not in page]
        assert not missing, f"web/docs/{name}.md does not describe {missing}"
        for heading in ("Inputs", "Example"):
            assert section(page, heading), f"{name}: no '## {heading}' section"
        assert section(page, "Outputs") or section(page, "Output"), f"{name}: no outputs section"


def test_the_server_serves_each_page_as_the_frontend_asks_for_it(comfy_server, our_nodes):
    for name in sorted(our_nodes):
        url = f"{comfy_server.url}/extensions/{PACK_DIR_NAME}/docs/{name}.md"
        with urllib.request.urlopen(url, timeout=30) as response:
            body, kind = response.read().decode("utf-8"), response.headers.get("Content-Type", "")
        # The frontend drops a help page served as text/html (its fallback for missing files).
        assert body == read(os.path.join(DOCS_DIR, f"{name}.md")) and "text/html" not in kind, (name, kind)


@pytest.mark.parametrize("page", PAGES, ids=[os.path.basename(p) for p in PAGES])
def test_measured_numbers_come_from_the_projects_measurements(page):
    measured = section(read(page), "Measured")
    if measured is None:
        return  # a page may have nothing measured to report (Load Q-Sched Preset)
    sources = "\n".join(read(p) for p in MEASUREMENT_SOURCES)
    numbers = set(NUMBER.findall(measured))
    assert numbers, "a Measured section without numbers"
    unsourced = [n for n in sorted(numbers)
                 if not re.search(rf"(?<![\w.]){re.escape(n)}(?![\w])", sources)]
    assert not unsourced, f"{os.path.basename(page)}: numbers found in none of the measurement files: {unsourced}"


def test_pages_exist():
    assert len(PAGES) >= 10, PAGES
