"""``GET /``: the upload page, the lesson's bear classifier app done properly.

Pick or drop an image, see its preview, the top classes with their probabilities and the
model version that answered. One self-contained page (no external scripts, fonts or
styles), so it works offline and under a strict Content-Security-Policy.
"""

from __future__ import annotations

import secrets

from starlette.requests import Request
from starlette.responses import HTMLResponse

PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Ursa image classifier</title>
<style nonce="__NONCE__">
  body { font: 16px/1.5 system-ui, sans-serif; max-width: 40rem; margin: 2rem auto;
         padding: 0 1rem; color: #222; }
  h1 { font-size: 1.6rem; margin-bottom: .2rem; }
  #model { color: #666; margin-top: 0; }
  #drop { border: 2px dashed #999; border-radius: 8px; padding: 2rem; text-align: center;
          cursor: pointer; }
  #drop.over { border-color: #2a6; background: #efe; }
  #preview { max-width: 100%; max-height: 16rem; display: none; margin: 1rem auto; }
  table { border-collapse: collapse; width: 100%; margin-top: 1rem; }
  td { padding: .25rem .5rem; }
  td.bar div { background: #2a6; height: .8rem; border-radius: 3px; }
  #error { color: #b00; }
</style>
</head>
<body>
<h1>What is in this picture?</h1>
<p id="model">Model: <span id="model-version">loading…</span></p>
<div id="drop">
  <p>Drop an image here, or <label for="file"><u>pick one</u></label>.</p>
  <input id="file" type="file" accept="image/*" hidden>
</div>
<img id="preview" alt="the image you sent">
<p id="status" role="status"></p>
<p id="error" role="alert"></p>
<table id="results" hidden>
  <thead><tr><th>class</th><th>probability</th><th></th></tr></thead>
  <tbody></tbody>
</table>
<script nonce="__NONCE__">
const $ = (id) => document.getElementById(id);
const TOP_K = 3;

async function showModel() {
  try {
    const reply = await fetch("version");
    const info = await reply.json();
    $("model-version").textContent = reply.ok
      ? `${info.model} version ${info.version}` : info.error;
  } catch (err) {
    $("model-version").textContent = "the server does not answer";
  }
}

function showResults(body) {
  const rows = $("results").querySelector("tbody");
  rows.replaceChildren();
  for (const p of body.predictions) {
    const tr = document.createElement("tr");
    tr.className = "prediction";
    const label = document.createElement("td");
    label.className = "label";
    label.textContent = p.label;
    const prob = document.createElement("td");
    prob.className = "probability";
    prob.textContent = (100 * p.probability).toFixed(1) + "%";
    const bar = document.createElement("td");
    bar.className = "bar";
    const fill = document.createElement("div");
    fill.style.width = (100 * p.probability).toFixed(1) + "%";
    bar.append(fill);
    tr.append(label, prob, bar);
    rows.append(tr);
  }
  $("results").hidden = false;
  $("status").textContent = `Answered by ${body.model} version ${body.version}.`;
  $("status").dataset.version = body.version;
}

async function classify(file) {
  $("error").textContent = "";
  $("results").hidden = true;
  $("status").textContent = "Classifying…";
  const preview = $("preview");
  if (preview.src) URL.revokeObjectURL(preview.src);
  preview.src = URL.createObjectURL(file);
  preview.style.display = file.type.startsWith("image/") ? "block" : "none";
  const type = file.type || "application/octet-stream";
  try {
    const reply = await fetch(`predict?k=${TOP_K}`, {
      method: "POST", body: file, headers: {"Content-Type": type},
    });
    const body = await reply.json();
    if (!reply.ok) throw new Error(body.error || `HTTP ${reply.status}`);
    showResults(body);
  } catch (err) {
    $("status").textContent = "";
    $("error").textContent = err.message;
  }
}

$("file").addEventListener("change", (e) => {
  if (e.target.files.length) classify(e.target.files[0]);
});
const drop = $("drop");
drop.addEventListener("click", (e) => { if (e.target.tagName !== "LABEL") $("file").click(); });
drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (e) => {
  e.preventDefault();
  drop.classList.remove("over");
  if (e.dataTransfer.files.length) classify(e.dataTransfer.files[0]);
});
showModel();
</script>
</body>
</html>
"""


async def upload_page(request: Request) -> HTMLResponse:
    nonce = secrets.token_urlsafe(16)
    policy = (
        f"default-src 'none'; script-src 'nonce-{nonce}'; style-src 'nonce-{nonce}'; "
        "img-src blob:; connect-src 'self'; base-uri 'none'; form-action 'none'"
    )
    return HTMLResponse(
        PAGE.replace("__NONCE__", nonce),
        headers={"Content-Security-Policy": policy, "X-Frame-Options": "DENY"},
    )
