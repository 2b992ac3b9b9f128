"""The UI's pages and JSON API as tornado handlers, mountable under any URL prefix.

Pages (``/``, ``/flow-runs/<id>``, ``/runs``, ``/runs/<id>``) are one small HTML shell
(``assets/page.html``) that ``assets/app.js`` fills from the API; the API serves the
objects of ``daskflow.store.queries`` (the CLI's ``-o json`` shapes) as JSON:

==============================  =======================================
``/api/flow-runs``              ``daskflow flow-runs ls -o json``
``/api/flow-runs/<id>``         ``daskflow flow-runs show ID -o json``
``/api/flow-runs/<id>/logs``    ``daskflow flow-runs logs ID -o json``
``/api/runs?state=&task=&flow_run=&limit=&id=&cursor=``  ``daskflow runs ls ... -o json``
``/api/runs/<id>``              ``daskflow runs show ID -o json``
``/api/runs/<id>/logs``         ``daskflow runs logs ID -o json``
``/api/metrics?flow_run=<id>``  ``daskflow flow-runs metrics ID -o json``
``/api/timeline?flow_run=<id>`` the chunks of a flow run across workers (UI only)
``/api/runs/<id>/artifacts``    the artifacts a task run published
``/api/flow-runs/<id>/artifacts`` the artifacts of a flow run and its task runs
``/api/artifacts``              ``daskflow artifacts ls -o json``
``/api/artifacts/<key or id>``  ``daskflow artifacts show REF -o json``
``/metrics``                    Prometheus text format (``ui/metrics.py``)
==============================  =======================================

``/api/runs`` pages with a cursor: the body is the listing, the next page's cursor is in
the ``X-Next-Cursor`` header (and a ``Link: <...>; rel="next"``), so the body keeps the
CLI's shape. Store reads run on a thread, off the event loop (on a scheduler that loop
is the scheduler's). Every handler is GET-only except the one action:

``POST /api/flow-runs/<id>/cancel``  ``daskflow flow-runs cancel ID -o json``

Actions (``UiOptions.action_token``; none on the dashboard mount) need the token
``daskflow ui`` prints, also on loopback, as the cookie the page opened with ``?token=``
sets or an ``Authorization: token ...`` header; and a CSRF check: tornado's ``_xsrf``
double-submit cookie, sent back by the page in an ``X-XSRFToken`` header (a page of
another origin can read neither), plus an ``Origin`` that, when sent, is this host.

Safety (``UiOptions``): with a ``token``, each request must carry it (``?token=``, an
``Authorization: token ...`` header, or the cookie a page with ``?token=`` sets), as
Jupyter does; with ``local_only``, requests whose ``Host`` is not a loopback name are
refused (a web page elsewhere cannot reach the UI by DNS rebinding).
"""

from __future__ import annotations

import asyncio
import hmac
import html
import pathlib
import urllib.parse
from typing import Any, Callable, NamedTuple

from tornado import web

from daskflow.codes import STATE_NAMES, STATE_TYPES

__all__ = ["UiOptions", "routes"]

ASSETS = pathlib.Path(__file__).with_name("assets")
ID = r"([0-9a-fA-F-]{1,36})"
COOKIE = "daskflow-ui-token"
LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1")
MAX_LIMIT = 1000
PAGE_BUDGET = 0.3  # seconds a rare filter may scan before /api/runs answers with a short page


class UiOptions(NamedTuple):
    """How the UI is served: its URL prefix, token, host check, and how it opens the store."""

    prefix: str = ""
    token: str | None = None
    local_only: bool = True
    readonly: bool = True  # open the store read-only (a process that never writes it)
    home: str | None = None
    action_token: str | None = None  # the token actions (cancel) need; None: no actions


