"""Talk to a C2C pair: a terminal chat (`chat`) and an OpenAI-compatible HTTP server (`create_app`, `serve`).

Modules, one idea each: `engine` (jobs, their batched generation, the model's thread), `chat` (the terminal chat),
`protocol` (OpenAI requests and answers), `errors` (`APIError`), `app` (the FastAPI app and server).
"""

from .app import create_app, running, serve
from .chat import chat
from .engine import Job, Sampling, generate_jobs

__all__ = ["Job", "Sampling", "chat", "create_app", "generate_jobs", "running", "serve"]
