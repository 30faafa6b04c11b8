// Service worker of the field tablet: the page's shell (HTML, script, style, manifest) is
// cached so the tablet opens without network; API calls always go to the network (the page
// keeps its own offline queue of actions and replays it with idempotency keys).
"use strict";
const CACHE = "scada-tablet-v2";
const SHELL = ["/tablet", "/static/tablet.js", "/static/mapcore.js", "/static/tablet.css", "/tablet.webmanifest", "/static/tablet-icon.svg"];
self.addEventListener("install", (e) => {
  e.waitUntil(caches.open(CACHE).then((c) => c.addAll(SHELL)).then(() => self.skipWaiting()));
});
self.addEventListener("activate", (e) => { e.waitUntil(self.clients.claim()); });
self.addEventListener("fetch", (e) => {
  const url = new URL(e.request.url);
  if (e.request.method !== "GET" || url.origin !== location.origin || url.pathname.startsWith("/api/")) return;
  if (!SHELL.includes(url.pathname)) return;
  // network first (fresh code and CSRF token), the cached shell when offline
  e.respondWith(fetch(e.request).then((r) => {
    const copy = r.clone();
    if (r.ok) caches.open(CACHE).then((c) => c.put(e.request, copy));
    return r;
  }).catch(() => caches.match(e.request)));
});
