// The page of `ldm serve`. It knows no plugin by name: /api/model lists each plugin with the
// widget it declares (or none: a text field), and every widget makes the text a person would
// write after cond.NAME= on the command line; file inputs send their pixels instead.
"use strict";

const PALETTE = ["#000000", "#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4",
                 "#f032e6", "#bfef45", "#fabed4", "#469990", "#dcbeff", "#9a6324", "#800000"];
const CANVAS = 256;  // on-screen size of the longer side of every drawing canvas, in CSS pixels

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key === "text") node.textContent = value;
    else node.setAttribute(key, value);
  }
  for (const child of children) node.append(child);
  return node;
}

function choiceSelect(choices, cls) {
  const select = el("select", {class: cls});
  choices.forEach((name, i) => {
    const option = el("option", {value: String(i), text: `${i}: ${name}`});
    select.append(option);
  });
  return select;
}

function readFile(input) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result);
    reader.onerror = () => reject(reader.error);
    reader.readAsDataURL(input.files[0]);
  });
}

// A canvas of h x w cells, each holding a small integer, painted with a round brush.
class CellCanvas {
  constructor(h, w, colour) {
    this.h = h; this.w = w; this.colour = colour;
    this.cells = new Uint8Array(h * w);
    const scale = CANVAS / Math.max(h, w);
    this.canvas = el("canvas", {class: "paint", width: w, height: h});
    this.canvas.style.width = `${w * scale}px`;
    this.canvas.style.height = `${h * scale}px`;
    this.overlay = el("canvas", {width: w, height: h});
    this.background = null;
    this.brush = 1; this.value = 1;
    let down = false;
    const paint = (event) => {
      const box = this.canvas.getBoundingClientRect();
      const x = Math.floor((event.clientX - box.left) / box.width * w);
      const y = Math.floor((event.clientY - box.top) / box.height * h);
      const r = this.brush - 1;
      for (let dy = -r; dy <= r; dy++) for (let dx = -r; dx <= r; dx++) {
        const yy = y + dy, xx = x + dx;
        if (dx * dx + dy * dy <= r * r + r && yy >= 0 && yy < h && xx >= 0 && xx < w) {
          this.cells[yy * w + xx] = this.value;
        }
      }
      this.draw();
    };
    this.canvas.addEventListener("mousedown", (e) => { down = true; paint(e); });
    this.canvas.addEventListener("mousemove", (e) => { if (down) paint(e); });
    window.addEventListener("mouseup", () => { down = false; });
    this.draw();
  }
  clear() { this.cells.fill(0); this.draw(); }
  draw() {
    // the cells go to an overlay of their own (never read back from the canvas: an uploaded
    // image drawn there may not be read), then over the background image, if any
    const data = this.overlay.getContext("2d").createImageData(this.w, this.h);
    for (let i = 0; i < this.cells.length; i++) {
      const rgba = this.colour(this.cells[i]);
      if (rgba) data.data.set(rgba, 4 * i);
    }
    this.overlay.getContext("2d").putImageData(data, 0, 0);
    const ctx = this.canvas.getContext("2d");
    ctx.clearRect(0, 0, this.w, this.h);
    if (this.background) ctx.drawImage(this.background, 0, 0, this.w, this.h);
    ctx.drawImage(this.overlay, 0, 0);
  }
  rows() {
    const rows = [];
    for (let y = 0; y < this.h; y++) rows.push(Array.from(this.cells.subarray(y * this.w, (y + 1) * this.w)));
    return rows;
  }
}

function rgb(hex) { return [1, 3, 5].map((i) => parseInt(hex.slice(i, i + 2), 16)); }

function brushTools(cells) {
  const size = el("input", {type: "range", min: "1", max: String(Math.max(2, Math.round(cells.w / 4))), value: "2", class: "brush"});
  cells.brush = 2;
  size.addEventListener("input", () => { cells.brush = Number(size.value); });
  const clear = el("button", {type: "button", class: "clear", text: "clear"});
  clear.addEventListener("click", () => cells.clear());
  return [el("label", {}, "brush ", size), clear];
}

