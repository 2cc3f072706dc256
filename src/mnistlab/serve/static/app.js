// mnistlab's drawing page: a pad drawn with pointer events (mouse, pen, touch), predictions
// requested while drawing (at most one in flight, at most one every INTERVAL_MS, and always one
// for the final stroke), and the server's answer shown as bars (every class's probability, the
// most likely marked), a number and the 28x28 input. The strokes are kept, so that the last one
// can be undone (the pad is redrawn from the others), each with the brush size it was drawn with.
// "What the network sees" asks api/explain, on demand, for the reading shown: the feature maps
// of each convolutional layer and a saliency map (for a softmax regression, its templates);
// while it is open, it follows the newest reading once each stroke ends.
// A menu picks the model (GET api/models lists them); "Compare all" reads each drawing with
// every model at once and shows their readings side by side.
// With `mnistlab serve --collect DIR` (the page's <body data-collect>), each one-digit reading
// offers "Wrong? It was:" buttons that store the image as drawn for training (POST api/collect).
"use strict";

const INTERVAL_MS = 120;
const pad = document.getElementById("pad");
const ctx = pad.getContext("2d");
const $ = (id) => document.getElementById(id);

// ---- the pad -------------------------------------------------------------------------------

// the brush sizes, in pad pixels; the middle one is about a tenth of the pad's height, as an
// MNIST digit's stroke is 2-3 of its 28 pixels (the reading centres and scales the ink, so the
// others read well too: they are for comfort, not for the model)
const BRUSHES = [12, 16, 22, 28, 36];
const BRUSH_NAMES = ["finest", "fine", "medium", "broad", "broadest"];

function clearPad() {
  ctx.fillStyle = "#fff";
  ctx.fillRect(0, 0, pad.width, pad.height);
  strokes = [];
  showUndo();
}

function setPen(width) {
  ctx.lineWidth = width;
  ctx.lineCap = "round";
  ctx.lineJoin = "round";
  ctx.strokeStyle = "#111";
  ctx.fillStyle = "#111";
}

function dot(stroke) {
  const [x, y] = stroke.points[0];
  setPen(stroke.width);
  ctx.beginPath();
  ctx.arc(x, y, stroke.width / 2, 0, 2 * Math.PI);
  ctx.fill();
}

function line(stroke, from) {
  // the stroke's points from index `from - 1` on: the last segment while drawing, all on a redraw
  setPen(stroke.width);
  ctx.beginPath();
  ctx.moveTo(...stroke.points[from - 1]);
  for (let i = from; i < stroke.points.length; i++) ctx.lineTo(...stroke.points[i]);
  ctx.stroke();
}

function redraw() {
  const kept = strokes;
  clearPad();
  strokes = kept;
  for (const stroke of strokes) {
    dot(stroke);
    if (stroke.points.length > 1) line(stroke, 1);
  }
  showUndo();
}

const brushWidth = () => BRUSHES[Number($("brush").value) - 1] || BRUSHES[2];

$("brush").addEventListener("input", () => {
  $("brush").setAttribute("aria-valuetext", BRUSH_NAMES[Number($("brush").value) - 1] || "");
});

let strokes = []; // each {width, points: [[x, y], ...]}: what an undo redraws the pad from
let drawing = null; // the pointer drawing now, and its stroke
const inked = () => strokes.length > 0;

function showUndo() {
  $("undo").disabled = strokes.length === 0;
}

function toPad(event) {
  const r = pad.getBoundingClientRect();
  return [(event.clientX - r.left) * pad.width / r.width, (event.clientY - r.top) * pad.height / r.height];
}

pad.addEventListener("pointerdown", (event) => {
  if (event.button !== 0 || drawing) return;
  event.preventDefault();
  pad.setPointerCapture(event.pointerId);
  if (source !== "pad") { clearPad(); showUpload(null); }
  source = "pad";
  setSaved(""); // a new stroke: the last correction's note is about another drawing
  const stroke = { width: brushWidth(), points: [toPad(event)] };
  strokes.push(stroke);
  drawing = { id: event.pointerId, stroke };
  dot(stroke);
  showUndo();
  schedule();
});

pad.addEventListener("pointermove", (event) => {
  if (!drawing || event.pointerId !== drawing.id) return;
  event.preventDefault();
  const points = event.getCoalescedEvents ? event.getCoalescedEvents() : [event];
  const stroke = drawing.stroke;
  const from = stroke.points.length;
  for (const p of points.length ? points : [event]) stroke.points.push(toPad(p));
  line(stroke, from);
  schedule();
});

