// The pixart serve web page: queues a job (POST /v1/jobs), follows its server-sent events
// (GET /v1/jobs/{id}/events) into the progress bar, shows the image and keeps a gallery of the
// server's finished jobs (GET /v1/jobs). No dependencies; the page state is mirrored in
// document.body.dataset.state (loading, idle, running, done, cancelled, error, auth) for tests.
// A server started with --api-key answers 401 on /v1: the page then asks for the key and keeps
// it in a same-site cookie, which the server accepts like a bearer token (an EventSource or an
// <img> cannot send headers).
"use strict";

const $ = (id) => document.getElementById(id);
let current = null;
let source = null;
const shown = new Set();

function setState(state) {
  document.body.dataset.state = state;
  const busy = state === "running";
  $("generate").disabled = busy;
  $("cancel").disabled = !busy;
}

function showError(err) {
  const e = $("error");
  if (!err) {
    e.hidden = true;
    e.textContent = "";
    return;
  }
  const field = err.param ? ` (${err.param})` : "";
  e.textContent = `${err.message || err}${field}`;
  e.hidden = false;
}

function caption(job) {
  return `${job.prompt} · ${job.size} · ${job.steps} steps · seed ${job.seed}`;
}

function addToGallery(job) {
  if (!job.result || shown.has(job.id)) return;
  shown.add(job.id);
  for (const img of job.result.images) {
    const fig = document.createElement("figure");
    const el = document.createElement("img");
    el.src = img.url;
    el.alt = job.prompt;
    el.title = caption(job);
    el.addEventListener("click", () => showResult(job, img));
    const cap = document.createElement("figcaption");
    cap.textContent = `${job.prompt} (seed ${img.seed})`;
    fig.append(el, cap);
    $("gallery").prepend(fig);
  }
}

// Small images are shown scaled up by a whole factor (to about 512 px, within the page), with
// `image-rendering: pixelated`; larger ones at their size or the page's width.
function fit(r) {
  const side = Math.max(r.naturalWidth, r.naturalHeight);
  if (side > 0 && side < 384) {
    const k = Math.max(2, Math.floor(512 / side));
    r.classList.add("small");
    r.style.width = `${r.naturalWidth * k}px`;
  } else {
    r.classList.remove("small");
    r.style.width = "";
  }
}

function showResult(job, img) {
  const r = $("result");
  r.src = img.url;
  r.alt = job.prompt;
  r.hidden = false;
  $("caption").textContent = caption(job);
  $("reuse").hidden = false;
}

// The image on show becomes the start image (image to image from a result), at its size.
async function reuse() {
  const r = $("result");
  const blob = await (await fetch(r.src)).blob();
  const dt = new DataTransfer();
  dt.items.add(new File([blob], "start.png", { type: blob.type || "image/png" }));
  $("image").files = dt.files;
  $("width").value = r.naturalWidth;
  $("height").value = r.naturalHeight;
  $("status").textContent = "start image set: lower the strength to keep more of it";
}

// The job's latest live preview in the image area, while it runs.
function showPreview(job) {
  if (job.status !== "running" || !job.preview) return;
  if (document.body.dataset.preview === String(job.preview.step)) return;
  document.body.dataset.preview = String(job.preview.step);
  $("reuse").hidden = true;
  const r = $("result");
  r.src = job.preview.url;
  r.alt = `preview of ${job.prompt}`;
  r.hidden = false;
  $("caption").textContent = `preview after step ${job.preview.step}/${job.total_steps}`;
}

function update(job) {
  showPreview(job);
  const p = $("progress");
  p.max = Math.max(job.total_steps, 1);
  p.value = job.step;
  let text;
  if (job.status === "queued") {
    text = `queued (position ${(job.queue_position ?? 0) + 1})`;
  } else if (job.status === "running") {
    const per = job.step_seconds ? `, ${job.step_seconds.toFixed(2)} s/step` : "";
    text = `${job.stage || "running"}: step ${job.step}/${job.total_steps}${per}`;
  } else {
    text = job.status;
  }
  $("status").textContent = text;
}

function finish(job) {
  update(job);
  current = null;
  refreshQueue();
  if (source) {
    source.close();
    source = null;
  }
  if (job.status === "succeeded") {
    showResult(job, job.result.images[0]);
    addToGallery(job);
    $("status").textContent = `done in ${(job.seconds || 0).toFixed(2)} s (seed ${job.seed})`;
    setState("done");
  } else if (job.status === "cancelled") {
    $("status").textContent = job.error || "cancelled";
    setState("cancelled");
  } else {
    showError({ message: job.error || "generation failed" });
    setState("error");
  }
}

function follow(job) {
  current = job.id;
  document.body.dataset.job = job.id;
  update(job);
  source = new EventSource(`/v1/jobs/${encodeURIComponent(job.id)}/events`);
  source.addEventListener("progress", (e) => update(JSON.parse(e.data)));
  source.addEventListener("done", (e) => finish(JSON.parse(e.data)));
  source.onerror = () => {
    // The browser reconnects by itself; a closed stream means the job is gone.
    if (source && source.readyState === EventSource.CLOSED) {
      showError({ message: "lost the connection to the job" });
      setState("error");
    }
  };
}

// A file as a `data:` URL.
function readDataUrl(file) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result);
    reader.onerror = () => reject(reader.error);
    reader.readAsDataURL(file);
  });
}