const WIDGETS = {
  text(p, w) {
    const input = el("input", {type: "text", class: "text-input", value: w.default || ""});
    return {nodes: [input], value: () => ({cond: input.value})};
  },

  choice(p, w) {
    const select = el("select", {class: "choice"});
    for (const name of w.choices) select.append(el("option", {value: name, text: name}));
    if (w.default) select.value = w.default;
    return {nodes: [select], value: () => ({cond: select.value})};
  },

  boxes(p, w) {
    const [h, wd] = w.size || [1, 1];
    const scale = CANVAS / Math.max(h, wd);
    const canvas = el("canvas", {class: "paint boxes-canvas", width: wd * scale, height: h * scale});
    const label = choiceSelect(w.choices, "box-class");
    const list = el("ul", {class: "boxes"});
    const boxes = [];
    let start = null, current = null;
    const point = (e) => {
      const r = canvas.getBoundingClientRect();
      return [Math.min(1, Math.max(0, (e.clientX - r.left) / r.width)),
              Math.min(1, Math.max(0, (e.clientY - r.top) / r.height))];
    };
    const round = (v) => Math.round(v * 1000) / 1000;
    const draw = () => {
      const ctx = canvas.getContext("2d");
      ctx.fillStyle = "#fff"; ctx.fillRect(0, 0, canvas.width, canvas.height);
      for (const b of current ? [...boxes, current] : boxes) {
        ctx.strokeStyle = PALETTE[(b.label + 1) % PALETTE.length]; ctx.lineWidth = 2;
        ctx.strokeRect(b.x0 * canvas.width, b.y0 * canvas.height, (b.x1 - b.x0) * canvas.width, (b.y1 - b.y0) * canvas.height);
        ctx.fillStyle = ctx.strokeStyle; ctx.font = "12px sans-serif";
        ctx.fillText(w.choices[b.label], b.x0 * canvas.width + 3, b.y0 * canvas.height + 13);
      }
    };
    const relist = () => {
      list.replaceChildren();
      boxes.forEach((b, i) => {
        const remove = el("button", {type: "button", text: "remove"});
        remove.addEventListener("click", () => { boxes.splice(i, 1); relist(); draw(); });
        list.append(el("li", {text: `${w.choices[b.label]} [${b.x0}, ${b.y0}, ${b.x1}, ${b.y1}] `}, remove));
      });
    };
    const span = (a, b) => {
      const box = {x0: round(Math.min(a[0], b[0])), y0: round(Math.min(a[1], b[1])),
                   x1: round(Math.max(a[0], b[0])), y1: round(Math.max(a[1], b[1])), label: Number(label.value)};
      return box;
    };
    canvas.addEventListener("mousedown", (e) => { start = point(e); });
    canvas.addEventListener("mousemove", (e) => { if (start) { current = span(start, point(e)); draw(); } });
    window.addEventListener("mouseup", (e) => {
      if (!start) return;
      const box = span(start, point(e));
      start = null; current = null;
      if (box.x1 > box.x0 && box.y1 > box.y0) boxes.push(box);
      relist(); draw();
    });
    draw();
    return {nodes: [el("div", {class: "tools"}, el("label", {}, "class of the next box ", label)), canvas, list],
            value: () => ({cond: JSON.stringify(boxes.map((b) => [b.x0, b.y0, b.x1, b.y1, w.choices[b.label]]))})};
  },

  label_map(p, w) {
    const [h, wd] = w.size;
    const cells = new CellCanvas(h, wd, (v) => [...rgb(PALETTE[v % PALETTE.length]), 255]);
    const label = choiceSelect(w.choices, "paint-class");
    label.value = String(Math.min(1, w.choices.length - 1));
    cells.value = Number(label.value);
    label.addEventListener("change", () => { cells.value = Number(label.value); });
    const legend = el("div", {class: "legend"});
    w.choices.forEach((name, i) => {
      const swatch = el("span", {class: "swatch"});
      swatch.style.background = PALETTE[i % PALETTE.length];
      legend.append(swatch, ` ${i}: ${name}  `);
    });
    const upload = el("input", {type: "file", accept: "image/png", class: "upload"});
    const note = el("span", {class: "upload-note"});
    let uploaded = null;
    upload.addEventListener("change", async () => {
      uploaded = upload.files.length ? await readFile(upload) : null;
      note.textContent = uploaded ? `using ${upload.files[0].name}, not the painting` : "";
    });
    return {nodes: [el("div", {class: "tools"}, el("label", {}, "paint ", label), ...brushTools(cells)),
                    cells.canvas, legend, el("div", {class: "tools"}, el("label", {}, "or upload a PNG of class indices ", upload), note)],
            value: () => ({files: {image: uploaded ? {png: uploaded} : {pixels: cells.rows()}}})};
  },

  image(p, w) {
    const upload = el("input", {type: "file", accept: "image/png,image/jpeg", class: "upload"});
    const preview = el("img", {class: "preview", alt: ""});
    preview.hidden = true;
    let data = null;
    upload.addEventListener("change", async () => {
      data = upload.files.length ? await readFile(upload) : null;
      preview.hidden = !data;
      if (data) preview.src = data;
    });
    return {nodes: [upload, preview], value: () => (data ? {files: {image: {png: data}}} : {})};
  },

  image_mask(p, w) {
    const [h, wd] = w.size;
    const cells = new CellCanvas(h, wd, (v) => (v ? [255, 0, 0, 210] : null));
    const upload = el("input", {type: "file", accept: "image/png,image/jpeg", class: "upload"});
    let data = null;
    upload.addEventListener("change", async () => {
      data = upload.files.length ? await readFile(upload) : null;
      if (!data) { cells.background = null; cells.draw(); return; }
      const image = new Image();
      image.onload = () => { cells.background = image; cells.draw(); };
      image.src = data;
    });
    return {nodes: [upload, el("div", {class: "tools"}, "paint the hole: ", ...brushTools(cells)), cells.canvas],
            value: () => (data ? {files: {image: {png: data}, mask: {pixels: cells.rows()}}} : {})};
  },
};