function endStroke(event) {
  if (!drawing || event.pointerId !== drawing.id) return;
  drawing = null;
  schedule(true); // its answer refreshes an open explanation
}
pad.addEventListener("pointerup", endStroke);
pad.addEventListener("pointercancel", endStroke);

function startAgain() {
  source = "pad";
  seq++; // answers to requests already sent are stale now
  showUpload(null);
  setSaved("");
  showNothing("Draw a digit to start.");
}

$("clear").addEventListener("click", () => {
  clearPad();
  startAgain();
});

$("undo").addEventListener("click", () => {
  if (drawing || !strokes.length) return; // never the stroke being drawn
  strokes.pop();
  redraw();
  setSaved("");
  if (strokes.length) schedule(true); else startAgain();
});

pad.addEventListener("keydown", (event) => {
  if (event.key === "Escape" || event.key === "Delete" || event.key === "Backspace") $("clear").click();
});

document.addEventListener("keydown", (event) => {
  // Ctrl+Z (Cmd+Z) undoes a stroke wherever the focus is, but in a field that has its own undo
  const field = event.target instanceof HTMLInputElement && event.target.type !== "range";
  if ((event.ctrlKey || event.metaKey) && !event.shiftKey && event.key.toLowerCase() === "z" && !field) {
    event.preventDefault();
    $("undo").click();
  }
});

// ---- requests ------------------------------------------------------------------------------

let source = "pad"; // what the result describes: "pad" or "file"
let seq = 0; // bumped for every request; only the newest answer is shown
let inFlight = false;
let wanted = false;
let lastSent = 0;
let timer = null;

function schedule(now = false) {
  wanted = true;
  if (inFlight) return; // sent when the answer comes back
  const wait = now ? 0 : Math.max(0, lastSent + INTERVAL_MS - performance.now());
  clearTimeout(timer);
  timer = setTimeout(sendPad, wait);
}

function sendPad() {
  if (!wanted || inFlight) return;
  if (!inked()) { wanted = false; return; }
  wanted = false;
  inFlight = true;
  lastSent = performance.now();
  const mine = ++seq;
  pad.toBlob(async (blob) => {
    try {
      await predict(blob, blob.type || "image/png", mine);
    } finally {
      inFlight = false;
      if (wanted) schedule();
    }
  }, "image/png");
}

async function ask(model, body, type) {
  // one model's reading: {answer} or {error, empty}
  try {
    const init = { method: "POST", body };
    if (type) init.headers = { "Content-Type": type };
    // every class's probability, for the bars: top_k up to the model's classes
    const query = new URLSearchParams({ top_k: model.class_names.length, model: model.name });
    const response = await fetch("api/predict?" + query, init);
    const answer = await response.json().catch(() => null);
    if (response.ok) return { answer };
    if (answer && answer.error === "empty_image") {
      // the server's detail says whether the picture is blank or a picture of noise
      const noise = /noise/.test(answer.detail || "");
      return { empty: true, error: noise ? "No digit found: the picture is noise, where no stroke could stand out."
                                         : "No digit found: the image is empty." };
    }
    return { error: (answer && answer.detail) || `The server answered ${response.status}.` };
  } catch (err) {
    return { error: "The server did not answer: " + err.message };
  }
}

let lastRead = null; // the body and type of the reading shown: what an explanation explains

async function predict(body, type, mine) {
  const chosen = current();
  if (!chosen) return;
  // comparing: every model reads the same body at once; the chosen one's reading is also shown
  // in full above
  const asked = comparing ? models : [chosen];
  const readings = await Promise.all(asked.map((m) => ask(m, body, type)));
  if (mine !== seq) return;
  const reading = readings[asked.indexOf(chosen)];
  lastRead = { body, type, model: chosen };
  if (reading.answer) {
    show(reading.answer);
    if (explanationOpen() && !drawing) explainReading();
  } else if (reading.empty) showNothing(reading.error);
  else showError(reading.error);
  // an image the chosen model cannot read (empty, broken) is one the others cannot read either
  if (comparing && reading.answer) showComparison(asked, readings);
}

function readAgain() {
  // after the model menu or the compare switch changed: the same drawing or file, read anew
  if (source === "file" && uploaded) sendFile(uploaded);
  else if (inked()) schedule(true);
}

async function sendFile(file) {
  setStatus(`Reading ${file.name}…`);
  const form = new FormData();
  form.append("file", file, file.name);
  await predict(form, null, ++seq);
}

