"""The cache's web view: one server-rendered page of what is cached, what shares what, what takes
the space, what a prune would free and whether the cache pays off (docs/view.md).

    from cache.view.routes import answer
    response = answer(store, "/", {"max_size": "20G"})   # Response(status, content_type, body, headers)

facts.py gathers the figures from the documents ``ls``, ``du``, ``stats`` and ``prune --dry-run``
print; svg.py draws the pictures; render.py writes the HTML (Jinja2, autoescaped); routes.py maps
paths to answers; standalone.py serves them for ``layerhoard ui``. ``serve`` answers the same
paths (cache/server/handler.py). Read-only throughout; offline (static/ holds the CSS and JS).
"""