const inputs = {};

function pluginSection(plugin) {
  const declared = plugin.widget;
  const widget = declared || {kind: "text", label: plugin.name,
                              help: `written as on the command line after cond.${plugin.name}=`};
  const made = WIDGETS[widget.kind] ? WIDGETS[widget.kind](plugin, widget) : WIDGETS.text(plugin, widget);
  inputs[plugin.name] = made;
  const section = el("section", {class: "plugin", "data-plugin": plugin.name, "data-kind": widget.kind},
                     el("h2", {}, `${widget.label || plugin.name} `, el("code", {text: `cond.${plugin.name}`})),
                     ...made.nodes);
  if (widget.help) section.append(el("p", {class: "help", text: widget.help}));
  section.append(el("div", {class: "field-error", "data-error-for": plugin.name}));
  return section;
}

function guidanceSlider(name, value, onChange) {
  const input = el("input", {type: "range", min: "0", max: "15", step: "0.5", value: String(value)});
  const shown = el("output", {text: String(value)});
  input.addEventListener("input", () => { shown.textContent = input.value; if (onChange) onChange(); });
  return {input, shown};
}

function settings(model) {
  const sampler = document.getElementById("sampler");
  for (const name of model.samplers) sampler.append(el("option", {value: name, text: name}));
  sampler.value = model.sampler.name;
  const sigmas = document.getElementById("sigmas");
  for (const kind of model.sigmas) sigmas.append(el("option", {value: kind, text: kind}));
  sigmas.value = model.sampler.sigmas;
  document.getElementById("steps").value = model.sampler.steps;
  const n = document.getElementById("n");
  n.max = model.max_images;
  n.value = Math.min(4, model.max_images);
  const guidance = document.getElementById("guidance");
  const shown = document.getElementById("guidance-shown");
  guidance.value = model.sampler.guidance;
  shown.textContent = guidance.value;
  guidance.addEventListener("input", () => { shown.textContent = guidance.value; });
  const own = document.getElementById("plugin-guidance");
  const guided = model.plugins.filter((plugin) => plugin.guided);  // unguided ones take no scale
  if (guided.length > 1) {
    for (const plugin of guided) {
      const enabled = el("input", {type: "checkbox", class: "own-guidance", "data-plugin": plugin.name});
      const slider = guidanceSlider(plugin.name, plugin.guidance ?? model.sampler.guidance);
      slider.input.dataset.plugin = plugin.name;
      slider.input.classList.add("plugin-guidance");
      enabled.checked = plugin.guidance !== null && plugin.guidance !== undefined;
      own.append(el("label", {class: "slider"}, enabled, ` guidance of ${plugin.name} `, slider.input, slider.shown));
    }
  }
}

