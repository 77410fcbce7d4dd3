"""The example workflows in ComfyUI's real frontend, in headless Chromium.

For each UI workflow the page loads it with ``app.loadGraphData`` (as dragging the file in
does), and the test checks what an artist would meet:
  - no missing-node / missing-model dialog, no error toast, no new console error;
  - every widget shows the value the file holds, every combo value is one of its options, and
    the frontend saves the graph back with the same widget values, sockets and links;
  - the frontend's own conversion (``app.graphToPrompt``) gives exactly the API file;
  - queued like the Run button does (``app.queuePrompt``), it succeeds, the page receives the
    saved image, and the PNG carries the workflow.
Screenshots go to pytest's temp folder; with SCSA_SCREENSHOT_DIR=docs the SCSA one is also
written as docs/graph_scsa.png (run with SCSA_SEM_PAIRS_DIR=/nonexistent to show the synthetic
images instead of the data set's).

Chromium: Debian's ``chromium`` (scripts/setup.sh installs it on CI), driven over the DevTools
protocol with websocket-client (tests/cdp_browser.py). Without it the tests skip locally and
fail on CI (CI=true).
"""
from __future__ import annotations

import io
import json
import os
import time
import urllib.request
from pathlib import Path

import pytest
from PIL import Image

import workflow_inputs as wi
from cdp_browser import BrowserError, Chromium, find_chromium
from scripts import run_workflow as rw
from scripts import workflow_format as wf

VIEWPORT = (1800, 1000)
DOCS_SCREENSHOTS = {"scsa_sd15_color_maps": "graph_scsa.png"}
MAX_SCREENSHOT_BYTES = 300_000
# Console noise of an offline frontend, not of the workflow: the registry look-ups that the
# page's content security policy blocks, and optional files the fresh user folder lacks.
HARMLESS_CONSOLE = ("api.comfy.org", "Failed to load resource")


@pytest.fixture(scope="module")
def chromium_path() -> str:
    path = find_chromium()
    if path is None:
        message = ("Chromium not found: `apt-get install chromium` (scripts/setup.sh does it on CI) "
                   "or set CHROMIUM=/path/to/chrome")
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    return path


@pytest.fixture(scope="module")
def defs(comfy_server) -> dict:
    return comfy_server.get_json("/object_info")


@pytest.fixture(scope="module")
def page(chromium_path, comfy_server, tiny_checkpoint):
    wi.place_images(comfy_server.input_dir)  # before the page reads the combo options
    # A returning user: no first-visit template browser over the canvas, no minimap.
    status, _ = comfy_server.post_json("/settings", {"Comfy.TutorialCompleted": True,
                                                     "Comfy.Minimap.Visible": False})
    assert status == 200
    try:
        browser = Chromium.launch(chromium_path)
    except BrowserError as e:
        pytest.fail(f"Chromium did not start: {e}", pytrace=False)
    try:
        p = browser.new_page(*VIEWPORT)
        p.navigate(comfy_server.base_url + "/")
        p.wait_for("window.app && window.app.graph && window.app.canvas && window.app.vueAppReady", timeout=120)
        # Frontend 1.32 (ComfyUI 0.3.75) opens a modal for a missing node type, which would stay
        # over the canvas for the following tests; _load asks the graph instead.
        p.evaluate("app.showMissingNodesError = () => {}; true")
        yield p
    finally:
        browser.close()


def _load(page, ui: dict) -> list[str]:
    """Load a UI workflow like a dropped file; returns the node types the frontend does not know.

    Asked of the loaded graph itself (each node's type against the frontend's registry of node
    types) rather than of a missing-nodes dialog: frontends 1.32 (ComfyUI 0.3.75) and 1.48
    (0.33) report missing nodes through different UI, but both register every node type the
    server defines. Missing models show up as combo values outside their options (checked by
    the workflow test).
    """
    page.evaluate(f"app.loadGraphData({json.dumps(ui)}).then(() => true)")
    page.pump(0.5)
    return page.evaluate("""app.graph._nodes.map(n => n.type)
        .filter(t => !(t in LiteGraph.registered_node_types))""")


