"""The `imaging-timeline` command."""

from __future__ import annotations

import argparse
import logging
import sys

from .errors import ConfigError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="imaging-timeline", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="run the app with the sandbox EHR and sandbox archives on 127.0.0.1")
    demo.add_argument("--port", type=int, default=8000, help="port to serve on (default 8000)")
    demo.add_argument("--extra-archives", metavar="FILE",
                      help="a TOML file of [[archive]] entries to add to the demo's own (e.g. your Orthanc)")
    serve = sub.add_parser("serve", help="run the app alone (development server; use a WSGI server in production)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
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
        else:
            from . import create_app

            create_app().run(host=args.host, port=args.port, threaded=True)
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
