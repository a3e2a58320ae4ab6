"""The results page's views: each method of ``ReviewViews`` answers one route.

Pages are rendered from ``templates/``; the review form also answers in JSON when the page's
script sends it (``X-Requested-With: fetch``).
"""

from __future__ import annotations

import datetime as dt
import hmac
import json
from pathlib import Path
from urllib.parse import quote

from flask import Flask, Response, abort, jsonify, redirect, render_template, request, session

from vectorai.review import charts, images, queries, ranked
from vectorai.review.guard import LoginThrottle, local_path
from vectorai.review.params import MAX_CLASS, MAX_ROW_ID, grid_request, int_arg, order_arg, parse_int, text_value
from vectorai.review.settings import PAGE_SIZES, ReviewSettings

#: The last page a ranked order offers: each page reads every page before it again.
MAX_RANKED_PAGE = 1000


class ReviewViews:
    """The pages, the thumbnails and the review form, over one database and its facets."""

    def __init__(self, settings: ReviewSettings, facets: queries.Cached[queries.Facets]) -> None:
        self.settings = settings
        self.facets = facets
        self.throttle = LoginThrottle(settings.login_attempts, settings.login_window_s)
        self.thresholds = queries.Cached(ranked.label_thresholds, settings.facets_ttl_s)
        # The drifted runs come from up to 50 report files: read as often as the facets, not per page.
        self.drifted = queries.Cached(lambda: ranked.drifted_runs(_read_reports(settings.reports_dir)),
                                      settings.facets_ttl_s)

    def register(self, app: Flask) -> None:
        """Add every route to ``app``; each endpoint is named after its method."""
        app.add_url_rule("/login", view_func=self.login, methods=["GET", "POST"])
        app.add_url_rule("/", view_func=self.runs)
        app.add_url_rule("/predictions", view_func=self.predictions)
        app.add_url_rule("/confusion", view_func=self.confusion)
        app.add_url_rule("/dead-letters", view_func=self.dead_letters)
        app.add_url_rule(f"/image/prediction/<int(max={MAX_ROW_ID}):row_id>.png", view_func=self.prediction_image)
        app.add_url_rule(f"/image/dead-letter/<int(max={MAX_ROW_ID}):row_id>.png", view_func=self.dead_letter_image)
        app.add_url_rule("/review", view_func=self.review, methods=["POST"])

    def login(self) -> Response | str:
        settings = self.settings
        target = local_path(request.values.get("next", "/"))
        if request.method == "POST":
            client = request.remote_addr or ""
            wait_s = self.throttle.retry_after(client)
            if wait_s > 0:
                response = Response(render_template("login.html", next=target, wrong=False, wait_s=int(wait_s) + 1),
                                    status=429)
                response.headers["Retry-After"] = str(int(wait_s) + 1)
                return response
            given = request.form.get("token", "")
            if settings.token and hmac.compare_digest(given.encode(), settings.token.encode()):
                self.throttle.succeeded(client)
                session["authenticated"] = True
                return redirect(target)
            self.throttle.failed(client)
            return Response(render_template("login.html", next=target, wrong=True), status=403)
        return render_template("login.html", next=target, wrong=False)

    def runs(self) -> str:
        settings = self.settings
        reports = _read_reports(settings.reports_dir)
        summaries = queries.version_summaries()
        charts_by_version = {s.model_version: (charts.class_mix_svg(s.class_mix),
                                               charts.histogram_svg(s.confidence_bins)) for s in summaries}
        return render_template("runs.html", reports=reports, summaries=summaries, charts=charts_by_version,
                               luigid_url=settings.luigid_url, mlflow_url=settings.mlflow_url,
                               mlflow_link=_mlflow_link, luigid_link=_luigid_link)

    def predictions(self) -> str:
        """The grid: newest first, or ranked (``order=next``: review next; ``order=suspicious``:
        suspicious labels), which pages by ``page`` instead of ``after``."""
        filters, after, limit = grid_request()
        order, known = order_arg(), self.facets.get()
        if order:
            number = int_arg("page", high=MAX_RANKED_PAGE) or 0
            if order == "next":
                page = ranked.review_next_page(filters, known.classes, self.drifted.get(), number, limit)
            else:
                page = ranked.suspicious_page(filters, self.thresholds.get(), number, limit)
            next_url = _with_args(page=page.next_after) if page.next_after else None
            first_url = _with_args(page=None) if number else None
        else:
            page = queries.prediction_page(filters, after, limit)
            next_url = _with_args(after=page.next_after) if page.next_after else None
            first_url = _with_args(after=None) if after is not None else None
        return render_template("predictions.html", page=page, filters=filters, facets=known, order=order,
                               args=request.args, limit=limit, page_sizes=PAGE_SIZES, next_url=next_url,
                               first_url=first_url)

    def confusion(self) -> str:
        known = self.facets.get()
        chosen = text_value(request.args.get("version"), "version") or (known.versions[-1] if known.versions else None)
        matrix = queries.confusion(chosen) if chosen else {}
        labels = sorted({t for t, _ in matrix} | {p for _, p in matrix} | set(known.classes))
        return render_template("confusion.html", versions=known.versions, chosen=chosen, matrix=matrix,
                               labels=labels, classes=known.classes)

    def dead_letters(self) -> str:
        kind = text_value(request.args.get("kind"), "kind")
        after = int_arg("after")
        page = queries.dead_letter_page(kind, after)
        rows = [{**row, "attributes_text": _pretty_json(row["attributes"]),
                 "hex": _hex_lines(bytes(row["head"] or b"")),
                 "has_image": _dead_letter_decodes(row["id"])} for row in page.rows]
        return render_template("dead_letters.html", rows=rows, kinds=queries.dead_letter_kinds(), kind=kind,
                               next_url=_with_args(after=page.next_after) if page.next_after else None)

    def prediction_image(self, row_id: int) -> Response:
        stored = queries.prediction_image(row_id)
        if stored is None:
            abort(404)
        return _png(images.thumbnail_png(stored[0], {"content-type": stored[1]}))

    def dead_letter_image(self, row_id: int) -> Response:
        stored = queries.dead_letter_payload(row_id)
        if stored is None:
            abort(404)
        return _png(images.thumbnail_png(stored[0], _attributes(stored[1])))

    def review(self) -> Response:
        form = request.form
        label = parse_int(form.get("label", ""), "label", high=MAX_CLASS)
        saved = queries.record_review(text_value(form.get("source"), "source") or "",
                                      text_value(form.get("message_id"), "message_id") or "", label,
                                      self.settings.reviewer, len(self.facets.get().classes))
        saved["label_name"] = self.facets.get().classes.get(label, str(label))
        if request.headers.get("X-Requested-With") == "fetch":
            return jsonify(saved)
        return redirect(local_path(form.get("next", "/predictions")))