$("file").addEventListener("change", async (event) => {
  const file = event.target.files[0];
  event.target.value = ""; // choosing the same file again fires again
  if (!file) return;
  source = "file";
  clearPad();
  showUpload(file);
  setSaved("");
  await sendFile(file);
});

// ---- showing the answer --------------------------------------------------------------------

function setStatus(text, error = false) {
  const s = $("status");
  s.textContent = text;
  s.classList.toggle("error", error);
}

function showNothing(text) {
  closeExplanation();
  $("comparison").hidden = true;
  $("single").hidden = true;
  $("multi").hidden = true;
  $("correct").hidden = true;
  $("seen-figure").hidden = true;
  setStatus(text);
}

function showError(text) {
  showNothing("");
  setStatus(text, true);
}

function showUpload(file) {
  uploaded = file;
  const img = $("uploaded");
  if (img.src) URL.revokeObjectURL(img.src);
  $("uploaded-figure").hidden = !file;
  $("filename").textContent = file ? file.name : "";
  if (file) img.src = URL.createObjectURL(file); else img.removeAttribute("src");
}

const pct = (p) => (100 * p).toFixed(p >= 0.9995 || p < 0.0005 ? 0 : 1) + "%";

function paint(canvas, rows) {
  const c = canvas.getContext("2d");
  const image = c.createImageData(28, 28);
  for (let y = 0; y < 28; y++) {
    for (let x = 0; x < 28; x++) {
      const i = 4 * (28 * y + x);
      image.data[i] = image.data[i + 1] = image.data[i + 2] = rows[y][x];
      image.data[i + 3] = 255;
    }
  }
  c.putImageData(image, 0, 0);
}

function probabilityBars(reading, mini = false, names = classNames) {
  // one bar per class, in the classes' order, the most likely marked: the answer lists them by
  // probability (all of them, as requested), and a class it leaves out is shown at 0
  const list = document.createElement("ol");
  list.className = mini ? "bars mini" : "bars";
  const given = new Map(reading.top_k.map((t) => [t.digit, t.probability]));
  const count = Math.max(names.length, ...reading.top_k.map((t) => t.digit + 1));
  const nameOf = (i) => (i in names ? names[i] : String(i));
  for (let i = 0; i < count; i++) {
    const p = given.get(i) || 0;
    const li = document.createElement("li");
    li.innerHTML = '<span class="label"></span><span class="bar"><span></span></span><span class="value"></span>';
    li.querySelector(".label").textContent = nameOf(i);
    li.querySelector(".bar > span").style.width = (100 * p).toFixed(1) + "%";
    li.querySelector(".value").textContent = pct(p);
    const top = i === reading.digit;
    li.classList.toggle("top", top);
    li.setAttribute("aria-label", `${nameOf(i)}: ${pct(p)}` + (top ? " (most likely)" : ""));
    list.append(li);
  }
  return list;
}

function show(answer) {
  const many = answer.digits.length > 1;
  $("single").hidden = many;
  $("multi").hidden = !many;
  if (many) {
    $("number").textContent = answer.number;
    const list = $("digits");
    list.replaceChildren();
    for (const d of answer.digits) {
      const li = document.createElement("li");
      const canvas = document.createElement("canvas");
      canvas.width = canvas.height = 28;
      canvas.setAttribute("aria-hidden", "true");
      paint(canvas, d.input);
      const digit = document.createElement("span");
      digit.className = "d";
      digit.textContent = nameOf(d.digit);
      const prob = document.createElement("span");
      prob.className = "p";
      prob.textContent = pct(d.confidence);
      const bars = probabilityBars(d, true);
      bars.setAttribute("aria-hidden", "true"); // the item's label says the reading
      li.append(canvas, digit, prob, bars);
      li.setAttribute("aria-label", `${nameOf(d.digit)}, ${pct(d.confidence)} sure`);
      list.append(li);
    }
    setStatus(`Read ${answer.digits.length} digits: ${answer.number}.`);
  } else {
    const d = answer.digits[0];
    $("digit").textContent = nameOf(d.digit);
    $("confidence").textContent = pct(d.confidence) + " sure";
    $("bars").replaceChildren(...probabilityBars(d).children);
    setStatus(`Looks like a ${nameOf(d.digit)}.`);
  }
  // a correction is of one drawing of one digit: a number's digits are not cut out here
  $("correct").hidden = !collecting;
  $("correct-one").hidden = many;
  $("correct-many").hidden = !many;
  // with several digits each has its own small picture; with one, a large one
  $("seen-figure").hidden = many;
  if (!many) paint($("seen"), answer.digits[0].input);
}

