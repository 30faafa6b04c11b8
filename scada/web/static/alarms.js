// Alarm list (ISA-18.2 console): sorting, filters, views, live updates, banner and optional
// sound for new priority-1 alarms, actions allowed by the role matrix; each alarm's procedure
// (the checklist of its class: steps done with user and time) opens under its row, and a step
// ticked there goes through the operator API (POST /api/procedures/step: role matrix, audit).
"use strict";
(async () => {
  const C = Console;
  const me = await C.whoami();
  const tbody = document.querySelector("#alarms tbody");
  const st = {view: "active", sort: "priority", order: null, rows: [], open: new Set()};
  const areaSel = document.getElementById("f-area");
  for (const a of me.site_areas) areaSel.insertAdjacentHTML("beforeend", `<option value="${C.esc(a.id)}">${C.esc(a.name)}</option>`);
  let audio = null;

  function beep() {
    if (!document.getElementById("sound").checked) return;
    try {
      audio = audio || new AudioContext();
      const o = audio.createOscillator(), g = audio.createGain();
      o.frequency.value = 880; g.gain.value = 0.15; o.connect(g); g.connect(audio.destination);
      o.start(); o.stop(audio.currentTime + 0.4);
    } catch (e) { /* no audio device */ }
  }

  function params() {
    const p = new URLSearchParams({view: st.view, sort: st.sort});
    if (st.order) p.set("order", st.order);
    const s = document.getElementById("f-state").value, a = areaSel.value,
          pr = document.getElementById("f-priority").value, q = document.getElementById("f-text").value.trim();
    if (s) p.set("state", s); if (a) p.set("area", a); if (pr) p.set("priority", pr); if (q) p.set("q", q);
    return p;
  }

  function actions(r) {
    const id = C.esc(r.alarm_id);
    const b = [];
    b.push(`<button data-do="ack" data-id="${id}" data-action="alarm.acknowledge" ${r.acked ? 'data-off="1"' : ""}>Ack</button>`);
    b.push(`<button data-do="comment" data-id="${id}" data-action="alarm.comment">Comment</button>`);
    if (r.shelved) b.push(`<button data-do="unshelve" data-id="${id}" data-action="alarm.shelve">Unshelve</button>`);
    else b.push(`<button data-do="shelve" data-id="${id}" data-action="alarm.shelve">Shelve</button>`);
    b.push(`<button data-do="oos" data-id="${C.esc(r.device)}" data-oos="${r.oos ? "0" : "1"}" data-action="device.out_of_service">${r.oos ? "In service" : "Out of service"}</button>`);
    return b.join(" ");
  }

  function procCell(r) {
    const p = r.procedure;
    if (!p || !p.steps.length) return "";
    const done = p.steps.filter((s) => s.done).length;
    const cls = done === p.steps.length ? "proc done" : (p.serious ? "proc serious" : "proc");
    return `<button class="${cls}" data-proc="${C.esc(r.alarm_id)}" title="procedure">${done}/${p.steps.length}` +
      `${p.serious ? " serious" : ""}${p.condition ? " · " + C.esc(p.condition.replace(/_/g, " ")) : ""}</button>`;
  }

  function procRow(r) {
    const p = r.procedure;
    if (!p || !st.open.has(r.alarm_id)) return "";
    return `<tr class="procedure-row"><td colspan="8"><div class="procedure" data-alarm="${C.esc(r.alarm_id)}">` +
      `<b>Procedure for ${C.esc(p.class)}</b>${p.serious ? " · <strong>serious</strong>" : ""}<ul>` +
      p.steps.map((s) => `<li data-step="${C.esc(s.id)}" data-done="${s.done ? 1 : 0}">` +
        (s.done ? "☑" : `<button data-step="${C.esc(s.id)}" data-action="procedure.step">done</button>`) +
        ` ${C.esc(s.text)}${s.user ? ` <span class="muted step-by">(${C.esc(s.user)}, ${C.time(s.ts)})</span>` : ""}</li>`).join("") +
      "</ul></div></td></tr>";
  }

  function render() {
    tbody.innerHTML = st.rows.map((r) => `<tr class="st-${C.esc(r.isa_state)}" data-alarm="${C.esc(r.alarm_id)}">
      <td>${r.priority}</td><td>${C.time(r.ts)}</td><td>${C.esc(r.area)}</td>
      <td><a href="/devices/${C.esc(r.device)}">${C.esc(r.alarm_id)}</a></td><td>${C.esc(r.message)}</td>
      <td class="state" data-state="${C.esc(r.isa_state)}">${C.esc(r.isa_state)}</td><td>${procCell(r)}</td><td>${actions(r)}</td></tr>` +
      procRow(r)).join("");
    document.getElementById("empty").hidden = st.rows.length > 0;
    document.getElementById("count").textContent = st.rows.length + " alarm(s)";
    document.querySelectorAll("th.sortable").forEach((th) => th.classList.toggle("sorted", th.dataset.sort === st.sort));
    C.applyRoles(tbody);
  }

  async function load(background) {
    const j = await C.api("/api/alarms?" + params(), background === true);
    st.rows = j.alarms;
    render();
  }

  function banner(r) {
    const b = document.getElementById("banner");
    b.textContent = `NEW PRIORITY ${r.priority} ALARM: ${r.alarm_id} — ${r.message}`;
    b.hidden = false;
    b.onclick = () => { b.hidden = true; };
    beep();
  }

  tbody.addEventListener("click", async (ev) => {
    const pb = ev.target.closest("button[data-proc]");
    if (pb) {
      const id = pb.dataset.proc;
      if (st.open.has(id)) st.open.delete(id); else st.open.add(id);
      render();
      return;
    }
    const sb = ev.target.closest("button[data-step]");
    if (sb && !sb.disabled) {
      const id = sb.closest(".procedure").dataset.alarm;
      await C.post("/api/procedures/step", {alarm_id: id, step: sb.dataset.step}).catch(() => {});
      load();
      return;
    }
    const btn = ev.target.closest("button[data-do]");
    if (!btn || btn.disabled) return;
    const id = btn.dataset.id, what = btn.dataset.do;
    try {
      if (what === "ack") await C.post("/api/alarms/ack", {alarm_id: id});
      else if (what === "comment") {
        const c = await C.confirmBox("Comment on " + id, "Comment"); if (!c.ok) return;
        await C.post("/api/alarms/comment", {alarm_id: id, comment: c.extra});
      } else if (what === "shelve") {
        const c = await C.confirmBox("Shelve " + id + " for one hour? Give the reason.", "Reason"); if (!c.ok) return;
        await C.post("/api/alarms/shelve", {alarm_id: id, comment: c.extra || "shelved from the console", duration: 3600});
      } else if (what === "unshelve") await C.post("/api/alarms/unshelve", {alarm_id: id});
      else if (what === "oos") {
        const oos = btn.dataset.oos === "1";
        const c = await C.confirmBox((oos ? "Put " : "Return ") + id + (oos ? " out of service (works)?" : " to service?"), "Comment");
        if (!c.ok) return;
        await C.post("/api/devices/out-of-service", {device: id, oos: oos, comment: c.extra});
      }
    } catch (e) { /* toast shown */ }
    load();
  });

  document.querySelectorAll("th.sortable").forEach((th) => th.addEventListener("click", () => {
    if (st.sort === th.dataset.sort) st.order = st.order === "desc" ? "asc" : "desc"; else { st.sort = th.dataset.sort; st.order = null; }
    load();
  }));
  document.querySelectorAll("#views button").forEach((b) => b.addEventListener("click", () => {
    document.querySelectorAll("#views button").forEach((x) => x.classList.toggle("on", x === b));
    st.view = b.dataset.view; load();
  }));
  for (const id of ["f-state", "f-area", "f-priority"]) document.getElementById(id).addEventListener("change", load);
  document.getElementById("f-text").addEventListener("input", () => { clearTimeout(st.t); st.t = setTimeout(load, 250); });

  let pending = null;
  function soon() { if (!pending) pending = setTimeout(() => { pending = null; load(true); }, 150); }
  C.stream({
    hello: () => load(true),
    alarm: (ev) => {
      if (ev.event === "raise" && ev.priority <= 1 && !ev.suppressed && !ev.shelved && !ev.oos) banner(ev);
      soon();
    },
    "alarms.reload": soon,
    procedure: soon,
  });
  await load();
})();
