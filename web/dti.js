// ComfyUI-DTI front end: a live loss / norm chart on DTI Train with the latest preview frame beside
// it, and the report text of the pack's nodes shown on the node itself (the Norm Inspector's
// diagnosis, Train's summary, ...).
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";

// Kept on window so tests and other extensions can read what the chart shows.
const STATE = (window.__comfyui_dti = window.__comfyui_dti || { train: {}, reports: {} });
const TEXT_NODES = ["DTITrainConcept", "DTITrain", "DTINormInspector", "DTILoadEmbedding", "DTISlerpConcepts", "DTISaveConcept"];
const COLORS = ["#5aaaff", "#ff9646", "#78dc78", "#e664a0"];

function emaSeries(values, alpha = 0.1) {
  let acc = null;
  return values.map((v) => {
    if (!Number.isFinite(v)) return NaN;
    acc = acc === null ? v : (1 - alpha) * acc + alpha * v;
    return acc;
  });
}

function drawPanel(ctx, box, title, xs, series, hlines, logY) {
  const [x0, y0, x1, y1] = box;
  ctx.strokeStyle = "#3c3c44";
  ctx.strokeRect(x0, y0, x1 - x0, y1 - y0);
  ctx.fillStyle = "#ddd";
  ctx.font = "11px sans-serif";
  ctx.fillText(title, x0 + 4, y0 - 4);
  const t = (v) => (logY ? Math.log10(Math.max(v, 1e-12)) : v);
  const ys = series.flatMap((s) => s.values).concat(hlines.map((h) => h.value)).filter(Number.isFinite).map(t);
  if (!xs.length || !ys.length) {
    ctx.fillText("waiting for the first step…", x0 + 8, (y0 + y1) / 2);
    return;
  }
  let lo = Math.min(...ys), hi = Math.max(...ys);
  if (hi - lo < 1e-12) { lo -= 0.5; hi += 0.5; }
  const pad = (hi - lo) * 0.08; lo -= pad; hi += pad;
  const xmin = xs[0], xmax = Math.max(xs[xs.length - 1], xmin + 1);
  const px = (x) => x0 + ((x - xmin) / (xmax - xmin)) * (x1 - x0);
  const py = (v) => y1 - ((t(v) - lo) / (hi - lo)) * (y1 - y0);
  for (const h of hlines) {
    ctx.strokeStyle = h.color; ctx.setLineDash([4, 4]);
    ctx.beginPath(); ctx.moveTo(x0, py(h.value)); ctx.lineTo(x1, py(h.value)); ctx.stroke();
    ctx.setLineDash([]);
  }
  series.forEach((s) => {
    ctx.strokeStyle = s.color; ctx.lineWidth = s.width || 1.5; ctx.beginPath();
    let started = false;
    s.values.forEach((v, i) => {
      if (!Number.isFinite(v)) return;
      if (started) ctx.lineTo(px(xs[i]), py(v)); else { ctx.moveTo(px(xs[i]), py(v)); started = true; }
    });
    ctx.stroke();
  });
  ctx.lineWidth = 1;
  let lx = x0 + 6;
  for (const s of series.filter((s) => s.label)) {
    ctx.fillStyle = s.color; ctx.fillText(s.label, lx, y1 + 12); lx += ctx.measureText(s.label).width + 14;
  }
}

const CHART_WIDTH = 420;

function drawFrame(ctx, frame, x, h) {
  // The preview frame fills the right side, scaled to the chart's height, with its step.
  const img = frame.img;
  const fw = Math.round((img.naturalWidth / Math.max(img.naturalHeight, 1)) * h);
  ctx.drawImage(img, x, 0, fw, h);
  ctx.fillStyle = "rgba(24, 24, 28, 0.75)"; ctx.fillRect(x, 0, 90, 18);
  ctx.fillStyle = "#eee"; ctx.font = "11px sans-serif";
  ctx.fillText(`sample @ ${frame.step}`, x + 4, 13);
}

function frameWidth(frame, h) {
  if (!frame?.img?.naturalWidth) return 0;
  return Math.round((frame.img.naturalWidth / Math.max(frame.img.naturalHeight, 1)) * h);
}

