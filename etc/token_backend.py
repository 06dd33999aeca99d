"""The demo's token back end: GET /token?user=NAME -> a 10-minute HS256 token for wsheart --auth jwt.
python3 etc/token_backend.py SECRET_FILE PAGE_ORIGIN [PORT]  (PORT 8081, on 127.0.0.1; see README.md)
A real one issues a token only for the user its session cookie proves; this one believes ?user=."""
import sys, time, urllib.parse, jwt  # PyJWT, which wsheart depends on
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
secret, origin, port = open(sys.argv[1], "rb").read().strip(), sys.argv[2], int((sys.argv[3:] or [8081])[0])
class Token(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        url = urllib.parse.urlsplit(self.path)
        user = urllib.parse.parse_qs(url.query).get("user", [""])[0][:64]
        if url.path != "/token" or not user: return self.send_error(404 if url.path != "/token" else 400)
        chat, own = ["chat.*"], ["user.{sub}.*"]
        claims = {"sub": user, "aud": "wsheart", "exp": int(time.time()) + 600, "info": {"name": user},
                  "wsh": {"subscribe": chat + own, "publish": chat, "history": chat + own, "presence": chat}}
        self.send_response(200); self.send_header("Access-Control-Allow-Origin", origin); self.send_header("Cache-Control", "no-store"); self.end_headers()
        self.wfile.write(jwt.encode(claims, secret, algorithm="HS256").encode())
ThreadingHTTPServer(("127.0.0.1", port), Token).serve_forever()
