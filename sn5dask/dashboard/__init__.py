"""The sn5dask dashboard: one Panel app, shown in JupyterLab and served by
`sn5dask dashboard OUT` (needs the `dashboard` extra: panel, holoviews).

In a notebook::

    from sn5dask.dashboard import Dashboard
    dash = Dashboard("prepared/", root="data/")   # root: to start runs from the dashboard
    dash.view()                                   # the app, live
    dash.start_run(); dash.controller.wait()      # or press "Start run"
"""

from sn5dask.dashboard.app import Dashboard, RunController, serve

__all__ = ["Dashboard", "RunController", "serve"]
