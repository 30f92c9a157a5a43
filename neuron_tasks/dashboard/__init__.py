"""The dashboard: operators' web UI and /metrics for the Postgres broker (`neuron-tasks dashboard`).

Needs the `dashboard` extra (starlette, jinja2, uvicorn, prometheus-client). Importing this package
imports neither: the app is built by neuron_tasks.dashboard.app.create_app.
"""
