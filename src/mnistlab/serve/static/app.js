// mnistlab's drawing page: a pad drawn with pointer events (mouse, pen, touch), predictions
// requested while drawing (at most one in flight, at most one every INTERVAL_MS, and always one
// for the final stroke), and the server's answer shown as bars, a number and the 28x28 input.
// With `mnistlab serve --collect DIR` (the page's <body data-collect>), each one-digit reading
// offers "Wrong? It was:" buttons that store the image as drawn for training (POST api/collect).
"use strict";

const INTERVAL_MS = 120;
const pad = document.getElementById("pad");
const ctx = pad.getContext("2d");
const $ = (id) => document.getElementById(id);

// ---- the pad -------------------------------------------------------------------------------

function clearPad() {
  ctx.fillStyle = "#fff";
  ctx.fillRect(0, 0, pad.width, pad.height);
  inked = false;
}

function setPen() {
  // about a tenth of the pad's height: an MNIST digit's stroke is 2-3 of its 28 pixels
  ctx.lineWidth = Math.round(pad.height / 13);
  ctx.lineCap = "round";
  ctx.lineJoin = "round";
  ctx.strokeStyle = "#111";
  ctx.fillStyle = "#111";
}

let inked = false;
let drawing = null; // the pointer id drawing now, and its last point

function toPad(event) {
  const r = pad.getBoundingClientRect();
  return [(event.clientX - r.left) * pad.width / r.width, (event.clientY - r.top) * pad.height / r.height];
}

pad.addEventListener("pointerdown", (event) => {
  if (event.button !== 0 || drawing) return;
  event.preventDefault();
  pad.setPointerCapture(event.pointerId);
  const [x, y] = toPad(event);
  drawing = { id: event.pointerId, x, y };
  if (source !== "pad") { clearPad(); showUpload(null); }
  source = "pad";
  setSaved(""); // a new stroke: the last correction's note is about another drawing
  setPen();
  ctx.beginPath();
  ctx.arc(x, y, ctx.lineWidth / 2, 0, 2 * Math.PI);
  ctx.fill();
  inked = true;
  schedule();
});

pad.addEventListener("pointermove", (event) => {
  if (!drawing || event.pointerId !== drawing.id) return;
  event.preventDefault();
  const points = event.getCoalescedEvents ? event.getCoalescedEvents() : [event];
  setPen();
  ctx.beginPath();
  ctx.moveTo(drawing.x, drawing.y);
  for (const p of points.length ? points : [event]) {
    const [x, y] = toPad(p);
    ctx.lineTo(x, y);
    drawing.x = x; drawing.y = y;
  }
  ctx.stroke();
  schedule();
});

function endStroke(event) {
  if (!drawing || event.pointerId !== drawing.id) return;
  drawing = null;
  schedule(true);
}
pad.addEventListener("pointerup", endStroke);
pad.addEventListener("pointercancel", endStroke);

$("clear").addEventListener("click", () => {
  clearPad();
  source = "pad";
  seq++; // answers to requests already sent are stale now
  showUpload(null);
  setSaved("");
  showNothing("Draw a digit to start.");
});

pad.addEventListener("keydown", (event) => {
  if (event.key === "Escape" || event.key === "Delete" || event.key === "Backspace") $("clear").click();
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
  if (!inked) { wanted = false; return; }
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

async function predict(body, type, mine) {
  let response, answer;
  try {
    const init = { method: "POST", body };
    if (type) init.headers = { "Content-Type": type };
    response = await fetch("api/predict", init);
    answer = await response.json();
  } catch (err) {
    if (mine === seq) showError("The server did not answer: " + err.message);
    return;
  }
  if (mine !== seq) return;
  if (response.ok) show(answer);
  else if (answer && answer.error === "empty_image") showNothing("No digit found: the image is empty.");
  else showError((answer && answer.detail) || `The server answered ${response.status}.`);
}

$("file").addEventListener("change", async (event) => {
  const file = event.target.files[0];
  event.target.value = ""; // choosing the same file again fires again
  if (!file) return;
  source = "file";
  clearPad();
  showUpload(file);
  setSaved("");
  setStatus(`Reading ${file.name}…`);
  const form = new FormData();
  form.append("file", file, file.name);
  await predict(form, null, ++seq);
});

// ---- showing the answer --------------------------------------------------------------------

function setStatus(text, error = false) {
  const s = $("status");
  s.textContent = text;
  s.classList.toggle("error", error);
}

function showNothing(text) {
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
      li.append(canvas, digit, prob);
      li.setAttribute("aria-label", `${nameOf(d.digit)}, ${pct(d.confidence)} sure`);
      list.append(li);
    }
    setStatus(`Read ${answer.digits.length} digits: ${answer.number}.`);
  } else {
    const d = answer.digits[0];
    $("digit").textContent = nameOf(d.digit);
    $("confidence").textContent = pct(d.confidence) + " sure";
    const bars = $("bars");
    bars.replaceChildren();
    for (const t of d.top_k) {
      const li = document.createElement("li");
      li.innerHTML = '<span class="label"></span><span class="bar"><span></span></span><span class="value"></span>';
      li.querySelector(".label").textContent = nameOf(t.digit);
      li.querySelector(".bar > span").style.width = (100 * t.probability).toFixed(1) + "%";
      li.querySelector(".value").textContent = pct(t.probability);
      li.setAttribute("aria-label", `${nameOf(t.digit)}: ${pct(t.probability)}`);
      bars.append(li);
    }
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

// ---- corrections (mnistlab serve --collect DIR) --------------------------------------------

const collectFolder = document.body.dataset.collect; // undefined unless the server collects
let classNames = []; // the model's, from api/model: a reading's digit is an index into them
let collecting = false;
let saving = false;
let uploaded = null; // the file shown, stored as it is when a reading of it is corrected

const nameOf = (i) => (i in classNames ? classNames[i] : String(i));

function setUpCorrections() {
  $("collect-where").textContent =
    `Corrections are stored as drawn in ${collectFolder}/<class>/, to train a model on.`;
  $("collect-where").hidden = false;
  for (const name of classNames) {
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
fetch("api/model").then((r) => r.json()).then((info) => {
  const name = info.model || "model";
  const acc = info.test_accuracy;
  $("model").textContent = `model: ${name}` + (acc ? ` (test accuracy ${(100 * acc).toFixed(2)}%)` : "");
  classNames = Array.isArray(info.class_names) ? info.class_names.map(String) : [];
  if (collectFolder !== undefined && classNames.length) setUpCorrections();
}).catch(() => { $("model").textContent = "model: unknown"; });
