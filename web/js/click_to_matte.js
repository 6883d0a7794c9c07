// Click to matte: E2P Matting shows the image that feeds its `image` input and turns clicks on it into its
// `points` text. A click adds a point; shift-click or right-click on a point removes it. The points text stays
// the one record of the points: the editor reads it on every draw (typed points show too) and writes it back in
// the unit that `coordinates` selects, in pixels of the input image whatever size the preview is drawn at.
// What it uses of the frontend (addDOMWidget, app.nodeOutputs, getInputNode) is the same in the frontends of
// ComfyUI 0.3.75 (1.32) and 0.33.0 (1.49), so nothing here depends on the version.
import { app } from "../../../scripts/app.js";
import { api } from "../../../scripts/api.js";

const NODE_TYPE = "E2PMatting";
const EDITOR_NAME = "point_editor";
const MIN_HEIGHT = 150;       // px of the node: the image preview's smallest height
const HIT_RADIUS = 10;        // px: how close to a point a removing click must be
const MARK_RADIUS = 5;
const MARK_COLOR = "#34d058";
const HELP = "Click to add a point on the subject; shift-click or right-click a point to remove it.";

// How a written value maps to a pixel of the input image and back, as e2p_core.hints.points_to_pixels reads
// them: pixels are floored; fractions of the size are floored after scaling. Clicks write whole pixels, or the
// fraction of the pixel's centre.
const UNITS = {
  pixels: {toPixel: (value) => Math.floor(value), fromPixel: (pixel) => pixel},
  fractions: {
    toPixel: (value, size) => Math.min(Math.floor(value * size), size - 1),
    fromPixel: (pixel, size) => Math.round(((pixel + 0.5) / size) * 1e5) / 1e5,
  },
};

function widgetOf(node, name) {
  return node.widgets?.find((widget) => widget.name === name);
}

function isLinked(node, name) {
  return node.inputs?.some((input) => input.name === name && input.widget && input.link != null) ?? false;
}

// The node whose output reaches `image`, through any Reroute nodes.
function imageSource(node) {
  const slot = node.findInputSlot("image");
  let source = slot >= 0 && node.graph ? node.getInputNode(slot) : null;
  while (source?.type === "Reroute" && source.graph) source = source.getInputNode(0);
  return source ?? null;
}

// The image a node shows (a Load Image node's file, or what a node showed after a run), as the frontend records
// it in app.nodeOutputs; its key is the node id, prefixed by the subgraph's id inside a subgraph.
function shownImageUrl(node) {
  const key = node.graph?.isRootGraph === false ? `${node.graph.id}:${node.id}` : String(node.id);
  const image = app.nodeOutputs?.[key]?.images?.[0];
  if (!image?.filename) return null;
  const query = new URLSearchParams({filename: image.filename, subfolder: image.subfolder ?? "",
                                     type: image.type ?? "output"});
  return api.apiURL(`/view?${query}`);
}

// [[x, y], ...] as written (no unit applied), or null when the text is not a list of points the node reads.
function readPoints(text) {
  const trimmed = (text ?? "").trim();
  if (!trimmed) return [];
  let data;
  try {
    data = JSON.parse(trimmed);
  } catch {
    return null;
  }
  if (data && typeof data === "object" && !Array.isArray(data)) data = data.points;
  if (!Array.isArray(data)) return null;
  const points = [];
  for (const item of data) {
    const pair = Array.isArray(item) ? item : [item?.x, item?.y];
    if (pair.length !== 2 || !pair.every(Number.isFinite)) return null;
    points.push(pair);
  }
  return points;
}

function writePoints(node, points) {
  const widget = widgetOf(node, "points");
  const text = points.length ? `[${points.map(([x, y]) => `[${x}, ${y}]`).join(", ")}]` : "";
  widget.value = text;
  widget.callback?.(text);
  node.setDirtyCanvas(true, true);
}

class PointEditor {
  constructor(node) {
    this.node = node;
    this.canvas = document.createElement("canvas");
    this.canvas.title = HELP;
    this.image = null;          // the loaded preview, once it has loaded
    this.url = null;
    this.failed = false;        // the preview at this.url did not load
    this.painted = "";          // what the canvas shows, to repaint only on a change
    this.drawn = null;          // the image's rectangle in the widget, in its own (unzoomed) px
    this.canvas.addEventListener("pointerdown", (event) => this.onPointerDown(event));
    this.canvas.addEventListener("contextmenu", (event) => {
      if (this.imagePixel(event)) {
        event.preventDefault();
        event.stopPropagation();
      }
    });
    this.resizes = new ResizeObserver(() => this.refresh());
    this.resizes.observe(this.canvas);
  }