function numberOrUndefined(id) {
  const v = $(id).value.trim();
  return v === "" ? undefined : Number(v);
}

const KEY_COOKIE = "pixart_api_key";

// Shows the key form (after a 401).
function askForKey(message) {
  $("auth").hidden = false;
  showError({ message: message || "this server needs an API key" });
  setState("auth");
  $("apikey").focus();
}

async function generate(ev) {
  ev.preventDefault();
  showError(null);
  const body = {
    prompt: $("prompt").value,
    negative_prompt: $("negative").value,
    size: `${$("width").value}x${$("height").value}`,
    steps: numberOrUndefined("steps"),
    guidance_scale: numberOrUndefined("guidance"),
    seed: numberOrUndefined("seed"),
    scheduler: $("scheduler").value || undefined,
    preview: $("preview").checked,
  };
  const control = $("control").files[0];
  if (control) {
    // ControlNet: the control picture as a data URL (the server needs --controlnet).
    body.control_image = await readDataUrl(control);
    body.controlnet_conditioning_scale = numberOrUndefined("control-scale");
  }
  const file = $("image").files[0];
  if (file) {
    // Image to image: the file as a data URL; the size field still sets the output size.
    body.image = await readDataUrl(file);
    body.strength = numberOrUndefined("strength");
    const mask = $("mask").files[0];
    if (mask) body.mask = await readDataUrl(mask);
  } else {
    // Two-pass upscaling of what is generated (not with a start image); 1 is off.
    const upscale = numberOrUndefined("upscale");
    if (upscale !== undefined && upscale !== 1) body.upscale = upscale;
  }
  setState("running");
  delete document.body.dataset.preview;
  $("progress").value = 0;
  $("status").textContent = "submitting…";
  try {
    const r = await fetch("/v1/jobs", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body),
    });
    const j = await r.json();
    if (r.status === 401) {
      askForKey(j.error.message);
      return;
    }
    if (!r.ok) {
      const retry = r.headers.get("Retry-After");
      showError(retry ? { message: `${j.error.message}` } : j.error);
      $("status").textContent = `refused (HTTP ${r.status})`;
      setState("error");
      return;
    }
    follow(j);
  } catch (e) {
    showError({ message: `request failed: ${e}` });
    setState("error");
  }
}

async function cancel() {
  if (!current) return;
  await fetch(`/v1/jobs/${encodeURIComponent(current)}`, { method: "DELETE" });
}

async function refreshQueue() {
  try {
    const h = await (await fetch("/health")).json();
    $("queue").textContent = `queue ${h.queue_length}/${h.max_queue}, running ${h.running}`;
  } catch (_) {
    $("queue").textContent = "server unreachable";
  }
}

// The finished jobs into the gallery; asks for the key when the server wants one.
async function loadJobs() {
  const listed = await fetch("/v1/jobs");
  if (listed.status === 401) {
    askForKey((await listed.json()).error.message);
    return;
  }
  const jobs = await listed.json();
  for (const job of jobs.data) {
    if (job.status === "succeeded") addToGallery(job);
  }
  $("status").textContent = "ready";
  setState("idle");
}

function saveKey(ev) {
  ev.preventDefault();
  const key = $("apikey").value.trim();
  document.cookie = `${KEY_COOKIE}=${key}; path=/; SameSite=Strict`;
  $("apikey").value = "";
  $("auth").hidden = true;
  showError(null);
  loadJobs().catch((e) => {
    showError({ message: `cannot reach the server: ${e}` });
    setState("error");
  });
}

async function init() {
  $("form").addEventListener("submit", generate);
  $("cancel").addEventListener("click", cancel);
  $("auth").addEventListener("submit", saveKey);
  $("reuse").addEventListener("click", () =>
    reuse().catch((e) => showError({ message: `cannot use the image: ${e}` })),
  );
  try {
    const h = await (await fetch("/health")).json();
    $("model").textContent = `model: ${h.model}`;
    if (h.example_prompt) $("prompt").placeholder = h.example_prompt;
    $("result").addEventListener("load", () => fit($("result")));
    const [w, hh] = h.default_size.split("x");
    $("width").value = w;
    $("height").value = hh;
    for (const id of ["width", "height"]) {
      $(id).min = h.limits.min_side;
      $(id).max = h.limits.max_side;
    }
    $("steps").value = h.defaults.steps;
    $("steps").max = h.limits.max_steps;
    $("guidance").value = h.defaults.guidance_scale;
    for (const name of h.schedulers) {
      const o = document.createElement("option");
      o.value = name;
      o.textContent = name === h.defaults.scheduler ? `${name} (default)` : name;
      o.selected = name === h.defaults.scheduler;
      $("scheduler").append(o);
    }
    // Each sampler's default step count: follow the sampler unless the user typed another.
    const stepsFor = (name) => (h.scheduler_steps && h.scheduler_steps[name]) || h.defaults.steps;
    let shownDefault = Number($("steps").value);
    $("scheduler").addEventListener("change", () => {
      if (Number($("steps").value) === shownDefault) {
        shownDefault = stepsFor($("scheduler").value);
        $("steps").value = shownDefault;
      }
    });
    await loadJobs();
  } catch (e) {
    showError({ message: `cannot reach the server: ${e}` });
    setState("error");
  }
  refreshQueue();
  setInterval(refreshQueue, 2000);
}

init();
