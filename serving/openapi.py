"""``GET /openapi.json``: the HTTP API, described by hand (OpenAPI 3.1).

Written out rather than generated from docstrings: the request bodies (raw image or one
multipart file) and the error shapes are the interesting part, and a generator would not
know them. A test checks that every route of the app is described and nothing else.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse

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
        "/feedback": {
            "post": {
                "summary": "Say which class an answered image really is (unconfirmed until a "
                "reviewer accepts it).",
                "requestBody": {
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "required": ["sha256", "label"],
                                "properties": {
                                    "sha256": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
                                    "label": {"type": "string"},
                                },
                            }
                        }
                    }
                },
                "responses": {
                    "201": json_reply("Stored, pending review.", {"type": "object"}),
                    "400": error_reply("Not JSON, a bad sha256, or not one of the classes."),
                    "404": error_reply(
                        "Not an image the server kept (image keeping is off, or it expired)."
                    ),
                    "429": error_reply("Too much feedback from this address (Retry-After)."),
                    "503": error_reply("No model is loaded yet."),
                },
            }
        },
        "/static/{path}": {
            "get": {
                "summary": "The pages' scripts and styles.",
                "parameters": [
                    {"name": "path", "in": "path", "required": True, "schema": {"type": "string"}}
                ],
                "responses": {
                    "200": {"description": "A script or style sheet."},
                    "404": {"description": "No such file."},
                },
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
        paths.update(review_paths())  # /review: also only with an admin token
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
                        "sha256": {"type": "string", "description": "Of the uploaded bytes."},
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
                        "resize_size": {"type": "integer"},
                        "loaded_at": {"type": "string", "format": "date-time"},
                    },
                },
            },
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }


def image_route(summary: str, missing: str, refused: dict) -> dict:
    """A review route that answers an image by its sha256, for reviewers only."""
    return {
        "get": {
            "summary": summary,
            "security": [{"bearer": []}],
            "parameters": [
                {"name": "sha256", "in": "path", "required": True, "schema": {"type": "string"}}
            ],
            "responses": {
                "200": {"description": "The image.", "content": {"image/*": {}}},
                "401": refused,
                "404": error_reply(missing),
            },
        }
    }


def review_paths() -> dict:
    """The review routes for ``/openapi.json`` (they exist only with an admin token)."""
    bearer = [{"bearer": []}]
    refused = error_reply("No admin bearer token and no review login.")
    decision = {
        "type": "object",
        "required": ["sha256", "decision"],
        "properties": {
            "sha256": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
            "decision": {"type": "string", "description": "keep, remove or relabel:<class>"},
        },
    }
    html = {"description": "An HTML page.", "content": {"text/html": {}}}
    see_other = {"description": "Back to /review."}
    return {
        "/review": {
            "get": {
                "summary": "The review page (a login form until logged in).",
                "responses": {"200": html},
            }
        },
        "/review/login": {
            "post": {
                "summary": "Log in with a name and the admin token; sets an HttpOnly cookie.",
                "requestBody": {
                    "content": {"application/x-www-form-urlencoded": {"schema": {"type": "object"}}}
                },
                "responses": {"303": see_other, "400": html, "401": html, "413": html},
            }
        },
        "/review/logout": {
            "post": {"summary": "Forget the review login.", "responses": {"303": see_other}}
        },
        "/review/api/suspects": {
            "get": {
                "summary": "A page of the ranking, most suspect first, with the decisions.",
                "security": bearer,
                "parameters": [
                    {"name": n, "in": "query", "schema": {"type": t}}
                    for n, t in (
                        ("page", "integer"),
                        ("per_page", "integer"),
                        ("order", "string"),
                        ("flag", "string"),
                    )
                ],
                "responses": {
                    "200": json_reply("The page of suspects.", {"type": "object"}),
                    "400": error_reply("A bad query parameter."),
                    "401": refused,
                    "404": error_reply("No ranking yet."),
                },
            }
        },
        "/review/api/images/{sha256}": image_route(
            "A ranked image, from the data folder.", "Not an image of the ranking.", refused
        ),
        "/review/api/decisions": {
            "post": {
                "summary": "Append a decision about an image to the cleaning ledger.",
                "security": bearer,
                "requestBody": {"content": {"application/json": {"schema": decision}}},
                "responses": {
                    "201": json_reply("The ledger entry.", {"type": "object"}),
                    "400": error_reply("A bad decision; nothing was written."),
                    "401": refused,
                    "403": error_reply("A cross-origin request."),
                },
            }
        },
        "/review/api/undo": {
            "post": {
                "summary": "Append the reversal of a ledger entry.",
                "security": bearer,
                "requestBody": {"content": {"application/json": {"schema": {"type": "object"}}}},
                "responses": {
                    "201": json_reply("The undo entry.", {"type": "object"}),
                    "400": error_reply("No such entry, or already undone."),
                    "401": refused,
                    "403": error_reply("A cross-origin request."),
                },
            }
        },
        "/review/api/feedback": {
            "get": {
                "summary": "Feedback from people, with the model's answer beside it.",
                "security": bearer,
                "parameters": [
                    {
                        "name": "state",
                        "in": "query",
                        "schema": {"enum": ["pending", "accept", "reject", "all"]},
                    }
                ],
                "responses": {"200": json_reply("The feedback items.", {"type": "object"})},
            }
        },
        "/review/api/feedback/images/{sha256}": image_route(
            "An image the prediction log kept.", "Not a kept image.", refused
        ),
        "/review/api/feedback/decisions": {
            "post": {
                "summary": "Accept (into the cleaning ledger, as a new labelled image) or "
                "reject one feedback item.",
                "security": bearer,
                "requestBody": {
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "required": ["id", "decision"],
                                "properties": {
                                    "id": {"type": "string"},
                                    "decision": {
                                        "type": "string",
                                        "description": "accept, accept:<class> or reject",
                                    },
                                },
                            }
                        }
                    }
                },
                "responses": {
                    "201": json_reply("The verdict.", {"type": "object"}),
                    "400": error_reply("No such pending feedback, or a bad decision."),
                    "401": refused,
                    "403": error_reply("A cross-origin request."),
                },
            }
        },
        "/review/api/ledger.csv": {
            "get": {
                "summary": "The cleaning ledger as CSV, one row per entry.",
                "security": bearer,
                "responses": {
                    "200": {"description": "CSV.", "content": {"text/csv": {}}},
                    "401": refused,
                },
            }
        },
    }


async def openapi_endpoint(request: Request) -> JSONResponse:
    settings = request.app.state.settings
    return JSONResponse(api_schema(settings.max_body_bytes, admin=bool(settings.admin_token)))
