// Alarm history: journal search with paging (newest first).
"use strict";
(async () => {
  const C = Console;
  const st = {offset: 0, limit: 100, total: 0};
  async function load() {
    const days = Number(document.getElementById("h-days").value);
    const me = await C.whoami();
    const p = new URLSearchParams({offset: st.offset, limit: st.limit, start: me.server_time - days * 86400});
    const q = document.getElementById("h-text").value.trim(), e = document.getElementById("h-event").value;
    if (q) p.set("q", q); if (e) p.set("event", e);
    const j = await C.api("/api/alarms/history?" + p);
    st.total = j.total;
    document.querySelector("#history tbody").innerHTML = j.entries.map((r) => `<tr>
      <td>${C.time(r.ts)}</td><td>${C.esc(r.event)}</td><td><a href="/devices/${C.esc(r.device || "")}">${C.esc(r.alarm_id)}</a></td>
      <td>${C.esc(r.state)}</td><td>${C.esc(r.user || "")}</td><td>${C.esc(r.comment || r.message || "")}</td></tr>`).join("");
    document.getElementById("h-count").textContent = j.total + " entries";
    document.getElementById("h-page").textContent = j.total ? `${st.offset + 1}–${Math.min(st.offset + st.limit, j.total)}` : "";
  }
  document.getElementById("h-go").addEventListener("click", () => { st.offset = 0; load(); });
  document.getElementById("h-prev").addEventListener("click", () => { st.offset = Math.max(0, st.offset - st.limit); load(); });
  document.getElementById("h-next").addEventListener("click", () => { if (st.offset + st.limit < st.total) { st.offset += st.limit; load(); } });
  load();
})();