function request() {
  const body = {cond: {}, files: {}, n: Number(document.getElementById("n").value),
                seed: Number(document.getElementById("seed").value),
                sampler: document.getElementById("sampler").value,
                steps: Number(document.getElementById("steps").value),
                sigmas: document.getElementById("sigmas").value,
                guidance: Number(document.getElementById("guidance").value), plugin_guidance: {}};
  for (const [name, input] of Object.entries(inputs)) {
    const value = input.value();
    if (value.cond !== undefined) body.cond[name] = value.cond;
    if (value.files !== undefined) body.files[name] = value.files;
  }
  for (const box of document.querySelectorAll("input.own-guidance")) {
    if (!box.checked) continue;
    const slider = document.querySelector(`input.plugin-guidance[data-plugin="${box.dataset.plugin}"]`);
    body.plugin_guidance[box.dataset.plugin] = Number(slider.value);
  }
  return body;
}

function showErrors(message, fields) {
  const general = document.getElementById("error");
  let placed = false;
  for (const [name, text] of Object.entries(fields || {})) {
    const holder = document.querySelector(`[data-error-for="${name}"]`);
    if (holder) { holder.textContent = text; placed = true; }
  }
  general.textContent = placed ? "" : message;
}

function clearErrors() {
  document.getElementById("error").textContent = "";
  for (const holder of document.querySelectorAll(".field-error")) holder.textContent = "";
}

function setStatus(state, text, progress) {
  const status = document.getElementById("status");
  status.dataset.state = state;
  document.getElementById("status-text").textContent = text;
  document.getElementById("progress").value = progress;
}

function showResult(job) {
  const base = `/api/jobs/${job.id}/`;
  const grid = document.getElementById("grid");
  grid.src = base + "grid.png";
  grid.hidden = false;
  const images = document.getElementById("images");
  images.replaceChildren();
  for (const file of job.files) {
    images.append(el("a", {href: base + file, download: `ldm-${job.id}-${file}`, class: "download"},
                     el("img", {src: base + file, alt: file, class: "sample"})));
  }
  document.getElementById("command").textContent = job.command;
  document.getElementById("record").href = base + "samples.json";
  document.getElementById("command-box").hidden = false;
}

async function follow(id) {
  for (;;) {
    const response = await fetch(`/api/jobs/${id}`);
    const job = await response.json();
    if (!response.ok) { setStatus("failed", "failed", 0); showErrors(job.error, job.fields); return; }
    if (job.state === "queued") setStatus("queued", `waiting: ${job.ahead} ahead`, 0);
    if (job.state === "running") setStatus("running", `sampling ${Math.round(100 * job.progress)}%`, job.progress);
    if (job.state === "done") { setStatus("done", `done (request ${job.id})`, 1); showResult(job); return; }
    if (job.state === "failed") {
      setStatus("failed", "failed", 0);
      showErrors(job.error, job.plugin ? {[job.plugin]: job.error} : {});
      return;
    }
    await new Promise((resolve) => setTimeout(resolve, 250));
  }
}

function hideResult() {
  document.getElementById("grid").hidden = true;
  document.getElementById("images").replaceChildren();
  document.getElementById("command-box").hidden = true;
}

async function submit() {
  const button = document.getElementById("sample");
  clearErrors();
  hideResult();
  button.disabled = true;
  try {
    setStatus("sending", "sending", 0);
    const response = await fetch("/api/sample", {method: "POST", headers: {"Content-Type": "application/json"},
                                                 body: JSON.stringify(request())});
    const answer = await response.json();
    if (!response.ok) { setStatus("refused", "refused: see the message in red", 0); showErrors(answer.error, answer.fields); return; }
    await follow(answer.id);
  } catch (error) {
    setStatus("failed", "failed", 0);
    showErrors(`the server did not answer (${error}); is ldm serve still running?`, {});
  } finally {
    button.disabled = false;
  }
}

async function main() {
  const model = await (await fetch("/api/model")).json();
  document.getElementById("run").textContent = model.run;
  const holder = document.getElementById("plugins");
  for (const plugin of model.plugins) holder.append(pluginSection(plugin));
  settings(model);
  document.getElementById("sample").addEventListener("click", submit);
  document.getElementById("copy").addEventListener("click", () =>
    navigator.clipboard.writeText(document.getElementById("command").textContent));
  document.body.dataset.ready = "true";
}

main();