  // What the editor can offer now: {unit, points} over an image, or a message saying what is missing.
  state() {
    const source = imageSource(this.node);
    if (!source) return {message: "Connect a Load Image node to image to click points here."};
    const linked = ["points", "coordinates"].find((name) => isLinked(this.node, name));
    if (linked) return {message: `${linked} comes from a link: unlink it to click points here.`};
    const url = shownImageUrl(source);
    if (!url) {
      return {message: `"${source.title}" shows no image to click on. Connect a Load Image node to image (or ` +
                       "run the graph, for a node that shows its image after a run)."};
    }
    if (url !== this.url) this.load(url);
    if (this.failed) return {message: `Could not load the image "${source.title}" shows.`};
    if (!this.image) return {message: "Loading the image…"};
    const unitName = widgetOf(this.node, "coordinates")?.value;
    const unit = UNITS[unitName];
    if (!unit) return {message: `Unknown coordinates "${unitName}".`};
    return {unit, points: readPoints(widgetOf(this.node, "points")?.value)};
  }

  load(url) {
    this.url = url;
    this.image = null;
    this.failed = false;
    const image = new Image();
    image.onload = () => {
      if (this.url !== url) return;
      this.image = image;
      this.refresh();
    };
    image.onerror = () => {
      if (this.url !== url) return;
      this.failed = true;
      this.refresh();
    };
    image.src = url;
  }

  refresh() {
    this.painted = "";
    this.paint();
  }

  // Repaints when anything shown changed: called on every draw of the node, so it must be cheap otherwise.
  paint() {
    const canvas = this.canvas;
    const width = canvas.clientWidth;
    const height = canvas.clientHeight;
    if (!width || !height) return;
    const state = this.state();
    const zoom = (canvas.getBoundingClientRect().width / width) * (window.devicePixelRatio || 1);
    const key = JSON.stringify([width, height, zoom, this.image?.src, state.message,
                                widgetOf(this.node, "points")?.value, widgetOf(this.node, "coordinates")?.value]);
    if (key === this.painted) return;
    this.painted = key;
    canvas.width = Math.round(width * zoom);
    canvas.height = Math.round(height * zoom);
    const ctx = canvas.getContext("2d");
    ctx.setTransform(zoom, 0, 0, zoom, 0, 0);
    ctx.clearRect(0, 0, width, height);
    this.drawn = null;
    if (state.message) {
      this.drawMessage(ctx, width, height, state.message);
      return;
    }
    const {naturalWidth, naturalHeight} = this.image;
    const scale = Math.min(width / naturalWidth, height / naturalHeight);
    this.drawn = {x: (width - naturalWidth * scale) / 2, y: (height - naturalHeight * scale) / 2,
                  width: naturalWidth * scale, height: naturalHeight * scale, naturalWidth, naturalHeight};
    ctx.drawImage(this.image, this.drawn.x, this.drawn.y, this.drawn.width, this.drawn.height);
    if (state.points === null) {
      this.drawBanner(ctx, width, "points is not a list of [x, y]: fix or clear it to click here.");
      return;
    }
    for (const [x, y] of this.markers(state).filter(Boolean)) {
      ctx.beginPath();
      ctx.arc(x, y, MARK_RADIUS, 0, 2 * Math.PI);
      ctx.fillStyle = MARK_COLOR;
      ctx.fill();
      ctx.lineWidth = 1.5;
      ctx.strokeStyle = "#000";
      ctx.stroke();
    }
  }

  // Where each point is drawn, the centre of its pixel: [x, y] in the widget, or null off the image.
  markers({unit, points}) {
    const {x, y, width, naturalWidth, naturalHeight} = this.drawn;
    const scale = width / naturalWidth;
    return points.map(([px, py]) => {
      const column = unit.toPixel(px, naturalWidth);
      const row = unit.toPixel(py, naturalHeight);
      if (column < 0 || column >= naturalWidth || row < 0 || row >= naturalHeight) return null;
      return [x + (column + 0.5) * scale, y + (row + 0.5) * scale];
    });
  }

  drawMessage(ctx, width, height, message) {
    ctx.fillStyle = LiteGraph.WIDGET_BGCOLOR;
    ctx.beginPath();
    ctx.roundRect(0, 0, width, height, 6);
    ctx.fill();
    ctx.fillStyle = LiteGraph.WIDGET_SECONDARY_TEXT_COLOR;
    ctx.font = `${LiteGraph.NODE_SUBTEXT_SIZE}px sans-serif`;
    ctx.textAlign = "center";
    ctx.textBaseline = "middle";
    const lines = wrap(ctx, message, width - 20);
    const lineHeight = LiteGraph.NODE_SUBTEXT_SIZE * 1.4;
    lines.forEach((line, index) => {
      ctx.fillText(line, width / 2, height / 2 + (index - (lines.length - 1) / 2) * lineHeight);
    });
  }

