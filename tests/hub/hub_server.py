#!/usr/bin/env python3
"""A HuggingFace hub on loopback for tests (python3 stdlib only, no network).

Serves local directories as hub model repositories under the hub's URL
layout, the way huggingface.co answers huggingface_hub and cvllm:

  GET  /api/models/{org}/{name}/revision/{rev}   {"id", "sha", "siblings": [{"rfilename"}]}
  HEAD|GET /{org}/{name}/resolve/{rev}/{file}    small files: 200 with ETag = the git blob
        sha1, X-Repo-Commit; LFS files (*.safetensors, *.bin, *.pt, *.h5, *.msgpack,
        or > 10 MB): 302 to /lfs/{sha256} with X-Linked-Etag = the sha256,
        X-Linked-Size, X-Repo-Commit
  GET  /lfs/{sha256}                             the LFS content (the CDN)

Every GET body honours Range (206 + Content-Range). Unknown ids answer 404
X-Error-Code: RepoNotFound, unknown revisions 404 RevisionNotFound, files
not in the repository 404 EntryNotFound.

  hub_server.py --port P [--log FILE] --repo ORG/NAME=DIR[@COMMIT] ...
      [--gated ORG/NAME=TOKEN]   401 without "Authorization: Bearer TOKEN", 403 with another
      [--drop FILE=BYTES]        the first GET of FILE sends BYTES bytes, then closes
      [--exit-after FILE=BYTES]  the first GET of FILE sends BYTES bytes, then the hub exits
                                 (the network goes away mid-download)
      [--no-range]               Range headers are ignored (200 with the whole body)
      [--corrupt FILE]           FILE's bytes are served with the last one flipped
      [--delay-ms N]             sleep N ms per 64 KiB of every body (to overlap clients)
      [--tag ORG/NAME=TAG]       TAG is a revision of that repository too
      [--cdn-host HOST]          LFS redirects go to http://HOST:P/lfs/... (another origin
                                 than 127.0.0.1, as huggingface.co's CDN is another host)

COMMIT defaults to the sha1 of the id. The log gets one JSON line per
request: {"method", "path", "range", "auth"}. The lead's end-to-end tests
use it to serve any fixture directory under any id, e.g.
  --repo facebook/opt-125m=tests/fixtures/models/opt_125m_tiny
"""
import argparse
import hashlib
import json
import os
import socket
import sys
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

LFS_SUFFIXES = (".safetensors", ".bin", ".pt", ".h5", ".msgpack")
LFS_MIN_BYTES = 10 << 20
CHUNK = 64 << 10


class Repo:
    def __init__(self, repo_id, root, commit):
        self.id = repo_id
        self.root = root
        self.commit = commit or hashlib.sha1(repo_id.encode()).hexdigest()
        self.revisions = {"main", self.commit}
        self.files = sorted(
            os.path.relpath(os.path.join(d, f), root)
            for d, _, names in os.walk(root)
            for f in names
        )


class State:
    repos = {}
    gated = {}
    drop = {}
    exit_after = {}
    no_range = False
    corrupt = set()
    delay_s = 0.0
    cdn_host = None
    log = None
    lock = threading.Lock()
    blobs = {}  # sha256 -> (repo, file)

    @classmethod
    def content(cls, repo, name):
        with open(os.path.join(repo.root, name), "rb") as f:
            data = f.read()
        if name in cls.corrupt and data:
            data = data[:-1] + bytes([data[-1] ^ 0xFF])
        return data


def is_lfs(repo, name):
    size = os.path.getsize(os.path.join(repo.root, name))
    return name.endswith(LFS_SUFFIXES) or size > LFS_MIN_BYTES


