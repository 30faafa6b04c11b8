// Map drawing shared by the console's live map (map.js) and the field tablet's visit maps
// (tablet.js): the Web Mercator projection and the raster tiles of the site's web.map
// configuration (GET /api/map/config: a URL template or the server's local tile directory),
// or the plain background when no tiles are configured or none load (no CDN: works offline).
"use strict";
window.ScadaMapCore = (() => {
  const TILE = 256;
  const BACKGROUND = "#e4e9ec";

  // world pixels at zoom 0 (0..256 on both axes)
  function project(lat, lon) {
    const s = Math.sin(Math.max(-85.05, Math.min(85.05, lat)) * Math.PI / 180);
    return [(lon + 180) / 360 * TILE, (0.5 - Math.log((1 + s) / (1 - s)) / (4 * Math.PI)) * TILE];
  }
  // a view is {cx, cy, zoom, W, H}: the world point at the centre of a W x H (CSS px) canvas
  function toScreen(v, x, y) { const k = Math.pow(2, v.zoom); return [(x - v.cx) * k + v.W / 2, (y - v.cy) * k + v.H / 2]; }
  function toWorld(v, sx, sy) { const k = Math.pow(2, v.zoom); return [(sx - v.W / 2) / k + v.cx, (sy - v.H / 2) / k + v.cy]; }

  // draw the tiles covering the view; `cache` (a Map url -> Image) is the caller's, `onload`
  // redraws when a tile arrives; a tile that fails leaves the background
  function drawTiles(ctx, cfg, v, cache, onload) {
    if (!cfg || !cfg.tiles) return 0;
    const maxZoom = cfg.max_zoom || 19;
    const z = Math.max(0, Math.min(maxZoom, Math.floor(v.zoom)));
    const k = Math.pow(2, v.zoom - z), size = TILE * k, nt = Math.pow(2, z);
    const [wx0, wy0] = toWorld(v, 0, 0), [wx1, wy1] = toWorld(v, v.W, v.H);
    const tx0 = Math.max(0, Math.floor(wx0 * nt / TILE)), tx1 = Math.min(nt - 1, Math.floor(wx1 * nt / TILE));
    const ty0 = Math.max(0, Math.floor(wy0 * nt / TILE)), ty1 = Math.min(nt - 1, Math.floor(wy1 * nt / TILE));
    if ((tx1 - tx0 + 1) * (ty1 - ty0 + 1) > 200) return 0;
    let drawn = 0;
    for (let tx = tx0; tx <= tx1; tx++) {
      for (let ty = ty0; ty <= ty1; ty++) {
        const url = cfg.tiles.replace("{z}", z).replace("{x}", tx).replace("{y}", ty);
        let img = cache.get(url);
        if (!img) {
          img = new Image(); img.onload = onload; img.onerror = () => { img.failed = true; };
          img.src = url; cache.set(url, img);
          if (cache.size > 600) cache.delete(cache.keys().next().value);
        }
        if (img.complete && !img.failed && img.naturalWidth) {
          const [sx, sy] = toScreen(v, tx * TILE / nt, ty * TILE / nt);
          ctx.drawImage(img, Math.floor(sx), Math.floor(sy), Math.ceil(size) + 1, Math.ceil(size) + 1);
          drawn++;
        }
      }
    }
    return drawn;
  }

  // the view showing world points `pts` ([[x, y], ...]) inside W x H with `margin` px around
  function fitView(pts, W, H, margin, maxZoom) {
    let x0 = Infinity, y0 = Infinity, x1 = -Infinity, y1 = -Infinity;
    for (const [x, y] of pts) { x0 = Math.min(x0, x); x1 = Math.max(x1, x); y0 = Math.min(y0, y); y1 = Math.max(y1, y); }
    if (!isFinite(x0)) return null;
    const span = Math.max((x1 - x0) / Math.max(W - 2 * margin, 10), (y1 - y0) / Math.max(H - 2 * margin, 10), 1e-9);
    return {cx: (x0 + x1) / 2, cy: (y0 + y1) / 2, zoom: Math.max(2, Math.min(maxZoom || 19, Math.log2(1 / span))), W, H};
  }

  return {TILE, BACKGROUND, project, toScreen, toWorld, drawTiles, fitView};
})();
