"""Device simulators: whole synthetic cities speaking the real protocols, with fault injection
and accelerated time. Never imported by the running server; the demo and tests wire them in.

Each protocol's simulator registers ``serve_site(site, clock, devices) -> handle`` under the
``scada.simulators`` entry-point group; :mod:`simulators.city` starts them all for a site.
"""