class Base(web.RequestHandler):
    """Token and host checks, and headers that keep the pages to themselves."""

    def initialize(self, options: UiOptions) -> None:
        self.options = options

    def set_default_headers(self) -> None:
        self.set_header("Cache-Control", "no-store")
        self.set_header("X-Content-Type-Options", "nosniff")
        self.set_header("Referrer-Policy", "no-referrer")
        self.set_header("Content-Security-Policy", "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'")

    def prepare(self) -> None:
        if self.options.local_only and _hostname(self.request.host) not in LOOPBACK_NAMES:
            raise web.HTTPError(403, "host %s is not a loopback name", self.request.host)
        given = self.get_query_argument("token", None)
        for token in {self.options.token, self.options.action_token} - {None}:
            if given is not None and hmac.compare_digest(given, token):  # type: ignore[arg-type]
                self.set_cookie(COOKIE, token, httponly=True, samesite="Strict", path="/")  # type: ignore[arg-type]
                return
        if self.options.token is not None and not self.carries(self.options.token):
            raise web.HTTPError(403, "a token is required (?token=... as printed by daskflow ui)")

    def carries(self, token: str) -> bool:
        """Whether the request carries ``token`` (header or cookie)."""
        header = self.request.headers.get("Authorization", "")
        candidates = [header[6:].strip() if header.lower().startswith("token ") else "",
                      self.get_cookie(COOKIE) or ""]
        return any(c and hmac.compare_digest(c, token) for c in candidates)

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        reason = self._reason
        exc = kwargs.get("exc_info", (None, None))[1]
        if isinstance(exc, web.HTTPError) and exc.log_message:
            reason = exc.log_message % exc.args if exc.args else exc.log_message
        self.set_header("Content-Type", "application/json")
        self.finish({"error": reason, "status": status_code})


class Page(Base):
    """The HTML shell of a page; ``app.js`` draws it from the API."""

    def initialize(self, options: UiOptions, kind: str) -> None:  # type: ignore[override]
        super().initialize(options)
        self.kind = kind

    def get(self, run_id: str = "") -> None:
        path = self.request.path
        suffix = {"flows": "/", "flow": f"/flow-runs/{run_id}", "runs": "/runs", "run": f"/runs/{run_id}"}[self.kind]
        base = path[: len(path) - len(suffix)] if path.endswith(suffix) else self.options.prefix
        text = (ASSETS / "page.html").read_text()
        if self.options.action_token is not None:
            self.xsrf_token  # noqa: B018 - sets the _xsrf cookie the page sends back with actions
        for name, value in (("BASE", base), ("KIND", self.kind), ("ID", run_id)):
            text = text.replace("{{" + name + "}}", html.escape(value, quote=True))
        self.set_header("Content-Type", "text/html; charset=utf-8")
        self.finish(text)


class Asset(Base):
    TYPES = {".js": "application/javascript", ".css": "text/css", ".svg": "image/svg+xml"}

    def get(self, name: str) -> None:
        file = ASSETS / name
        if file.suffix not in self.TYPES or not file.is_file():
            raise web.HTTPError(404)
        self.set_header("Content-Type", self.TYPES[file.suffix] + "; charset=utf-8")
        self.finish(file.read_bytes())


class Api(Base):
    """A JSON endpoint: ``answer`` reads the store on a thread; a missing store is an empty listing."""

    empty: Any = None  # what a listing answers when no store exists yet (None: 404)

    async def get(self, *args: str) -> None:
        from daskflow.store import queries

        call = self.answer(*args)
        try:
            result = await asyncio.get_running_loop().run_in_executor(None, self._read, call)
        except LookupError as exc:
            raise web.HTTPError(404, "%s", exc.args[0] if exc.args else exc) from None
        except ValueError as exc:
            raise web.HTTPError(400, "%s", exc) from None
        self.set_header("Content-Type", "application/json; charset=utf-8")
        self.finish(queries.dumps(self.shape(result), indent=None))

    def _read(self, call: Callable[[Any], Any]) -> Any:
        from daskflow.store.runs import open_run_store

        try:
            store = open_run_store(self.options.home, create=False, readonly=self.options.readonly)
        except LookupError:
            if self.empty is None:
                raise
            return self.empty
        return call(store)

    def answer(self, *args: str) -> Callable[[Any], Any]:
        raise NotImplementedError

    def shape(self, result: Any) -> Any:
        return result

    def query(self, name: str) -> Callable[..., Any]:
        from daskflow.store import queries

        return getattr(queries, name)

    def limit(self, default: int = 50) -> int:
        try:
            value = int(self.get_query_argument("limit", str(default)))
        except ValueError:
            raise web.HTTPError(400, "limit must be a whole number") from None
        if not 1 <= value <= MAX_LIMIT:
            raise web.HTTPError(400, "limit must be between 1 and %d", MAX_LIMIT)
        return value

    def flow_run_argument(self) -> str:
        value = self.get_query_argument("flow_run", "")
        if not value:
            raise web.HTTPError(400, "flow_run=<flow run id> is required")
        return value


