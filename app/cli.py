"""The `imaging-timeline` command."""

from __future__ import annotations

import argparse
import logging
import sys

from .errors import ConfigError


def _at_least_one(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        number = 0
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number of at least 1, not {value!r}")
    return number


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="imaging-timeline", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="run the app with the sandbox EHR and sandbox archives on 127.0.0.1")
    demo.add_argument("--port", type=int, default=8000, help="port to serve on (default 8000)")
    demo.add_argument("--extra-archives", metavar="FILE",
                      help="a TOML file of [[archive]] entries to add to the demo's own (e.g. your Orthanc)")
    sandbox = sub.add_parser("sandbox", help="run the sandbox EHR and archives alone on 127.0.0.1 (for `serve`)")
    sandbox.add_argument("--port", type=int, required=True, help="port to serve on (0: a free one)")
    sandbox.add_argument("--app-url", required=True, metavar="URL",
                         help="where the app is served; the chart launches URL/launch")
    sandbox.add_argument("--config-dir", metavar="DIR",
                         help="first write DIR/launch.json and DIR/archives.toml for the app, then keep running")
    serve = sub.add_parser("serve", help="run the app alone under gunicorn (the production server)")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8000, help="port to bind (default 8000)")
    serve.add_argument("--workers", type=_at_least_one, default=2, help="worker processes (default 2)")
    serve.add_argument("--threads", type=_at_least_one, default=16, help="threads per worker (default 16)")
    audit = sub.add_parser("audit", help="who looked at a patient's images (reads IMAGING_AUDIT_STORE)")
    audit.add_argument("--patient", required=True, help="the patient's FHIR id in the launching EHR")
    audit.add_argument("--since", help="only events at or after this ISO-8601 date or date-time")
    audit.add_argument("--format", choices=("table", "json", "fhir"), default="table",
                       help="table (default), json (one object per line) or fhir (one AuditEvent per line)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # The development server logs every request line, query strings included (patient ids,
    # authorization codes): keep it to warnings.
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    try:
        if args.command == "demo":
            from sandbox.demo import run_demo

            run_demo(args.port, extra_archives=args.extra_archives)
        elif args.command == "audit":
            return _audit(args)
        elif args.command == "sandbox":
            from sandbox.standalone import run_sandbox

            run_sandbox(args.port, args.app_url, config_dir=args.config_dir)
        else:
            from .production import serve as serve_production

            return serve_production(host=args.host, port=args.port, workers=args.workers, threads=args.threads)
    except ConfigError as exc:
        sys.stderr.write(f"imaging-timeline: {exc.message}\n")
        return 2
    return 0


def _audit(args: argparse.Namespace) -> int:
    import os

    from .audit_report import default_instance_path, parse_since, render
    from .audit_store import open_audit_store

    since = parse_since(args.since)
    store = open_audit_store(os.environ.get("IMAGING_AUDIT_STORE") or None, default_instance_path())
    sys.stdout.write(render(store.query(args.patient, since), args.format))
    return 0


if __name__ == "__main__":
    sys.exit(main())