def _ids(values) -> list[str]:
    """Node ids as strings, sorted: frontend 1.48 keeps ids as strings, 1.32 as numbers."""
    return sorted(str(v) for v in values)


def _link_key(link: list) -> tuple:
    """[link_id, origin_id, origin_slot, target_id, target_slot, type] with ids as strings."""
    link_id, origin, origin_slot, target, target_slot, kind = link
    return str(link_id), str(origin), origin_slot, str(target), target_slot, kind


def _history_ids(base_url: str) -> set:
    with urllib.request.urlopen(base_url + "/history", timeout=30) as r:
        return set(json.loads(r.read()))


def _show_file_values(page, ui_file: dict, defs: dict) -> None:
    """Put back the widget values the test replaced (checkpoint, steps), for a docs screenshot."""
    for node in ui_file["nodes"]:
        if node["type"] not in ("CheckpointLoaderSimple", "SCSAInvert"):
            continue
        for (widget, kind), value in zip(wf.widget_layout(defs[node["type"]]), node["widgets_values"]):
            if kind == "value" and widget in ("ckpt_name", "steps"):
                page.evaluate(f"""(() => {{ const w = app.graph.getNodeById({node["id"]}).widgets
                    .find(w => w.name === {json.dumps(widget)}); w.value = {json.dumps(value)};
                    app.graph.setDirtyCanvas(true, true); return true; }})()""")


def _screenshot(page, name: str, tmp_path: Path, ui_file: dict, defs: dict) -> Path:
    docs = os.environ.get("SCSA_SCREENSHOT_DIR")
    if docs and name in DOCS_SCREENSHOTS:
        _show_file_values(page, ui_file, defs)
    page.evaluate("""(() => { for (const el of document.querySelectorAll('span')) {
            if (el.textContent.includes('Introducing Nodes 2.0')) { el.parentElement.parentElement.remove(); } }
            return true; })()""")
    page.evaluate("app.extensionManager.command.execute('Comfy.Canvas.FitView').then(() => true)")
    page.pump(1.0)
    png = page.screenshot()
    image = Image.open(io.BytesIO(png))
    assert image.size == VIEWPORT
    assert max(image.convert("L").getextrema()) - min(image.convert("L").getextrema()) > 50, "blank page"
    out = tmp_path / f"graph_{name}.png"
    out.write_bytes(png)
    if docs and name in DOCS_SCREENSHOTS:
        small = image.convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT)
        buf = io.BytesIO()
        small.save(buf, "PNG", optimize=True)
        assert len(buf.getvalue()) < MAX_SCREENSHOT_BYTES, f"screenshot is {len(buf.getvalue())} bytes"
        Path(docs).mkdir(parents=True, exist_ok=True)
        (Path(docs) / DOCS_SCREENSHOTS[name]).write_bytes(buf.getvalue())
    return out


# -------------------------------------------------------------------------------------- tests
def test_missing_nodes_are_detected(page):
    """The hook the other tests rely on does fire for a node type the server does not have."""
    bogus = {"last_node_id": 1, "last_link_id": 0, "links": [], "groups": [], "config": {}, "extra": {},
             "version": 0.4, "nodes": [{"id": 1, "type": "SCSANoSuchNode", "pos": [0, 0], "size": [200, 60],
                                        "flags": {}, "order": 0, "mode": 0, "inputs": [], "outputs": [],
                                        "properties": {}, "widgets_values": []}]}
    assert _load(page, bogus) == ["SCSANoSuchNode"]


