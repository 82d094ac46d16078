"""``autoscope web``: the web workspace (FastAPI; pages in ``static/``, plain JS, no build step).

``app.py`` is the application, ``manager.py`` runs the runs in the server's threads,
``auth.py`` maps bearer tokens to people, ``views.py`` turns a run directory into what the
pages draw. Every decision goes through ``agents/session.py`` and ``agents/runner.launch``,
as the terminal's do.
"""
