"""A Hugging Face Hub look-alike on 127.0.0.1 for tests, speaking the HTTP protocol as far as the real
`huggingface_hub` client (2.x) needs to create a repo, commit files and download them.

What it implements, with the Hub's status codes and headers (`X-Error-Code`, `X-Error-Message`, `X-Repo-Commit`,
`ETag`, `X-Linked-Etag`, `X-Linked-Size`, `Location`):

* `POST /api/repos/create`, `POST /api/models/{repo}/branch/{branch}`, `POST /api/validate-yaml`
* `GET /api/models/{repo}[/revision/{rev}]` (repo info) and `GET /api/models/{repo}/tree/{rev}` (file listing)
* commits: `POST /api/models/{repo}/preupload/{rev}` (regular or LFS per file), the LFS batch API
  (`POST /{repo}.git/info/lfs/objects/batch`, then a `PUT` to a storage origin and a verify call) and
  `POST /api/models/{repo}/commit/{rev}` (ndjson)
* downloads: `HEAD`/`GET /{repo}/resolve/{rev}/{path}`; regular files are served directly, LFS files are
  redirected (302) to a second "CDN" origin on another port, as the Hub does.

Uploads use LFS, not Xet: the uploading process needs `HF_HUB_DISABLE_XET=1` (with `hf_xet` installed the client
would otherwise speak the Xet CAS protocol, which this server does not). Downloads need no setting: without
`X-Xet-Hash` headers the client downloads over plain HTTP.

Tokens are `{token: user}`; a user may write to their own namespace and to the orgs they belong to. An unknown
token gets 401, a missing or private-and-foreign repo 404 (`RepoNotFound`), as on the Hub.
"""
import base64
import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Dict, List, Optional, Set, Tuple
from urllib.parse import parse_qs, quote, unquote, urlsplit

import yaml

__all__ = ['HubServer']

_LFS_PATTERNS = re.compile(r'.*\.(safetensors|bin|pth|pt|ckpt|pkl|onnx|h5|msgpack|npz|gz|zip)$')
_GITATTRIBUTES = b'*.safetensors filter=lfs diff=lfs merge=lfs -text\n*.bin filter=lfs diff=lfs merge=lfs -text\n'
_REGULAR_MAX = 10 * 1024 * 1024


def _git_sha1(data: bytes) -> str:
    return hashlib.sha1(b'blob %d\0' % len(data) + data).hexdigest()


def _lfs_pointer(oid: str, size: int) -> bytes:
    return f'version https://git-lfs.github.com/spec/v1\noid sha256:{oid}\nsize {size}\n'.encode()


@dataclass
class _Entry:
    size: int
    blob_id: str  # git sha1 of the content (regular) or of the LFS pointer (LFS)
    content: Optional[bytes] = None  # regular files
    lfs_oid: Optional[str] = None  # LFS files: sha256 of the content, kept in the server's object store


@dataclass
class _Repo:
    repo_id: str
    private: bool
    branches: Dict[str, str] = field(default_factory=dict)  # branch -> commit oid
    trees: Dict[str, Dict[str, _Entry]] = field(default_factory=dict)  # commit oid -> path -> entry


class _HttpError(Exception):
    def __init__(self, status: int, message: str, code: Optional[str] = None, headers: Optional[dict] = None):
        super().__init__(message)
        self.status, self.message, self.code, self.headers = status, message, code, headers or {}