class FlowRuns(Api):
    empty: Any = []

    def answer(self) -> Callable[[Any], Any]:
        limit = self.limit()
        return lambda store: self.query("flow_run_rows")(store, limit)


class FlowRun(Api):
    def answer(self, flow_run_id: str) -> Callable[[Any], Any]:
        return lambda store: self.query("flow_run_detail")(store, flow_run_id)


class FlowLogs(Api):
    def answer(self, flow_run_id: str) -> Callable[[Any], Any]:
        tail = self.limit(500)
        return lambda store: self.query("flow_logs")(store, flow_run_id, tail)


class Runs(Api):
    empty: Any = ()

    def answer(self) -> Callable[[Any], Any]:
        state = self.get_query_argument("state", "") or None
        if state and state.lower() not in {s.lower() for s in (*STATE_NAMES, *STATE_TYPES)}:
            raise web.HTTPError(400, "%r is not a state name (%s) or type (%s)", state, ", ".join(STATE_NAMES),
                                ", ".join(STATE_TYPES))
        args = (state, self.get_query_argument("task", "") or None, self.get_query_argument("flow_run", "") or None,
                self.limit())
        after = self.get_query_argument("cursor", "") or None
        prefix = self.get_query_argument("id", "") or None
        return lambda store: self.query("runs_page")(store, *args, after=after, id_prefix=prefix, budget=PAGE_BUDGET)

    def shape(self, result: Any) -> Any:
        if result == ():
            return []
        rows, cursor = result
        if cursor:
            self.set_header("X-Next-Cursor", cursor)
            args = {k: v[-1].decode() for k, v in self.request.query_arguments.items() if k != "cursor"}
            link = self.request.path + "?" + urllib.parse.urlencode(dict(args, cursor=cursor))
            self.set_header("Link", f'<{link}>; rel="next"')
        return rows


class Run(Api):
    def answer(self, run_id: str) -> Callable[[Any], Any]:
        return lambda store: self.query("run_detail")(store, run_id)


class RunLogs(Api):
    def answer(self, run_id: str) -> Callable[[Any], Any]:
        tail = self.get_query_argument("tail", "")
        n = int(tail) if tail.isdigit() and int(tail) > 0 else None
        return lambda store: self.query("run_logs")(store, run_id, n)


class Metrics(Api):
    def answer(self) -> Callable[[Any], Any]:
        flow_run = self.flow_run_argument()
        return lambda store: self.query("task_metrics")(store, flow_run)


class PrometheusMetrics(Base):
    """``/metrics`` in the Prometheus text format (``ui/metrics.py``); a store it cannot read is
    the metric ``daskflow_store_up 0``, never an error page."""

    async def get(self) -> None:
        from prometheus_client import CONTENT_TYPE_LATEST

        from daskflow.ui.metrics import render

        body = await asyncio.get_running_loop().run_in_executor(None, render, self.options.home,
                                                                self.options.readonly)
        self.set_header("Content-Type", CONTENT_TYPE_LATEST)
        self.finish(body)


class Timeline(Api):
    def answer(self) -> Callable[[Any], Any]:
        flow_run = self.flow_run_argument()
        return lambda store: self.query("timeline")(store, flow_run)


class RunArtifacts(Api):
    def answer(self, run_id: str) -> Callable[[Any], Any]:
        return lambda store: self.query("run_artifacts")(store, run_id)


class FlowArtifacts(Api):
    def answer(self, flow_run_id: str) -> Callable[[Any], Any]:
        return lambda store: self.query("flow_run_artifacts")(store, flow_run_id)


class ArtifactKeys(Api):
    empty: Any = []

    def answer(self) -> Callable[[Any], Any]:
        limit = self.limit(100)
        return lambda store: self.query("artifact_keys")(store, limit)


