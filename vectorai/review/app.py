"""The Flask application behind ``vectorai-results serve``.

Server-rendered pages (Jinja2, autoescaped), one small script for the keyboard and the slider,
and a Content-Security-Policy that allows scripts, styles and images from this server only: even
a string from the stream that escaped escaping could not run. Every POST carries the session's
CSRF token; with a token configured, every request needs the signed session cookie that
``/login`` sets once the token was given. A request naming a Host the server was not bound to
is refused before anything else (DNS rebinding).
"""

from __future__ import annotations

import hmac
import secrets

import peewee as pw
from flask import Flask, Response, jsonify, redirect, render_template, request, session, url_for

from vectorai.errors import ReviewError
from vectorai.review import queries
from vectorai.review.guard import host_allowed
from vectorai.review.settings import ReviewSettings
from vectorai.review.views import ReviewViews

__all__ = ["ReviewSettings", "create_app"]


def create_app(db: pw.Database, settings: ReviewSettings) -> Flask:
    """The application, reading and writing ``db`` (already connected by ``vectorai.db.connect``)."""
    app = Flask(__name__)
    app.config.update(SECRET_KEY=secrets.token_bytes(32), SESSION_COOKIE_NAME="vectorai_review",
                      SESSION_COOKIE_HTTPONLY=True, SESSION_COOKIE_SAMESITE="Strict",
                      SESSION_COOKIE_SECURE=settings.tls,
                      MAX_CONTENT_LENGTH=64 * 1024)
    _add_request_hooks(app, db, settings)
    ReviewViews(settings, queries.Cached(queries.read_facets, settings.facets_ttl_s)).register(app)
    return app


def _add_request_hooks(app: Flask, db: pw.Database, settings: ReviewSettings) -> None:
    """What every request passes through: the connection, the login and CSRF checks, the
    security headers, the values every template gets, and the page a ReviewError becomes."""

    @app.before_request
    def check_host() -> Response | None:
        host = request.environ.get("HTTP_HOST")
        if host_allowed(host, settings.allowed_hosts):
            return None
        return Response(f"Host {host[:100]!r} is not a name this server answers to; start it with "
                        f"--allowed-host NAME to add one\n", status=400, mimetype="text/plain")

    @app.before_request
    def open_connection() -> Response | None:
        db.connect(reuse_if_open=True)
        session.setdefault("csrf", secrets.token_urlsafe(32))
        if settings.token and not session.get("authenticated") and request.endpoint not in ("login", "static"):
            return redirect(url_for("login", next=request.full_path))
        if request.method == "POST" and not _csrf_ok():
            return _refuse(400, "the form's CSRF token is missing or stale; reload the page")
        return None

    @app.teardown_request
    def close_connection(_error: BaseException | None) -> None:
        if not db.is_closed():
            db.close()

    @app.after_request
    def security_headers(response: Response) -> Response:
        response.headers["Content-Security-Policy"] = (
            "default-src 'none'; img-src 'self'; style-src 'self'; script-src 'self'; connect-src 'self'; "
            "form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "same-origin"
        return response

    @app.context_processor
    def page_globals() -> dict:
        return {"csrf_token": session.get("csrf", ""), "reviewer": settings.reviewer,
                "insecure_http": settings.insecure_http}

    @app.errorhandler(ReviewError)
    def review_error(err: ReviewError) -> Response:
        return _refuse(400, str(err))


def _csrf_ok() -> bool:
    given = request.headers.get("X-CSRF-Token") or request.form.get("csrf", "")
    expected = session.get("csrf", "")
    return bool(expected) and hmac.compare_digest(given.encode(), expected.encode())


def _refuse(status: int, reason: str) -> Response:
    if request.headers.get("X-Requested-With") == "fetch":
        response = jsonify({"error": reason})
        response.status_code = status
        return response
    return Response(render_template("error.html", reason=reason), status=status)
