"""The pack in a real headless ComfyUI server (main.py --cpu), over its HTTP API.

- /object_info lists every SCSA node with the inputs of its schema, under the SCSA menu, with
  a tooltip on every input;
- the committed workflows are what scripts/make_workflows.py generates now (the same on every
  ComfyUI version: this server's core nodes fit the generator's pinned CORE_NODES), their UI and
  API files agree, and ComfyUI serves exactly the UI files of workflows/ as the pack's templates;
- each API workflow runs: POST /prompt, poll /history, the saved image is a real image.
"""
from __future__ import annotations

import copy
import json
import urllib.request

import pytest

import workflow_inputs as wi
from scripts.comfy_inprocess import pack_module
from scripts import comfyui_runtime as rt
from scripts import make_workflows as mw
from scripts import workflow_format as wf


@pytest.fixture(scope="module")
def defs(comfy_server) -> dict:
    return comfy_server.get_json("/object_info")


@pytest.fixture(scope="module")
def server_images(comfy_server) -> dict:
    return wi.place_images(comfy_server.input_dir)


def _inputs(node_def: dict) -> list[str]:
    order = node_def["input_order"]
    return list(order.get("required", [])) + list(order.get("optional", []))


# ------------------------------------------------------------------------------ node defs
def test_object_info_lists_every_scsa_node_with_its_schema_inputs(defs, comfy):
    """Same node ids and input names as the schemas the pack defines (loaded in-process)."""
    ours = sorted(k for k, v in defs.items() if v.get("python_module") == wi.PACK_MODULE)
    assert ours == sorted(wi.PACK_NODES), "the server's SCSA nodes differ from the expected list"
    schema_nodes = {}
    for module in ("nodes/semantic_nodes.py", "nodes/mask_nodes.py", "nodes/diffusion_nodes.py",
                   "nodes/style_library_nodes.py", "nodes/feedforward.py"):
        for cls in pack_module(module).NODES:
            schema = cls.define_schema()
            schema_nodes[schema.node_id] = schema
    assert sorted(schema_nodes) == ours
    for node_id, schema in schema_nodes.items():
        assert _inputs(defs[node_id]) == [i.id for i in schema.inputs if not i.optional] + \
                                         [i.id for i in schema.inputs if i.optional], node_id
        assert defs[node_id]["output"] == [o.get_io_type() for o in schema.outputs], node_id
        assert defs[node_id]["display_name"] == schema.display_name


def test_nodes_sit_in_the_scsa_menu_and_every_input_has_a_tooltip(defs):
    missing = []
    for node_id in wi.PACK_NODES:
        node = defs[node_id]
        assert node["category"].split("/")[0] == "SCSA", f"{node_id}: category {node['category']!r}"
        assert node.get("description"), f"{node_id} has no description"
        for section in ("required", "optional"):
            for name, spec in node["input"].get(section, {}).items():
                options = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
                if not str(options.get("tooltip") or "").strip():
                    missing.append(f"{node_id}.{name}")
    assert not missing, f"inputs without a tooltip: {missing}"


# ------------------------------------------------------------------------------ workflows
def test_committed_workflows_are_what_the_generator_makes(defs):
    problems = mw.stale_files(defs)
    assert not problems, ("example workflows are stale (a node's inputs changed?); run "
                          "`.venv/bin/python scripts/make_workflows.py`:\n" + "\n".join(problems))


def test_core_nodes_of_this_comfyui_fit_the_pinned_ones(defs):
    """The files are rendered from CORE_NODES, not from this server: they load right here only
    if this ComfyUI lays those nodes out the same way."""
    assert mw.core_node_problems(defs) == []
    assert set(mw.CORE_NODES) == {t for t in mw.used_node_types() if not t.startswith("SCSA")}


def test_core_node_check_tells_a_changed_layout_from_an_added_output(defs):
    changed = copy.deepcopy(defs)
    changed["SaveImage"]["output"] = ["IMAGE", "STRING"]       # more outputs after the pinned: fine
    changed["SaveImage"]["output_name"] = ["images", "text"]
    assert mw.core_node_problems(changed) == []
    changed["LoadImage"]["input"]["required"]["resize"] = ["BOOLEAN", {"default": False}]
    changed["LoadImage"]["input_order"]["required"].append("resize")   # a new widget shifts values
    changed["VAEEncode"]["output"] = ["IMAGE"]                         # a linked output changed type
    del changed["VAEDecode"]
    problems = mw.core_node_problems(changed)
    assert [p.split(":")[0] for p in problems] == ["LoadImage", "LoadImage", "VAEEncode", "VAEDecode"], problems
    # the generator's output does not follow the server's core nodes
    assert mw.render(changed) == mw.render(defs)


