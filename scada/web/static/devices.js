// Device list: search and kind filter; each row opens the faceplate.
"use strict";
(async () => {
  const C = Console;
  async function load() {
    const p = new URLSearchParams({limit: 500});
    const q = document.getElementById("d-text").value.trim(), k = document.getElementById("d-kind").value;
    if (q) p.set("q", q); if (k) p.set("kind", k);
    const j = await C.api("/api/devices?" + p);
    document.querySelector("#devices tbody").innerHTML = j.devices.map((d) => `<tr data-device="${C.esc(d.path)}">
      <td><a href="/devices/${C.esc(d.path)}">${C.esc(d.path)}</a></td><td>${C.esc(d.area)}</td><td>${C.esc(d.kind)}</td>
      <td>${C.esc(d.profile)}</td><td>${C.esc(d.description)}</td></tr>`).join("");
    document.getElementById("d-count").textContent = j.total + " device(s)" + (j.total > j.devices.length ? ", first " + j.devices.length + " shown" : "");
  }
  let t = null;
  document.getElementById("d-text").addEventListener("input", () => { clearTimeout(t); t = setTimeout(load, 250); });
  document.getElementById("d-kind").addEventListener("change", load);
  load();
})();