@pytest.mark.parametrize("name", wi.WORKFLOWS)
def test_workflow_loads_converts_and_runs_in_the_frontend(page, comfy_server, comfyui_dir, defs, tiny_checkpoint,
                                                          dit_stand_ins, tmp_path, name):
    ui_file, api_file = wi.committed(name)
    ui = wi.for_test_ui(ui_file, defs, tiny_checkpoint.name)
    # A DiT graph (Flux, Qwen-Image, Z-Image, SD3.5) keeps the file names artists have (the server
    # has none of them): it is loaded and converted as shipped, and its converted prompt runs on
    # the runner's stand-ins.
    dit = rw.dit_variant(rw.workflow_loaders(ui)) is not None
    expected_api = wi.for_test_api(api_file, tiny_checkpoint.name)
    model_files = {node["inputs"][name] for node in api_file.values() if node["class_type"] in rw.MODEL_INPUTS
                   for name, _, _ in rw.MODEL_INPUTS[node["class_type"]]} if dit else set()
    console_before = len(page.console)

    missing = _load(page, ui)
    assert missing == [], f"the frontend does not know these node types: {missing}"
    assert page.evaluate("document.querySelectorAll('.p-dialog').length") == 0, \
        page.evaluate("Array.from(document.querySelectorAll('.p-dialog')).map(d => d.innerText.slice(0, 300))")
    assert page.evaluate("document.querySelectorAll('.p-toast-message-error').length") == 0, \
        page.evaluate("Array.from(document.querySelectorAll('.p-toast-message')).map(t => t.innerText)")

    # widgets as the page shows them
    shown = page.evaluate("""app.graph._nodes.map(n => ({id: n.id, type: n.type,
        widgets: (n.widgets || []).map(w => ({name: w.name, value: w.value,
                  options: Array.isArray(w.options && w.options.values) ? w.options.values : null}))}))""")
    assert _ids(n["id"] for n in shown) == _ids(n["id"] for n in ui["nodes"])
    for node in shown:
        if node["type"] in wf.NOTE_TYPES:
            continue
        source = next(n for n in ui["nodes"] if str(n["id"]) == str(node["id"]))
        values = {n: v for (n, kind), v in zip(wf.widget_layout(defs[node["type"]]), source["widgets_values"])
                  if kind == "value"}
        by_name = {w["name"]: w for w in node["widgets"]}
        for widget_name, value in values.items():
            assert widget_name in by_name, f"{node['type']}: no widget {widget_name}; has {list(by_name)}"
            assert by_name[widget_name]["value"] == value, (node["type"], widget_name)
            options = by_name[widget_name]["options"]
            if options is not None and value not in model_files:
                assert value in options, f"{node['type']}.{widget_name}: {value!r} not among {options[:10]}"

    # the frontend saves it back the same way
    saved = json.loads(page.evaluate("JSON.stringify(app.graph.serialize())"))
    by_id = {str(n["id"]): n for n in saved["nodes"]}
    for node in ui["nodes"]:
        again = by_id[str(node["id"])]
        assert again["type"] == node["type"]
        assert again.get("widgets_values") == node["widgets_values"], node["type"]
        assert [i["name"] for i in again.get("inputs", [])] == [i["name"] for i in node["inputs"]], node["type"]
        assert [i.get("link") for i in again.get("inputs", [])] == [i["link"] for i in node["inputs"]]
        # A newer frontend gives a core node the outputs its definition gained after the file's
        # (version-independent) layout: 0.33's SaveImage has an "images" output. The file's
        # outputs come first, unchanged, and an added one carries no link.
        outputs = again.get("outputs", [])
        assert [o["name"] for o in outputs[:len(node["outputs"])]] == [o["name"] for o in node["outputs"]]
        assert not any(o.get("links") for o in outputs[len(node["outputs"]):]), node["type"]
    assert sorted(map(_link_key, saved["links"])) == sorted(map(_link_key, ui["links"]))

    # the frontend's own UI -> API conversion
    prompt = json.loads(page.evaluate("app.graphToPrompt().then(r => JSON.stringify(r.output))"))
    assert prompt == expected_api

    failure = wi.expected_failure(name, comfyui_dir)
    if dit:   # the frontend's prompt, on the stand-ins, through the server's API
        status, body = comfy_server.post_json("/prompt", {
            "prompt": wi.for_test_api(prompt, tiny_checkpoint.name, dit_stand_ins=dit_stand_ins),
            "client_id": "scsa-test-browser", "extra_data": {"extra_pnginfo": {"workflow": ui}}})
        assert status == 200, json.dumps(body, indent=1)[:3000]
        entry = wi.wait_history(comfy_server.base_url, body["prompt_id"])
    else:   # the Run button's path
        before = _history_ids(comfy_server.base_url)
        page.evaluate("app.queuePrompt(0, 1).then(() => true)")
        deadline = time.monotonic() + 240
        new = set()
        while not new and time.monotonic() < deadline:
            page.pump(0.5)
            new = _history_ids(comfy_server.base_url) - before
        assert len(new) == 1, "the queued prompt never showed up in /history"
        entry = wi.wait_history(comfy_server.base_url, new.pop())
    if failure is not None:   # its family cannot run on this ComfyUI: SCSA's clear error, no image
        wi.check_expected_failure(entry, failure)
    else:
        assert entry["status"]["status_str"] == "success", json.dumps(entry["status"], indent=1)[:4000]
        files = wi.saved_images(entry, comfy_server.output_dir)
        assert len(files) == 1
        wi.check_image(files[0])
        workflow_chunk = json.loads(Image.open(files[0]).info["workflow"])
        assert _ids(n["id"] for n in workflow_chunk["nodes"]) == _ids(n["id"] for n in ui["nodes"])
    if not dit:   # a prompt the page queued shows its output on the page
        save_id = wf.nodes_of_type(ui, "SaveImage")[0]
        page.wait_for(f"app.nodeOutputs && Object.values(app.nodeOutputs).some(o => o && o.images && "
                      f"o.images.some(i => i.filename === {json.dumps(files[0].name)}))", timeout=60)
        assert save_id in {k.split(":")[-1] for k in page.evaluate("Object.keys(app.nodeOutputs)")}

    errors = [text for level, text in page.console[console_before:]
              if level == "error" and not any(h in text for h in HARMLESS_CONSOLE)]
    assert not errors, f"console errors while loading/running {name}: {errors[:5]}"
    assert not page.exceptions, page.exceptions[:3]

    _screenshot(page, name, tmp_path, ui_file, defs)


