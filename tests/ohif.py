"""The released OHIF v3 viewer (npm @ohif/app, its prebuilt dist/) served on loopback as a test tool.

.ci/test fetches it with `npm pack @ohif/app@3` into the git-ignored .ci/ohif (never part of the
product). The viewer is configured with one data source, OHIF's own `dicomwebproxy`, exactly as
the released default configuration has it, so the links the app builds for any OHIF v3
deployment are the links tested here.
"""

from __future__ import annotations

import mimetypes
from pathlib import Path

from werkzeug import Request, Response

ROOT = Path(__file__).resolve().parent.parent
DIST = ROOT / ".ci" / "ohif" / "package" / "dist"

# The released default (dist/app-config.js) lists this data source among others; here it is the
# only one, so the viewer never tries the public demo servers of the default configuration.
APP_CONFIG = """window.config = {
  routerBasename: null,
  extensions: [],
  modes: [],
  showStudyList: false,
  maxNumberOfWebWorkers: 2,
  showWarningMessageForCrossOrigin: false,
  showCPUFallbackMessage: false,
  showLoadingIndicator: true,
  investigationalUseDialog: { option: 'never' },
  defaultDataSourceName: 'dicomwebproxy',
  dataSources: [
    {
      namespace: '@ohif/extension-default.dataSourcesModule.dicomwebproxy',
      sourceName: 'dicomwebproxy',
      configuration: { friendlyName: 'dicomweb delegating proxy', name: 'dicomwebproxy' },
    },
  ],
};
"""


def installed() -> bool:
    return (DIST / "index.html").is_file()


def ohif_app(dist: Path = DIST):
    """A WSGI app serving the viewer: files from dist/, our app-config.js, index.html for app routes."""

    def app(environ, start_response):
        request = Request(environ)
        path = request.path.lstrip("/")
        if path == "app-config.js":
            resp = Response(APP_CONFIG, mimetype="application/javascript")
        else:
            file = (dist / path).resolve()
            if not path or not file.is_file() or dist.resolve() not in file.parents:
                file = dist / "index.html"  # a single-page app: /viewer/... is index.html
            kind = mimetypes.guess_type(file.name)[0] or "application/octet-stream"
            if file.suffix == ".wasm":
                kind = "application/wasm"
            resp = Response(file.read_bytes(), mimetype=kind)
            if file.name == "sw.js":
                resp = Response("", mimetype="application/javascript")  # no service worker in tests
        return resp(environ, start_response)

    return app
