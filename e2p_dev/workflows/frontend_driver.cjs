// Drives the real ComfyUI frontend in headless Chromium (playwright-core) for the workflow tests and for
// e2p_dev/workflows/build.py. Reads one JSON job file (argv[2]) and prints one JSON result line per job to stdout.
//
// Job file: {"url", "chromium", "viewport": [w, h], "jobs": [{
//   "name", "workflow" (UI-format object), "layout" (optional: arrange nodes and groups, then save the frontend's
//   serialisation to "save_to"), "overrides" ({node type: {widget: value}}, applied before queueing),
//   "clicks" (optional, before queueing: [{"node" (id), "widget" (a widget with `element` and `drawnImage`, the
//   rectangle it draws an image in: {x, y, width, height} in its unzoomed px, plus naturalWidth/naturalHeight),
//   "pixel": [x, y] (a pixel of that image, clicked at its centre), "gesture": "click" | "shift-click" |
//   "right-click"}]), "queue" (bool), "timeout_ms", "screenshot" (png path)}]}
// Result per job: {"name", "missing_types", "missing_node_errors", "invalid_choices", "console_errors", "clicked"
//   (per click: the screen point, the image size and its drawn scale), "prompt_status", "prompt_sent" (the API prompt the page
//   posted), "prompt_reply", "execution", "saved", "screenshot"}
"use strict";

const fs = require("fs");
const path = require("path");

function loadPlaywright() {
  const candidates = [process.env.E2P_PLAYWRIGHT_CORE, "playwright-core"].filter(Boolean);
  for (const candidate of candidates) {
    try {
      return require(candidate);
    } catch (error) {
      if (error.code !== "MODULE_NOT_FOUND") throw error;
    }
  }
  throw new Error("playwright-core not found; install it with `npm install --prefix ~/.cache/e2p_comfyui/node " +
                  "playwright-core@1.65.1` or point E2P_PLAYWRIGHT_CORE at its folder");
}

// Runs in the page: every group (and the ungrouped nodes first) is a block whose nodes stand in columns; blocks
// flow left to right and wrap into a new row past a width limit. Node sizes are the frontend's own.
function arrangeInPage(layout) {
  const COLUMN_GAP = 50;
  const ROW_GAP = 40;
  const PADDING = 30;
  const GROUP_TITLE = 50;
  const BLOCK_GAP = 80;
  const ROW_WIDTH = 3200;
  const graph = window.app.graph;
  const titleHeight = LiteGraph.NODE_TITLE_HEIGHT;
  const memberOf = {};
  layout.groups.forEach((members, index) => members.forEach((id) => { memberOf[id] = index; }));
  const blocks = [[], ...layout.groups.map(() => [])];
  for (const node of graph._nodes) {
    const minimum = node.computeSize();
    const isNote = node.type === "MarkdownNote";
    node.size = [Math.max(minimum[0], isNote ? 460 : 300), Math.max(minimum[1], isNote ? 560 : node.size[1])];
    blocks[(memberOf[node.id] ?? -1) + 1].push(node);
  }
  let x = 0;
  let y = 0;
  let rowHeight = 0;
  blocks.forEach((nodes, index) => {
    if (!nodes.length) return;
    const columns = {};
    for (const node of nodes) (columns[layout.columns[String(node.id)] ?? 0] ||= []).push(node);
    let width = 0;
    let height = 0;
    let columnX = PADDING;
    for (const key of Object.keys(columns).map(Number).sort((a, b) => a - b)) {
      let columnY = GROUP_TITLE + titleHeight;
      let columnWidth = 0;
      for (const node of columns[key]) {
        node.pos = [columnX, columnY];
        columnY += node.size[1] + titleHeight + ROW_GAP;
        columnWidth = Math.max(columnWidth, node.size[0]);
      }
      columnX += columnWidth + COLUMN_GAP;
      height = Math.max(height, columnY);
    }
    width = columnX - COLUMN_GAP + PADDING;
    if (x > 0 && x + width > ROW_WIDTH) {
      x = 0;
      y += rowHeight + BLOCK_GAP;
      rowHeight = 0;
    }
    for (const node of nodes) node.pos = [node.pos[0] + x, node.pos[1] + y];
    if (index > 0) {
      const group = graph._groups[index - 1];
      group.pos = [x, y];
      group.size = [width, height - ROW_GAP + PADDING - titleHeight];
    }
    x += width + BLOCK_GAP;
    rowHeight = Math.max(rowHeight, height);
  });
  graph.setDirtyCanvas(true, true);
}

