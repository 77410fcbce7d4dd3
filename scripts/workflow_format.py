"""ComfyUI's two workflow formats, driven by node definitions (``/object_info``).

* UI workflow (what the frontend saves, loads and shows as a template): nodes with positions,
  sockets, links and POSITIONAL ``widgets_values``.
* API prompt (what ``POST /prompt`` runs): ``{"id": {"class_type", "inputs", "_meta"}}``.

The frontend (ComfyUI_frontend 1.32, checked in a real browser by tests/test_browser.py) lays a
node out from its definition like this:
  - ``inputs`` = socket inputs (required, then optional), then one input per widget (required,
    then optional), each with ``"widget": {"name": ...}``; optional ones carry ``"shape": 7``;
  - widgets, in the order of ``input_order`` (required, then optional), for every INT, FLOAT,
    STRING, BOOLEAN and COMBO input that is not ``forceInput``;
  - an INT with ``control_after_generate`` (or, when that is unset, named ``seed`` /
    ``noise_seed``) and a COMBO with ``control_after_generate`` are followed by the
    "control after generate" widget ("fixed", "increment", "decrement", "randomize");
  - a COMBO with ``image_upload`` is followed by the upload button, saved as the value "image".
  Every widget's value is saved in ``widgets_values`` in that order, extras included; the API
  prompt gets the real inputs only.
  A file saved before optional widgets were appended to a node has fewer values: the frontend
  (and ``ui_to_api``) gives the missing trailing widgets their defaults.

Only the standard library is used (the runner imports this without ComfyUI).

    graph = Graph("example")
    ckpt = graph.add("CheckpointLoaderSimple", (0, 0), ckpt_name=File("v1-5.safetensors"))
    decode = graph.add("VAEDecode", (400, 0), samples=..., vae=ckpt[2])
    ui, api = graph.to_ui(defs), graph.to_api(defs)        # defs = GET /object_info

    prompt = ui_to_api(json.load(open("workflow.json")), defs)  # what "Export (API)" does
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field

WIDGET_TYPES = ("INT", "FLOAT", "STRING", "BOOLEAN", "COMBO")
CONTROL_VALUES = ("fixed", "increment", "decrement", "randomize")
UPLOAD_VALUE = "image"
# Frontend-only nodes: never sent to the server.
VIRTUAL_TYPES = frozenset({"Note", "MarkdownNote", "Reroute", "PrimitiveNode"})
NOTE_TYPES = frozenset({"Note", "MarkdownNote"})
MODE_ALWAYS, MODE_NEVER, MODE_BYPASS = 0, 2, 4


class WorkflowError(ValueError):
    """A workflow that does not fit the node definitions (the message says which node/input)."""


# ------------------------------------------------------------------------- node definitions
@dataclass(frozen=True)
class InputDef:
    name: str
    type: str            # "MODEL", "INT", "COMBO", ...
    options: dict
    optional: bool
    choices: tuple       # COMBO options (may be empty for file lists)

    @property
    def is_widget(self) -> bool:
        return self.type in WIDGET_TYPES and not self.options.get("forceInput", False)

    @property
    def has_control(self) -> bool:
        control = self.options.get("control_after_generate")
        if self.type == "INT":
            return bool(control) if control is not None else self.name in ("seed", "noise_seed")
        return self.type == "COMBO" and bool(control)

    @property
    def has_upload(self) -> bool:
        if self.type != "COMBO":
            return False
        for kind in ("video_upload", "audio_upload", "animated_image_upload"):
            if self.options.get(kind):
                raise WorkflowError(f"input {self.name}: {kind} widgets are not supported here")
        return bool(self.options.get("image_upload"))

    @property
    def has_declared_default(self) -> bool:
        """The node gives a default (or a COMBO's first choice is one), rather than the type's zero."""
        return "default" in self.options or (self.type == "COMBO" and bool(self.choices))

    @property
    def default(self):
        if "default" in self.options:
            return self.options["default"]
        if self.type == "COMBO" and self.choices:
            return self.choices[0]
        return {"INT": 0, "FLOAT": 0.0, "STRING": "", "BOOLEAN": False}.get(self.type)


def input_defs(node_def: dict) -> list[InputDef]:
    """The node's inputs in ``input_order`` (required, then optional); hidden inputs left out."""
    spec = node_def.get("input", {})
    order = node_def.get("input_order") or {k: list(v) for k, v in spec.items()}
    out = []
    for section in ("required", "optional"):
        for name in order.get(section, []):
            entry = spec.get(section, {}).get(name)
            if entry is None:
                continue
            kind, options = entry[0], (entry[1] if len(entry) > 1 and isinstance(entry[1], dict) else {})
            if isinstance(kind, list):   # V1 combo: [["a", "b"], {...}]
                choices, kind = tuple(kind), "COMBO"
            else:
                choices = tuple(options.get("options", ())) if kind == "COMBO" else ()
            out.append(InputDef(name, kind, dict(options), section == "optional", choices))
    return out


def widget_layout(node_def: dict) -> list[tuple[str, str]]:
    """``[(input name, kind)]`` for each entry of ``widgets_values``; kind is "value",
    "control" (control after generate) or "upload" (the upload button)."""
    layout = []
    for inp in input_defs(node_def):
        if not inp.is_widget:
            continue
        layout.append((inp.name, "value"))
        if inp.has_control:
            layout.append((inp.name, "control"))
        if inp.has_upload:
            layout.append((inp.name, "upload"))
    return layout


def node_def(defs: dict, class_type: str) -> dict:
    try:
        return defs[class_type]
    except KeyError:
        raise WorkflowError(f"node type {class_type!r} is not installed in this ComfyUI "
                            f"(the server knows {len(defs)} node types)") from None


# ------------------------------------------------------------------------ graph description
@dataclass(frozen=True)
class File:
    """A widget value that names a file (image, checkpoint): not checked against the
    combo's current options, which list whatever the server has."""
    name: str


@dataclass(frozen=True)
class Out:
    node: "Node"
    slot: int


@dataclass
class Node:
    id: int
    type: str
    pos: tuple
    size: tuple | None
    title: str | None
    values: dict                      # input name -> Out | literal | File
    color: str | None = None
    bgcolor: str | None = None
    text: str | None = None          # Note / MarkdownNote

    def __getitem__(self, slot: int) -> Out:
        return Out(self, slot)


@dataclass
class Graph:
    """One workflow, described once; ``to_ui`` and ``to_api`` render it for given node defs."""
    name: str
    nodes: list = field(default_factory=list)
    groups: list = field(default_factory=list)
    view: tuple = (1.0, (0.0, 0.0))   # canvas scale, offset

    def add(self, class_type: str, pos, size=None, title: str | None = None, ui_color=None,
            ui_bgcolor=None, **values) -> Node:
        """A node; ``values``: input name -> ``node[slot]`` (link), a widget value, or ``File``.
        ``ui_color``/``ui_bgcolor``: the node's colours in the UI (not to be confused with
        inputs called "color")."""
        node = Node(len(self.nodes) + 1, class_type, tuple(pos), tuple(size) if size else None, title,
                    values, ui_color, ui_bgcolor)
        self.nodes.append(node)
        return node

    def note(self, text: str, pos, size=(360, 160), markdown: bool = False, title: str | None = None) -> Node:
        node = self.add("MarkdownNote" if markdown else "Note", pos, size, title,
                        ui_color="#432", ui_bgcolor="#653")
        node.text = text
        return node

    def group(self, title: str, bounding, color: str = "#3f789e") -> None:
        self.groups.append({"title": title, "bounding": [float(v) for v in bounding], "color": color})

    # -- helpers -----------------------------------------------------------------------------
    def _resolved_widgets(self, node: Node, defs: dict) -> dict:
        """input name -> widget value, defaults filled in; checks names and combo values."""
        definition = node_def(defs, node.type)
        inputs = {i.name: i for i in input_defs(definition)}
        unknown = sorted(set(node.values) - set(inputs))
        if unknown:
            raise WorkflowError(f"{self.name}: node {node.id} ({node.type}) has no input(s) {unknown}; "
                                f"it has {list(inputs)}")
        values = {}
        for name, inp in inputs.items():
            given = node.values.get(name)
            if not inp.is_widget:
                if given is not None and not isinstance(given, Out):
                    raise WorkflowError(f"{self.name}: {node.type}.{name} is a {inp.type} socket; "
                                        "connect an output to it")
                if given is None and not inp.optional:
                    raise WorkflowError(f"{self.name}: {node.type}.{name} (required) is not connected")
                continue
            if isinstance(given, Out):
                raise WorkflowError(f"{self.name}: {node.type}.{name} is a widget; linking widgets is "
                                    "not supported by this generator")
            if isinstance(given, File):
                values[name] = given.name
                continue
            value = inp.default if given is None else given
            if value is None:
                raise WorkflowError(f"{self.name}: {node.type}.{name} has no default; give a value")
            if inp.type == "COMBO" and inp.choices and value not in inp.choices:
                raise WorkflowError(f"{self.name}: {node.type}.{name} = {value!r} is not one of {list(inp.choices)}")
            values[name] = value
        return values

    def _links(self, defs: dict) -> list[tuple]:
        """``[(link id, from node, from slot, to node, to slot name, type)]`` in node order."""
        links = []
        for node in self.nodes:
            if node.type in VIRTUAL_TYPES:
                continue
            for inp in input_defs(node_def(defs, node.type)):
                src = node.values.get(inp.name)
                if isinstance(src, Out):
                    outputs = node_def(defs, src.node.type)["output"]
                    if src.slot >= len(outputs):
                        raise WorkflowError(f"{self.name}: {src.node.type} has no output {src.slot}")
                    out_type = outputs[src.slot]
                    if inp.type != "*" and out_type != "*" and out_type != inp.type:
                        raise WorkflowError(f"{self.name}: {src.node.type} output {src.slot} is {out_type}, "
                                            f"but {node.type}.{inp.name} takes {inp.type}")
                    links.append((len(links) + 1, src.node, src.slot, node, inp.name, out_type))
        return links

    def _order(self, links) -> dict:
        """Execution order (topological, ties by node id), as the frontend stores in ``order``."""
        deps = {n.id: set() for n in self.nodes}
        for _, src, _, dst, _, _ in links:
            deps[dst.id].add(src.id)
        order, done = {}, set()
        while len(done) < len(self.nodes):
            ready = [n.id for n in self.nodes if n.id not in done and deps[n.id] <= done]
            if not ready:
                raise WorkflowError(f"{self.name}: the graph has a cycle")
            done.add(ready[0])
            order[ready[0]] = len(order)
        return order

    # -- API ---------------------------------------------------------------------------------
    def to_api(self, defs: dict) -> dict:
        prompt = {}
        for node in self.nodes:
            if node.type in VIRTUAL_TYPES:
                continue
            definition = node_def(defs, node.type)
            widgets = self._resolved_widgets(node, defs)
            inputs = {}
            for inp in input_defs(definition):
                if inp.name in widgets:
                    inputs[inp.name] = widgets[inp.name]
                elif isinstance(node.values.get(inp.name), Out):
                    src = node.values[inp.name]
                    inputs[inp.name] = [str(src.node.id), src.slot]
            prompt[str(node.id)] = {"inputs": inputs, "class_type": node.type,
                                    "_meta": {"title": node.title or definition.get("display_name") or node.type}}
        return prompt

    # -- UI ----------------------------------------------------------------------------------
    def to_ui(self, defs: dict) -> dict:
        links = self._links(defs)
        order = self._order(links)
        incoming = {(dst.id, name): link_id for link_id, _, _, dst, name, _ in links}
        outgoing: dict = {}
        for link_id, src, slot, _, _, _ in links:
            outgoing.setdefault((src.id, slot), []).append(link_id)
        ui_nodes, ui_links = [], []
        slot_index = {}   # (node id, input name) -> index in the node's inputs list
        for node in self.nodes:
            entry = {"id": node.id, "type": node.type, "pos": [float(v) for v in node.pos],
                     "size": [float(v) for v in (node.size or (300, 100))], "flags": {},
                     "order": order[node.id], "mode": MODE_ALWAYS}
            if node.title:
                entry["title"] = node.title
            if node.type in NOTE_TYPES:
                entry.update(inputs=[], outputs=[], properties={}, widgets_values=[node.text or ""])
            else:
                definition = node_def(defs, node.type)
                widgets = self._resolved_widgets(node, defs)
                ins = input_defs(definition)
                sockets = [i for i in ins if not i.is_widget and not i.optional] + \
                          [i for i in ins if not i.is_widget and i.optional]
                widget_inputs = [i for i in ins if i.is_widget]
                inputs = []
                for inp in sockets:
                    item = {"localized_name": inp.name, "name": inp.name}
                    if inp.optional:
                        item["shape"] = 7
                    item.update(type=inp.type, link=incoming.get((node.id, inp.name)))
                    slot_index[(node.id, inp.name)] = len(inputs)
                    inputs.append(item)
                for inp in widget_inputs:
                    item = {"localized_name": inp.name, "name": inp.name}
                    if inp.optional:
                        item["shape"] = 7
                    item.update(type=inp.type, widget={"name": inp.name}, link=None)
                    inputs.append(item)
                    if inp.has_upload:
                        inputs.append({"localized_name": "upload", "name": "upload", "type": "IMAGEUPLOAD",
                                       "widget": {"name": "upload"}, "link": None})
                outputs = []
                for slot, (kind, name) in enumerate(zip(definition["output"], definition["output_name"])):
                    item = {"localized_name": name, "name": name, "type": kind,
                            "links": outgoing.get((node.id, slot))}
                    outputs.append(item)
                values = []
                for name, kind in widget_layout(definition):
                    values.append(widgets[name] if kind == "value" else
                                  "fixed" if kind == "control" else UPLOAD_VALUE)
                entry.update(inputs=inputs, outputs=outputs,
                             properties={"Node name for S&R": node.type}, widgets_values=values)
            if node.color:
                entry["color"] = node.color
            if node.bgcolor:
                entry["bgcolor"] = node.bgcolor
            ui_nodes.append(entry)
        for link_id, src, slot, dst, name, kind in links:
            ui_links.append([link_id, src.id, slot, dst.id, slot_index[(dst.id, name)], kind])
        groups = [{"id": i + 1, "title": g["title"], "bounding": g["bounding"], "color": g["color"],
                   "font_size": 24, "flags": {}} for i, g in enumerate(self.groups)]
        scale, offset = self.view
        return {"id": _uuid_for(self.name), "revision": 0,
                "last_node_id": max((n.id for n in self.nodes), default=0),
                "last_link_id": len(links), "nodes": ui_nodes, "links": ui_links, "groups": groups,
                "config": {}, "extra": {"ds": {"scale": scale, "offset": [float(v) for v in offset]}},
                "version": 0.4}


def _uuid_for(name: str) -> str:
    """A stable UUID per workflow name (the frontend tracks workflows by this id)."""
    import uuid
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"scsa-style-transfer/workflows/{name}"))


# ----------------------------------------------------------------------------- UI -> API
def is_ui_workflow(data) -> bool:
    return isinstance(data, dict) and isinstance(data.get("nodes"), list) and "links" in data


def _layout_names(layout) -> list[str]:
    return [n if k == "value" else f"{n} ({k})" for n, k in layout]


def _positional_values(node: dict, definition: dict) -> list:
    """A UI node's positional ``widgets_values``, completed like the frontend loads it: when the
    list stops short of this version's widget layout (a workflow saved before optional widgets
    were appended to the node), the missing trailing widgets get their defaults. Refused (a
    WorkflowError naming the node) when there are more values than widgets, when a missing widget
    belongs to a required input or to an optional one without a default (an explicit ``default``;
    a combo's first option), or when the saved node's ``inputs`` list one of the missing widgets
    (a new frontend saves one input per widget: values were dropped or shifted, not appended
    later). A missing "control after generate" or upload entry of a widget whose value is there
    is filled too ("fixed", "image"): neither reaches the API prompt."""
    raw = list(node.get("widgets_values") or [])
    layout = widget_layout(definition)
    head = (f"node {node.get('id')} ({node.get('type')}): the workflow has {len(raw)} widget values "
            f"{raw!r}, but this version of the node has {len(layout)} widgets {_layout_names(layout)}")
    tail = ". The node's inputs changed since the workflow was saved: recreate the node, or update the node pack."
    if len(raw) > len(layout):
        raise WorkflowError(head + tail)
    if len(raw) == len(layout):
        return raw
    inputs = {i.name: i for i in input_defs(definition)}
    missing = [name for name, kind in layout[len(raw):] if kind == "value"]
    required = [name for name in missing if not inputs[name].optional]
    if required:
        raise WorkflowError(f"{head}; the values of {missing} are missing and {required} "
                            f"{'is' if len(required) == 1 else 'are'} required (only optional widgets "
                            f"missing at the end are filled with their defaults){tail}")
    no_default = [name for name in missing if not inputs[name].has_declared_default]
    if no_default:
        raise WorkflowError(f"{head}; the missing optional {no_default} "
                            f"{'has' if len(no_default) == 1 else 'have'} no default to fill in{tail}")
    saved = [i.get("name") for i in node.get("inputs") or [] if isinstance(i, dict) and i.get("widget")]
    listed = [name for name in missing if name in saved]
    if listed:
        raise WorkflowError(f"{head}; the node's saved inputs list the widget(s) {listed}, which have "
                            f"no value (values dropped or shifted?){tail}")
    for name, kind in layout[len(raw):]:
        raw.append(inputs[name].default if kind == "value" else "fixed" if kind == "control" else UPLOAD_VALUE)
    return raw


def _widget_values(node: dict, definition: dict) -> dict:
    """input name -> value from a UI node's ``widgets_values`` (positional, or a dict);
    optional widgets missing at the end of a positional list get their defaults."""
    raw = node.get("widgets_values")
    if raw is None:
        return {}
    if isinstance(raw, dict):
        return dict(raw)
    layout = widget_layout(definition)
    return {name: value for (name, kind), value in zip(layout, _positional_values(node, definition))
            if kind == "value"}


def ui_to_api(ui: dict, defs: dict) -> dict:
    """Convert a UI workflow to an API prompt like the frontend's graphToPrompt: notes and
    muted nodes dropped, bypassed nodes and reroutes passed through, primitive nodes' values
    written into the widgets they feed."""
    if not is_ui_workflow(ui):
        raise WorkflowError("not a UI workflow (no 'nodes' list and 'links')")
    if ui.get("definitions", {}).get("subgraphs"):
        raise WorkflowError("workflows with subgraphs are not supported by this converter; "
                            "convert them in ComfyUI (Export (API))")
    nodes = {int(n["id"]): n for n in ui["nodes"]}
    links = {}
    for link in ui["links"]:
        if isinstance(link, dict):
            links[int(link["id"])] = (link["origin_id"], link["origin_slot"], link["target_id"],
                                      link["target_slot"], link.get("type"))
        else:
            links[int(link[0])] = tuple(link[1:6])

    def source(link_id, want_type=None, seen=()):
        """(node id, slot) feeding link_id, through reroutes and bypassed nodes; None if cut."""
        if link_id is None or link_id not in links:
            return None
        src_id, src_slot, _, _, kind = links[link_id]
        src = nodes.get(int(src_id))
        if src is None or src_id in seen:
            return None
        want_type = want_type or kind
        if src["type"] == "Reroute":
            ins = src.get("inputs") or []
            return source(ins[0].get("link") if ins else None, want_type, seen + (src_id,))
        if src.get("mode") == MODE_BYPASS:
            for inp in src.get("inputs") or []:
                if inp.get("link") is not None and inp.get("type") in (want_type, "*"):
                    return source(inp["link"], want_type, seen + (src_id,))
            return None
        if src.get("mode") == MODE_NEVER:
            return None
        return int(src_id), int(src_slot)

    prompt = {}
    for node_id in sorted(nodes):
        node = nodes[node_id]
        if node["type"] in VIRTUAL_TYPES or node.get("mode", 0) in (MODE_NEVER, MODE_BYPASS):
            continue
        definition = node_def(defs, node["type"])
        widgets = _widget_values(node, definition)
        slots = {inp.get("name"): inp for inp in node.get("inputs") or []}
        inputs = {}
        for inp in input_defs(definition):
            slot = slots.get(inp.name)
            link_id = slot.get("link") if slot else None
            if link_id is not None:
                src = source(link_id, inp.type if inp.type not in WIDGET_TYPES else None)
                if src is not None:
                    src_node = nodes[src[0]]
                    if src_node["type"] == "PrimitiveNode":
                        inputs[inp.name] = (src_node.get("widgets_values") or [None])[0]
                    else:
                        inputs[inp.name] = [str(src[0]), src[1]]
                    continue
            if inp.is_widget and inp.name in widgets:
                inputs[inp.name] = widgets[inp.name]
        title = node.get("title") or definition.get("display_name") or node["type"]
        prompt[str(node_id)] = {"inputs": inputs, "class_type": node["type"], "_meta": {"title": title}}
    return prompt


# ------------------------------------------------------------------------------- editing
def set_widget(ui: dict, defs: dict, node_id, name: str, value) -> None:
    """Set one widget value of a UI workflow's node, in place (by input name)."""
    for node in ui["nodes"]:
        if str(node["id"]) != str(node_id):
            continue
        layout = widget_layout(node_def(defs, node["type"]))
        for index, (widget, kind) in enumerate(layout):
            if widget == name and kind == "value":
                if isinstance(node.get("widgets_values"), dict):
                    node["widgets_values"][name] = value
                else:
                    if len(node.get("widgets_values") or []) < len(layout):   # saved before widgets were added
                        node["widgets_values"] = _positional_values(node, node_def(defs, node["type"]))
                    node["widgets_values"][index] = value
                return
        raise WorkflowError(f"node {node_id} ({node['type']}) has no widget {name!r}")
    raise WorkflowError(f"no node {node_id}")


def nodes_of_type(workflow: dict, class_type: str) -> list[str]:
    """Ids of the nodes of one type, in a UI or an API workflow."""
    if is_ui_workflow(workflow):
        return [str(n["id"]) for n in workflow["nodes"] if n["type"] == class_type]
    return [k for k, v in workflow.items() if v.get("class_type") == class_type]

