//! The OpenAPI 3.1 document served at `/openapi.json`, written by hand (a test checks that it
//! lists exactly the router's routes).
use serde_json::{json, Value};

fn error_response(description: &str) -> Value {
    json!({
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
    })
}

fn job_response(description: &str) -> Value {
    json!({
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Job"}}}
    })
}

fn id_param() -> Value {
    json!({"name": "id", "in": "path", "required": true, "schema": {"type": "string"}})
}

fn request_body() -> Value {
    json!({
        "required": true,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/GenerationRequest"}}}
    })
}

/// The document.
pub fn document() -> Value {
    let schedulers: Vec<&str> = pixart_schedulers::SamplerKind::ALL.iter().map(|k| k.name()).collect();
    let bad = error_response("Malformed JSON or an unknown field (400), or a field of the wrong type or out of range (422); `error.param` names the field");
    let mut doc = json!({
        "openapi": "3.1.0",
        "info": {
            "title": "pixart serve",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "PixArt-Σ text-to-image: the OpenAI images API, an asynchronous job API with server-sent progress, health and Prometheus metrics. One model, one worker, a bounded queue."
        },
        "paths": {
            "/": {"get": {"summary": "The web page", "responses": {"200": {"description": "HTML", "content": {"text/html": {}}}}}},
            "/app.js": {"get": {"summary": "The web page's script", "responses": {"200": {"description": "JavaScript", "content": {"text/javascript": {}}}}}},
            "/style.css": {"get": {"summary": "The web page's style sheet", "responses": {"200": {"description": "CSS", "content": {"text/css": {}}}}}},
            "/health": {"get": {
                "summary": "Liveness, queue state, defaults and limits",
                "responses": {
                    "200": {"description": "Serving", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Health"}}}},
                    "503": {"description": "Shutting down", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Health"}}}}
                }
            }},
            "/metrics": {"get": {
                "summary": "Prometheus text exposition: queue length, jobs by outcome, rejections, steps and mean step time",
                "responses": {"200": {"description": "text/plain; version=0.0.4", "content": {"text/plain": {}}}}
            }},
            "/openapi.json": {"get": {"summary": "This document", "responses": {"200": {"description": "OpenAPI 3.1", "content": {"application/json": {}}}}}},
            "/v1/images/generations": {"post": {
                "summary": "OpenAI-compatible image generation; answers when the images are done",
                "requestBody": request_body(),
                "responses": {
                    "200": {"description": "The images", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ImagesResponse"}}}},
                    "400": bad.clone(), "422": bad.clone(),
                    "409": error_response("The job was cancelled through DELETE /v1/jobs/{id}"),
                    "415": error_response("The body is not application/json"),
                    "429": {"description": "The queue is full; retry after `Retry-After` seconds",
                            "headers": {"Retry-After": {"schema": {"type": "integer"}}},
                            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}},
                    "500": error_response("The generation failed (details only in the server log)"),
                    "503": error_response("The server is shutting down")
                }
            }},
            "/v1/images/edits": {"post": {
                "summary": "OpenAI-compatible image edits (multipart/form-data): image to image, or inpainting with a mask; answers like /v1/images/generations",
                "requestBody": {
                    "required": true,
                    "content": {"multipart/form-data": {"schema": {
                        "type": "object",
                        "required": ["image", "prompt"],
                        "properties": {
                            "image": {"type": "string", "format": "binary", "description": "PNG, JPEG or WebP (also as `image[]`, one file). Without a mask, its fully transparent pixels, if any, are the part to repaint"},
                            "mask": {"type": "string", "format": "binary", "description": "The image's size. With an alpha channel: fully transparent = repaint (OpenAI); without: white = repaint"},
                            "prompt": {"type": "string"},
                            "n": {"type": "integer"}, "size": {"type": "string"}, "response_format": {"type": "string"},
                            "output_format": {"type": "string"}, "output_compression": {"type": "integer"}, "model": {"type": "string"}, "user": {"type": "string"},
                            "negative_prompt": {"type": "string"}, "steps": {"type": "integer"}, "guidance_scale": {"type": "number"},
                            "seed": {"type": "integer"}, "scheduler": {"type": "string", "enum": schedulers},
                            "strength": {"type": "number", "description": "Default 0.8; 1 with a mask"}
                        }
                    }}}
                },
                "responses": {
                    "200": {"description": "The images", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ImagesResponse"}}}},
                    "400": bad.clone(), "422": bad.clone(),
                    "403": error_response("Sent by a web page of another origin"),
                    "415": error_response("The body is not multipart/form-data"),
                    "429": error_response("The queue is full; retry after `Retry-After` seconds"),
                    "500": error_response("The generation failed (details only in the server log)"),
                    "503": error_response("The server is shutting down")
                }
            }},
            "/v1/jobs": {
                "post": {
                    "summary": "Queue a generation; poll it, follow its events, or cancel it",
                    "requestBody": request_body(),
                    "responses": {
                        "202": {"description": "Queued", "headers": {"Location": {"schema": {"type": "string"}}},
                                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Job"}}}},
                        "400": bad.clone(), "422": bad,
                        "415": error_response("The body is not application/json"),
                        "429": {"description": "The queue is full; retry after `Retry-After` seconds",
                                "headers": {"Retry-After": {"schema": {"type": "integer"}}},
                                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}},
                        "503": error_response("The server is shutting down")
                    }
                },
                "get": {
                    "summary": "The jobs this server keeps (queued, running, and recent finished ones), oldest first",
                    "responses": {"200": {"description": "A list", "content": {"application/json": {"schema": {
                        "type": "object", "properties": {"object": {"const": "list"}, "data": {"type": "array", "items": {"$ref": "#/components/schemas/Job"}}}
                    }}}}}
                }
            },
            "/v1/jobs/{id}": {
                "get": {
                    "summary": "A job: status, step k of n, and when done its images (URLs and base64 PNG)",
                    "parameters": [id_param()],
                    "responses": {"200": job_response("The job"), "404": error_response("No such job")}
                },
                "delete": {
                    "summary": "Cancel a queued or running job (it stops between steps), or forget a finished one",
                    "parameters": [id_param()],
                    "responses": {
                        "202": job_response("Cancelling (a queued job is cancelled at once)"),
                        "200": {"description": "A finished job was removed", "content": {"application/json": {}}},
                        "404": error_response("No such job")
                    }
                }
            },
            "/v1/jobs/{id}/events": {"get": {
                "summary": "Server-sent events: `progress` (a Job) on every change, then one `done` (the final Job), then the stream ends",
                "parameters": [id_param()],
                "responses": {"200": {"description": "text/event-stream", "content": {"text/event-stream": {}}}, "404": error_response("No such job")}
            }},
            "/v1/jobs/{id}/images/{index}": {"get": {
                "summary": "Image `index` of a succeeded job, as PNG (generation parameters in its `parameters` text chunk) or JPEG (in a COM segment), as the request's `output_format` asked",
                "parameters": [id_param(), {"name": "index", "in": "path", "required": true, "schema": {"type": "integer", "minimum": 0}}],
                "responses": {
                    "200": {"description": "PNG or JPEG", "content": {"image/png": {}, "image/jpeg": {}}},
                    "404": error_response("No such job or image"),
                    "409": error_response("The job has not succeeded")
                }
            }},
            "/v1/models": {"get": {
                "summary": "OpenAI's model list: the one model this server runs (`id` is its folder name or hub id)",
                "responses": {"200": {"description": "The list", "content": {"application/json": {"schema": {"type": "object", "properties": {
                    "object": {"const": "list"}, "data": {"type": "array", "items": {"$ref": "#/components/schemas/Model"}}
                }}}}}}
            }},
            "/v1/models/{model}": {"get": {
                "summary": "The model, when `model` is its id",
                "parameters": [{"name": "model", "in": "path", "required": true, "schema": {"type": "string"}}],
                "responses": {
                    "200": {"description": "The model", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Model"}}}},
                    "404": error_response("Another model")
                }
            }},
            "/v1/jobs/{id}/preview": {"get": {
                "summary": "The latest live preview of a job whose request had `\"preview\": true`: the image the denoised estimate of step `X-Preview-Step` decodes to (the batch side by side), as PNG. Previews are made while denoising, within a quarter of its time; the job's `preview.url` changes with each",
                "parameters": [id_param()],
                "responses": {
                    "200": {"description": "PNG", "headers": {"X-Preview-Step": {"schema": {"type": "integer"}}}, "content": {"image/png": {}}},
                    "404": error_response("No such job, or no preview yet")
                }
            }}
        },
        "components": {"securitySchemes": {
            "bearer": {"type": "http", "scheme": "bearer", "description": "Needed on /v1 when the server runs with --api-key (PIXART_API_KEY); the web page's cookie `pixart_api_key` is accepted too"}
        }, "schemas": {
            "GenerationRequest": {
                "type": "object",
                "additionalProperties": false,
                "required": ["prompt"],
                "properties": {
                    "prompt": {"type": "string", "minLength": 1},
                    "n": {"type": "integer", "minimum": 1, "default": 1, "description": "Images; at most the server's max_n (see /health)"},
                    "size": {"type": "string", "pattern": "^([0-9]+x[0-9]+|auto)$", "description": "WIDTHxHEIGHT or auto; default the model's native size; each side within /health's limits. Generated at the nearest aspect-ratio bin, then resized and cropped"},
                    "response_format": {"type": "string", "enum": ["b64_json", "url"], "default": "b64_json"},
                    "output_format": {"type": "string", "enum": ["png", "jpeg", "webp"], "default": "png", "description": "The images' format; JPEG at quality 95 (or output_compression), WebP lossless"},
                    "output_compression": {"type": "integer", "minimum": 0, "maximum": 100, "description": "The JPEG quality (default 95); PNG and WebP are lossless"},
                    "model": {"type": "string", "description": "Accepted and ignored (one model per server)"},
                    "user": {"type": "string", "description": "Accepted and ignored"},
                    "quality": {"type": "string", "enum": ["auto", "standard", "hd", "low", "medium", "high"], "description": "Accepted and ignored"},
                    "style": {"type": "string", "enum": ["vivid", "natural"], "description": "Accepted and ignored"},
                    "background": {"type": "string", "enum": ["auto", "opaque", "transparent"], "description": "Accepted; the images are opaque"},
                    "moderation": {"type": "string", "enum": ["auto", "low"], "description": "Accepted and ignored"},
                    "negative_prompt": {"type": "string", "default": ""},
                    "steps": {"type": "integer", "minimum": 1, "default": 20, "description": "Default: the sampler's (the requested one, else the model's): 20; 25 for sa-solver, 100 for iddpm, 4 for lcm"},
                    "guidance_scale": {"type": "number", "minimum": 0, "maximum": 50, "default": 4.5, "description": "Classifier-free guidance; ≤ 1 turns it off"},
                    "seed": {"type": "integer", "minimum": 0, "description": "Image k uses seed + k; default random (returned)"},
                    "scheduler": {"type": "string", "enum": schedulers, "description": "Default: the model's scheduler_config.json; iddpm is PixArt's IDDPM sampler (the model's learned variance)"},
                    "image": {"type": "string", "contentEncoding": "base64", "description": "Image to image: the start picture, a base64 PNG, JPEG or WebP file or a data: URL (body up to /health's max_image_body_bytes). Default size: the image's"},
                    "strength": {"type": "number", "exclusiveMinimum": 0, "maximum": 1, "default": 0.8, "description": "With image: the share of the schedule that runs; low values keep more of the image. Default 0.8, 1 with a mask"},
                    "mask": {"type": "string", "contentEncoding": "base64", "description": "With image: inpainting. A picture of the image's size (base64 like image), white where it is repainted, black where it is kept"},
                    "preview": {"type": "boolean", "default": false, "description": "Live previews for the job API (GET /v1/jobs/{id}/preview) while denoising, within a quarter of the denoising time"},
                    "upscale": {"type": "number", "exclusiveMinimum": 1, "maximum": 4, "description": "Two-pass upscaling (\"hires fix\"): each image made is enlarged this many times (sides rounded to the model's multiple of 16 px) and run through image to image at that size: the composition stays, detail is added. The images returned are the upscaled ones. Not with image"},
                    "upscale_strength": {"type": "number", "exclusiveMinimum": 0, "maximum": 1, "default": 0.5, "description": "With upscale: the share of the second pass's schedule that runs"},
                    "upscale_steps": {"type": "integer", "minimum": 1, "description": "With upscale: the second pass's steps (default: those of the first; it runs int(steps x upscale_strength) of them; at most the server's max_steps)"},
                    "control_image": {"type": "string", "contentEncoding": "base64", "description": "ControlNet (the server's --controlnet, or a controlnet/ folder beside the pipeline): the control picture (base64 like image), resized to the generation size, for every image"},
                    "controlnet_conditioning_scale": {"type": "number", "minimum": 0, "maximum": 10, "default": 1.0, "description": "With control_image: multiplies the ControlNet's residuals (0: without it)"}
                }
            },
            "ImagesResponse": {
                "type": "object",
                "properties": {
                    "created": {"type": "integer"},
                    "data": {"type": "array", "items": {"type": "object", "properties": {"b64_json": {"type": "string", "description": "With response_format b64_json"}, "url": {"type": "string", "description": "With response_format url: GET /v1/jobs/{id}/images/{k} on this server, kept as long as the job (--keep-jobs, --job-ttl)"}, "seed": {"type": "integer"}}}}
                }
            },
            "Model": {"type": "object", "properties": {
                "id": {"type": "string"}, "object": {"const": "model"}, "created": {"type": "integer"}, "owned_by": {"type": "string"}
            }},
            "Job": {
                "type": "object",
                "properties": {
                    "id": {"type": "string"},
                    "object": {"const": "job"},
                    "status": {"type": "string", "enum": ["queued", "running", "succeeded", "failed", "cancelled"]},
                    "stage": {"type": ["string", "null"]},
                    "step": {"type": "integer"},
                    "total_steps": {"type": "integer"},
                    "step_seconds": {"type": ["number", "null"]},
                    "queue_position": {"type": ["integer", "null"]},
                    "cancel_requested": {"type": "boolean"},
                    "created": {"type": "integer"},
                    "seconds": {"type": ["number", "null"]},
                    "prompt": {"type": "string"},
                    "negative_prompt": {"type": "string"},
                    "size": {"type": "string"},
                    "n": {"type": "integer"},
                    "steps": {"type": "integer"},
                    "guidance_scale": {"type": "number"},
                    "seed": {"type": "integer"},
                    "strength": {"type": ["number", "null"]},
                    "preview": {"type": ["object", "null"], "description": "The latest live preview, when the request asked for them", "properties": {
                        "step": {"type": "integer"}, "url": {"type": "string"}
                    }},
                    "error": {"type": ["string", "null"]},
                    "result": {"type": ["object", "null"], "properties": {"images": {"type": "array", "items": {"type": "object", "properties": {
                        "index": {"type": "integer"}, "url": {"type": "string"}, "seed": {"type": "integer"},
                        "b64_json": {"type": "string", "description": "Only in GET /v1/jobs/{id}"}
                    }}}}}
                }
            },
            "Health": {"type": "object", "properties": {
                "status": {"type": "string", "enum": ["ok", "shutting_down"]},
                "auth": {"type": "string", "enum": ["api_key", "none"], "description": "Whether /v1 needs an API key"},
                "text_encoder": {"type": "string", "enum": ["kept", "per_job"], "description": "Whether T5 stays loaded between jobs (--offload-text-encoder: per_job)"},
                "model": {"type": "string"},
                "queue_length": {"type": "integer"},
                "max_queue": {"type": "integer"},
                "running": {"type": "integer"},
                "default_size": {"type": "string"},
                "defaults": {"type": "object"},
                "limits": {"type": "object"},
                "schedulers": {"type": "array", "items": {"type": "string"}},
                "scheduler_steps": {"type": "object", "additionalProperties": {"type": "integer"}, "description": "Each sampler's default steps"}
            }},
            "Error": {"type": "object", "properties": {"error": {"type": "object", "properties": {
                "message": {"type": "string"},
                "type": {"type": "string"},
                "param": {"type": ["string", "null"], "description": "The request field at fault"},
                "code": {"type": "string"}
            }}}}
        }}
    });
    add_a1111(&mut doc);
    doc
}

/// An A1111 request schema: its fields and their JSON types (docs/server.md says which are
/// used and which ignored).
fn a1111_schema(fields: impl Iterator<Item = (&'static str, crate::a1111::Kind, crate::a1111::Use)>) -> Value {
    use crate::a1111::{Kind, Use};
    let props: serde_json::Map<String, Value> = fields
        .map(|(name, kind, used)| {
            let t = match kind {
                Kind::Str => "string",
                Kind::Int => "integer",
                Kind::Num => "number",
                Kind::Bool => "boolean",
                Kind::Object => "object",
                Kind::List => "array",
            };
            let mut v = json!({"type": [t, "null"]});
            if used == Use::Ignored {
                v["description"] = json!("Accepted and ignored");
            }
            (name.to_string(), v)
        })
        .collect();
    json!({"type": "object", "additionalProperties": false, "properties": props})
}

/// AUTOMATIC1111's routes (`/sdapi/v1/…`, crate::a1111).
fn add_a1111(doc: &mut Value) {
    let ok = |what: &str| json!({"200": {"description": what, "content": {"application/json": {}}}});
    let answer = json!({
        "200": {"description": "A1111's TextToImageResponse", "content": {"application/json": {"schema": {"type": "object", "properties": {
            "images": {"type": "array", "items": {"type": "string", "contentEncoding": "base64"}},
            "parameters": {"type": "object"},
            "info": {"type": "string", "description": "JSON: seed, all_seeds, infotexts, ..."}
        }}}}},
        "400": error_response("Malformed JSON or an unknown field"),
        "422": error_response("A field of the wrong type or out of range; `error.param` names the A1111 field"),
        "429": error_response("Queue full")
    });
    let post = |summary: &str, schema: Value, responses: &Value| json!({"post": {"summary": summary, "requestBody": {"required": true, "content": {"application/json": {"schema": schema}}}, "responses": responses}});
    let get = |summary: &str| json!({"get": {"summary": summary, "responses": ok(summary)}});
    let paths = [
        (
            "/sdapi/v1/txt2img",
            post(
                "A1111 text to image",
                a1111_schema(crate::a1111::txt2img_fields()),
                &answer,
            ),
        ),
        (
            "/sdapi/v1/img2img",
            post(
                "A1111 image to image and inpainting",
                a1111_schema(crate::a1111::img2img_fields()),
                &answer,
            ),
        ),
        (
            "/sdapi/v1/progress",
            json!({"get": {"summary": "Progress, ETA and live preview of the running job", "parameters": [{"name": "skip_current_image", "in": "query", "schema": {"type": "boolean"}}], "responses": ok("A1111's ProgressResponse")}}),
        ),
        (
            "/sdapi/v1/interrupt",
            json!({"post": {"summary": "Stop the running job and the rest of its request", "responses": ok("null")}}),
        ),
        (
            "/sdapi/v1/skip",
            json!({"post": {"summary": "Stop the running job; its request goes on with the next iteration", "responses": ok("null")}}),
        ),
        (
            "/sdapi/v1/options",
            json!({
                "get": {"summary": "The options", "responses": ok("The options")},
                "post": {"summary": "Set options (sd_model_checkpoint must name the served model)", "requestBody": {"required": true, "content": {"application/json": {"schema": {"type": "object"}}}}, "responses": {"200": {"description": "null"}, "422": error_response("An option of the wrong type or value")}}
            }),
        ),
        ("/sdapi/v1/sd-models", get("The served model")),
        ("/sdapi/v1/samplers", get("The samplers by A1111 name")),
        ("/sdapi/v1/schedulers", get("The schedulers (automatic)")),
        ("/sdapi/v1/loras", get("The LoRAs merged at start")),
        ("/sdapi/v1/upscalers", get("The upscalers")),
        ("/sdapi/v1/scripts", get("No scripts")),
        (
            "/sdapi/v1/refresh-checkpoints",
            json!({"post": {"summary": "Nothing to refresh", "responses": ok("null")}}),
        ),
    ];
    if let Some(p) = doc["paths"].as_object_mut() {
        for (path, item) in paths {
            p.insert(path.to_string(), item);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::route_table::ROUTES;

    #[test]
    fn documents_exactly_the_routes() {
        let doc = document();
        let paths = doc["paths"].as_object().unwrap();
        let mut documented: Vec<(String, String)> = paths
            .iter()
            .flat_map(|(p, ops)| ops.as_object().unwrap().keys().map(move |m| (m.clone(), p.clone())))
            .collect();
        documented.sort();
        let mut routes: Vec<(String, String)> = ROUTES.iter().map(|(m, p)| (m.to_string(), p.to_string())).collect();
        routes.sort();
        assert_eq!(documented, routes);
        // Every request field is documented.
        let props = doc["components"]["schemas"]["GenerationRequest"]["properties"]
            .as_object()
            .unwrap();
        let mut fields: Vec<&str> = props.keys().map(String::as_str).collect();
        fields.sort();
        let mut want = crate::api::FIELDS.to_vec();
        want.sort();
        assert_eq!(fields, want);
    }
}
