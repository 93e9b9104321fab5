"""A local HTTP server for download tests: serves bytes on 127.0.0.1 (a free port), counts requests, and can
refuse (any status) or cut a download halfway."""
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit


class FileServer:
    """`routes` maps a path (query string ignored) to (status, body); `cut` paths send their full Content-Length,
    then only half the body, then close the connection."""

    def __init__(self, routes: dict[str, tuple[int, bytes]] | None = None, cut: tuple[str, ...] = ()):
        self.routes = dict(routes or {})
        self.cut = set(cut)
        self.requests: list[str] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (http.server's naming)
                server.requests.append(self.path)
                path = urlsplit(self.path).path
                status, body = server.routes.get(path, (404, b'not found'))
                self.send_response(status)
                self.send_header('Content-Type', 'application/octet-stream')
                self.send_header('Content-Length', str(len(body)))
                self.end_headers()
                if path in server.cut:
                    self.wfile.write(body[:len(body) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                else:
                    self.wfile.write(body)

            def log_message(self, *args):
                pass

        self._httpd = ThreadingHTTPServer(('127.0.0.1', 0), Handler)
        self._httpd.daemon_threads = True
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    def url(self, path: str) -> str:
        return f'http://127.0.0.1:{self.port}{path}'

    def __enter__(self) -> 'FileServer':
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join()