// ---- explanations: what the network sees ---------------------------------------------------

let explaining = 0; // bumped for every explanation asked: only the newest is shown
let explainBusy = false; // one request at a time; one more is asked when it ends, if wanted
let explainWanted = false;
const explanationOpen = () => $("explain").getAttribute("aria-expanded") === "true";

function closeExplanation() {
  explaining++;
  explainWanted = false;
  $("explain").setAttribute("aria-expanded", "false");
  $("explanation").hidden = true;
  $("explain-images").replaceChildren();
}

function figure(src, caption, alt, scale) {
  const f = document.createElement("figure");
  const img = new Image();
  img.alt = alt;
  img.src = src;
  img.addEventListener("load", () => { img.width = img.naturalWidth * scale; }, { once: true });
  const c = document.createElement("figcaption");
  c.textContent = caption;
  f.append(img, c);
  return f;
}

function showExplanation(answer, model) {
  const names = model.class_names.map(String);
  const winner = names[answer.digit] ?? String(answer.digit);
  const parts = [figure(answer.saliency, `Pixels that moved "${winner}" most`,
    `saliency map: the input pixels that moved ${winner} most, brightest`, 4)];
  for (const layer of answer.layers) {
    // a mosaic of every map: small maps drawn larger, so that each is a few pixels at least
    const scale = Math.max(1, Math.min(3, Math.round(84 / (layer.height * layer.columns) * 2)));
    parts.push(figure(layer.image, `${layer.name}: ${layer.channels} maps, ${layer.height}×${layer.width}`,
      `the ${layer.channels} feature maps of layer ${layer.name}`, scale));
  }
  if (answer.templates) {
    const grid = document.createElement("div");
    grid.className = "templates";
    grid.setAttribute("aria-label", "each class's weights: blue counts for it, red against");
    answer.templates.forEach((src, i) => {
      const f = figure(src, names[i] ?? String(i), `the weights of class ${names[i] ?? i}`, 2);
      f.classList.toggle("top", i === answer.digit);
      grid.append(f);
    });
    parts.push(grid);
  }
  $("explain-images").replaceChildren(...parts);
  $("explain-status").textContent = answer.templates
    ? `${model.name} has no convolutions: each class's weights (blue for, red against) are what it matches the image with.`
    : `${model.name}'s convolutional layers, first to last: what each filter responds to in this image.`;
}

$("explain").addEventListener("click", () => {
  if (explanationOpen()) { closeExplanation(); return; }
  $("explain").setAttribute("aria-expanded", "true");
  $("explanation").hidden = false;
  $("explain-status").textContent = "Looking inside the network…";
  explainReading();
});

async function explainReading() {
  if (!lastRead) return;
  if (explainBusy) { explainWanted = true; return; }
  explainBusy = true;
  explainWanted = false;
  const mine = ++explaining;
  const { body, type, model } = lastRead;
  try {
    const init = { method: "POST", body };
    if (type) init.headers = { "Content-Type": type };
    const response = await fetch("api/explain?model=" + encodeURIComponent(model.name), init);
    const answer = await response.json().catch(() => null);
    if (mine !== explaining) return;
    if (response.ok) showExplanation(answer, model);
    else $("explain-status").textContent = (answer && answer.detail) || `The server answered ${response.status}.`;
  } catch (err) {
    if (mine === explaining) $("explain-status").textContent = "The server did not answer: " + err.message;
  } finally {
    explainBusy = false;
    if (explainWanted && explanationOpen()) explainReading();
  }
}

// ---- the models: the menu and the comparison ------------------------------------------------

let models = []; // from api/models, the default first
let comparing = false;
const current = () => models.find((m) => m.name === $("model-select").value) || models[0];
const accuracy = (m) => (m.test_accuracy ? `${(100 * m.test_accuracy).toFixed(2)}%` : "accuracy unknown");
const about = (m) => `${m.model || "model"}, ${accuracy(m)}, ${m.backend}`;

function setUpModels(list) {
  models = list;
  const select = $("model-select");
  select.replaceChildren(...models.map((m) => new Option(`${m.name} (${about(m)})`, m.name)));
  select.disabled = models.length < 2;
  $("compare").hidden = models.length < 2;
  chooseModel();
}

