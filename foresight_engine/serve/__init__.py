"""Serving an `Engine` over HTTP and WebSocket: `create_app(engine)` returns a FastAPI app to run with uvicorn
or mount in an existing server; `foresight_engine.serve.ray` scales it out on Ray Serve.

Needs the `[serve]` extra (`pip install 'foresight-engine[serve]'`).
"""
try:
    from .app import create_app
    from .engine_source import EngineSource
    from .options import ServeOptions
except ModuleNotFoundError as exc:  # fastapi, prometheus_client, python-multipart
    raise ModuleNotFoundError(f"foresight_engine.serve needs {exc.name!r}: pip install 'foresight-engine[serve]'",
                              name=exc.name) from exc

__all__ = ["EngineSource", "ServeOptions", "create_app"]