class HubServer:
    """Threaded Hub look-alike. Use as a context manager; `endpoint` is what `HF_ENDPOINT` must be set to."""

    def __init__(self, tokens: Dict[str, str], orgs: Optional[Dict[str, Set[str]]] = None):
        self.tokens = dict(tokens)
        self.orgs = {k: set(v) for k, v in (orgs or {}).items()}
        self.repos: Dict[str, _Repo] = {}
        self.lfs_objects: Dict[str, bytes] = {}
        self.requests: List[Tuple[str, str]] = []  # (method, path) of every request, both origins
        self.unhandled: List[Tuple[str, str]] = []  # requests no route matched: the client wanted more than we speak
        self._lock = threading.Lock()
        self._commits = 0
        self._api = ThreadingHTTPServer(('127.0.0.1', 0), _handler(self, cdn=False))
        self._cdn = ThreadingHTTPServer(('127.0.0.1', 0), _handler(self, cdn=True))
        self.endpoint = f'http://127.0.0.1:{self._api.server_address[1]}'
        self.cdn = f'http://127.0.0.1:{self._cdn.server_address[1]}'
        self._threads = [threading.Thread(target=s.serve_forever, daemon=True) for s in (self._api, self._cdn)]

    def __enter__(self) -> 'HubServer':
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        for s in (self._api, self._cdn):
            s.shutdown()
            s.server_close()

    # ---- inspection helpers for tests ----
    def files(self, repo_id: str, revision: str = 'main') -> Dict[str, bytes]:
        """Content of every file of `repo_id` at `revision`."""
        repo = self.repos[repo_id]
        tree = repo.trees[repo.branches.get(revision, revision)]
        return {p: e.content if e.content is not None else self.lfs_objects[e.lfs_oid] for p, e in tree.items()}

    def lfs_paths(self, repo_id: str, revision: str = 'main') -> Set[str]:
        repo = self.repos[repo_id]
        return {p for p, e in repo.trees[repo.branches[revision]].items() if e.lfs_oid is not None}

    # ---- state ----
    def _user(self, headers) -> Optional[str]:
        auth = headers.get('Authorization')
        if not auth:
            return None
        token = auth.split(' ', 1)[-1]
        if token not in self.tokens:
            raise _HttpError(401, 'Invalid credentials in Authorization header')
        return self.tokens[token]

    def _can_write(self, user: Optional[str], namespace: str) -> bool:
        return user is not None and (user == namespace or user in self.orgs.get(namespace, ()))

    def _repo(self, repo_id: str, user: Optional[str]) -> _Repo:
        repo = self.repos.get(repo_id)
        if repo is None or (repo.private and not self._can_write(user, repo_id.split('/')[0])):
            raise _HttpError(404, 'Repository not found', 'RepoNotFound')
        return repo

    def _writable_repo(self, repo_id: str, user: Optional[str]) -> _Repo:
        if user is None:
            raise _HttpError(401, 'You must be authenticated to write to a repository')
        repo = self._repo(repo_id, user)
        if not self._can_write(user, repo_id.split('/')[0]):
            raise _HttpError(403, f'You do not have write access to {repo_id}')
        return repo

    @staticmethod
    def _commit_of(repo: _Repo, revision: str) -> str:
        if revision in repo.branches:
            return repo.branches[revision]
        matches = [c for c in repo.trees if c.startswith(revision)] if len(revision) >= 7 else []
        if len(matches) != 1:
            raise _HttpError(404, f'Invalid rev id: {revision}', 'RevisionNotFound')
        return matches[0]

    def _new_commit(self, repo: _Repo, branch: str, tree: Dict[str, _Entry], summary: str) -> str:
        self._commits += 1
        parent = repo.branches.get(branch, '')
        listing = ''.join(f'{p}:{e.blob_id}\n' for p, e in sorted(tree.items()))
        oid = hashlib.sha1(f'{parent}\n{summary}\n{self._commits}\n{listing}'.encode()).hexdigest()
        repo.trees[oid] = tree
        repo.branches[branch] = oid
        return oid