// Runs in the page: zoom so that the whole graph is visible (the frontend's own "fit view" command).
async function fitInPage() {
  const canvas = window.app.canvas;
  canvas.deselectAll?.();
  await window.app.extensionManager.command.execute("Comfy.Canvas.FitView");
  canvas.setDirty(true, true);
}

// Clicks pixels of the image a widget draws, with the real mouse (so the page's own event routing is tested).
async function clickImagePixels(page, clicks) {
  const clicked = [];
  for (const click of clicks) {
    const locate = ({node, widget, pixel}) => {
      const found = window.app.graph.getNodeById(node)?.widgets?.find((w) => w.name === widget);
      const drawn = found?.drawnImage;
      if (!drawn) return null;
      const bounds = found.element.getBoundingClientRect();
      const zoom = bounds.width / found.element.clientWidth;
      const scale = drawn.width / drawn.naturalWidth;
      const x = bounds.left + (drawn.x + (pixel[0] + 0.5) * scale) * zoom;
      const y = bounds.top + (drawn.y + (pixel[1] + 0.5) * scale) * zoom;
      return {x, y, image_size: [drawn.naturalWidth, drawn.naturalHeight], screen_px_per_pixel: scale * zoom,
              on_top: document.elementFromPoint(x, y) === found.element};
    };
    await page.waitForFunction(locate, click, {timeout: 30000, polling: 100});
    // The node may still be settling (its size, the canvas zoom): click once two looks agree.
    let target = await page.evaluate(locate, click);
    for (let tries = 0; tries < 50; tries++) {
      await page.waitForTimeout(200);
      const again = await page.evaluate(locate, click);
      if (again && JSON.stringify(again) === JSON.stringify(target)) break;
      target = again;
    }
    if (!target.on_top) throw new Error(`pixel ${click.pixel} of ${click.widget} is covered at ${target.x}, ${target.y}`);
    if (click.gesture === "shift-click") await page.keyboard.down("Shift");
    await page.mouse.click(target.x, target.y, {button: click.gesture === "right-click" ? "right" : "left"});
    if (click.gesture === "shift-click") await page.keyboard.up("Shift");
    clicked.push({...click, ...target});
    await page.waitForTimeout(100);
  }
  return clicked;
}

async function runJob(page, job, consoleErrors) {
  const result = {name: job.name, console_errors: [], missing_types: [], missing_node_errors: [], invalid_choices: []};
  const firstError = consoleErrors.length;
  result.missing_types = await page.evaluate((workflow) =>
    workflow.nodes.map((n) => n.type).filter((t) => !(t in LiteGraph.registered_node_types)), job.workflow);
  await page.evaluate(async ({workflow, name}) => {
    await window.app.loadGraphData(workflow, true, true, name);
  }, {workflow: job.workflow, name: job.name});
  await page.waitForTimeout(500);
  // Placeholder nodes for unknown types are flagged by the frontend (red nodes).
  result.missing_node_errors = await page.evaluate(() => window.app.graph._nodes
    .filter((n) => n.has_errors || !(n.type in LiteGraph.registered_node_types))
    .map((n) => `${n.id}:${n.type}`));
  // A choice the list does not offer (a renamed option, a model file that is not there) is what the server
  // refuses; the frontend keeps showing it, so it is checked here before queueing (bypassed and muted nodes are
  // not queued: mode 0 only).
  result.invalid_choices = await page.evaluate(() => window.app.graph._nodes.filter((n) => !n.mode)
    .flatMap((n) => (n.widgets || [])
    .filter((w) => w.type === "combo" && Array.isArray(w.options?.values) && !w.options.values.includes(w.value))
    .map((w) => `${n.id}:${n.type}.${w.name}=${JSON.stringify(w.value)}`)));
  if (job.layout) {
    await page.evaluate(arrangeInPage, job.layout);
    const serialised = await page.evaluate(() => window.app.graph.serialize());
    fs.writeFileSync(job.save_to, JSON.stringify(serialised, null, 2) + "\n");
    result.saved = job.save_to;
  }
  await page.evaluate(fitInPage);
  await page.waitForTimeout(300);
  if (job.clicks) result.clicked = await clickImagePixels(page, job.clicks);
  if (job.queue) {
    await page.evaluate((overrides) => {
      for (const node of window.app.graph._nodes) {
        for (const [name, value] of Object.entries(overrides[node.type] || {})) {
          const widget = (node.widgets || []).find((w) => w.name === name);
          if (widget) widget.value = value;
        }
      }
      window.__e2pEvents = [];
      for (const type of ["execution_success", "execution_error", "execution_interrupted"]) {
        window.app.api.addEventListener(type, (event) => window.__e2pEvents.push({type, detail: event.detail}));
      }
    }, job.overrides || {});
    const promptResponse = page.waitForResponse(
      (response) => response.url().endsWith("/prompt") && response.request().method() === "POST",
      {timeout: 30000});
    await page.evaluate(() => window.app.queuePrompt(0, 1));
    const response = await promptResponse;
    result.prompt_sent = response.request().postDataJSON().prompt;
    result.prompt_status = response.status();
    result.prompt_reply = await response.json();
    if (result.prompt_status === 200) {
      const promptId = result.prompt_reply.prompt_id;
      await page.waitForFunction((id) => (window.__e2pEvents || []).some((e) => e.detail?.prompt_id === id),
                                 promptId, {timeout: job.timeout_ms || 300000, polling: 250});
      result.execution = await page.evaluate((id) => window.__e2pEvents.find((e) => e.detail?.prompt_id === id),
                                             promptId);
    }
    await page.waitForTimeout(500);
  }
  if (job.screenshot) {
    await page.screenshot({path: job.screenshot});
    result.screenshot = job.screenshot;
  }
  result.console_errors = consoleErrors.slice(firstError);
  return result;
}