def sha256_of(repo, name):
    with open(os.path.join(repo.root, name), "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def git_sha1_of(repo, name):
    with open(os.path.join(repo.root, name), "rb") as f:
        data = f.read()
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):
        pass

    def record(self):
        if State.log:
            line = json.dumps({
                "method": self.command,
                "path": self.path,
                "range": self.headers.get("Range"),
                "auth": self.headers.get("Authorization"),
            })
            with State.lock:
                with open(State.log, "a") as f:
                    f.write(line + "\n")

    def reply(self, code, headers=(), body=b""):
        self.send_response(code)
        for k, v in headers:
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def error(self, code, error_code, message):
        body = json.dumps({"error": message}).encode()
        self.reply(code, [("X-Error-Code", error_code), ("Content-Type", "application/json")],
                   body)

    def authorized(self, repo):
        token = State.gated.get(repo.id)
        if token is None:
            return True
        got = self.headers.get("Authorization")
        if got is None:
            self.error(401, "GatedRepo", "Access to model %s is restricted." % repo.id)
            return False
        if got != "Bearer " + token:
            self.error(403, "GatedRepo", "Access to model %s is restricted." % repo.id)
            return False
        return True

    def send_body(self, data, name, extra_headers):
        """data with Range support; --drop and --delay-ms apply here."""
        start, code = 0, 200
        rng = self.headers.get("Range")
        headers = list(extra_headers)
        if rng and rng.startswith("bytes=") and not State.no_range:
            first = rng[6:].split("-")[0]
            start = int(first) if first else 0
            if start >= len(data):
                self.reply(416, [("Content-Range", "bytes */%d" % len(data))])
                return
            code = 206
            headers.append(("Content-Range", "bytes %d-%d/%d" % (start, len(data) - 1, len(data))))
        body = data[start:]
        self.send_response(code)
        for k, v in headers:
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Accept-Ranges", "bytes")
        self.end_headers()
        with State.lock:
            cut = State.drop.pop(name, None)
            die = State.exit_after.pop(name, None)
        if die is not None:
            self.wfile.write(body[:die])
            self.wfile.flush()
            os._exit(0)
        if cut is not None:
            self.wfile.write(body[:cut])
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
            self.close_connection = True
            return
        for off in range(0, len(body), CHUNK):
            self.wfile.write(body[off:off + CHUNK])
            if State.delay_s:
                time.sleep(State.delay_s)

    def route(self):
        self.record()
        path = urllib.parse.unquote(urllib.parse.urlsplit(self.path).path)
        parts = path.strip("/").split("/")
        if len(parts) >= 6 and parts[:2] == ["api", "models"] and parts[4] == "revision":
            return self.api_revision("/".join(parts[2:4]), "/".join(parts[5:]))
        if len(parts) >= 5 and parts[2] == "resolve":
            return self.resolve("/".join(parts[:2]), parts[3], "/".join(parts[4:]))
        if len(parts) == 2 and parts[0] == "lfs" and parts[1] in State.blobs:
            repo, name = State.blobs[parts[1]]
            return self.send_body(State.content(repo, name), name, [])
        self.error(404, "EntryNotFound", "no route %s" % path)

    def api_revision(self, repo_id, rev):
        repo = State.repos.get(repo_id)
        if repo is None:
            return self.error(404, "RepoNotFound", "Repository not found")
        if not self.authorized(repo):
            return
        if rev not in repo.revisions:
            return self.error(404, "RevisionNotFound", "Invalid rev id: %s" % rev)
        body = json.dumps({
            "id": repo.id,
            "sha": repo.commit,
            "siblings": [{"rfilename": f} for f in repo.files],
        }).encode()
        self.reply(200, [("Content-Type", "application/json")], body)

    def resolve(self, repo_id, rev, name):
        repo = State.repos.get(repo_id)
        if repo is None:
            return self.error(404, "RepoNotFound", "Repository not found")
        if not self.authorized(repo):
            return
        if rev not in repo.revisions:
            return self.error(404, "RevisionNotFound", "Invalid rev id: %s" % rev)
        if name not in repo.files:
            return self.error(404, "EntryNotFound", "Entry not found")
        common = [("X-Repo-Commit", repo.commit)]
        if is_lfs(repo, name):
            sha = sha256_of(repo, name)
            State.blobs[sha] = (repo, name)
            size = os.path.getsize(os.path.join(repo.root, name))
            host = self.headers.get("Host", "127.0.0.1")
            if State.cdn_host:
                host = "%s:%d" % (State.cdn_host, self.server.server_address[1])
            return self.reply(302, common + [
                ("Location", "http://%s/lfs/%s" % (host, sha)),
                ("X-Linked-Etag", '"%s"' % sha),
                ("X-Linked-Size", str(size)),
                ("ETag", '"%s"' % git_sha1_of(repo, name)),
            ])
        headers = common + [("ETag", '"%s"' % git_sha1_of(repo, name))]
        data = State.content(repo, name)
        if self.command == "HEAD":
            self.send_response(200)
            for k, v in headers:
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            return
        self.send_body(data, name, headers)

    do_GET = route
    do_HEAD = route


def split_pair(text, flag):
    if "=" not in text:
        sys.exit("hub_server.py: %s expects KEY=VALUE, got %r" % (flag, text))
    return text.split("=", 1)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--log")
    ap.add_argument("--repo", action="append", default=[])
    ap.add_argument("--gated", action="append", default=[])
    ap.add_argument("--drop", action="append", default=[])
    ap.add_argument("--corrupt", action="append", default=[])
    ap.add_argument("--tag", action="append", default=[])
    ap.add_argument("--delay-ms", type=float, default=0)
    ap.add_argument("--cdn-host")
    ap.add_argument("--exit-after", action="append", default=[])
    ap.add_argument("--no-range", action="store_true")
    a = ap.parse_args()
    for spec in a.repo:
        rid, where = split_pair(spec, "--repo")
        root, _, commit = where.partition("@")
        if not os.path.isdir(root):
            sys.exit("hub_server.py: --repo %s: %s is not a directory" % (rid, root))
        State.repos[rid] = Repo(rid, root, commit)
    for spec in a.gated:
        rid, token = split_pair(spec, "--gated")
        State.gated[rid] = token
    for spec in a.drop:
        name, n = split_pair(spec, "--drop")
        State.drop[name] = int(n)
    for spec in a.exit_after:
        name, n = split_pair(spec, "--exit-after")
        State.exit_after[name] = int(n)
    State.no_range = a.no_range
    for spec in a.tag:
        rid, tag = split_pair(spec, "--tag")
        State.repos[rid].revisions.add(tag)
    State.corrupt = set(a.corrupt)
    State.delay_s = a.delay_ms / 1000.0
    State.log = a.log
    State.cdn_host = a.cdn_host
    server = ThreadingHTTPServer(("127.0.0.1", a.port), Handler)
    server.daemon_threads = True
    server.serve_forever()


if __name__ == "__main__":
    main()
