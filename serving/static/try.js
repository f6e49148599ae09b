// The try-it page (GET /): each image picked or dropped is sent alone to POST /predict and its
// answer drawn against the thresholds of GET /model. Everything shown is what the API said.
//
// Hooks for browser tests (stable; the page's markup is serving/templates/try.html):
//   #api-key        the bearer key; sent as "Authorization: Bearer <key>" when not empty
//   #images         <input type=file multiple>; #drop takes dropped files the same way
//   #model          the served run (from GET /model), or that call's error
//   #results        one .result per image, in the order given, newest batch last
//   .result         data-file: the file's name; data-state: "pending", then "done" or "error"
//     .run          the model run that answered; .request-id: the request id
//     .present      a list of the present attributes, each <li data-attribute>
//     .bar          one per attribute, in the model's order: data-attribute, data-probability
//                   (parseFloat gives the JSON's number exactly), data-threshold (when
//                   GET /model gave one); class "on" when the attribute is present
//   .error          the API's own error: data-status, data-code and the text "code: message"
//                   (code http_<status> when the answer was not JSON); a 401 also says that a
//                   key is needed
"use strict";

const page = {
  key: () => document.getElementById("api-key").value.trim(),
  model: null, // a promise of GET /model's answer, null when that failed; asked anew each batch
};

function authorization() {
  const key = page.key();
  return key ? { Authorization: `Bearer ${key}` } : {};
}

function element(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

// The answer's JSON, or an error carrying the API's {"error": {"code", "message"}}.
async function call(url, options = {}) {
  const response = await fetch(url, { ...options, headers: authorization() });
  const body = await response.json().catch(() => null);
  if (response.ok && body) return body;
  const error = body?.error ?? {
    code: `http_${response.status}`,
    message: `${response.statusText || "no answer"}: not the JSON the API documents`,
  };
  throw Object.assign(new Error(error.message), { status: response.status, code: error.code });
}

function errorNode(error) {
  const node = element("p", "error", `${error.code}: ${error.message}`);
  node.dataset.status = error.status ?? "";
  node.dataset.code = error.code ?? "";
  if (error.status === 401) {
    node.textContent +=
      "\nThis service needs an API key: enter a valid one above, then pick the images again.";
  }
  return node;
}

function loadModel() {
  const shown = document.getElementById("model");
  page.model = call(document.body.dataset.modelUrl).then(
    (model) => {
      shown.replaceChildren(`Model ${model.model} (${model.precision})`);
      return model;
    },
    (error) => {
      shown.replaceChildren(errorNode(error));
      return null;
    },
  );
}

function bar(attribute, probability, threshold) {
  const node = element("div", "bar");
  node.dataset.attribute = attribute;
  node.dataset.probability = String(probability);
  const track = element("span", "track");
  const fill = element("span", "fill");
  fill.style.width = `${probability * 100}%`;
  track.append(fill);
  if (threshold !== undefined) {
    node.dataset.threshold = String(threshold);
    node.classList.toggle("on", probability >= threshold);
    const mark = element("span", "threshold");
    mark.style.left = `${threshold * 100}%`;
    mark.title = `threshold ${threshold.toFixed(3)}`;
    track.append(mark);
  }
  const value = element("span", "value", probability.toFixed(3));
  node.append(element("span", "name", attribute), track, value);
  node.title = `${attribute}: ${probability}`;
  return node;
}

function showPrediction(result, answer, thresholds) {
  const [prediction] = answer.predictions;
  const present = element("ul", "present");
  for (const attribute of prediction.present) {
    const item = element("li", "", attribute);
    item.dataset.attribute = attribute;
    present.append(item);
  }
  const bars = element("div", "bars");
  for (const [attribute, probability] of Object.entries(prediction.attributes)) {
    bars.append(bar(attribute, probability, thresholds?.[attribute]));
  }
  const meta = element("p", "meta");
  meta.append("Model ", element("span", "run", answer.model), ", request ");
  meta.append(element("span", "request-id", answer.request_id));
  result.append(meta, element("h3", "", "Present"), present, bars);
}

async function thumbnail(file) {
  const image = await createImageBitmap(file); // drawn, not loaded from a URL: no img-src needed
  const canvas = element("canvas");
  const scale = 64 / Math.max(image.width, image.height);
  canvas.width = Math.round(image.width * scale);
  canvas.height = Math.round(image.height * scale);
  canvas.getContext("2d").drawImage(image, 0, 0, canvas.width, canvas.height);
  return canvas;
}

async function predict(file) {
  const result = element("article", "result");
  result.dataset.file = file.name;
  result.dataset.state = "pending";
  const header = element("header");
  header.append(element("h2", "", file.name));
  result.append(header);
  document.getElementById("results").append(result);
  thumbnail(file).then((canvas) => header.prepend(canvas), () => {});
  const form = new FormData();
  form.append("image", file, file.name);
  try {
    const answer = await call(document.body.dataset.predictUrl, { method: "POST", body: form });
    const model = await page.model;
    showPrediction(result, answer, model?.thresholds);
    result.dataset.state = "done";
  } catch (error) {
    result.append(errorNode(error));
    result.dataset.state = "error";
  }
}

function predictEach(files) {
  loadModel();
  for (const file of files) predict(file);
}

document.addEventListener("DOMContentLoaded", () => {
  const input = document.getElementById("images");
  const drop = document.getElementById("drop");
  input.addEventListener("change", () => {
    predictEach([...input.files]);
    input.value = "";
  });
  drop.addEventListener("dragover", (event) => {
    event.preventDefault();
    drop.classList.add("over");
  });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    drop.classList.remove("over");
    predictEach([...event.dataTransfer.files]);
  });
  document.getElementById("api-key").addEventListener("change", loadModel);
  loadModel();
});