def _with_args(**changes: object) -> str:
    args = {k: v for k, v in request.args.items() if k not in changes}
    args.update({k: str(v) for k, v in changes.items() if v is not None})
    query = "&".join(f"{quote(k)}={quote(v)}" for k, v in args.items())
    return f"{request.path}?{query}" if query else request.path


def _read_reports(folder: Path | None, limit: int = 50) -> list[dict]:
    """The newest PredictTask run reports; unreadable files are listed with why."""
    if folder is None or not folder.is_dir():
        return []
    files = sorted(folder.glob("predict-*.json"), key=lambda p: p.stat().st_mtime, reverse=True)[:limit]
    reports = []
    for path in files:
        try:
            report = json.loads(path.read_text())
            if not isinstance(report, dict):
                raise ValueError("not a JSON object")
        except (OSError, ValueError) as err:
            report = {"error": f"{type(err).__name__}: {err}"}
        report["file"] = path.name
        report["finished"] = dt.datetime.fromtimestamp(path.stat().st_mtime, dt.timezone.utc).strftime("%Y-%m-%d %H:%M")
        reports.append(report)
    return reports


def _mlflow_link(base: str | None, version: str) -> str | None:
    """The MLflow UI page of registered model version ``NAME/VERSION``."""
    name, _, number = (version or "").rpartition("/")
    if not base or not name or not number.isdigit():
        return None
    return f"{base.rstrip('/')}/#/models/{quote(name, safe='')}/versions/{number}"


def _luigid_link(base: str | None, run_at: str | None) -> str | None:
    """luigid's task list, searched for the run's label."""
    if not base:
        return None
    return f"{base.rstrip('/')}/static/visualiser/index.html#search__search={quote(str(run_at or 'PredictTask'))}"


def _attributes(text: str) -> dict[str, str]:
    try:
        value = json.loads(text)
    except ValueError:
        return {}
    return {k: v for k, v in value.items() if isinstance(v, str)} if isinstance(value, dict) else {}


def _pretty_json(text: str) -> str:
    try:
        return json.dumps(json.loads(text), indent=1, ensure_ascii=True)
    except ValueError:
        return text


def _hex_lines(head: bytes, width: int = 16) -> list[str]:
    """A hex view: offset, bytes in hex, and the printable ASCII of each line."""
    lines = []
    for start in range(0, len(head), width):
        chunk = head[start:start + width]
        text = "".join(chr(b) if 32 <= b < 127 else "." for b in chunk)
        lines.append(f"{start:04x}  {chunk.hex(' '):<{width * 3}} {text}")
    return lines


def _dead_letter_decodes(row_id: int) -> bool:
    stored = queries.dead_letter_payload(row_id)
    return stored is not None and images.decode_stored(stored[0], _attributes(stored[1])) is not None


def _png(data: bytes | None) -> Response:
    if data is None:
        abort(404)
    response = Response(data, mimetype="image/png")
    response.headers["Cache-Control"] = "private, max-age=3600"
    return response
