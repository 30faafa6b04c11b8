// Login: posts the form as JSON so errors (wrong password, locked, 429) show on the page.
"use strict";
document.getElementById("login-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const err = document.getElementById("error");
  err.textContent = "";
  const body = {user: document.getElementById("user").value,
                password: document.getElementById("password").value,
                next: document.getElementById("next").value};
  let r;
  try {
    r = await fetch("/login", {method: "POST", headers: {"Content-Type": "application/json"},
                               body: JSON.stringify(body), credentials: "same-origin"});
  } catch (e) { err.textContent = "the server cannot be reached"; return; }
  const j = await r.json().catch(() => ({}));
  if (r.ok) { window.location.assign(j.next || "/"); return; }
  err.textContent = j.detail || ("login refused (" + r.status + ")");
  err.dataset.status = String(r.status);
});
