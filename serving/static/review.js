const $ = (id) => document.getElementById(id);
const BASE = "/review/";  // the page may be opened as /review or /review/
const state = {page: 1, pages: 1, selected: 0, items: [], classes: []};

async function api(path, body) {
  const options = body === undefined ? {} : {
    method: "POST", headers: {"Content-Type": "application/json"}, body: JSON.stringify(body),
  };
  const reply = await fetch(BASE + path, options);
  const data = await reply.json();
  if (!reply.ok) throw new Error(data.error || `HTTP ${reply.status}`);
  return data;
}

function text(tag, cls, content) {
  const el = document.createElement(tag);
  if (cls) el.className = cls;
  el.textContent = content;
  return el;
}

function describe(card, item) {
  card.classList.remove("keep", "remove", "relabel");
  const d = item.decision;
  if (d) card.classList.add(d.split(":")[0]);
  card.querySelector(".decision").textContent = d
    ? `decided: ${d.replace(":", " to ")} (${item.decided_by})` : "";
  card.querySelector(".undo").disabled = !item.decision_id;
}

function render() {
  const grid = $("grid");
  grid.replaceChildren();
  state.items.forEach((item, i) => {
    const card = document.createElement("div");
    card.className = "card";
    card.dataset.sha256 = item.sha256;
    card.dataset.given = item.given;
    card.dataset.index = i;
    const img = document.createElement("img");
    img.src = BASE + item.image_url;
    img.alt = `image ${item.sha256.slice(0, 12)}`;
    card.append(img);
    const labels = document.createElement("div");
    labels.className = "labels";
    labels.append(
      text("div", "rank", `#${item.rank}`),
      text("div", "given", `given: ${item.given}`),
      text("div", "predicted",
           `predicted: ${item.predicted} (${(100 * item.confidence).toFixed(1)}%)`),
      text("div", "selfconf", `p(given): ${(100 * item.self_confidence).toFixed(1)}%`),
    );
    const flags = document.createElement("div");
    for (const f of item.flags.split(";").filter(Boolean)) flags.append(text("span", "flag", f));
    labels.append(flags);
    card.append(labels, text("div", "decision", ""));
    const actions = document.createElement("div");
    actions.className = "actions";
    const keep = text("button", "keep", "keep");
    keep.type = "button";
    keep.addEventListener("click", () => decide(i, "keep"));
    const remove = text("button", "remove", "remove");
    remove.type = "button";
    remove.addEventListener("click", () => decide(i, "remove"));
    const choose = document.createElement("select");
    choose.className = "relabel-to";
    choose.setAttribute("aria-label", "relabel to");
    for (const c of state.classes) {
      const option = text("option", "", c);
      option.value = c;
      choose.append(option);
    }
    choose.value = item.predicted;
    choose.addEventListener("keydown", (e) => {
      if (e.key === "Enter") { e.preventDefault(); decide(i, `relabel:${choose.value}`); }
      e.stopPropagation();
    });
    const relabel = text("button", "relabel", "relabel");
    relabel.type = "button";
    relabel.addEventListener("click", () => decide(i, `relabel:${choose.value}`));
    const undoButton = text("button", "undo", "undo");
    undoButton.type = "button";
    undoButton.addEventListener("click", () => undoDecision(i));
    actions.append(keep, remove, choose, relabel, undoButton);
    card.append(actions);
    card.addEventListener("click", (e) => {
      if (e.target === card || e.target === img) select(i);
    });
    grid.append(card);
    describe(card, item);
  });
  select(Math.min(state.selected, state.items.length - 1));
}

function cards() { return $("grid").querySelectorAll(".card"); }

function select(i) {
  const all = cards();
  if (!all.length) return;
  state.selected = Math.max(0, Math.min(i, all.length - 1));
  all.forEach((c, k) => c.classList.toggle("selected", k === state.selected));
  all[state.selected].scrollIntoView({block: "nearest"});
}

async function load(page) {
  $("error").textContent = "";
  const query = new URLSearchParams({
    page: String(page), order: $("order").value, flag: $("flag").value,
  });
  try {
    const data = await api(`api/suspects?${query}`);
    Object.assign(state, {page: data.page, pages: data.pages, items: data.items,
                          classes: data.classes});
    $("pageinfo").textContent = `page ${data.page} of ${data.pages}`;
    $("summary").textContent =
      `${data.total} images, ${data.decided} decided; dataset ${data.dataset_digest.slice(0, 12)}.`;
    $("prev").disabled = data.page <= 1;
    $("next").disabled = data.page >= data.pages;
    render();
  } catch (err) {
    $("error").textContent = err.message;
  }
}

