const $ = (id) => document.getElementById(id);
const TOP_K = 3;
const answer = {sha256: "", label: "", classes: []};

async function showModel() {
  try {
    const reply = await fetch("version");
    const info = await reply.json();
    $("model-version").textContent = reply.ok
      ? `${info.model} version ${info.version}` : info.error;
    if (reply.ok) answer.classes = info.classes;
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
  answer.sha256 = body.sha256;
  answer.label = body.predictions[0].label;
  const choose = $("correct-class");
  choose.replaceChildren();
  for (const c of answer.classes) {
    const option = document.createElement("option");
    option.value = c;
    option.textContent = c;
    choose.append(option);
  }
  $("correct").hidden = true;
  $("feedback-status").textContent = "";
  $("right").disabled = $("wrong").disabled = false;
  $("feedback").hidden = false;
}

// "Right?": the person's answer goes to POST /feedback; a reviewer confirms it later.
async function sendFeedback(label) {
  $("feedback-status").textContent = "Sending…";
  try {
    const reply = await fetch("feedback", {
      method: "POST", headers: {"Content-Type": "application/json"},
      body: JSON.stringify({sha256: answer.sha256, label}),
    });
    const body = await reply.json();
    if (!reply.ok) throw new Error(body.error || `HTTP ${reply.status}`);
    $("feedback-status").textContent = "Thank you: a reviewer will look at it.";
    $("right").disabled = $("wrong").disabled = true;
    $("correct").hidden = true;
  } catch (err) {
    $("feedback-status").textContent = err.message;
  }
}

async function classify(file) {
  $("error").textContent = "";
  $("results").hidden = true;
  $("feedback").hidden = true;
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
$("right").addEventListener("click", () => sendFeedback(answer.label));
$("wrong").addEventListener("click", () => {
  $("correct").hidden = false;
  $("correct-class").focus();
});
$("send-correct").addEventListener("click", () => sendFeedback($("correct-class").value));
showModel();