function chooseModel() {
  const m = current();
  classNames = m.class_names.map(String);
  $("model").textContent = `model: ${m.name} (${m.model || "?"}, test accuracy ${accuracy(m)}, ` +
    `predictions by ${m.backend === "onnx" ? "ONNX Runtime" : "PyTorch"})`;
}

$("model-select").addEventListener("change", () => {
  chooseModel();
  readAgain();
});

$("compare").addEventListener("click", () => {
  comparing = !comparing;
  $("compare").setAttribute("aria-pressed", String(comparing));
  if (!comparing) $("comparison").hidden = true;
  readAgain();
});

function readingLine(answer, names) {
  // "7 92%" for one digit, "17 85%" for a number (its confidence the product of its digits')
  const line = document.createElement("div");
  line.className = "reading";
  const nameOf = (i) => (i in names ? names[i] : String(i));
  line.textContent = answer.digits.map((d) => nameOf(d.digit)).join("");
  const sure = document.createElement("small");
  sure.textContent = pct(answer.confidence);
  line.append(sure);
  return line;
}

function comparisonCard(model, reading) {
  const card = document.createElement("article");
  card.className = "card" + (model === current() ? " chosen" : "");
  card.dataset.model = model.name;
  const title = document.createElement("h3");
  title.textContent = model.name;
  const info = document.createElement("p");
  info.className = "about muted";
  info.textContent = about(model);
  card.append(title, info);
  if (!reading.answer) {
    const error = document.createElement("p");
    error.className = "error";
    error.textContent = reading.error;
    card.append(error);
    return card;
  }
  const names = model.class_names.map(String);
  card.append(readingLine(reading.answer, names));
  const many = reading.answer.digits.length > 1;
  for (const d of reading.answer.digits) card.append(probabilityBars(d, many, names));
  card.setAttribute("aria-label", `${model.name} reads ` +
    reading.answer.number + `, ${pct(reading.answer.confidence)} sure`);
  return card;
}

function showComparison(asked, readings) {
  $("compare-grid").replaceChildren(...asked.map((m, i) => comparisonCard(m, readings[i])));
  $("comparison").hidden = false;
}

// ---- corrections (mnistlab serve --collect DIR) --------------------------------------------

const collectFolder = document.body.dataset.collect; // undefined unless the server collects
let classNames = []; // the chosen model's: a reading's digit is an index into them
let collecting = false;
let saving = false;
let uploaded = null; // the file shown, stored as it is when a reading of it is corrected

const nameOf = (i) => (i in classNames ? classNames[i] : String(i));

function setUpCorrections(classes) {
  $("collect-where").textContent =
    `Corrections are stored as drawn in ${collectFolder}/<class>/, to train a model on.`;
  $("collect-where").hidden = false;
  for (const name of classes) {
    const button = document.createElement("button");
    button.type = "button";
    button.textContent = name;
    button.addEventListener("click", () => correct(name));
    $("classes").append(button);
  }
  collecting = true;
}

function setSaved(text, error = false) {
  const s = $("saved");
  s.textContent = text;
  s.classList.toggle("error", error);
}

const padPng = () => new Promise((resolve) => pad.toBlob(resolve, "image/png"));

async function correct(label) {
  if (saving) return; // one at a time; the buttons stay focusable for the keyboard meanwhile
  saving = true;
  $("correct").setAttribute("aria-busy", "true");
  setSaved(`Saving as ${label}…`);
  try {
    const init = { method: "POST" };
    if (source === "file" && uploaded) {
      init.body = new FormData();
      init.body.append("file", uploaded, uploaded.name);
    } else {
      init.body = await padPng();
      init.headers = { "Content-Type": "image/png" };
    }
    const response = await fetch("api/collect?label=" + encodeURIComponent(label), init);
    const answer = await response.json().catch(() => null);
    if (response.ok) setSaved(`Saved as ${answer.label}: ${answer.file}`);
    else setSaved("Not saved: " + ((answer && answer.detail) || `the server answered ${response.status}.`), true);
  } catch (err) {
    setSaved("Not saved: the server did not answer (" + err.message + ").", true);
  } finally {
    saving = false;
    $("correct").removeAttribute("aria-busy");
  }
}

// ---- start ---------------------------------------------------------------------------------

clearPad();
fetch("api/models").then((r) => r.json()).then((answer) => {
  setUpModels(answer.models);
  // corrections are of the default model's classes: the server stores them as those
  const classes = answer.models[0].class_names.map(String);
  if (collectFolder !== undefined && classes.length) setUpCorrections(classes);
}).catch(() => { $("model").textContent = "model: unknown"; });
