"""The admin API on a unix socket (SPEC.md): HTTP/1.1 through h11, JSON bodies,
``{"error":{"code","message"}}`` on failure. Talks to the agent only through
``agent.api.AgentAPI``; callers are checked with SO_PEERCRED."""

from __future__ import annotations

import grp
import inspect
import json
import logging
from urllib.parse import unquote

import trio

from agent.admin.http import Request, Response, serve_unix
from agent.admin.routes import route
from agent.errors import ApiError

logger = logging.getLogger("hostmesh.admin")


def _json(status: int, obj) -> Response:
    return Response(status, [("content-type", "application/json")], json.dumps(obj, default=str).encode() + b"\n")


def make_handler(api):
    async def handle(req: Request) -> Response:
        m = route(req.method, req.path)
        if m.handler is None:
            err = ApiError(m.status, "not_found" if m.status == 404 else "method_not_allowed",
                           f"{req.method} {req.path}: " + ("no such endpoint" if m.status == 404 else
                                                          f"use {', '.join(m.allow)}"))
            r = _json(m.status, err.to_json())
            if m.allow:
                r.headers.append(("allow", ", ".join(m.allow)))
            return r
        try:
            result = _call(api, m.handler, m.params, req)
            if inspect.isawaitable(result):
                result = await result
        except ApiError as e:
            audit(req, m.handler, e.status, e.message)
            return _json(e.status, e.to_json())
        status = 201 if m.handler == "add_workload" else 200
        audit(req, m.handler, status, _summary(m.handler, result))
        return _json(status, result)

    return handle


# Changes an operator must be able to trace (who registered, applied, reloaded, drained);
# reads are not audited.
AUDITED = {"add_workload", "remove_workload", "apply_policies", "delete_policy", "set_log_level", "reload", "drain"}


def _summary(handler: str, result) -> str:
    if not isinstance(result, dict):
        return ""
    if handler == "apply_policies":
        return "applied " + ", ".join(result.get("applied", []))
    if handler in ("add_workload", "remove_workload"):
        return f"uid {result.get('uid')}"
    if handler == "delete_policy":
        return f"deleted {result.get('deleted')}"
    return " ".join(f"{k}={v}" for k, v in result.items() if not isinstance(v, (dict, list)))


def audit(req: Request, handler: str, status: int, outcome: str) -> None:
    """One line per admin change in the agent's log: ``admin PUT /v1/policies -> 200: applied shop/a``
    with the caller's pid and uid (SO_PEERCRED) and the x-source of a policy apply."""
    if handler not in AUDITED:
        return
    pid, uid, _gid = req.peer if isinstance(req.peer, tuple) else (None, None, None)
    extra = {"caller_pid": pid, "caller_uid": uid}
    if handler == "apply_policies":
        extra["source"] = req.headers.get("x-source") or "admin-api"
    log = logger.info if status < 400 else logger.warning
    log("admin %s %s -> %d: %s", req.method, req.path, status, outcome or "ok", extra=extra)


def _call(api, name: str, params: dict, req: Request):
    if name == "add_workload":
        try:
            body = json.loads(req.body.decode("utf-8") or "null")
        except (ValueError, UnicodeDecodeError) as e:
            raise ApiError(400, "invalid_json", f"body is not JSON: {e}") from None
        return api.add_workload(body)
    if name == "remove_workload":
        return api.remove_workload(unquote(params["uid"]))
    if name == "apply_policies":
        try:
            text = req.body.decode("utf-8")
        except UnicodeDecodeError:
            raise ApiError(400, "invalid_body", "policy body is not UTF-8") from None
        if not text.strip():
            raise ApiError(400, "invalid_body", "empty policy body")
        source = req.headers.get("x-source") or "admin-api"
        return api.apply_policies(text, source)
    if name == "delete_policy":
        return api.delete_policy(unquote(params["namespace"]), unquote(params["name"]))
    if name == "set_log_level":
        level = (req.query.get("level") or [""])[0]
        return api.set_log_level(level)
    return getattr(api, name)()


def authorizer(config):
    allowed_uids = set(config.allowed_uids) | {0}
    gid = None
    if config.group:
        try:
            gid = grp.getgrnam(config.group).gr_gid
        except KeyError:
            raise ValueError(f"admin.group: no group named {config.group!r}") from None

    def ok(creds) -> bool:
        _pid, uid, g = creds
        return uid in allowed_uids or (gid is not None and g == gid)

    return ok, gid


async def serve_admin(api, config, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
    ok, gid = authorizer(config)
    mode = 0o660 if gid is not None else 0o600
    await serve_unix(config.socket, make_handler(api), mode=mode, gid=gid, authorize=ok,
                     max_body=config.max_body_bytes, task_status=task_status)