  drawBanner(ctx, width, message) {
    const lineHeight = LiteGraph.NODE_SUBTEXT_SIZE * 1.4;
    ctx.font = `${LiteGraph.NODE_SUBTEXT_SIZE}px sans-serif`;
    const lines = wrap(ctx, message, width - 12);
    ctx.fillStyle = "rgba(0, 0, 0, 0.7)";
    ctx.fillRect(0, 0, width, lines.length * lineHeight + 6);
    ctx.fillStyle = LiteGraph.WIDGET_TEXT_COLOR;
    ctx.textAlign = "left";
    ctx.textBaseline = "top";
    lines.forEach((line, index) => ctx.fillText(line, 6, 3 + index * lineHeight));
  }

  // The input image's pixel [column, row] under a pointer event, or null off the image.
  imagePixel(event) {
    if (!this.drawn) return null;
    const bounds = this.canvas.getBoundingClientRect();
    const toLocal = this.canvas.clientWidth / bounds.width;   // 1 / the canvas zoom
    const x = (event.clientX - bounds.left) * toLocal - this.drawn.x;
    const y = (event.clientY - bounds.top) * toLocal - this.drawn.y;
    const scale = this.drawn.width / this.drawn.naturalWidth;
    const column = Math.floor(x / scale);
    const row = Math.floor(y / scale);
    if (column < 0 || row < 0 || column >= this.drawn.naturalWidth || row >= this.drawn.naturalHeight) return null;
    return {column, row, x: x + this.drawn.x, y: y + this.drawn.y};
  }

  onPointerDown(event) {
    if (event.button !== 0 && event.button !== 2) return;
    this.paint();   // the image's place as the widget stands now
    const pixel = this.imagePixel(event);
    const state = this.state();
    if (!pixel || state.message || state.points === null) return;
    // Not preventDefault: that would cancel the mouseup on which the frontend records the change for undo.
    event.stopPropagation();
    const {unit, points} = state;
    if (event.button === 2 || event.shiftKey) {
      const index = this.nearest(state, pixel);
      if (index < 0) return;
      points.splice(index, 1);
    } else {
      const {naturalWidth, naturalHeight} = this.drawn;
      points.push([unit.fromPixel(pixel.column, naturalWidth), unit.fromPixel(pixel.row, naturalHeight)]);
    }
    writePoints(this.node, points);
    this.paint();
  }

  // The index of the point drawn nearest to the pointer within HIT_RADIUS, or -1.
  nearest(state, pixel) {
    let best = -1;
    let bestDistance = HIT_RADIUS;
    this.markers(state).forEach((marker, index) => {
      const distance = marker ? Math.hypot(marker[0] - pixel.x, marker[1] - pixel.y) : Infinity;
      if (distance <= bestDistance) {
        best = index;
        bestDistance = distance;
      }
    });
    return best;
  }
}

function wrap(ctx, text, width) {
  const lines = [];
  let line = "";
  for (const word of text.split(" ")) {
    const candidate = line ? `${line} ${word}` : word;
    if (line && ctx.measureText(candidate).width > width) {
      lines.push(line);
      line = word;
    } else {
      line = candidate;
    }
  }
  if (line) lines.push(line);
  return lines;
}

app.registerExtension({
  name: "edit2perceive.ClickToMatte",
  nodeCreated(node) {
    if (node.comfyClass !== NODE_TYPE) return;
    const editor = new PointEditor(node);
    // Last among the widgets and never serialised: saved widget values and the prompt stay as without it.
    const widget = node.addDOMWidget(EDITOR_NAME, "e2p-points", editor.canvas, {
      serialize: false,
      getMinHeight: () => MIN_HEIGHT,
      onDraw: () => editor.paint(),
    });
    widget.serialize = false;
    // The image's rectangle in the widget (px of the widget before the canvas zoom) and the image's size; null
    // while there is no image to click on.
    Object.defineProperty(widget, "drawnImage", {get: () => editor.drawn});
    const onRemoved = node.onRemoved;
    node.onRemoved = function (...args) {
      editor.resizes.disconnect();
      return onRemoved?.apply(this, args);
    };
    const [width, height] = node.computeSize();
    node.setSize([Math.max(node.size[0], width), Math.max(node.size[1], height)]);
  },
});
