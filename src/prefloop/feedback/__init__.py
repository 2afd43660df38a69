"""Human feedback collection: the `prefloop annotate` web app and its agreement statistics.

Importing this package is cheap: the web app (FastAPI, SQLAlchemy) loads only when `prefloop.feedback.app`,
`.db`, `.service` or `.cli` are imported, so `import prefloop` and the pure-math `agreement` module never
pull it in. Install the app's dependencies with `pip install prefloop[app]`.
"""
