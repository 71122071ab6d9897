"""The web console at ``/``: server-rendered pages (Jinja2 + htmx) over the market use cases.

No business rule lives here: pages read through the same use cases as the API and post to them.
Strings are in message catalogs (``locale/``, zh-CN and en); assets are vendored under
``static/vendor`` with their licenses, so the console works offline.
"""