function drawChart(canvas, s, node) {
  if (node) canvas.dataset.dtiChart = String(node.id);
  const fw = frameWidth(s?.frame, canvas.height);
  if (canvas.width !== CHART_WIDTH + fw) canvas.width = CHART_WIDTH + fw;
  const ctx = canvas.getContext("2d");
  ctx.fillStyle = "#18181c";
  ctx.fillRect(0, 0, canvas.width, canvas.height);
  const w = CHART_WIDTH, h = canvas.height;
  if (fw) {
    drawFrame(ctx, s.frame, w, h);
    canvas.dataset.frameStep = String(s.frame.step);
  }
  if (!s) {
    ctx.fillStyle = "#aaa"; ctx.font = "12px sans-serif";
    ctx.fillText("DTI: the loss and norm chart appears here while training runs", 10, h / 2);
    return;
  }
  const last = s.step.length ? s.step[s.step.length - 1] : 0;
  ctx.fillStyle = "#eee"; ctx.font = "12px sans-serif";
  ctx.fillText(`step ${last} / ${s.total}   loss ${Number(s.loss[s.loss.length - 1]).toPrecision(4)}`, 8, 14);
  drawPanel(ctx, [44, 34, w - 8, h / 2 - 4], "loss", s.step,
    [{ values: s.loss, color: "#6e6e82" }, { values: emaSeries(s.loss), color: COLORS[0], width: 2, label: "loss (EMA)" }],
    [], s.loss.every((v) => !Number.isFinite(v) || v > 0));
  const keys = Object.keys(s.norms);
  drawPanel(ctx, [44, h / 2 + 18, w - 8, h - 18], "row norm vs m*", s.step,
    keys.map((k, i) => ({ values: s.norms[k], color: COLORS[(i + 1) % COLORS.length], width: 2, label: `‖e‖ ${k}` })),
    keys.map((k, i) => ({ value: s.mStar[k], color: COLORS[(i + 1) % COLORS.length] })), false);
  canvas.dataset.points = String(s.step.length);
}

function addChart(node) {
  const canvas = document.createElement("canvas");
  canvas.width = CHART_WIDTH;
  canvas.height = 240;
  canvas.dataset.dtiChart = String(node.id);
  // contain: a chart widened by a preview frame scales down whole instead of being squeezed
  Object.assign(canvas.style, { width: "100%", height: "240px", borderRadius: "4px", objectFit: "contain" });
  const widget = node.addDOMWidget("dti_live_chart", "dti-chart", canvas, { hideOnZoom: false, serialize: false });
  widget.serialize = false;
  widget.computeLayoutSize = () => ({ minHeight: 240, minWidth: 320 });
  node.__dtiCanvas = canvas;
  drawChart(canvas, STATE.train[String(node.id)]);
}

function showText(node, text) {
  let el = node.__dtiText;
  if (!el) {
    el = document.createElement("pre");
    el.dataset.dtiReport = String(node.id);
    Object.assign(el.style, {
      margin: "0", padding: "6px", maxHeight: "260px", overflow: "auto", whiteSpace: "pre-wrap",
      font: "11px monospace", color: "#ddd", background: "#18181c", borderRadius: "4px",
    });
    const widget = node.addDOMWidget("dti_report", "dti-report", el, { hideOnZoom: false, serialize: false });
    widget.serialize = false;
    widget.computeLayoutSize = () => ({ minHeight: reportHeight(el.textContent, node.size?.[0] || 320), minWidth: 320 });
    node.__dtiText = el;
  }
  el.textContent = text;
  STATE.reports[String(node.id)] = text;
  fitNode(node);
}

function reportHeight(text, width) {
  // The report's height in graph units: its lines, wrapped at the node's width (11px monospace),
  // capped where the box starts to scroll.
  const perLine = Math.max(20, Math.floor((width - 40) / 6.7));
  const lines = String(text || "").split("\n").reduce((n, l) => n + Math.max(1, Math.ceil(l.length / perLine)), 0);
  return Math.min(260, Math.max(40, lines * 13 + 16));
}

function layoutKey(node) {
  // What decides a node's content height: its widgets (ComfyUI adds an image preview widget when an
  // output image arrives), the report text and the chart's width.
  return [(node.widgets || []).map((w) => w.name).join(","), node.imgs?.length || 0,
    node.__dtiText?.textContent.length || 0, node.__dtiCanvas?.width || 0].join("|");
}