async function decide(i, decision) {
  const item = state.items[i];
  if (!item) return;
  $("error").textContent = "";
  try {
    const entry = await api("api/decisions", {sha256: item.sha256, decision});
    for (const [k, other] of state.items.entries()) {  // a label conflict shows twice
      if (other.sha256 !== item.sha256) continue;
      Object.assign(other, {decision: entry.decision, decision_id: entry.id,
                            decided_by: entry.who});
      describe(cards()[k], other);
    }
    $("status").textContent = `#${item.rank}: ${entry.decision}`;
    select(i + 1);
  } catch (err) {
    $("error").textContent = err.message;
  }
}

async function undoDecision(i) {
  const item = state.items[i];
  if (!item || !item.decision_id) return;
  try {
    await api("api/undo", {id: item.decision_id});
    await load(state.page);  // an earlier decision about the image may stand again
    select(i);
    $("status").textContent = `#${item.rank}: undone`;
  } catch (err) {
    $("error").textContent = err.message;
  }
}

document.addEventListener("keydown", (e) => {
  if (e.target.tagName === "SELECT" || e.target.tagName === "INPUT") return;
  if (e.ctrlKey || e.metaKey || e.altKey) return;
  const i = state.selected;
  const actions = {
    ArrowRight: () => select(i + 1), ArrowLeft: () => select(i - 1),
    l: () => select(i + 1), h: () => select(i - 1),
    k: () => decide(i, "keep"), x: () => decide(i, "remove"), Delete: () => decide(i, "remove"),
    r: () => cards()[i] && cards()[i].querySelector(".relabel-to").focus(),
    u: () => undoDecision(i),
    n: () => state.page < state.pages && load(state.page + 1),
    p: () => state.page > 1 && load(state.page - 1),
  };
  if (actions[e.key]) { e.preventDefault(); actions[e.key](); }
});
$("prev").addEventListener("click", () => load(state.page - 1));
$("next").addEventListener("click", () => load(state.page + 1));
$("order").addEventListener("change", () => load(1));
$("flag").addEventListener("change", () => load(1));
load(1);

// The feedback queue: what people said about the server's answers; accept (into the
// cleaning ledger, as a new labelled image) or reject each item.
function feedbackCard(item, classes) {
  const box = document.createElement("div");
  box.className = "feedback-card";
  box.dataset.id = item.id;
  box.dataset.sha256 = item.sha256;
  const img = document.createElement("img");
  img.src = BASE + item.image_url;
  img.alt = `image ${item.sha256.slice(0, 12)}`;
  const model = `model: ${item.predicted} (${(100 * item.confidence).toFixed(1)}%)`;
  box.append(img, text("div", "model-said", model),
             text("div", "person-said", `person: ${item.label}`));
  const choose = document.createElement("select");
  choose.className = "accept-as";
  choose.setAttribute("aria-label", "accept as");
  for (const c of classes) {
    const option = text("option", "", c);
    option.value = c;
    choose.append(option);
  }
  choose.value = item.label;
  const accept = text("button", "accept", "accept");
  accept.type = "button";
  const reject = text("button", "reject", "reject");
  reject.type = "button";
  const outcome = text("div", "outcome", "");
  const decide = async (decision) => {
    $("feedback-error").textContent = "";
    try {
      const verdict = await api("api/feedback/decisions", {id: item.id, decision});
      outcome.textContent = `${verdict.kind}ed` + (verdict.kind === "accept"
        ? ` as ${verdict.label}` : "");
      accept.disabled = reject.disabled = choose.disabled = true;
    } catch (err) {
      $("feedback-error").textContent = err.message;
    }
  };
  accept.addEventListener("click", () => decide(`accept:${choose.value}`));
  reject.addEventListener("click", () => decide("reject"));
  const actions = document.createElement("div");
  actions.className = "actions";
  actions.append(choose, accept, reject);
  box.append(actions, outcome);
  return box;
}

async function loadFeedback() {
  try {
    const data = await api("api/feedback?state=pending");
    $("feedback-summary").textContent = `${data.pending} waiting`;
    $("feedback-grid").replaceChildren(...data.items.map((i) => feedbackCard(i, data.classes)));
  } catch (err) {
    $("feedback-error").textContent = err.message;
  }
}

loadFeedback();
