// The field tablet: the agent's visits of the day in order, each task's summary, map link and
// checklist (steps ticked), and the actions "arrived", "done" (note + photo) and "cannot complete".
// Actions are queued in localStorage first, each with an idempotency key generated here, and
// sent in order; without network they wait and are replayed when it returns (the "online"
// event, and a retry timer). The server records a key once: a replay never duplicates a step.
"use strict";
(() => {
  const csrf = document.querySelector('meta[name="csrf-token"]').content;
  const QKEY = "scada-tablet-queue:" + document.body.dataset.user;
  let data = null;
  let flushing = false;

  const esc = (s) => String(s == null ? "" : s).replace(/[&<>"']/g, (c) => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;"}[c]));
  const queue = () => { try { return JSON.parse(localStorage.getItem(QKEY) || "[]"); } catch (e) { return []; } };
  const save = (q) => { localStorage.setItem(QKEY, JSON.stringify(q)); showQueue(); };
  function newKey() {
    if (self.crypto && crypto.randomUUID) return crypto.randomUUID();
    const b = new Uint8Array(16); crypto.getRandomValues(b);
    return Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
  }
  function showQueue() {
    const n = queue().length;
    document.getElementById("queued").textContent = n ? n + " to send" : "";
    document.getElementById("queued").dataset.count = String(n);
  }
  function showNet() {
    const el = document.getElementById("net");
    el.textContent = navigator.onLine ? "online" : "offline";
    el.classList.toggle("off", !navigator.onLine);
  }

  async function load() {
    try {
      const r = await fetch("/api/tablet", {credentials: "same-origin", headers: {Accept: "application/json"}});
      if (r.status === 401) { location.assign("/login?next=/tablet"); return; }
      data = await r.json();
      localStorage.setItem(QKEY + ":data", JSON.stringify(data));
    } catch (e) {
      data = JSON.parse(localStorage.getItem(QKEY + ":data") || "null");
    }
    render();
  }

  function pendingFor(id) { return queue().filter((a) => a.order === id).map((a) => a.what); }

  function render() {
    const main = document.getElementById("visits");
    // what the agent is typing or has picked (a note, a photo) survives a refresh: the task's
    // own textarea and file input are moved into the new markup
    const kept = new Map();
    for (const t of main.querySelectorAll(".task")) kept.set(t.dataset.order, [t.querySelector(".note"), t.querySelector(".photo")]);
    if (!data || !data.visits.length) { main.innerHTML = '<p class="muted" id="none">No visit today.</p>'; return; }
    main.innerHTML = data.visits.map((v, i) => {
      const loc = v.location ? `<a class="map" href="https://www.openstreetmap.org/?mlat=${v.location[0]}&mlon=${v.location[1]}#map=19/${v.location[0]}/${v.location[1]}">map</a>` : "";
      return `<section class="visit" data-visit="${esc(v.id)}"><h2>${i + 1}. ${esc(v.site)} ${loc}</h2>` +
        v.tasks.map((t, k) => {
          const pend = pendingFor(t.id);
          const ticked = queue().filter((a) => a.order === t.id && a.what === "check").map((a) => a.step);
          const checklist = (t.checklist || []).map((s) => {
            const on = s.done || ticked.includes(s.id);
            return `<li><label><input type="checkbox" class="step" data-step="${esc(s.id)}"${on ? " checked disabled" : ""}> ${esc(s.text)}</label></li>`;
          }).join("");
          return `<div class="task" data-order="${esc(t.id)}" data-rank="${k}">
            <div><span class="trade">${esc(t.trade || "")}</span> · P${t.priority} · <span class="state">${esc(t.state)}</span>
              ${pend.length ? `<span class="pending">(${esc(pend.join(", "))} waiting to be sent)</span>` : ""}</div>
            <div class="title">${esc(t.title)}</div><div class="muted">${esc(t.devices.join(", "))}</div>
            ${checklist ? `<ul class="checklist">${checklist}</ul>` : ""}
            <textarea class="note" rows="2" placeholder="note"></textarea>
            <input class="photo" type="file" accept="image/*" capture="environment">
            <div><button class="arrived">Arrived</button><button class="done">Done</button><button class="cannot">Cannot complete</button></div>
          </div>`;
        }).join("") + "</section>";
    }).join("");
    for (const t of main.querySelectorAll(".task")) {
      const k = kept.get(t.dataset.order);
      if (!k) continue;
      if (k[0]) t.querySelector(".note").replaceWith(k[0]);
      if (k[1]) t.querySelector(".photo").replaceWith(k[1]);
    }
  }

  function readPhoto(input) {
    const f = input.files && input.files[0];
    if (!f) return Promise.resolve(null);
    return new Promise((ok, ko) => { const r = new FileReader(); r.onload = () => ok(r.result); r.onerror = ko; r.readAsDataURL(f); });
  }

  async function act(taskEl, what) {
    const note = taskEl.querySelector(".note").value;
    const photo = what === "done" ? await readPhoto(taskEl.querySelector(".photo")) : null;
    const q = queue();
    q.push({key: newKey(), order: taskEl.dataset.order, what, note, photo, at: Date.now()});
    save(q);
    taskEl.querySelector(".note").value = "";  // sent (or queued): the draft is done
    taskEl.querySelector(".photo").value = "";
    render();
    flush();
  }

  async function flush() {
    if (flushing) return;
    flushing = true;
    try {
      for (;;) {
        const q = queue();
        if (!q.length) break;
        const a = q[0];
        let r;
        try {
          r = await fetch("/api/tablet/action", {method: "POST", credentials: "same-origin",
            headers: {"Content-Type": "application/json", "X-CSRF-Token": csrf},
            body: JSON.stringify({order: a.order, what: a.what, note: a.note, photo: a.photo, step: a.step, key: a.key})});
        } catch (e) { break; }  // no network: keep it, retry later
        if (r.status >= 500 || r.status === 401 || r.status === 429) break;  // try again later
        const j = await r.json().catch(() => ({}));
        const rest = queue().filter((x) => x.key !== a.key);
        save(rest);
        if (!r.ok) alertMsg(a, j);
      }
    } finally {
      flushing = false;
    }
    await load();
  }

  function alertMsg(a, j) {
    const box = document.createElement("p");
    box.className = "refused";
    box.textContent = `${a.order} ${a.what}: refused (${j.detail || j.error || "?"})`;
    document.getElementById("visits").prepend(box);
  }

  document.addEventListener("change", (e) => {
    const box = e.target.closest("input.step");
    const t = e.target.closest(".task");
    if (!box || !t || !box.checked) return;
    const q = queue();
    q.push({key: newKey(), order: t.dataset.order, what: "check", step: box.dataset.step, at: Date.now()});
    save(q);
    render();
    flush();
  });
  document.addEventListener("click", (e) => {
    const b = e.target.closest("button");
    const t = e.target.closest(".task");
    if (!b || !t) return;
    if (b.classList.contains("arrived")) act(t, "arrived");
    else if (b.classList.contains("done")) act(t, "done");
    else if (b.classList.contains("cannot")) act(t, "cannot_complete");
  });
  window.addEventListener("online", () => { showNet(); flush(); });
  window.addEventListener("offline", showNet);
  setInterval(() => { if (queue().length) flush(); }, 3000);
  if ("serviceWorker" in navigator) navigator.serviceWorker.register("/tablet-sw.js", {scope: "/tablet"}).catch(() => {});
  showNet(); showQueue();
  load().then(flush);
})();
