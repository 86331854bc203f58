"""Route middleware: connections checked out while a request is served are held by its route template.

``HolderMiddleware`` (ASGI: Starlette, FastAPI) and ``WSGIHolderMiddleware`` (WSGI: Flask, any
werkzeug application, others by a ``label`` function) make each request the current holder
(``instrument/holder.py``) for as long as the application handles it. The label is the method and
the route template, ``GET /orders/{id}``, never the raw path (which would make a series per order):

- ASGI: the route Starlette (and so FastAPI) records in ``scope["route"]`` once it has routed the
  request; on versions that do not, the route of the application's router that matches the request.
  A request no route matches is ``GET (unrouted)``.
- WSGI: the rule of the werkzeug URL map (Flask's) that matches the request, ``/orders/<int:id>``;
  without one, the first path segment, ``GET /orders/*``, so an unknown application's label stays
  bounded.

Routing happens after the middleware has run, so the label is read when first needed (a leak
warning, a scrape) and fixed when the request is over; then the request is let go. Neither
middleware imports its framework: both work on the plain ASGI scope and WSGI environ.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final

from poolwatch.instrument.holder import Holder, reset_holder, set_holder

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Iterable, MutableMapping

    Scope = MutableMapping[str, Any]
    ASGIApp = Callable[[Scope, Any, Any], Awaitable[None]]
    WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]

UNROUTED: Final = "(unrouted)"


class HolderMiddleware:
    """ASGI middleware naming each HTTP and WebSocket request's route as the holder of the connections
    it checks out. ``app.add_middleware(poolwatch.HolderMiddleware)`` (FastAPI, Starlette), or wrap
    any ASGI application: ``HolderMiddleware(app)``."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        kind = scope.get("type")
        if kind not in ("http", "websocket"):  # lifespan: no request holds anything
            await self.app(scope, receive, send)
            return
        method = str(scope.get("method", "WS")) if kind == "http" else "WS"
        holder = Holder(resolve=lambda: _routed(method, asgi_route(scope)))
        token = set_holder(holder)
        try:
            await self.app(scope, receive, send)
        finally:
            holder.settle(fallback=f"{method} {UNROUTED}")
            reset_holder(token)


def _routed(method: str, route: str) -> str:
    return f"{method} {route}" if route else ""


def asgi_route(scope: Scope) -> str:
    """The template of the route serving ``scope`` (Starlette's ``scope["route"]``, else the route of
    the application's router that matches it); empty while the request is not routed."""
    route = scope.get("route")
    path = getattr(route, "path", None) if route is not None else None
    if isinstance(path, str) and path:
        return path
    router = getattr(scope.get("app"), "router", None)
    for candidate in getattr(router, "routes", ()):
        match, _ = candidate.matches(scope)
        if getattr(match, "name", "") == "FULL":
            return str(candidate.path)
    return ""


# What werkzeug's URL map reads from a request's environ to match it; a request's holder keeps
# these few (not the environ, with its input stream) until its label is known.
_ROUTING_KEYS: Final = (
    "REQUEST_METHOD",
    "PATH_INFO",
    "SCRIPT_NAME",
    "QUERY_STRING",
    "HTTP_HOST",
    "SERVER_NAME",
    "SERVER_PORT",
    "wsgi.url_scheme",
)


class WSGIHolderMiddleware:
    """WSGI middleware naming each request's route as the holder of the connections it checks out.

    ``app.wsgi_app = poolwatch.WSGIHolderMiddleware(app.wsgi_app)`` (Flask), or around a werkzeug
    application with a ``url_map``: the label is the matched rule, ``GET /orders/<int:id>``. Other
    applications are labelled by their first path segment, ``GET /orders/*``, unless ``label`` is
    given: a function naming a request from its environ (another framework's route template),
    called off the checkout path once the application has run. Connections checked out while a
    streamed response body is iterated, after the application returned, are not attributed.
    """

    def __init__(self, app: WSGIApp, label: Callable[[dict[str, Any]], str] | None = None) -> None:
        self.app = app
        self.label = label
        owner = getattr(app, "__self__", app)  # Flask's app.wsgi_app is a bound method of the app
        self.url_map: Any = getattr(owner, "url_map", None)

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        label = self.label
        if label is None:
            routing: dict[str, Any] = {key: environ[key] for key in _ROUTING_KEYS if key in environ}
            holder = Holder(resolve=lambda: wsgi_route(routing, self.url_map))
        else:
            holder = Holder(resolve=lambda: label(environ))
        token = set_holder(holder)
        try:
            return self.app(environ, start_response)
        finally:
            if label is not None:  # the environ is let go of now
                holder.settle(fallback=wsgi_route(environ, None))
            reset_holder(token)


def wsgi_route(environ: dict[str, Any], url_map: Any) -> str:
    """``METHOD /rule/<template>`` from a werkzeug URL map, else ``METHOD /first-segment/*``."""
    method = str(environ.get("REQUEST_METHOD", "GET"))
    if url_map is not None:
        try:
            rule, _ = url_map.bind_to_environ(environ).match(return_rule=True)
        except Exception:  # noqa: S110 - not found, redirect, method not allowed: label by the path
            pass
        else:
            return f"{method} {rule.rule}"
    path = str(environ.get("PATH_INFO", "") or "/")
    first, _, rest = path.lstrip("/").partition("/")
    return f"{method} /{first}/*" if rest else f"{method} /{first}"
