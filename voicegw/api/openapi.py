"""OpenAPI 3.1 document built from the route table and the pydantic request models."""

from __future__ import annotations

import re
from typing import Any

from voicegw import __version__
from voicegw.api.routes import API, ROUTES
from voicegw.api.schemas import schema_of

OPENAPI_PATH = f"{API}/openapi.json"

_ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["code", "message"],
            "properties": {
                "code": {"type": "string"},
                "message": {"type": "string"},
                "field": {"type": "string", "description": "dotted path of the offending field"},
            },
        }
    },
}


def build_openapi() -> dict[str, Any]:
    paths: dict[str, dict[str, Any]] = {}
    components: dict[str, Any] = {"Error": _ERROR}
    for route in ROUTES:
        params = [
            {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
            for name in re.findall(r"{(\w+)}", route.path)
        ]
        error_ref = {
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
        }
        op: dict[str, Any] = {
            "summary": route.summary,
            "operationId": route.handler.__name__,
            "description": f"Roles: {', '.join(route.roles)}.",
            "parameters": params,
            "responses": {
                str(route.success): {"description": "success"},
                "400": {"description": "bad input; `field` names it", **error_ref},
                "401": {"description": "missing or invalid bearer token", **error_ref},
                "403": {"description": "role not allowed", **error_ref},
                "404": {"description": "not found (or another tenant's)", **error_ref},
            },
        }
        if route.conflict is not None:
            op["responses"]["409"] = {"description": route.conflict, **error_ref}
        if route.body is not None:
            schema = schema_of(route.body)
            for name, sub in schema.pop("$defs", {}).items():
                components[name] = sub
            components[route.body.__name__] = schema
            op["requestBody"] = {
                "required": True,
                "content": {
                    "application/json": {
                        "schema": {"$ref": f"#/components/schemas/{route.body.__name__}"}
                    }
                },
            }
        paths.setdefault(route.path, {})[route.method.lower()] = op
    paths["/healthz"] = {
        "get": {
            "summary": "Liveness and database check",
            "security": [],
            "responses": {"200": {"description": "healthy"}},
        }
    }
    paths["/metrics"] = {
        "get": {
            "summary": "Prometheus metrics",
            "security": [],
            "responses": {"200": {"description": "text exposition format"}},
        }
    }
    return {
        "openapi": "3.1.0",
        "info": {"title": "voicegw admin API", "version": __version__},
        "servers": [{"url": "/"}],
        "security": [{"bearer": []}],
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }
