"""Convert a ComfyUI UI-format workflow (what the frontend saves) into the API format that POST /prompt takes.

    python scripts/workflow_to_api.py example_workflows/e2p_quickstart.json --server http://127.0.0.1:8188 > prompt.json

Widget values are matched to input names with the server's /object_info (the order the frontend creates widgets
in), skipping the frontend-only extras: the 'control after generate' value after seeds and the upload button of
file pickers. Frontend-only nodes (Note, MarkdownNote, Reroute, PrimitiveNode) disappear: a Reroute passes its
input through, a PrimitiveNode becomes the literal value of the widgets it feeds. Muted nodes are left out and
bypassed nodes are passed through (an input fed by one takes the bypassed node's input of the same type, or is
dropped), as the frontend does when it queues.

A widget input the file has no value for (a node that gained an input since the workflow was saved, such as
ImageScaleToTotalPixels' resolution_steps in ComfyUI 0.4+) gets the server's /object_info default, as the frontend
gives a new widget its default; each such fill is logged as a warning so the user knows the value came from the
server, not the file.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import urllib.error
import urllib.request
from typing import Any

DYNAMIC_COMBO = "COMFY_DYNAMICCOMBO_V3"  # ComfyUI 0.4+: a combo whose chosen option brings its own inputs
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO", "BOUNDING_BOX", DYNAMIC_COMBO}
DISPLAY_ONLY = {"Note", "MarkdownNote"}
MODE_MUTED = 2
MODE_BYPASSED = 4
CONTROL_VALUES = {"fixed", "increment", "decrement", "randomize"}

logger = logging.getLogger("workflow_to_api")


class WorkflowConversionError(ValueError):
    """The workflow cannot be turned into a prompt (unknown node, bad link, too few widget values)."""


def spec_type(spec) -> str:
    return "COMBO" if isinstance(spec[0], list) else spec[0]


def _options(spec) -> dict:
    return spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}


def is_widget(spec) -> bool:
    return spec_type(spec) in WIDGET_TYPES and not _options(spec).get("forceInput")


def _declared_inputs(inputs: dict, prefix: str = "") -> list[tuple[str, list, bool]]:
    """(name, spec, required) of every input in declaration order, required ones first, as the frontend adds them."""
    return [(prefix + name, spec, section == "required") for section in ("required", "optional")
            for name, spec in inputs.get(section, {}).items()]


def widget_inputs(node_info: dict) -> list[tuple[str, list]]:
    """(name, spec) of a node's top-level widget inputs in the order the frontend stores their values."""
    return [(name, spec) for name, spec, _ in _declared_inputs(node_info.get("input", {})) if is_widget(spec)]


def dynamic_option_inputs(name: str, spec, chosen) -> list[tuple[str, list, bool]]:
    """The inputs a dynamic combo adds for its chosen option, named '<combo>.<input>' as frontend and server do."""
    for option in _options(spec).get("options", []):
        if isinstance(option, dict) and option.get("key") == chosen:
            return _declared_inputs(option.get("inputs", {}), f"{name}.")
    return []


def has_control_value(name: str, spec) -> bool:
    return spec_type(spec) == "INT" and (name in ("seed", "noise_seed") or bool(_options(spec).get("control_after_generate")))


def has_upload_value(spec) -> bool:
    return any(_options(spec).get(flag) for flag in ("image_upload", "video_upload", "audio_upload"))


BOX_FIELDS = ("x", "y", "width", "height")


def box_component_values(spec, value) -> list[Any]:
    """What the frontend saves after a BOUNDING_BOX widget's value: its x, y, width and height number widgets
    (frontend 1.49; ComfyUI 0.3.75 has no such type)."""
    if spec_type(spec) != "BOUNDING_BOX":
        return []
    box = value if isinstance(value, dict) else {}
    return [box.get(field, 0) for field in BOX_FIELDS]


def server_default(spec) -> tuple[bool, Any]:
    """(has one, value): the value the frontend gives a new widget for this input spec."""
    options = _options(spec)
    if "default" in options:
        return True, options["default"]
    kind = spec_type(spec)
    if kind == "COMBO":
        choices = spec[0] if isinstance(spec[0], list) else options.get("options", [])
        if choices:
            return True, choices[0]
    if kind == DYNAMIC_COMBO and options.get("options"):
        return True, options["options"][0]["key"]
    return False, None


def map_widget_values(node: dict, node_info: dict) -> dict[str, Any]:
    """Input name -> value for every widget of a node, in the frontend's widget order.

    Values come from widgets_values (a list in saved order, or a name->value dict). A widget the file has no value
    for (the node gained it after the file was saved) gets the server's default and a logged note, as the frontend
    gives it its default; a required one without a default stops the conversion. A dynamic combo's chosen option
    adds its own widgets right after it."""
    values = node.get("widgets_values") or []
    node_name = f"node {node['id']} ({node['type']})"
    linked = {entry["name"] for entry in node.get("inputs") or [] if entry.get("link") is not None}
    pending = _declared_inputs(node_info.get("input", {}))
    mapped, position = {}, 0
    while pending:
        name, spec, required = pending.pop(0)
        if not is_widget(spec):
            continue
        if isinstance(values, dict):
            in_file, value = name in values, values.get(name)
        else:
            in_file = position < len(values)
            value = values[position] if in_file else None
            position += in_file
            if in_file and has_control_value(name, spec) and position < len(values) \
                    and values[position] in CONTROL_VALUES:
                position += 1
            if in_file and has_upload_value(spec) and position < len(values) and isinstance(values[position], str) \
                    and values[position] in ("image", "video", "audio", ""):
                position += 1
            components = box_component_values(spec, value) if in_file else []
            if components and all(isinstance(item, (int, float)) for item in values[position:position + 4]) \
                    and len(values[position:position + 4]) == len(components):
                position += len(components)
        if not in_file:
            if name in linked:
                continue
            found, value = server_default(spec)
            if not found:
                if required:
                    raise WorkflowConversionError(
                        f"{node_name}: the workflow has no value for the required input '{name}' and this ComfyUI "
                        "gives it no default; set it in the frontend and save")
                continue
            logger.warning("%s: the workflow has no value for input '%s'; using this ComfyUI's default %r "
                           "(open and save the workflow in the frontend to keep it)", node_name, name, value)
        mapped[name] = value
        if spec_type(spec) == DYNAMIC_COMBO:
            pending[0:0] = dynamic_option_inputs(name, spec, value)
    return mapped


