"""``daskflow ui``: a read-only web UI over the run store, and the same pages on the Dask dashboard.

A face, like ``daskflow.cli``: it sits on top of the layers and only reads the run store
(``daskflow.store.queries`` builds every JSON object it serves, the same objects the
CLI prints with ``-o json``). It never imports distributed: tornado (which distributed
brings) serves it, and the assets are plain HTML, CSS and JavaScript shipped in the
package (``assets/``), so it starts in about a second and works offline.

- ``app``: the pages and the JSON API as tornado handlers, for any URL prefix.
- ``server``: ``daskflow ui``'s own HTTP server (127.0.0.1:4200 by default; a token on
  any other interface).
- ``dashboard``: the same routes under ``/daskflow/`` of a Dask scheduler's HTTP server,
  named in ``distributed.scheduler.http.routes`` by the clusters daskflow starts.
- ``screenshots``: the README's pictures, taken with headless chromium.
"""
