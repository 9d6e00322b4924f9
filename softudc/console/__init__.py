"""The web console: server-rendered pages (Jinja2) under /console on the manager's ASGI app, live
updates by server-sent events swapped in by htmx (assets built by scripts/build-console.sh)."""