class Artifact(Api):
    def answer(self, ref: str) -> Callable[[Any], Any]:
        return lambda store: self.query("artifact")(store, ref)


class CancelFlowRun(Base):
    """``POST``: cancel a running flow run, as ``daskflow flow-runs cancel`` does (token + CSRF checked)."""

    WAIT_SECONDS = 10.0

    async def post(self, flow_run_id: str) -> None:
        self.check_action()
        from daskflow.store import queries

        try:
            rec = await asyncio.get_running_loop().run_in_executor(None, self._cancel, flow_run_id)
        except LookupError as exc:  # CancelRefused too: unknown 404, finished or foreign 409
            message = str(exc.args[0] if exc.args else exc)
            raise web.HTTPError(404 if message.startswith("no flow run") or "ambiguous" in message else 409,
                                "%s", message) from None
        self.set_header("Content-Type", "application/json; charset=utf-8")
        self.finish(queries.dumps(rec, indent=None))

    def check_action(self) -> None:
        token = self.options.action_token
        if token is None:
            raise web.HTTPError(403, "actions are off here (daskflow ui serves them, with its token)")
        if not self.carries(token):
            raise web.HTTPError(403, "cancel needs the token daskflow ui prints (open the page with ?token=...)")
        origin = self.request.headers.get("Origin")
        if origin is not None and urllib.parse.urlsplit(origin).netloc != self.request.host:
            raise web.HTTPError(403, "cross-origin request refused")
        self.check_xsrf_cookie()

    def _cancel(self, flow_run_id: str) -> dict:
        from daskflow import config
        from daskflow.store import cancels
        from daskflow.store.runs import open_run_store

        store = open_run_store(self.options.home, create=False, readonly=self.options.readonly)
        home = self.options.home or config.home_path()
        return cancels.cancel_flow_run(store, home, flow_run_id, "the daskflow UI", self.WAIT_SECONDS)


class Redirect(Base):
    def get(self) -> None:
        self.redirect(self.request.path + "/")


def _hostname(host: str) -> str:
    """The name part of a ``Host`` header (``[::1]:4200`` → ``::1``)."""
    if host.startswith("["):
        return host[1:].split("]")[0]
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def routes(options: UiOptions) -> list[tuple[str, type, dict]]:
    """The UI's tornado routes under ``options.prefix`` ("" or "/daskflow")."""
    p = options.prefix.rstrip("/")
    kw = {"options": options}
    table: list[tuple[str, type, dict]] = [
        (p + "/", Page, dict(kw, kind="flows")),
        (p + f"/flow-runs/{ID}", Page, dict(kw, kind="flow")),
        (p + "/runs", Page, dict(kw, kind="runs")),
        (p + f"/runs/{ID}", Page, dict(kw, kind="run")),
        (p + r"/static/([a-z]+\.(?:js|css|svg))", Asset, kw),
        (p + "/api/flow-runs", FlowRuns, kw),
        (p + f"/api/flow-runs/{ID}", FlowRun, kw),
        (p + f"/api/flow-runs/{ID}/logs", FlowLogs, kw),
        (p + f"/api/flow-runs/{ID}/cancel", CancelFlowRun, kw),
        (p + "/api/runs", Runs, kw),
        (p + f"/api/runs/{ID}", Run, kw),
        (p + f"/api/runs/{ID}/logs", RunLogs, kw),
        (p + "/api/metrics", Metrics, kw),
        (p + "/metrics", PrometheusMetrics, kw),
        (p + "/api/timeline", Timeline, kw),
        (p + f"/api/runs/{ID}/artifacts", RunArtifacts, kw),
        (p + f"/api/flow-runs/{ID}/artifacts", FlowArtifacts, kw),
        (p + "/api/artifacts", ArtifactKeys, kw),
        (p + r"/api/artifacts/([a-z0-9-]{1,200})", Artifact, kw),
    ]
    if p:
        table.append((p, Redirect, kw))
    return table


def make_app(options: UiOptions) -> web.Application:
    """A tornado application serving the UI (``daskflow ui``)."""
    return web.Application(routes(options))
