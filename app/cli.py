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
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # The development server logs every request line, query strings included (patient ids,
    # authorization codes): keep it to warnings.
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    try:
        if args.command == "demo":
            from sandbox.demo import run_demo

            run_demo(args.port, extra_archives=args.extra_archives)
        else:
            from . import create_app
            from .launch import require_public_url

            app = create_app()
            require_public_url(app)
            app.run(host=args.host, port=args.port, threaded=True)
    except ConfigError as exc:
        sys.stderr.write(f"imaging-timeline: {exc.message}\n")
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
