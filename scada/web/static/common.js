// Shared helpers of the console pages: API calls with the CSRF token, the live-update stream,
// formatting of values, status codes and times, the confirmation dialog, role-aware buttons.
"use strict";
const Console = (() => {
  const csrf = document.querySelector('meta[name="csrf-token"]').content;
  let me = null;
  // leaving the page (the logout form, a link): a 401 from a request still in flight must not
  // send the browser to /login?next=... over the navigation under way
  let leaving = false;
  window.addEventListener("beforeunload", () => { leaving = true; });
  document.addEventListener("submit", (ev) => {
    if (ev.target && ev.target.matches && ev.target.matches('form[action="/logout"]')) leaving = true;
  }, true);
  function toLogin() {
    if (!leaving) window.location.assign("/login?next=" + encodeURIComponent(location.pathname));
    throw new Error("logged out");
  }

  // background: a periodic refresh or a reload after a live event, which must not keep the
  // session alive (the idle timeout measures what the person does)
  async function api(path, background) {
    const headers = {"Accept": "application/json"};
    if (background) headers["X-Scada-Background"] = "1";
    const r = await fetch(path, {credentials: "same-origin", headers});
    if (r.status === 401) toLogin();
    const j = await r.json().catch(() => ({error: "bad_answer", detail: "not JSON"}));
    if (!r.ok) throw Object.assign(new Error(j.detail || r.statusText), {status: r.status, body: j});
    return j;
  }

  async function post(path, body) {
    const r = await fetch(path, {method: "POST", credentials: "same-origin",
      headers: {"Content-Type": "application/json", "X-CSRF-Token": csrf}, body: JSON.stringify(body || {})});
    if (r.status === 401) toLogin();
    const j = await r.json().catch(() => ({}));
    if (!r.ok) { toast(j.detail || j.message || ("refused: " + r.status), true); throw Object.assign(new Error(j.detail || ""), {status: r.status, body: j}); }
    toast(j.message || "done");
    return j;
  }

  async function whoami() { if (!me) me = await api("/api/me"); return me; }
  function allowed(action) { return !!(me && me.allowed && me.allowed[action]); }

  // buttons carrying data-action are disabled when the role matrix refuses the action
  function applyRoles(root) {
    (root || document).querySelectorAll("[data-action]").forEach((b) => {
      const ok = allowed(b.dataset.action);
      b.disabled = !ok || b.dataset.off === "1";
      if (!ok) b.title = "your role (" + (me ? me.role : "?") + ") may not do this";
    });
  }

  function toast(text, err) {
    const t = document.getElementById("toast");
    if (!t) return;
    t.textContent = text; t.className = "toast" + (err ? " err" : ""); t.hidden = false;
    clearTimeout(t._h); t._h = setTimeout(() => { t.hidden = true; }, 4000);
  }

  function confirmBox(text, extraName) {
    const d = document.getElementById("confirm");
    document.getElementById("confirm-text").textContent = text;
    const lab = document.getElementById("confirm-extra-label"), inp = document.getElementById("confirm-extra");
    lab.hidden = !extraName; inp.value = "";
    document.getElementById("confirm-extra-name").textContent = extraName || "";
    return new Promise((resolve) => {
      d.addEventListener("close", () => resolve(d.returnValue === "ok" ? {ok: true, extra: inp.value} : {ok: false}), {once: true});
      d.showModal();
    });
  }

  function esc(s) { return String(s == null ? "" : s).replace(/[&<>"']/g, (c) => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;"}[c])); }
  function time(t) { if (t == null || !isFinite(t) || t <= 0) return "—"; const d = new Date(t * 1000); return d.toLocaleString(); }
  function value(v, unit) {
    if (v === null || v === undefined) return "—";
    if (typeof v === "number") return (Number.isInteger(v) ? String(v) : v.toFixed(2)) + (unit ? " " + unit : "");
    return String(v) + (unit ? " " + unit : "");
  }
  function qualityClass(code) { const sev = (code >>> 30) & 3; return sev === 0 ? "good" : sev === 1 ? "uncertain" : "bad"; }

  // redundant pair (docs/redundancy.md "Web console"): a standby's pages say so and link to the
  // active; when this server stops answering, or answers that it is no longer active, the page
  // goes to the active's console (a session belongs to one server: the operator logs in there)
  let pair = null, haFailures = 0, haChecking = false;
  function haBanner(h) {
    const b = document.getElementById("ha-banner");
    if (!b) return;
    if (!h.pair || h.active) { b.hidden = true; return; }
    const link = h.holder_web ? ' <a id="ha-active-link" href="' + esc(h.holder_web) + '">Open the active server (' + esc(h.holder) + ")</a>" : "";
    b.innerHTML = "This server (" + esc(h.node) + ") is <b>" + esc(h.role.toUpperCase()) +
      "</b>: its values are not live and it refuses actions. The active server is " +
      esc(h.holder || "not known yet") + "." + link;
    b.hidden = false;
  }
  function goActive(h) {
    if (leaving) return;
    let url = h && h.holder_web;
    if (!url && pair && pair.holder && pair.holder !== pair.node) url = pair.holder_web;
    if (!url && pair) {
      const others = Object.entries(pair.nodes || {}).filter(([n, c]) => n !== pair.node && c.web);
      if (others.length) url = others[0][1].web;
    }
    if (url) { leaving = true; window.location.assign(url.replace(/\/$/, "") + "/login"); }
  }
  async function haCheck() {
    if (haChecking) return;
    haChecking = true;
    try {
      const r = await fetch("/api/ha", {credentials: "same-origin", headers: {"Accept": "application/json"}});
      const h = await r.json();
      haFailures = 0;
      const was = pair;
      pair = h;
      haBanner(h);
      if (h.pair && !h.active && was && was.active) goActive(h);  // this server stepped down
    } catch (e) {
      haFailures += 1;  // this server does not answer: after three tries, go to the other one
      if (pair && pair.pair && haFailures >= 3) goActive(null);
    } finally { haChecking = false; }
  }
  if (document.getElementById("ha-banner")) haCheck();

  // live updates: one EventSource; reconnects by itself; "overflow"/"bye" -> page reload of data
  function stream(handlers, watch) {
    const live = document.getElementById("live");
    let es = null;
    function open() {
      es = new EventSource("/api/stream" + (watch ? "?watch=" + encodeURIComponent(watch) : ""));
      es.addEventListener("hello", () => { live && live.classList.add("on"); haCheck(); handlers.hello && handlers.hello(); });
      for (const k of Object.keys(handlers)) {
        if (k === "hello") continue;
        es.addEventListener(k, (ev) => handlers[k](JSON.parse(ev.data)));
      }
      es.addEventListener("bye", async (ev) => {
        live && live.classList.remove("on");
        es.close();
        try { await api("/api/me", true); } catch (e) {
          if (e.message === "logged out") return;  // api() sends the browser to the login page
          haCheck();  // the server went away: the pair's other server may be active now
          setTimeout(open, 3000);
          return;
        }
        setTimeout(open, 1000);
      });
      es.onerror = () => { live && live.classList.remove("on"); haCheck(); };
    }
    open();
    return () => es && es.close();
  }

  return {api, post, whoami, allowed, applyRoles, toast, confirmBox, esc, time, value, qualityClass, stream, csrf};
})();