def _handler(hub: HubServer, cdn: bool):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = 'HTTP/1.1'  # keep-alive, as the client's connection pool expects

        def log_message(self, *args) -> None:  # quiet: tests read hub.requests instead
            pass

        def do_HEAD(self):
            self._dispatch('HEAD')

        def do_GET(self):
            self._dispatch('GET')

        def do_POST(self):
            self._dispatch('POST')

        def do_PUT(self):
            self._dispatch('PUT')

        # ---- plumbing ----
        def _body(self) -> bytes:
            if self.headers.get('Transfer-Encoding', '').lower() == 'chunked':
                out = b''
                while True:
                    size = int(self.rfile.readline().split(b';')[0].strip(), 16)
                    if size == 0:
                        while self.rfile.readline() not in (b'\r\n', b'\n', b''):
                            pass
                        return out
                    out += self.rfile.read(size)
                    self.rfile.readline()
            return self.rfile.read(int(self.headers.get('Content-Length') or 0))

        def _json_body(self):
            return json.loads(self._body() or b'{}')

        def _send(self, status: int, body: bytes = b'', headers: Optional[dict] = None,
                  content_type: str = 'application/json') -> None:
            self.send_response(status)
            self.send_header('Content-Type', content_type)
            self.send_header('Content-Length', str(len(body)))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            if self.command != 'HEAD':
                self.wfile.write(body)

        def _send_json(self, obj, status: int = 200, headers: Optional[dict] = None) -> None:
            self._send(status, json.dumps(obj).encode(), headers)

        def _dispatch(self, method: str) -> None:
            url = urlsplit(self.path)
            # split before unquoting: revisions come quoted whole ("refs%2Fpr%2F1")
            parts = [unquote(p) for p in url.path.strip('/').split('/')] if url.path.strip('/') else []
            query = {k: v[-1] for k, v in parse_qs(url.query).items()}
            with hub._lock:
                hub.requests.append((method, ('cdn:' if cdn else '') + url.path))
            try:
                # the body must be read even when the request is refused, or keep-alive breaks
                body = self._body() if method in ('POST', 'PUT') else b''
                with hub._lock:
                    route = self._cdn_route if cdn else self._api_route
                    if not route(method, parts, query, body):
                        hub.unhandled.append((method, url.path))
                        raise _HttpError(404, f'No route for {method} {url.path}')
            except _HttpError as e:
                headers = {'X-Error-Message': e.message, **e.headers}
                if e.code:
                    headers['X-Error-Code'] = e.code
                self._send_json({'error': e.message}, e.status, headers)

        # ---- storage origin (S3/CDN stand-in): LFS uploads and downloads ----
        def _cdn_route(self, method, parts, query, body) -> bool:
            if method == 'PUT' and len(parts) == 2 and parts[0] == 'upload':
                oid = parts[1]
                if hashlib.sha256(body).hexdigest() != oid:
                    raise _HttpError(400, 'Uploaded content does not match its sha256')
                hub.lfs_objects[oid] = body
                self._send(200, b'', {'ETag': f'"{hashlib.md5(body).hexdigest()}"'})
                return True
            if method in ('GET', 'HEAD') and len(parts) == 1 and parts[0] in hub.lfs_objects:
                data = hub.lfs_objects[parts[0]]
                self._send(200, data, {'ETag': f'"{parts[0]}"', 'Accept-Ranges': 'bytes'}, 'application/octet-stream')
                return True
            return False

        # ---- Hub origin ----
        def _api_route(self, method, parts, query, body) -> bool:
            user = hub._user(self.headers)
            if method == 'POST' and parts == ['api', 'repos', 'create']:
                return self._create_repo(user, json.loads(body or b'{}'))
            if method == 'POST' and parts == ['api', 'validate-yaml']:
                return self._validate_yaml(json.loads(body or b'{}'))
            if method == 'GET' and parts == ['api', 'agent-harnesses']:  # the client's best-effort agent detection
                self._send_json({'standardEnvVars': [], 'harnesses': {}})
                return True
            if len(parts) >= 4 and parts[:2] == ['api', 'models']:
                repo_id, rest = '/'.join(parts[2:4]), parts[4:]
                if method == 'GET' and not rest:
                    return self._repo_info(user, repo_id, 'main')
                if method == 'GET' and len(rest) == 2 and rest[0] == 'revision':
                    return self._repo_info(user, repo_id, rest[1])
                if method == 'GET' and len(rest) >= 2 and rest[0] == 'tree':
                    return self._tree(user, repo_id, rest[1], '/'.join(rest[2:]))
                if method == 'POST' and len(rest) == 2 and rest[0] == 'preupload':
                    return self._preupload(user, repo_id, rest[1], json.loads(body))
                if method == 'POST' and len(rest) == 2 and rest[0] == 'commit':
                    return self._commit(user, repo_id, rest[1], body)
                if method == 'POST' and len(rest) >= 2 and rest[0] == 'branch':
                    return self._create_branch(user, repo_id, '/'.join(rest[1:]), json.loads(body or b'{}'))
            if len(parts) == 6 and parts[1].endswith('.git') and parts[2:5] == ['info', 'lfs', 'objects']:
                repo_id = f'{parts[0]}/{parts[1][:-4]}'
                if method == 'POST' and parts[5] == 'batch':
                    return self._lfs_batch(user, repo_id, json.loads(body))
                if method == 'POST' and parts[5] == 'verify':
                    return self._lfs_verify(user, repo_id, json.loads(body))
            if method in ('GET', 'HEAD') and len(parts) >= 5 and parts[2] == 'resolve':
                return self._resolve(user, '/'.join(parts[:2]), parts[3], '/'.join(parts[4:]))
            return False

        def _create_repo(self, user, payload) -> bool:
            if user is None:
                raise _HttpError(401, 'You must be authenticated to create a repository')
            if payload.get('type', 'model') != 'model':
                raise _HttpError(400, 'Only model repositories are supported by this test server')
            namespace = payload.get('organization') or user
            repo_id = f"{namespace}/{payload['name']}"
            if not self._can_write(user, namespace):
                raise _HttpError(403, f'You do not have the rights to create a model under the namespace {namespace}')
            url = f'{hub.endpoint}/{repo_id}'
            if repo_id in hub.repos:
                raise _HttpError(409, 'You already created this model repo', headers={'X-Repo-Url': url})
            # huggingface_hub < 1.0 sends "private": true, later releases "visibility": "private" (the Hub takes both)
            private = payload.get('visibility') == 'private' or payload.get('private') is True
            repo = hub.repos[repo_id] = _Repo(repo_id, private=private)
            attrs = _Entry(len(_GITATTRIBUTES), _git_sha1(_GITATTRIBUTES), content=_GITATTRIBUTES)
            hub._new_commit(repo, 'main', {'.gitattributes': attrs}, 'initial commit')
            self._send_json({'url': url, 'name': repo_id, 'id': hashlib.sha1(repo_id.encode()).hexdigest()[:24]})
            return True

        def _can_write(self, user, namespace) -> bool:
            return hub._can_write(user, namespace)

        def _create_branch(self, user, repo_id, branch, payload) -> bool:
            repo = hub._writable_repo(repo_id, user)
            if branch in repo.branches:
                raise _HttpError(409, f'Reference already exists: refs/heads/{branch}')
            start = hub._commit_of(repo, payload.get('startingPoint') or 'main')
            repo.branches[branch] = start
            self._send_json({})
            return True

        def _validate_yaml(self, payload) -> bool:
            # The Hub checks the README's metadata block; here: valid YAML, a mapping, and a parseable model-index.
            match = re.match(r'^---\n(.*?)\n---\n', payload.get('content', ''), flags=re.S)
            if match is None:
                self._send_json({'errors': [], 'warnings': [{'message': 'Empty metadata'}]})
                return True
            errors = []
            try:
                meta = yaml.safe_load(match.group(1))
            except yaml.YAMLError as e:
                meta, errors = None, [{'message': f'Invalid YAML: {e}'}]
            if not errors and not isinstance(meta, dict):
                errors = [{'message': 'Metadata must be a YAML mapping'}]
            if not errors and 'model-index' in meta:
                from huggingface_hub.repocard_data import model_index_to_eval_results
                try:
                    model_index_to_eval_results(meta['model-index'])
                except (KeyError, TypeError, IndexError) as e:
                    errors = [{'message': f'"model-index" is invalid: {e!r}'}]
            self._send_json({'errors': errors, 'warnings': []}, 400 if errors else 200)
            return True

        def _repo_info(self, user, repo_id, revision) -> bool:
            repo = hub._repo(repo_id, user)
            commit = hub._commit_of(repo, revision)
            self._send_json({
                'id': repo_id, 'modelId': repo_id, 'author': repo_id.split('/')[0], 'sha': commit,
                'private': repo.private, 'gated': False, 'disabled': False, 'tags': [], 'library_name': None,
                'siblings': [{'rfilename': p} for p in sorted(repo.trees[commit])],
            })
            return True

        def _tree(self, user, repo_id, revision, path) -> bool:
            repo = hub._repo(repo_id, user)
            tree = repo.trees[hub._commit_of(repo, revision)]
            out = []
            for p, e in sorted(tree.items()):
                if path and not p.startswith(path.rstrip('/') + '/'):
                    continue
                item = {'type': 'file', 'oid': e.blob_id, 'size': e.size, 'path': p}
                if e.lfs_oid is not None:
                    pointer = _lfs_pointer(e.lfs_oid, e.size)
                    item['lfs'] = {'oid': e.lfs_oid, 'size': e.size, 'pointerSize': len(pointer)}
                out.append(item)
            self._send_json(out)
            return True

        def _preupload(self, user, repo_id, revision, payload) -> bool:
            repo = hub._writable_repo(repo_id, user)
            tree = repo.trees[hub._commit_of(repo, revision)]
            files = []
            for f in payload['files']:
                sample = base64.b64decode(f['sample'])
                lfs = bool(_LFS_PATTERNS.match(f['path'])) or f['size'] > _REGULAR_MAX or b'\0' in sample
                existing = tree.get(f['path'])
                oid = None
                if existing is not None:
                    oid = existing.lfs_oid if existing.lfs_oid is not None else existing.blob_id
                files.append({'path': f['path'], 'uploadMode': 'lfs' if lfs else 'regular', 'shouldIgnore': False,
                              'oid': oid})
            self._send_json({'files': files, 'commitOid': repo.branches.get(revision)})
            return True

        def _lfs_batch(self, user, repo_id, payload) -> bool:
            repo = hub._writable_repo(repo_id, user)
            if payload.get('operation') != 'upload':
                raise _HttpError(400, 'This test server only accepts LFS uploads')
            objects = []
            for obj in payload['objects']:
                item = {'oid': obj['oid'], 'size': obj['size'], 'authenticated': True}
                if obj['oid'] not in hub.lfs_objects:
                    item['actions'] = {
                        'upload': {'href': f"{hub.cdn}/upload/{obj['oid']}"},
                        'verify': {'href': f'{hub.endpoint}/{repo.repo_id}.git/info/lfs/objects/verify'},
                    }
                objects.append(item)
            self._send_json({'transfer': 'basic', 'objects': objects, 'hash_algo': 'sha256'})
            return True

        def _lfs_verify(self, user, repo_id, payload) -> bool:
            hub._writable_repo(repo_id, user)
            data = hub.lfs_objects.get(payload['oid'])
            if data is None or len(data) != payload['size']:
                raise _HttpError(404, f"LFS object {payload['oid']} was not uploaded")
            self._send_json({'success': True})
            return True

        def _commit(self, user, repo_id, revision, body) -> bool:
            repo = hub._writable_repo(repo_id, user)
            if revision not in repo.branches:
                raise _HttpError(404, f'Invalid rev id: {revision}', 'RevisionNotFound')
            lines = [json.loads(line) for line in body.splitlines() if line.strip()]
            header = next(x['value'] for x in lines if x['key'] == 'header')
            parent = header.get('parentCommit')
            if parent and not repo.branches[revision].startswith(parent):
                raise _HttpError(412, 'A commit has happened since the parent commit')
            tree = dict(repo.trees[repo.branches[revision]])
            for item in lines:
                key, value = item['key'], item['value']
                if key == 'file':
                    data = base64.b64decode(value['content'])
                    tree[value['path']] = _Entry(len(data), _git_sha1(data), content=data)
                elif key == 'lfsFile':
                    oid = value['oid']
                    if oid not in hub.lfs_objects:
                        raise _HttpError(422, f"LFS file {value['path']} ({oid}) was not uploaded")
                    size = len(hub.lfs_objects[oid])
                    tree[value['path']] = _Entry(size, _git_sha1(_lfs_pointer(oid, size)), lfs_oid=oid)
                elif key == 'deletedFile':
                    if tree.pop(value['path'], None) is None:
                        raise _HttpError(404, "A file with this name doesn't exist", 'EntryNotFound')
                elif key == 'deletedFolder':
                    prefix = value['path'].rstrip('/') + '/'
                    tree = {p: e for p, e in tree.items() if not p.startswith(prefix)}
            oid = hub._new_commit(repo, revision, tree, header.get('summary', ''))
            self._send_json({'success': True, 'commitOid': oid, 'commitUrl': f'{hub.endpoint}/{repo_id}/commit/{oid}',
                             'pullRequestUrl': None})
            return True

        def _resolve(self, user, repo_id, revision, path) -> bool:
            repo = hub._repo(repo_id, user)
            commit = hub._commit_of(repo, revision)
            entry = repo.trees[commit].get(path)
            if entry is None:
                raise _HttpError(404, 'Entry not found', 'EntryNotFound', {'X-Repo-Commit': commit})
            headers = {'X-Repo-Commit': commit, 'Accept-Ranges': 'bytes'}
            if entry.lfs_oid is None:
                self._send(200, entry.content, {**headers, 'ETag': f'"{entry.blob_id}"'}, 'application/octet-stream')
            else:
                # as the Hub: redirect to storage, with the file's own etag and size on the redirect response
                self._send(302, b'', {
                    **headers, 'Location': f'{hub.cdn}/{quote(entry.lfs_oid)}', 'ETag': f'"{entry.blob_id}"',
                    'X-Linked-Etag': f'"{entry.lfs_oid}"', 'X-Linked-Size': str(entry.size)})
            return True

    return Handler
