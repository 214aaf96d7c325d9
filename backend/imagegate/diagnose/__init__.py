"""``imagegate diagnose``: which backends answer, how long each step takes, and why not.

``run.py`` (all backends at once; the command), ``net.py`` (DNS, TCP, TLS), ``http.py``
(the backend's own probe, credentials, one small generation), ``space.py`` (the Hub runtime
and the Gradio API of a Space), ``report.py`` (the data and its JSON schema), ``render.py``
(table, plain text, JSON) and ``advice.py`` (what to do about each finding).
"""