async function main() {
  const config = JSON.parse(fs.readFileSync(process.argv[2], "utf8"));
  const {chromium} = loadPlaywright();
  const browser = await chromium.launch({
    executablePath: config.chromium,
    args: ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--use-gl=swiftshader"],
  });
  try {
    const [width, height] = config.viewport || [1600, 1000];
    const page = await browser.newPage({viewport: {width, height}});
    const consoleErrors = [];
    page.on("console", (message) => {
      if (message.type() === "error") consoleErrors.push(message.text());
    });
    page.on("pageerror", (error) => consoleErrors.push(`pageerror: ${error.message}`));
    page.on("response", (response) => {
      if (response.status() >= 400) consoleErrors.push(`http ${response.status()}: ${response.url()}`);
    });
    // A fresh user gets the template browser on first start; mark the tutorial as seen so the graph shows, and
    // hide the minimap, which would cover part of the screenshots; draw node details at any zoom.
    const settings = await fetch(`${config.url}/api/settings`, {method: "POST",
      headers: {"Content-Type": "application/json"}, body: JSON.stringify({"Comfy.TutorialCompleted": true, "Comfy.Minimap.Visible": false,
                                                 "LiteGraph.Canvas.MinFontSizeForLOD": 1})});
    if (!settings.ok) throw new Error(`POST /api/settings answered ${settings.status}`);
    await page.goto(config.url, {waitUntil: "load", timeout: 120000});
    await page.waitForFunction(() => window.app && window.app.graph && window.LiteGraph &&
                               Object.keys(LiteGraph.registered_node_types).length > 100, null, {timeout: 120000});
    await page.waitForTimeout(1000);
    const startup = {name: "__startup__", console_errors: consoleErrors.splice(0)};
    console.log(JSON.stringify(startup));
    for (const job of config.jobs) {
      let result;
      try {
        result = await runJob(page, job, consoleErrors);
      } catch (error) {
        result = {name: job.name, failure: String(error && error.stack || error), console_errors: consoleErrors.splice(0)};
        try {
          const failurePath = path.join(path.dirname(job.screenshot || "/tmp/x"), `${job.name}_failure.png`);
          await page.screenshot({path: failurePath});
          result.screenshot = failurePath;
        } catch (ignored) { /* the page is gone; the failure text says why */ }
      }
      consoleErrors.splice(0);
      console.log(JSON.stringify(result));
    }
  } finally {
    await browser.close();
  }
}

main().catch((error) => {
  console.error(error && error.stack || error);
  process.exit(1);
});