def convert(workflow: dict, object_info: dict) -> dict:
    """API-format prompt {node id: {"class_type", "inputs", "_meta"}} for a UI-format workflow."""
    if "nodes" not in workflow or "links" not in workflow:
        raise WorkflowConversionError("this is not a UI-format workflow (no 'nodes'/'links'); API-format files "
                                      "can be sent to /prompt as they are")
    if workflow.get("definitions", {}).get("subgraphs"):
        raise WorkflowConversionError("workflows with subgraphs are not supported; unpack the subgraphs first")
    nodes = {node["id"]: node for node in workflow["nodes"]}
    links = {}
    for link in workflow["links"]:
        if isinstance(link, dict):
            links[link["id"]] = (link["origin_id"], link["origin_slot"], link["type"])
        else:
            links[link[0]] = (link[1], link[2], link[5])

    def input_link(node: dict, slot_type: str | None = None, name: str | None = None):
        for entry in node.get("inputs") or []:
            if entry.get("link") is None:
                continue
            if (name is not None and entry["name"] == name) or (slot_type is not None and entry.get("type") == slot_type):
                return entry["link"]
        return None

    def resolve(link_id: int, seen: frozenset = frozenset()):
        """The (node id, output slot) feeding a link after Reroutes and bypasses, a literal value, or None."""
        if link_id not in links:
            raise WorkflowConversionError(f"link {link_id} is used by a node but missing from the links list")
        origin_id, origin_slot, link_type = links[link_id]
        if origin_id in seen:
            raise WorkflowConversionError(f"links loop through node {origin_id}")
        origin = nodes.get(origin_id)
        if origin is None:
            raise WorkflowConversionError(f"link {link_id} comes from node {origin_id}, which is not in the workflow")
        seen = seen | {origin_id}
        if origin["type"] == "Reroute":
            upstream = input_link(origin, name=(origin.get("inputs") or [{}])[0].get("name"))
            return resolve(upstream, seen) if upstream is not None else None
        if origin["type"] == "PrimitiveNode":
            return ("value", (origin.get("widgets_values") or [None])[0])
        mode = origin.get("mode", 0)
        if mode == MODE_MUTED:
            return None
        if mode == MODE_BYPASSED:
            output_type = (origin.get("outputs") or [])[origin_slot]["type"] if origin.get("outputs") else link_type
            upstream = input_link(origin, slot_type=output_type)
            return resolve(upstream, seen) if upstream is not None else None
        return ("link", [str(origin_id), origin_slot])

    prompt = {}
    for node_id, node in nodes.items():
        node_type = node["type"]
        if node_type in DISPLAY_ONLY or node_type in ("Reroute", "PrimitiveNode"):
            continue
        if node.get("mode", 0) in (MODE_MUTED, MODE_BYPASSED):
            continue
        if node_type not in object_info:
            raise WorkflowConversionError(f"node {node_id} is a '{node_type}', which this ComfyUI does not have; "
                                          "install the node pack that provides it")
        node_info = object_info[node_type]
        inputs = map_widget_values(node, node_info)
        declared = set()
        for section in ("required", "optional"):
            declared.update(node_info.get("input", {}).get(section, {}))
        for entry in node.get("inputs") or []:
            name = entry["name"]
            if entry.get("link") is None or name.split(".")[0] not in declared:  # 'combo.input': a dynamic option's
                continue
            source = resolve(entry["link"])
            if source is not None:  # nothing upstream: a widget keeps its own value, a socket stays unset
                inputs[name] = source[1]
        prompt[str(node_id)] = {"class_type": node_type, "inputs": inputs,
                                "_meta": {"title": node.get("title") or node_info.get("display_name", node_type)}}
    return prompt


def fetch_object_info(server: str) -> dict:
    """The server's node definitions; a local server is asked directly, whatever proxy the environment sets."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(f"{server.rstrip('/')}/object_info", timeout=60) as response:
            return json.load(response)
    except urllib.error.URLError as error:
        raise WorkflowConversionError(f"cannot read {server}/object_info ({error.reason}): is ComfyUI running there? "
                                      "Or pass --object-info FILE with a saved copy") from error


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("workflow", help="UI-format workflow .json (as saved by the ComfyUI frontend)")
    parser.add_argument("--server", default="http://127.0.0.1:8188", help="running ComfyUI to read /object_info from")
    parser.add_argument("--object-info", help="a saved /object_info JSON instead of asking a server")
    parser.add_argument("--output", help="write the prompt here instead of stdout")
    args = parser.parse_args(argv)
    notes = logging.StreamHandler(sys.stderr)  # the filled-input reports go to stderr, next to the errors
    notes.setFormatter(logging.Formatter("note: %(message)s"))
    logger.addHandler(notes)
    try:
        return _convert_file(args)
    finally:
        logger.removeHandler(notes)


def read_json(path: str, what: str) -> dict:
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except (OSError, ValueError) as error:
        raise WorkflowConversionError(f"cannot read {what} {path}: {error}") from error


def _convert_file(args: argparse.Namespace) -> int:
    try:
        workflow = read_json(args.workflow, "the workflow")
        object_info = (read_json(args.object_info, "the /object_info copy") if args.object_info
                       else fetch_object_info(args.server))
        prompt = convert(workflow, object_info)
    except WorkflowConversionError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    text = json.dumps(prompt, indent=2)
    if args.output:
        with open(args.output, "w", encoding="utf-8") as handle:
            handle.write(text + "\n")
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
