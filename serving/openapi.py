"""``GET /openapi.json``: the HTTP API, described by hand (OpenAPI 3.1).

Written out rather than generated from docstrings: the request bodies (raw image or one
multipart file) and the error shapes are the interesting part, and a generator would not
know them. A test checks that every route of the app is described and nothing else.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse

from serving.review import openapi_paths as review_openapi_paths

ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {"type": "string", "description": "What went wrong, for a person to read."},
        "reason": {
            "type": "string",
            "description": "For unusable images: empty, not_image, corrupt, too_many_pixels, "
            "too_small; for forms: no_file, bad_form.",
        },
    },
}


def error_reply(description: str) -> dict:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }


def json_reply(description: str, schema: dict) -> dict:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def api_schema(max_body_bytes: int, admin: bool) -> dict:
    """The OpenAPI document; ``admin`` adds the reload route (it exists only with a token)."""
    binary = {"type": "string", "format": "binary"}
    paths: dict = {
        "/": {
            "get": {
                "summary": "Upload page: pick or drop an image and see the top classes.",
                "responses": {"200": {"description": "HTML page", "content": {"text/html": {}}}},
            }
        },
        "/predict": {
            "post": {
                "summary": "Classify one image.",
                "description": f"The body is the image itself or a multipart form with "
                f"exactly one file part; at most {max_body_bytes} bytes. Requests are "
                "batched with others, so an answer may take up to the batch wait longer.",
                "parameters": [
                    {
                        "name": "k",
                        "in": "query",
                        "required": False,
                        "description": "How many classes to return (default 3, at most the "
                        "number of classes).",
                        "schema": {"type": "integer", "minimum": 1},
                    }
                ],
                "requestBody": {
                    "required": True,
                    "content": {
                        "image/*": {"schema": binary},
                        "application/octet-stream": {"schema": binary},
                        "multipart/form-data": {
                            "schema": {
                                "type": "object",
                                "required": ["file"],
                                "properties": {"file": binary},
                            }
                        },
                    },
                },
                "responses": {
                    "200": json_reply(
                        "The top classes, and the model version that produced them.",
                        {"$ref": "#/components/schemas/Prediction"},
                    ),
                    "400": error_reply("Empty body, bad k, or a bad multipart form."),
                    "413": error_reply("Body over the limit (checked while reading)."),
                    "415": error_reply("Content-Type is not an image type or multipart."),
                    "422": error_reply("Not an image, corrupt, too small or too many pixels."),
                    "503": error_reply("No model is loaded yet."),
                },
            }
        },
        "/healthz": {
            "get": {
                "summary": "Liveness: 200 while the process runs.",
                "responses": {"200": json_reply("Alive", {"type": "object"})},
            }
        },
        "/readyz": {
            "get": {
                "summary": "Readiness: 200 once a model is loaded.",
                "responses": {
                    "200": json_reply("Ready, with the served version", {"type": "object"}),
                    "503": error_reply("No model is loaded yet."),
                },
            }
        },
        "/version": {
            "get": {
                "summary": "The served model: name, version, run id, classes, input size.",
                "responses": {
                    "200": json_reply("The served model", {"$ref": "#/components/schemas/Model"}),
                    "503": error_reply("No model is loaded yet."),
                },
            }
        },
        "/metrics": {
            "get": {
                "summary": "Prometheus metrics (text exposition format).",
                "responses": {"200": {"description": "Metrics", "content": {"text/plain": {}}}},
            }
        },
        "/openapi.json": {
            "get": {
                "summary": "This document.",
                "responses": {"200": json_reply("OpenAPI 3.1 document", {"type": "object"})},
            }
        },
    }
    if admin:
        paths["/admin/reload"] = {
            "post": {
                "summary": "Load the registry's current champion beside the old model, then swap.",
                "security": [{"bearer": []}],
                "responses": {
                    "200": json_reply(
                        "Swapped, or already serving the champion",
                        {
                            "type": "object",
                            "properties": {
                                "changed": {"type": "boolean"},
                                "version": {"type": "string"},
                                "previous": {"type": ["string", "null"]},
                            },
                        },
                    ),
                    "401": error_reply("Missing or wrong bearer token."),
                    "409": error_reply("The champion is broken or missing; the old model stays."),
                    "503": error_reply("The model registry is unavailable."),
                },
            }
        }
        paths.update(review_openapi_paths())  # /review: also only with an admin token
    return {
        "openapi": "3.1.0",
        "info": {"title": "Ursa image classifier", "version": "1"},
        "paths": paths,
        "components": {
            "schemas": {
                "Error": ERROR,
                "Prediction": {
                    "type": "object",
                    "required": ["model", "version", "predictions"],
                    "properties": {
                        "model": {"type": "string"},
                        "version": {"type": "string"},
                        "predictions": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "properties": {
                                    "label": {"type": "string"},
                                    "probability": {"type": "number", "minimum": 0, "maximum": 1},
                                },
                            },
                        },
                    },
                },
                "Model": {
                    "type": "object",
                    "properties": {
                        "model": {"type": "string"},
                        "version": {"type": "string"},
                        "run_id": {"type": "string"},
                        "classes": {"type": "array", "items": {"type": "string"}},
                        "image_size": {"type": "integer"},
                        "resize": {"type": "string", "enum": ["squash", "crop", "pad"]},
                        "loaded_at": {"type": "string", "format": "date-time"},
                    },
                },
            },
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }


async def openapi_endpoint(request: Request) -> JSONResponse:
    settings = request.app.state.settings
    return JSONResponse(api_schema(settings.max_body_bytes, admin=bool(settings.admin_token)))
