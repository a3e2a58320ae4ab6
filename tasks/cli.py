"""``vectorai-results``: the latest predictions and a summary, from the configured database."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    """Print the results; a reader that stops early (``vectorai-results | head``) ends it quietly."""
    try:
        try:
            return _print_results(argv)
        finally:
            # Flushed here, not at interpreter exit (also after --help's SystemExit), so a closed
            # pipe is caught below instead of printing "Exception ignored ... BrokenPipeError".
            sys.stdout.flush()
    except BrokenPipeError:
        # The reader has all it wanted. Point stdout at devnull so the final flush at exit cannot
        # fail again (the recipe in the Python docs' note on SIGPIPE), and exit 0 as a pipeline
        # under `set -o pipefail` expects of a reader-truncated listing.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return 0


def _print_results(argv: list[str] | None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["serve"]:
        return _serve(argv[1:])
    from tasks.params import DATABASE_URL_HOME, RefuseSecrets

    parser = argparse.ArgumentParser(prog="vectorai-results", description=__doc__)
    parser.add_argument("--database-url", default="", action=RefuseSecrets, where=DATABASE_URL_HOME,
                        help="default: [database] url, $DATABASE_URL, or the SQLite file. Never with a password: "
                        "put the whole URL in $DATABASE_URL, or the password in ~/.pgpass")
    parser.add_argument("--limit", type=int, default=10, help="how many recent predictions to list")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    args = parser.parse_args(argv)

    from tasks.config import database
    from vectorai import db as results_db
    from vectorai.errors import VectoraiError
    from vectorai.printable import printable
    from vectorai.redact import mask_error, mask_url

    url = args.database_url or database().resolved_url()
    try:
        results_db.connect(url, database().connect_timeout_s)
    except VectoraiError as err:
        print(f"vectorai-results: {printable(mask_error(str(err), url))}", file=sys.stderr)
        return 1
    summary = results_db.summary()
    if args.json:
        print(json.dumps(summary, indent=2, default=str))
        return 0
    # Ids, sources and class names come from producers and model cards: escaped, so that none can
    # move the cursor or retitle the terminal.
    print(f"database: {printable(mask_url(url))}")
    print(f"predictions: {summary['predictions']}   dead letters: {summary['dead_letters']}   "
          f"labelled accuracy: {_percent(summary['accuracy'])}")
    print("per class: " + ", ".join(f"{printable(str(name))}={count}"
                                    for name, count in sorted(summary["per_class"].items())))
    print(f"\n{'predicted at (UTC)':26} {'source':8} {'message id':28} {'class':12} {'conf':>6} {'label':>5}")
    for row in results_db.latest_predictions(args.limit):
        label = "" if row.true_label is None else str(row.true_label)
        print(f"{str(row.predicted_at):26} {printable(row.source):8} {printable(row.message_id)[:28]:28} "
              f"{printable(row.predicted_name)[:12]:12} {row.confidence:6.3f} {label:>5}")
    return 0


def _serve(argv: list[str]) -> int:
    """``vectorai-results serve``: the results page (vectorai.review)."""
    from tasks.params import DATABASE_URL_HOME, LINK_HOME, RefuseSecrets

    parser = argparse.ArgumentParser(prog="vectorai-results serve", allow_abbrev=False, description="Serve the "
                                     "results page: runs, predictions, confusion matrices, dead letters and corrections")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (beyond loopback: needs a token, "
                        "and TLS or --insecure-http)")
    parser.add_argument("--port", type=int, default=8090, help="port (0: any free one)")
    parser.add_argument("--database-url", default="", action=RefuseSecrets, where=DATABASE_URL_HOME,
                        help="default: [database] url, $DATABASE_URL, or the SQLite file")
    parser.add_argument("--token", nargs="?", const="", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--token-file", type=Path, help="file holding the token the page asks for once per browser "
                        "(readable by you only); default $VECTORAI_REVIEW_TOKEN")
    parser.add_argument("--certfile", type=Path, help="PEM certificate (chain) to serve HTTPS; with --keyfile")
    parser.add_argument("--keyfile", type=Path, help="PEM private key of --certfile")
    parser.add_argument("--insecure-http", action="store_true", help="serve plain HTTP beyond loopback (behind a TLS "
                        "proxy); every page then says so")
    parser.add_argument("--allowed-host", action="append", default=[], metavar="NAME", help="a name the page is "
                        "reached by, besides loopback and --host (repeatable); other Host headers get 400")
    parser.add_argument("--reviewer", default="", help="name stored with corrections; default: the OS user")
    parser.add_argument("--luigid-url", default="", action=RefuseSecrets, where=LINK_HOME,
                        help="luigid's address, to link each run to it")
    parser.add_argument("--mlflow-url", default="", action=RefuseSecrets, where=LINK_HOME,
                        help="the MLflow UI's address, to link each model version")
    args = parser.parse_args(argv)
    if args.token is not None:
        # A command line is visible to every user of the machine (ps, /proc) and kept in shell history.
        print("vectorai-results serve: --token is not accepted on the command line; set $VECTORAI_REVIEW_TOKEN or "
              "give --token-file FILE (readable by you only)", file=sys.stderr)
        return 2

    from tasks.config import database, paths
    from vectorai import db as results_db
    from vectorai.errors import VectoraiError
    from vectorai.printable import printable
    from vectorai.redact import mask_error
    from vectorai.review.app import ReviewSettings
    from vectorai.review.server import default_reviewer, read_token, serve

    url = args.database_url or database().resolved_url()
    try:
        settings = ReviewSettings(reviewer=args.reviewer or default_reviewer(), token=read_token(args.token_file),
                                  reports_dir=paths().data / "reports", luigid_url=args.luigid_url or None,
                                  mlflow_url=args.mlflow_url or None, insecure_http=args.insecure_http,
                                  allowed_hosts=frozenset(args.allowed_host))
        serve(results_db.connect(url, database().connect_timeout_s), settings, args.host, args.port,
              args.certfile, args.keyfile)
    except VectoraiError as err:
        print(f"vectorai-results: {printable(mask_error(str(err), url))}", file=sys.stderr)
        return 1
    return 0


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


if __name__ == "__main__":
    sys.exit(main())
