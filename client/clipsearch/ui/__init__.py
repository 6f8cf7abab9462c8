"""`clipsearch ui`: a search page in the browser (aiohttp + Jinja2, the `ui` extra); see app.py."""