# SCSAApply's inputs added after workflows were first saved (README: *When injection acts*; rope_mode
# for DiTs: *DiT models*).
ADDED_APPLY_WIDGETS = ("start", "end", "strength_schedule", "rope_mode")


@pytest.mark.parametrize("name", ["scsa_sd15_color_maps", "styleid_sd15"])
def test_a_workflow_saved_before_the_timing_inputs_loads_with_their_defaults(page, defs, tiny_checkpoint, name):
    """A file saved before SCSAApply had start / end / strength_schedule (its widgets_values and
    inputs end at styleid_temperature) loads without a dialog, shows the new widgets at their
    defaults, and the frontend makes the same prompt as today's file: the same image."""
    ui_file, api_file = wi.committed(name)
    old = wi.for_test_ui(ui_file, defs, tiny_checkpoint.name)
    defaults = {}
    for node_id in wf.nodes_of_type(old, "SCSAApply"):
        node = next(n for n in old["nodes"] if str(n["id"]) == str(node_id))
        layout = wf.widget_layout(defs["SCSAApply"])
        assert [w for w, _ in layout[-len(ADDED_APPLY_WIDGETS):]] == list(ADDED_APPLY_WIDGETS)
        defaults = dict(zip(ADDED_APPLY_WIDGETS, node["widgets_values"][-len(ADDED_APPLY_WIDGETS):]))
        node["widgets_values"] = node["widgets_values"][:-len(ADDED_APPLY_WIDGETS)]
        node["inputs"] = [i for i in node["inputs"] if i["name"] not in ADDED_APPLY_WIDGETS]
    assert defaults == {"start": 0.0, "end": 1.0, "strength_schedule": "constant", "rope_mode": "shift"}

    assert _load(page, old) == []
    assert page.evaluate("document.querySelectorAll('.p-dialog').length") == 0
    shown = page.evaluate("""Object.fromEntries(app.graph._nodes.filter(n => n.type === 'SCSAApply')[0]
        .widgets.map(w => [w.name, w.value]))""")
    assert {k: shown[k] for k in ADDED_APPLY_WIDGETS} == defaults
    prompt = json.loads(page.evaluate("app.graphToPrompt().then(r => JSON.stringify(r.output))"))
    assert prompt == wi.for_test_api(api_file, tiny_checkpoint.name)