function fitNode(node) {
  // Grow the node downwards (never shrink it, keep its width: the pack's widgets fit any width) so
  // what the pack and ComfyUI added after a run lies inside it.
  if (!node?.computeSize || !node.size) return;
  node.__dtiLayout = layoutKey(node);
  const h = Math.max(node.size[1], node.computeSize()[1]);
  if (h !== node.size[1]) node.setSize([node.size[0], h]);
  app.graph?.setDirtyCanvas?.(true, true);
}

function hasChart(nodeId) {
  // The DTI Train node (by its id as ComfyUI's preview messages name it: "5", or "3:5" in a subgraph).
  const id = String(nodeId ?? "").split(":").pop();
  if (!id) return false;
  const graphs = [app.graph, app.canvas?.graph].filter(Boolean);
  return graphs.some((g) => (g.getNodeById?.(Number(id)) ?? g.getNodeById?.(id))?.__dtiCanvas);
}

app.registerExtension({
  name: "ComfyUI-DTI",
  setup() {
    // DTI Train's progress-bar preview is a JPEG of the same loss / norm chart the node already draws
    // live: ComfyUI would add it as an image under the chart. Keep it off nodes that have the chart
    // (b_preview, which the queue panel shows, still goes out).
    const dispatch = api.dispatchCustomEvent;
    if (typeof dispatch === "function" && !api.__dtiPreviewFilter) {
      api.__dtiPreviewFilter = true;
      api.dispatchCustomEvent = function (type, detail) {
        if (type === "b_preview_with_metadata" && hasChart(detail?.displayNodeId ?? detail?.nodeId)) return;
        return dispatch.apply(this, arguments);
      };
    }
    api.addEventListener("dti.train.preview", ({ detail }) => {
      // A sample frame of the concept at detail.step (a JPEG data URL), drawn beside the chart.
      const id = String(detail.node);
      const s = STATE.train[id];
      if (!s) return;
      const img = new Image();
      img.onload = () => {
        s.frame = { step: detail.step, img };
        const node = app.graph?.getNodeById?.(Number(id)) ?? app.graph?.getNodeById?.(id);
        if (node?.__dtiCanvas) { drawChart(node.__dtiCanvas, s, node); fitNode(node); }
      };
      img.src = detail.image;
    });
    api.addEventListener("dti.train.progress", ({ detail }) => {
      const id = String(detail.node);
      let s = STATE.train[id];
      if (!s || !s.step.length || detail.step <= s.step[s.step.length - 1]) {
        s = STATE.train[id] = { step: [], loss: [], norms: {}, mStar: detail.m_star || {}, total: detail.total };
      }
      s.step.push(detail.step);
      s.loss.push(detail.skipped ? NaN : detail.loss);
      for (const [k, v] of Object.entries(detail.norms || {})) (s.norms[k] = s.norms[k] || []).push(v);
      const node = app.graph?.getNodeById?.(Number(id)) ?? app.graph?.getNodeById?.(id);
      if (node?.__dtiCanvas) drawChart(node.__dtiCanvas, s, node);
    });
  },
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (!TEXT_NODES.includes(nodeData.name)) return;
    const created = nodeType.prototype.onNodeCreated;
    const configured = nodeType.prototype.onConfigure;
    const executed = nodeType.prototype.onExecuted;
    nodeType.prototype.onNodeCreated = function () {
      const r = created?.apply(this, arguments);
      if (nodeData.name === "DTITrainConcept" || nodeData.name === "DTITrain") addChart(this);
      return r;
    };
    // A node gets its saved id only when a workflow is configured, after onNodeCreated.
    nodeType.prototype.onConfigure = function () {
      const r = configured?.apply(this, arguments);
      if (this.__dtiCanvas) {
        this.__dtiCanvas.dataset.dtiChart = String(this.id);
        drawChart(this.__dtiCanvas, STATE.train[String(this.id)]);
      }
      if (this.__dtiText) this.__dtiText.dataset.dtiReport = String(this.id);
      return r;
    };
    nodeType.prototype.onExecuted = function (message) {
      executed?.apply(this, arguments);
      const text = message?.text?.[0];
      if (text) showText(this, text);
      fitNode(this);
    };
    // ComfyUI adds its image preview widget while drawing, after onExecuted: fit again when the
    // node's content changes.
    const drawn = nodeType.prototype.onDrawForeground;
    nodeType.prototype.onDrawForeground = function () {
      const r = drawn?.apply(this, arguments);
      if (this.__dtiLayout !== undefined && this.__dtiLayout !== layoutKey(this)) fitNode(this);
      return r;
    };
  },
});