@pytest.mark.parametrize("name", wi.WORKFLOWS)
def test_ui_file_converts_to_the_api_file(defs, name):
    ui, api = wi.committed(name)
    assert wf.ui_to_api(ui, defs) == api
    # every widget value sits where the frontend expects it
    for node in ui["nodes"]:
        if node["type"] in wf.VIRTUAL_TYPES:
            continue
        layout = wf.widget_layout(defs[node["type"]])
        assert len(node["widgets_values"]) == len(layout), node["type"]
        for (input_name, kind), value in zip(layout, node["widgets_values"]):
            if kind == "value":
                assert api[str(node["id"])]["inputs"][input_name] == value
            elif kind == "upload":
                assert value == wf.UPLOAD_VALUE
            else:
                assert value in wf.CONTROL_VALUES


def test_templates_are_served(server):
    """Exactly the UI workflows are templates (not the API twins in workflows/api/, not the
    images in workflows/inputs/), and the served files are the committed ones, byte for byte."""
    with urllib.request.urlopen(server + "/api/workflow_templates", timeout=30) as r:
        templates = json.loads(r.read())
    assert sorted(templates.get(rt.PACK_NAME, [])) == sorted(wi.WORKFLOWS), templates
    for name in wi.WORKFLOWS:
        paths = mw.paths(name)
        with urllib.request.urlopen(f"{server}/api/workflow_templates/{rt.PACK_NAME}/{name}.json", timeout=30) as r:
            assert r.read() == paths["ui"].read_bytes()
        with urllib.request.urlopen(f"{server}/api/workflow_templates/{rt.PACK_NAME}/{name}.jpg", timeout=30) as r:
            assert r.read() == paths["thumbnail"].read_bytes(), f"{name}.jpg"


# ---------------------------------------------------------------------------------- runs
@pytest.mark.parametrize("name", wi.WORKFLOWS)
def test_api_workflow_runs(comfy_server, comfyui_dir, tiny_checkpoint, dit_stand_ins, server_images, name):
    """Each API twin runs (a DiT graph on the runner's random-weight stand-ins); where its family
    cannot run on this ComfyUI (Z-Image on 0.3.75), it stops with SCSA's clear error instead."""
    _, api = wi.committed(name)
    prompt = wi.for_test_api(api, tiny_checkpoint.name, dit_stand_ins=dit_stand_ins)
    status, body = comfy_server.post_json("/prompt", {"prompt": prompt, "client_id": "scsa-test-server"})
    assert status == 200, f"/prompt refused {name}: {json.dumps(body, indent=1)[:3000]}"
    entry = wi.wait_history(comfy_server.base_url, body["prompt_id"])
    failure = wi.expected_failure(name, comfyui_dir)
    if failure is not None:
        wi.check_expected_failure(entry, failure)
        return
    assert entry["status"]["status_str"] == "success", json.dumps(entry["status"], indent=1)[:4000]
    files = wi.saved_images(entry, comfy_server.output_dir)
    assert len(files) == 1, entry["outputs"]
    wi.check_image(files[0])
    # A node served from the cache (the previous workflow had the same maps) shows its last preview.
    cached = {str(node) for kind, data in entry["status"].get("messages", []) if kind == "execution_cached"
              for node in data.get("nodes", [])}
    previews = [node_id for node_id, node in prompt.items()
                if node["class_type"] in ("SCSASemanticPair", "SCSASemanticFromMasks") and node_id not in cached]
    for node_id in previews:   # the semantic preview is shown on the node
        assert entry["outputs"].get(node_id, {}).get("images"), f"{name}: no preview from node {node_id}"


# ------------------------------------------------------------------------- SCSAMaskBatch
def test_mask_batch_stacks_in_socket_order_and_resizes(comfy):
    import torch
    node = pack_module("nodes/mask_nodes.py").SCSAMaskBatch
    first = torch.zeros(1, 8, 12)
    first[:, :4] = 1.0
    second = torch.ones(16, 24) * 0.25                  # [H, W], twice the size
    pair = torch.stack([torch.eye(8, 12), 1 - torch.eye(8, 12)])   # a batch of two
    out = node.execute(mask_1=first, mask_3=second, mask_5=pair).result[0]
    assert out.shape == (4, 8, 12)
    assert torch.equal(out[0], first[0])
    assert torch.allclose(out[1], torch.full((8, 12), 0.25))
    assert torch.equal(out[2:], pair)
    with pytest.raises(ValueError, match="mask_3"):
        node.execute(mask_1=first, mask_3=torch.zeros(2, 3, 4, 5))
