"""Human feedback collection: the `prefloop annotate` web app and its agreement statistics.

Importing this package is cheap: FastAPI and SQLAlchemy load only when the app's modules (`app`, `api`, `ui`,
`db`, `service`, `exchange`, `dashboard`, `cli`) are imported, so `import prefloop` and the pure-math
`agreement` module never pull them in. The app's dependencies: `pip install prefloop[app]`.
Guide: docs/FEEDBACK_APP.md.
"""
